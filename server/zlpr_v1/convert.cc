// zlpr.v1 requests to jobs (tensor checks through the codec, then the kernels' validators) and
// results to responses.
#include "server/zlpr_v1/convert.h"

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/tensor_rules.h"
#include "zlpr/v1/tensor.h"

namespace zlpr::server {
namespace {

constexpr std::initializer_list<v1::DType> kFloatTypes = {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16};

absl::StatusOr<MatrixView> FloatMatrix(const v1::Tensor& t, const char* field) {
  ZLPR_ASSIGN_OR_RETURN(const v1::MatrixBytes m, v1::CheckMatrix(t, field, kFloatTypes));
  return MatrixView{m.data, *v1::FromWire(m.dtype), m.rows, m.cols};
}

std::span<const int64_t> ShapeOf(const v1::Tensor& t) {
  return {t.shape().data(), static_cast<size_t>(t.shape_size())};
}

absl::StatusOr<const uint8_t*> Mask(const v1::Tensor& t, const MatrixView& scores) {
  ZLPR_ASSIGN_OR_RETURN(const v1::MatrixBytes m, v1::CheckMatrix(t, "mask", {v1::UINT8}));
  if (!MaskMatches(ShapeOf(t), t.data().size(), scores.rows, scores.cols)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("mask.shape %s does not match scores [%d, %d]", v1::ShapeString(t),
                        scores.rows, scores.cols));
  }
  return reinterpret_cast<const uint8_t*>(m.data);
}

// The gradient's element type (FLOAT32 when unset).
absl::StatusOr<DType> GradDType(v1::DType wire) {
  if (wire == v1::DTYPE_UNSPECIFIED) return DType::kFloat32;
  if (const std::optional<DType> d = v1::FromWire(wire)) return *d;
  return absl::InvalidArgumentError(absl::StrFormat(
      "grad.dtype %s is not allowed: use FLOAT32, FLOAT16 or BFLOAT16", v1::DType_Name(wire)));
}

absl::StatusOr<const float*> LabelThresholds(const v1::Tensor& t, int64_t cols) {
  if (t.dtype() != v1::FLOAT32) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "label_thresholds.dtype %s is not allowed: use FLOAT32", v1::DType_Name(t.dtype())));
  }
  int64_t row = 0;
  switch (CheckThresholds(ShapeOf(t), t.data(), cols, &row)) {
    case ThresholdsProblem::kShape:
      return absl::InvalidArgumentError(absl::StrFormat(
          "label_thresholds.shape %s (%d bytes) must be [%d] or [n, %d] of FLOAT32 (one per "
          "column)",
          v1::ShapeString(t), t.data().size(), cols, cols));
    case ThresholdsProblem::kRowsDiffer:
      return absl::InvalidArgumentError(absl::StrFormat(
          "label_thresholds: row %d differs from row 0: the thresholds are per column, the same "
          "for every row",
          row));
    case ThresholdsProblem::kNone:
      break;
  }
  return reinterpret_cast<const float*>(t.data().data());
}

void SetTiming(const Timing& t, v1::Timing* out) {
  out->set_queue_seconds(t.queue_seconds);
  out->set_compute_seconds(t.compute_seconds);
  out->set_batch_rows(static_cast<uint32_t>(t.batch_rows));
}

}  // namespace

absl::StatusOr<std::optional<Priority>> PriorityOf(int priority) {
  switch (priority) {
    case v1::PRIORITY_DEFAULT:
      return std::nullopt;
    case v1::PRIORITY_INTERACTIVE:
      return Priority::kInteractive;
    case v1::PRIORITY_BULK:
      return Priority::kBulk;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "priority = %d is not a Priority (0 the operation's default, 1 interactive, 2 bulk)",
          priority));
  }
}

absl::StatusOr<LossJob> LossJobFromRequest(const v1::LossRequest& request) {
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
  ZLPR_ASSIGN_OR_RETURN(const DType grad_dtype, GradDType(request.grad_dtype()));
  ZLPR_ASSIGN_OR_RETURN(ValidatedLossInput valid, ValidateLossInput(in));
  return LossJob{.input = valid, .want_grad = request.want_grad(), .grad_dtype = grad_dtype};
}

absl::StatusOr<PredictJob> PredictJobFromRequest(const v1::PredictRequest& request) {
  LabelerInput in;
  if (!request.has_scores()) return absl::InvalidArgumentError("scores: missing");
  ZLPR_ASSIGN_OR_RETURN(in.scores, FloatMatrix(request.scores(), "scores"));
  if (request.has_mask()) {
    ZLPR_ASSIGN_OR_RETURN(in.mask, Mask(request.mask(), in.scores));
  }
  in.options.threshold = request.has_threshold() ? request.threshold() : 0.5f;
  if (request.has_label_thresholds()) {
    ZLPR_ASSIGN_OR_RETURN(in.options.label_thresholds,
                          LabelThresholds(request.label_thresholds(), in.scores.cols));
  }
  in.options.top_k = request.top_k();
  in.options.min_labels = request.min_labels();
  ZLPR_ASSIGN_OR_RETURN(ValidatedLabelerInput valid, ValidateLabelerInput(in));
  return PredictJob{.input = valid, .want_probs = request.want_probs()};
}

namespace {

// Field framing: a tag and a length prefix of at most 1 + 10 bytes, for every field; the
// fixed-size fields (sums, timing, shapes, dtype) fit in this slack too.
constexpr int64_t kFraming = 11;
constexpr int64_t kSlack = 160;

int64_t TensorBytes(int64_t rows, int64_t cols, DType dtype) {
  return 4 * kFraming + rows * cols * static_cast<int64_t>(DTypeSize(dtype));
}

}  // namespace

int64_t DenseResponseBytes(const LossJob& job, size_t request_id_bytes) {
  const int64_t rows = job.rows();
  int64_t bytes = kSlack + kFraming + static_cast<int64_t>(request_id_bytes) + kFraming + 4 * rows;
  if (job.want_grad) bytes += kFraming + TensorBytes(rows, job.input.cols(), job.grad_dtype);
  return bytes;
}

int64_t DenseResponseBytes(const PredictJob& job, size_t request_id_bytes) {
  const int64_t rows = job.rows();
  // Each row's RowLabels message costs its framing even when it holds no label.
  int64_t bytes = kSlack + kFraming + static_cast<int64_t>(request_id_bytes) + 2 * rows;
  if (job.want_probs) bytes += kFraming + TensorBytes(rows, job.input.cols(), DType::kFloat32);
  return bytes;
}

void FillResponse(LossResult result, v1::LossResponse* response) {
  const int64_t rows = static_cast<int64_t>(result.loss.size());
  response->mutable_loss()->Assign(result.loss.begin(), result.loss.end());
  response->set_loss_sum(result.loss_sum);
  response->set_loss_mean(result.loss_mean);
  if (!result.grad.empty()) {
    v1::EncodeMatrixBytes(std::move(result.grad), rows, result.cols, result.grad_dtype,
                          response->mutable_grad());
  }
  SetTiming(result.timing, response->mutable_timing());
}

void FillResponse(PredictResult result, v1::PredictResponse* response) {
  const LabelSets& ls = result.labels;
  const int64_t rows = static_cast<int64_t>(ls.row_offsets.size()) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    v1::RowLabels* row = response->add_rows();
    const int64_t b = ls.row_offsets[r], e = ls.row_offsets[r + 1];
    row->mutable_labels()->Assign(ls.labels.begin() + b, ls.labels.begin() + e);
    row->mutable_probs()->Assign(ls.probs.begin() + b, ls.probs.begin() + e);
  }
  if (!result.probs.empty()) {
    v1::EncodeMatrixBytes(std::move(result.probs), rows, result.cols, DType::kFloat32,
                          response->mutable_probs());
  }
  SetTiming(result.timing, response->mutable_timing());
}

}  // namespace zlpr::server
