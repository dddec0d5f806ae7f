// Structural checks of zlpr.v1 tensors, then the kernels' value checks.
#include "server/convert.h"

#include <limits>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace zlpr::server {
namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

std::string ShapeString(const v1::Tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.shape_size(); ++i) absl::StrAppendFormat(&s, i ? ", %d" : "%d", t.shape(i));
  return s + "]";
}

absl::StatusOr<DType> FloatDType(v1::DType dtype, const char* field) {
  switch (dtype) {
    case v1::FLOAT32:
      return DType::kFloat32;
    case v1::FLOAT16:
      return DType::kFloat16;
    case v1::BFLOAT16:
      return DType::kBFloat16;
    case v1::DTYPE_UNSPECIFIED:
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.dtype is unset: use FLOAT32, FLOAT16 or BFLOAT16", field));
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.dtype %s is not allowed: use FLOAT32, FLOAT16 or BFLOAT16", field,
                          v1::DType_Name(dtype)));
  }
}

// A [rows, cols] tensor whose data holds exactly rows * cols elements of `elem_bytes`.
absl::Status CheckMatrix(const v1::Tensor& t, const char* field, size_t elem_bytes) {
  if (t.shape_size() != 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.shape %s must have two dimensions [rows, cols]", field, ShapeString(t)));
  }
  const int64_t rows = t.shape(0), cols = t.shape(1);
  if (rows < 1 || cols < 1 || rows > kMaxDim || cols > kMaxDim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.shape %s must have 1 to %d rows and columns", field, ShapeString(t), kMaxDim));
  }
  const uint64_t want = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) * elem_bytes;
  if (t.data().size() != want) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.data has %d bytes, expected %d x %d x %d = %d", field, t.data().size(),
                        rows, cols, elem_bytes, want));
  }
  return absl::OkStatus();
}

absl::StatusOr<MatrixView> FloatMatrix(const v1::Tensor& t, const char* field) {
  ZLPR_ASSIGN_OR_RETURN(const DType dtype, FloatDType(t.dtype(), field));
  ZLPR_RETURN_IF_ERROR(CheckMatrix(t, field, DTypeSize(dtype)));
  return MatrixView{t.data().data(), dtype, t.shape(0), t.shape(1)};
}

absl::StatusOr<const uint8_t*> Mask(const v1::Tensor& t, const MatrixView& scores) {
  if (t.dtype() != v1::UINT8) {
    return absl::InvalidArgumentError(
        absl::StrFormat("mask.dtype %s is not allowed: use UINT8", v1::DType_Name(t.dtype())));
  }
  ZLPR_RETURN_IF_ERROR(CheckMatrix(t, "mask", 1));
  if (t.shape(0) != scores.rows || t.shape(1) != scores.cols) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "mask.shape %s does not match scores [%d, %d]", ShapeString(t), scores.rows, scores.cols));
  }
  return reinterpret_cast<const uint8_t*>(t.data().data());
}

}  // namespace

absl::StatusOr<DType> GradDType(const v1::LossRequest& request) {
  if (request.grad_dtype() == v1::DTYPE_UNSPECIFIED) return DType::kFloat32;
  return FloatDType(request.grad_dtype(), "grad");
}

absl::StatusOr<LossInput> LossInputFromRequest(const v1::LossRequest& request) {
  LossInput in;
  if (!request.has_scores()) return absl::InvalidArgumentError("scores: missing");
  ZLPR_ASSIGN_OR_RETURN(in.scores, FloatMatrix(request.scores(), "scores"));
  switch (request.labels_case()) {
    case v1::LossRequest::kDenseLabels: {
      ZLPR_ASSIGN_OR_RETURN(in.labels, FloatMatrix(request.dense_labels(), "dense_labels"));
      break;
    }
    case v1::LossRequest::kSparseLabels: {
      const v1::SparseLabels& sp = request.sparse_labels();
      in.labels =
          SparseLabelsView{{sp.row_splits().data(), static_cast<size_t>(sp.row_splits_size())},
                           {sp.indices().data(), static_cast<size_t>(sp.indices_size())},
                           {sp.values().data(), static_cast<size_t>(sp.values_size())}};
      break;
    }
    default:
      return absl::InvalidArgumentError("labels: missing: set dense_labels or sparse_labels");
  }
  if (request.has_mask()) {
    ZLPR_ASSIGN_OR_RETURN(in.mask, Mask(request.mask(), in.scores));
  }
  ZLPR_RETURN_IF_ERROR(GradDType(request).status());
  ZLPR_RETURN_IF_ERROR(ValidateLossInput(in));
  in.validated = true;
  return in;
}

absl::StatusOr<PredictInput> PredictInputFromRequest(const v1::PredictRequest& request) {
  PredictInput out;
  LabelerInput& in = out.labeler;
  if (!request.has_scores()) return absl::InvalidArgumentError("scores: missing");
  ZLPR_ASSIGN_OR_RETURN(in.scores, FloatMatrix(request.scores(), "scores"));
  if (request.has_mask()) {
    ZLPR_ASSIGN_OR_RETURN(in.mask, Mask(request.mask(), in.scores));
  }
  in.options.threshold = request.has_threshold() ? request.threshold() : 0.5f;
  if (request.has_label_thresholds()) {
    const v1::Tensor& t = request.label_thresholds();
    const int64_t cols = in.scores.cols;
    const bool shape_ok = (t.shape_size() == 1 && t.shape(0) == cols) ||
                          (t.shape_size() == 2 && t.shape(0) == 1 && t.shape(1) == cols);
    if (!shape_ok) {
      return absl::InvalidArgumentError(
          absl::StrFormat("label_thresholds.shape %s must be [%d] or [1, %d] (one per column)",
                          ShapeString(t), cols, cols));
    }
    if (t.dtype() != v1::FLOAT32) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "label_thresholds.dtype %s is not allowed: use FLOAT32", v1::DType_Name(t.dtype())));
    }
    if (t.data().size() != static_cast<size_t>(cols) * 4) {
      return absl::InvalidArgumentError(
          absl::StrFormat("label_thresholds.data has %d bytes, expected %d x 4 = %d",
                          t.data().size(), cols, cols * 4));
    }
    in.options.label_thresholds = reinterpret_cast<const float*>(t.data().data());
  }
  in.options.top_k = request.top_k();
  in.options.min_labels = request.min_labels();
  out.want_probs = request.want_probs();
  ZLPR_RETURN_IF_ERROR(ValidateLabelerInput(in));
  in.validated = true;
  return out;
}

void FillTensor(std::span<const float> values, int64_t rows, int64_t cols, DType dtype,
                v1::Tensor* tensor) {
  tensor->clear_shape();
  tensor->add_shape(rows);
  tensor->add_shape(cols);
  tensor->set_dtype(ToProto(dtype));
  std::string* data = tensor->mutable_data();
  data->resize(values.size() * DTypeSize(dtype));
  NarrowFromFloat(values.data(), static_cast<int64_t>(values.size()), dtype, data->data());
}

v1::DType ToProto(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::FLOAT32;
    case DType::kFloat16:
      return v1::FLOAT16;
    case DType::kBFloat16:
      return v1::BFLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

}  // namespace zlpr::server
