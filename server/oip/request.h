// The Open Inference Protocol's requests and responses without a wire: what both bindings (gRPC
// and HTTP) turn their messages into, once, and what the converter (converter.h) turns into
// jobs. Tensors are views: their bytes stay where the binding received them (the gRPC message,
// the HTTP body), or in `owned` when the binding had to make them (JSON numbers, typed
// contents).
#ifndef ZLPR_SERVER_OIP_REQUEST_H_
#define ZLPR_SERVER_OIP_REQUEST_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/inlined_vector.h"

namespace zlpr::server::oip {

// The protocol's tensor element types.
enum class DataType {
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kBf16,
  kFp32,
  kFp64,
  kBytes,  // variable length: each element a 4-byte little-endian length, then its bytes
};

// "FP32" -> kFp32; nullopt for a name the protocol does not have.
std::optional<DataType> ParseDataType(std::string_view name);
const char* DataTypeName(DataType type);
// Bytes per element; 0 for kBytes.
int ElementSize(DataType type);

// A tensor's dimensions (held inline: a tensor has two, rarely more).
using Shape = absl::InlinedVector<int64_t, 4>;

// A request, output or response parameter.
using Parameter = std::variant<bool, int64_t, uint64_t, double, std::string>;
using Parameters = std::map<std::string, Parameter>;

struct Tensor {
  std::string name;
  DataType datatype = DataType::kFp32;
  Shape shape;
  std::string_view data;  // raw little-endian elements
  Parameters parameters;
};

struct RequestedOutput {
  std::string name;
  Parameters parameters;
};

struct Request {
  std::string model;
  std::string version;  // empty: the latest
  std::string id;
  Parameters parameters;
  std::vector<Tensor> inputs;
  std::vector<RequestedOutput> outputs;  // empty: all of the model's
  // Bytes the inputs' views point into when they are not the binding's own buffer (a list:
  // adding one moves none of the others, and an empty one allocates nothing).
  std::list<std::string> owned;
  // The same for bytes copied in whole (from shared memory): not zero-filled first.
  std::list<std::unique_ptr<char[]>> buffers;
};

struct Output {
  std::string name;
  DataType datatype = DataType::kFp32;
  Shape shape;
  std::string data;
  Parameters parameters;
  bool in_shared_memory = false;  // its bytes went into a region its parameters name
};

struct Response {
  std::string model;
  std::string version;
  std::string id;
  Parameters parameters;
  std::vector<Output> outputs;
};

// "[2, 3]".
std::string ShapeString(std::span<const int64_t> shape);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_REQUEST_H_
