// Validation: a fast per-row "is anything wrong" scan (parallel over rows), then a slow scan of
// the first bad row to say exactly what and where.
#include "kernels/validate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu_simd.h"

namespace zlpr::internal {
namespace {

constexpr int64_t kRowsPerTask = 64;
constexpr int64_t kMaxCols = std::numeric_limits<int32_t>::max();

// Runs row_ok(r) over all rows and returns the first row for which it is false, or -1.
template <typename RowOk>
int64_t FirstBadRow(int64_t rows, ThreadPool* pool, const RowOk& row_ok) {
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  auto task = [&](int64_t t) {
    const int64_t r0 = t * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
    for (int64_t r = r0; r < r1 && r < first_bad.load(std::memory_order_relaxed); ++r) {
      if (!row_ok(r)) {
        int64_t cur = first_bad.load();
        while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
        }
        return;
      }
    }
  };
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  if (pool != nullptr) {
    pool->ParallelFor(tasks, task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t);
  }
  const int64_t bad = first_bad.load();
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

// Widens row r of `m` into `buf` unless it is fp32 already; returns the fp32 row.
const float* RowAsFloat(const MatrixView& m, int64_t r, std::vector<float>& buf) {
  if (m.dtype == DType::kFloat32) return static_cast<const float*>(m.data) + r * m.cols;
  buf.resize(static_cast<size_t>(m.cols));
  WidenToFloat(ElementAt(m.data, m.dtype, r * m.cols), m.cols, m.dtype, buf.data());
  return buf.data();
}

bool ScoresRowOk(const float* s, int64_t n) { return ScoresOk(s, static_cast<size_t>(n)); }
bool LabelsRowOk(const float* t, int64_t n) { return LabelsOk(t, static_cast<size_t>(n)); }

bool MaskRowOk(const uint8_t* m, int64_t n) {
  uint8_t acc = 0;
  for (int64_t i = 0; i < n; ++i) acc |= m[i];
  return acc <= 1;
}

std::string FormatFloat(float v) { return absl::StrFormat("%.9g", v); }

absl::Status CheckShape(const MatrixView& m, const char* field) {
  if (m.rows < 1 || m.cols < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: shape [%d, %d] must have at least one row and one column", field, m.rows, m.cols));
  }
  if (m.cols > kMaxCols || m.rows > kMaxCols) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: shape [%d, %d] is too large (at most %d rows and %d columns)", field,
                        m.rows, m.cols, kMaxCols, kMaxCols));
  }
  if (m.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": no data"));
  }
  return absl::OkStatus();
}

absl::Status CheckScores(const MatrixView& scores, ThreadPool* pool) {
  const int64_t bad = FirstBadRow(scores.rows, pool, [&](int64_t r) {
    thread_local std::vector<float> buf;
    return ScoresRowOk(RowAsFloat(scores, r, buf), scores.cols);
  });
  if (bad < 0) return absl::OkStatus();
  std::vector<float> buf;
  const float* s = RowAsFloat(scores, bad, buf);
  for (int64_t c = 0; c < scores.cols; ++c) {
    if (std::isnan(s[c])) {
      return absl::InvalidArgumentError(absl::StrFormat("scores[%d, %d] is NaN", bad, c));
    }
    if (s[c] == std::numeric_limits<float>::infinity()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "scores[%d, %d] is +inf (only -inf, which excludes an entry, is allowed)", bad, c));
    }
  }
  return absl::InternalError("scores: inconsistent validation");
}

absl::Status CheckMask(const uint8_t* mask, int64_t rows, int64_t cols, ThreadPool* pool) {
  if (mask == nullptr) return absl::OkStatus();
  const int64_t bad =
      FirstBadRow(rows, pool, [&](int64_t r) { return MaskRowOk(mask + r * cols, cols); });
  if (bad < 0) return absl::OkStatus();
  for (int64_t c = 0; c < cols; ++c) {
    const uint8_t v = mask[bad * cols + c];
    if (v > 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("mask[%d, %d] = %d must be 0 or 1", bad, c, v));
    }
  }
  return absl::InternalError("mask: inconsistent validation");
}

std::string LabelProblem(float v) {
  return std::isnan(v) ? std::string("is NaN")
                       : absl::StrCat("= ", FormatFloat(v), " is outside [0, 1]");
}

absl::Status CheckDenseLabels(const MatrixView& labels, const MatrixView& scores,
                              ThreadPool* pool) {
  if (labels.rows != scores.rows || labels.cols != scores.cols) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dense_labels: shape [%d, %d] does not match scores [%d, %d]", labels.rows,
                        labels.cols, scores.rows, scores.cols));
  }
  if (labels.data == nullptr) return absl::InvalidArgumentError("dense_labels: no data");
  const int64_t bad = FirstBadRow(labels.rows, pool, [&](int64_t r) {
    thread_local std::vector<float> buf;
    return LabelsRowOk(RowAsFloat(labels, r, buf), labels.cols);
  });
  if (bad < 0) return absl::OkStatus();
  std::vector<float> buf;
  const float* t = RowAsFloat(labels, bad, buf);
  for (int64_t c = 0; c < labels.cols; ++c) {
    if (!(t[c] >= 0.0f && t[c] <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("dense_labels[%d, %d] %s", bad, c, LabelProblem(t[c])));
    }
  }
  return absl::InternalError("dense_labels: inconsistent validation");
}

absl::Status CheckSparseLabels(const SparseLabelsView& sp, int64_t rows, int64_t cols) {
  const auto& splits = sp.row_splits;
  const int64_t nnz = static_cast<int64_t>(sp.indices.size());
  if (static_cast<int64_t>(splits.size()) != rows + 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sparse_labels.row_splits has %d entries, expected rows + 1 = %d",
                        splits.size(), rows + 1));
  }
  if (splits[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sparse_labels.row_splits[0] = %d, expected 0", splits[0]));
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (splits[r + 1] < splits[r]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "sparse_labels.row_splits[%d] = %d is less than row_splits[%d] = %d (row %d)", r + 1,
          splits[r + 1], r, splits[r], r));
    }
  }
  if (splits[rows] != nnz) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sparse_labels.row_splits[%d] = %d does not match the %d indices", rows,
                        splits[rows], nnz));
  }
  if (!sp.values.empty() && static_cast<int64_t>(sp.values.size()) != nnz) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sparse_labels.values has %d entries, expected 0 or %d (one per index)",
                        sp.values.size(), nnz));
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = splits[r]; k < splits[r + 1]; ++k) {
      const int64_t c = sp.indices[k];
      if (c < 0 || c >= cols) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "sparse_labels.indices[%d] (row %d) = %d is out of range [0, %d)", k, r, c, cols));
      }
      if (k > splits[r] && c <= sp.indices[k - 1]) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "sparse_labels.indices[%d] (row %d, column %d) is not greater than the previous "
            "index %d: indices must be strictly increasing within a row",
            k, r, c, sp.indices[k - 1]));
      }
      if (!sp.values.empty()) {
        const float v = sp.values[k];
        if (!(v >= 0.0f && v <= 1.0f)) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "sparse_labels.values[%d] (row %d, column %d) %s", k, r, c, LabelProblem(v)));
        }
      }
    }
  }
  return absl::OkStatus();
}

bool ThresholdOk(float t) { return t > 0.0f && t < 1.0f; }

absl::Status ValidateScoresAndMask(const MatrixView& scores, const uint8_t* mask,
                                   ThreadPool* pool) {
  if (absl::Status st = CheckShape(scores, "scores"); !st.ok()) return st;
  if (absl::Status st = CheckScores(scores, pool); !st.ok()) return st;
  return CheckMask(mask, scores.rows, scores.cols, pool);
}

}  // namespace

absl::StatusOr<ValidatedLossInput> Validator::Loss(const LossInput& input, ThreadPool* pool) {
  if (absl::Status st = ValidateScoresAndMask(input.scores, input.mask, pool); !st.ok()) {
    return st;
  }
  absl::Status st;
  if (const auto* dense = std::get_if<MatrixView>(&input.labels)) {
    st = CheckDenseLabels(*dense, input.scores, pool);
  } else {
    st = CheckSparseLabels(std::get<SparseLabelsView>(input.labels), input.scores.rows,
                           input.scores.cols);
  }
  if (!st.ok()) return st;
  return ValidatedLossInput(input);
}

absl::StatusOr<ValidatedLabelerInput> Validator::Labeler(const LabelerInput& input,
                                                         ThreadPool* pool) {
  if (absl::Status st = ValidateScoresAndMask(input.scores, input.mask, pool); !st.ok()) {
    return st;
  }
  const LabelerOptions& o = input.options;
  if (o.label_thresholds != nullptr) {
    for (int64_t c = 0; c < input.scores.cols; ++c) {
      if (!ThresholdOk(o.label_thresholds[c])) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "label_thresholds[%d] = %s must be in (0, 1)", c, FormatFloat(o.label_thresholds[c])));
      }
    }
  } else if (!ThresholdOk(o.threshold)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("threshold = %s must be in (0, 1)", FormatFloat(o.threshold)));
  }
  // A row has `cols` labels at most: a larger cap or top-up selects exactly what `cols` does.
  LabelerInput normalised = input;
  const auto cols = static_cast<uint64_t>(input.scores.cols);
  normalised.options.top_k = static_cast<uint32_t>(std::min<uint64_t>(o.top_k, cols));
  normalised.options.min_labels = static_cast<uint32_t>(std::min<uint64_t>(o.min_labels, cols));
  return ValidatedLabelerInput(normalised);
}

float ScoreThreshold(float theta) {
  const double z = 0.5 * std::log(static_cast<double>(theta) / (1.0 - theta));
  float f = static_cast<float>(z);
  if (static_cast<double>(f) > z) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

}  // namespace zlpr::internal

namespace zlpr {

absl::StatusOr<ValidatedLossInput> ValidateLossInput(const LossInput& input) {
  return internal::Validator::Loss(input, nullptr);
}
absl::StatusOr<ValidatedLabelerInput> ValidateLabelerInput(const LabelerInput& input) {
  return internal::Validator::Labeler(input, nullptr);
}

absl::Status Backend::Loss(const LossInput& input, const LossOutput& out) {
  absl::StatusOr<ValidatedLossInput> valid = internal::Validator::Loss(input, validation_pool());
  if (!valid.ok()) return valid.status();
  return Loss(*valid, out);
}

absl::Status Backend::Label(const LabelerInput& input, LabelSets* out, float* probs) {
  absl::StatusOr<ValidatedLabelerInput> valid =
      internal::Validator::Labeler(input, validation_pool());
  if (!valid.ok()) return valid.status();
  return Label(*valid, out, probs);
}

}  // namespace zlpr
