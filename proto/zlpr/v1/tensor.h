// The one codec of zlpr.v1 Tensors: building them from fp32, mask or already-encoded data, and
// reading them back with the structural checks every reader needs (two dimensions, sizes,
// element type, exact byte count). The server, the C++ client, zlpr-bench and the tests all use
// it; the client package installs it as <zlpr/v1/tensor.h>.
//
//   v1::Tensor t;
//   zlpr::v1::EncodeMatrix(values, rows, cols, zlpr::DType::kFloat16, &t);   // narrowed
//   absl::StatusOr<std::vector<float>> back = zlpr::v1::DecodeFloats(t, "grad");  // widened
#ifndef ZLPR_V1_TENSOR_H_
#define ZLPR_V1_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "zlpr/dtype.h"
#include "zlpr/v1/zlpr.pb.h"

namespace zlpr::v1 {

// The wire element type of `dtype`, and back (nullopt for UINT8 and for unset or unknown
// values).
DType ToWire(zlpr::DType dtype);
std::optional<zlpr::DType> FromWire(DType dtype);

// Sets `t` to a [rows, cols] tensor of `dtype` holding the rows * cols fp32 `values`, narrowed
// with round-to-nearest-even.
void EncodeMatrix(std::span<const float> values, int64_t rows, int64_t cols, zlpr::DType dtype,
                  Tensor* t);
// Sets `t` to a [rows, cols] tensor of `dtype` whose data is `bytes`, already of that type
// (moved in, not copied).
void EncodeMatrixBytes(std::string bytes, int64_t rows, int64_t cols, zlpr::DType dtype, Tensor* t);
// Sets `t` to a [rows, cols] UINT8 mask.
void EncodeMask(std::span<const uint8_t> mask, int64_t rows, int64_t cols, Tensor* t);
// Sets `t` to a [n] FLOAT32 vector.
void EncodeVector(std::span<const float> values, Tensor* t);

// "[2, 3]".
std::string ShapeString(const Tensor& t);

// A matrix tensor that passed CheckMatrix: its bytes stay in the tensor.
struct MatrixBytes {
  const char* data = nullptr;
  DType dtype = DTYPE_UNSPECIFIED;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Checks that `t` is [rows, cols] with 1 to 2^31 - 1 of each, of one of the `allowed` element
// types, with exactly rows * cols elements of data. INVALID_ARGUMENT naming `field` otherwise,
// e.g. "scores.data has 40 bytes, expected 3 x 4 x 4 = 48".
absl::StatusOr<MatrixBytes> CheckMatrix(const Tensor& t, std::string_view field,
                                        std::initializer_list<DType> allowed);

// The elements of a FLOAT32, FLOAT16 or BFLOAT16 tensor of any shape, widened to fp32 (exact).
// INVALID_ARGUMENT naming `field` when the element type is not one of those or the data does
// not hold exactly the elements its shape says.
absl::StatusOr<std::vector<float>> DecodeFloats(const Tensor& t, std::string_view field);

}  // namespace zlpr::v1

#endif  // ZLPR_V1_TENSOR_H_
