// zlpr.v1 Tensor encoding and checked decoding.
#include "zlpr/v1/tensor.h"

#include <limits>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/tensor_rules.h"

namespace zlpr::v1 {
namespace {

constexpr int64_t kMaxDim = kMaxMatrixDim;

void SetShape(int64_t rows, int64_t cols, Tensor* t) {
  t->clear_shape();
  t->add_shape(rows);
  t->add_shape(cols);
}

// "FLOAT32, FLOAT16 or BFLOAT16".
std::string TypeList(std::initializer_list<DType> allowed) {
  std::vector<std::string> names;
  for (DType d : allowed) names.push_back(DType_Name(d));
  if (names.size() == 1) return names.front();
  const std::string last = names.back();
  names.pop_back();
  return absl::StrCat(absl::StrJoin(names, ", "), " or ", last);
}

size_t ElementBytes(DType dtype) {
  switch (dtype) {
    case FLOAT32:
      return 4;
    case FLOAT16:
    case BFLOAT16:
      return 2;
    default:
      return 1;
  }
}

}  // namespace

DType ToWire(zlpr::DType dtype) {
  switch (dtype) {
    case zlpr::DType::kFloat32:
      return FLOAT32;
    case zlpr::DType::kFloat16:
      return FLOAT16;
    case zlpr::DType::kBFloat16:
      return BFLOAT16;
  }
  return DTYPE_UNSPECIFIED;
}

std::optional<zlpr::DType> FromWire(DType dtype) {
  switch (dtype) {
    case FLOAT32:
      return zlpr::DType::kFloat32;
    case FLOAT16:
      return zlpr::DType::kFloat16;
    case BFLOAT16:
      return zlpr::DType::kBFloat16;
    default:
      return std::nullopt;
  }
}

void EncodeMatrix(std::span<const float> values, int64_t rows, int64_t cols, zlpr::DType dtype,
                  Tensor* t) {
  std::string bytes(values.size() * zlpr::DTypeSize(dtype), '\0');
  NarrowFromFloat(values.data(), static_cast<int64_t>(values.size()), dtype, bytes.data());
  EncodeMatrixBytes(std::move(bytes), rows, cols, dtype, t);
}

void EncodeMatrixBytes(std::string bytes, int64_t rows, int64_t cols, zlpr::DType dtype,
                       Tensor* t) {
  SetShape(rows, cols, t);
  t->set_dtype(ToWire(dtype));
  t->set_data(std::move(bytes));
}

void EncodeMask(std::span<const uint8_t> mask, int64_t rows, int64_t cols, Tensor* t) {
  SetShape(rows, cols, t);
  t->set_dtype(UINT8);
  t->set_data(reinterpret_cast<const char*>(mask.data()), mask.size());
}

void EncodeVector(std::span<const float> values, Tensor* t) {
  t->clear_shape();
  t->add_shape(static_cast<int64_t>(values.size()));
  t->set_dtype(FLOAT32);
  t->set_data(reinterpret_cast<const char*>(values.data()), values.size_bytes());
}

std::string ShapeString(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

absl::StatusOr<MatrixBytes> CheckMatrix(const Tensor& t, std::string_view field,
                                        std::initializer_list<DType> allowed) {
  bool type_ok = false;
  for (DType d : allowed) type_ok = type_ok || t.dtype() == d;
  if (!type_ok) {
    if (t.dtype() == DTYPE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.dtype is unset: use %s", field, TypeList(allowed)));
    }
    return absl::InvalidArgumentError(absl::StrFormat("%s.dtype %s is not allowed: use %s", field,
                                                      DType_Name(t.dtype()), TypeList(allowed)));
  }
  const size_t elem = ElementBytes(t.dtype());
  uint64_t want = 0;
  switch (CheckMatrixShape({t.shape().data(), static_cast<size_t>(t.shape_size())}, elem,
                           t.data().size(), &want)) {
    case MatrixProblem::kNotTwoDimensions:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s.shape %s must have two dimensions [rows, cols]", field, ShapeString(t)));
    case MatrixProblem::kDimensionRange:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s.shape %s must have 1 to %d rows and columns", field, ShapeString(t), kMaxDim));
    case MatrixProblem::kByteCount:
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.data has %d bytes, expected %d x %d x %d = %d", field,
                          t.data().size(), t.shape(0), t.shape(1), elem, want));
    case MatrixProblem::kNone:
      break;
  }
  return MatrixBytes{t.data().data(), t.dtype(), t.shape(0), t.shape(1)};
}

absl::StatusOr<std::vector<float>> DecodeFloats(const Tensor& t, std::string_view field) {
  const std::optional<zlpr::DType> dtype = FromWire(t.dtype());
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.dtype %s is not a float type: use FLOAT32, FLOAT16 or BFLOAT16", field,
                        DType_Name(t.dtype())));
  }
  uint64_t elements = 1;
  for (int64_t d : t.shape()) {
    if (d < 0 || d > kMaxDim) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.shape %s has a dimension out of range", field, ShapeString(t)));
    }
    elements *= static_cast<uint64_t>(d);
    if (elements > (uint64_t{1} << 62)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.shape %s is too large", field, ShapeString(t)));
    }
  }
  const size_t elem = zlpr::DTypeSize(*dtype);
  if (t.data().size() != elements * elem) {
    return absl::InvalidArgumentError(absl::StrFormat("%s.data has %d bytes, expected %d x %d",
                                                      field, t.data().size(), elements, elem));
  }
  std::vector<float> out(elements);
  WidenToFloat(t.data().data(), static_cast<int64_t>(elements), *dtype, out.data());
  return out;
}

}  // namespace zlpr::v1
