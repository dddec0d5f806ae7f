// The Open Inference Protocol's HTTP/REST body formats (KServe v2 REST, as Triton serves it).
//
// A request body is JSON, or with the binary tensor extension JSON followed by the tensors'
// bytes (Inference-Header-Content-Length says where the JSON ends). It is read by nlohmann's
// SAX parser straight into the binding-free Request: an input's JSON "data" numbers become its
// bytes (kept in the Request), a binary tensor stays a view of the body. The JSON's structure is
// checked as it is read (unknown keys, a key given twice, containers where values belong, more
// than 4096 values outside the data), so that a hostile body costs no more than its bytes.
//
// Every JSON text written goes through one function that writes bytes that are not UTF-8 (a
// request's path, a header quoted in a message) as U+FFFD, instead of throwing.
#ifndef ZLPR_SERVER_OIP_HTTP_CODEC_H_
#define ZLPR_SERVER_OIP_HTTP_CODEC_H_

#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

// How the client asked for each output: in the JSON ("data") or as binary data after it.
struct OutputFormat {
  bool all_binary = false;       // request parameter binary_data_output
  std::set<std::string> binary;  // outputs with parameters.binary_data = true
  std::set<std::string> json;    // outputs with parameters.binary_data = false
  bool IsBinary(const std::string& name) const {
    return binary.count(name) > 0 || (all_binary && json.count(name) == 0);
  }
};

// Parses an inference request body for `model` (and `version`, may be empty) into `request`:
// the JSON (the first `header_length` bytes; all of the body without the binary tensor
// extension), then the binary tensors, in input order, as views of `body` (which must outlive
// `request`) where they are aligned to their element size, else copied into `request`.
// INVALID_ARGUMENT naming the key, input and element otherwise.
absl::Status ParseInferRequest(std::string_view body, std::optional<size_t> header_length,
                               const std::string& model, const std::string& version,
                               Request* request, OutputFormat* format);

// A response's body: its JSON, then the binary outputs' bytes (the binary tensor extension);
// `*json_length` is the JSON's length (the body's whole length without binary outputs).
// Non-finite floats are written as NaN, Infinity and -Infinity (as Python's json reads them).
std::string FormatInferResponse(const Response& response, const OutputFormat& format,
                                size_t* json_length);

// The shared-memory extension: the registered regions as Triton's JSON array, and the body of a
// registration ({"key": ..., "offset": ..., "byte_size": ...}; INVALID_ARGUMENT naming the key
// that is wrong).
std::string SystemSharedMemoryStatusText(const inference::SystemSharedMemoryStatusResponse& r);
struct SharedMemoryRegistration {
  std::string key;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};
absl::StatusOr<SharedMemoryRegistration> ParseSharedMemoryRegistration(std::string_view body);

// The HTTP status of a status code (400 for INVALID_ARGUMENT, 429 RESOURCE_EXHAUSTED, ...).
int HttpStatus(absl::StatusCode code);

// The JSON texts of the other endpoints, in Triton's forms, and of an error: {"error": ...}.
std::string ServerMetadataText(const inference::ServerMetadataResponse& m);
std::string ModelMetadataText(const inference::ModelMetadataResponse& m);
std::string ModelConfigText(const inference::ModelConfig& c);
std::string StatisticsText(const inference::ModelStatisticsResponse& r);
std::string ErrorText(const std::string& message);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_HTTP_CODEC_H_
