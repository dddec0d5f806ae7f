// Concatenation of validated inputs: the rows of several requests as one kernel call. Valid
// parts make a valid whole, so the result keeps the ValidatedLossInput / ValidatedLabelerInput
// type without a second scan.
#include <cstring>
#include <tuple>

#include "kernels/validate.h"
#include "kernels/zlpr.h"

namespace zlpr {
namespace {

// Dense labels of one element type, sparse hard, or sparse soft.
int LabelsKind(const LossInput& in) {
  if (const auto* d = std::get_if<MatrixView>(&in.labels)) return static_cast<int>(d->dtype);
  return std::get<SparseLabelsView>(in.labels).values.empty() ? 100 : 101;
}

void AppendBytes(std::vector<char>& dst, const void* src, size_t n) {
  const size_t old = dst.size();
  dst.resize(old + n);
  std::memcpy(dst.data() + old, src, n);
}

size_t MatrixBytes(const MatrixView& m) {
  return static_cast<size_t>(m.rows * m.cols) * DTypeSize(m.dtype);
}

// Appends every part's scores (and masks, when the parts have them) to the buffers; the merged
// scores view and mask of `rows` rows.
template <typename Valid>
std::pair<MatrixView, const uint8_t*> ConcatenateScores(std::span<const Valid* const> parts,
                                                        int64_t rows, ConcatBuffers* buf) {
  const auto& first = (*parts.front())->scores;
  const bool masked = (*parts.front())->mask != nullptr;
  buf->scores.clear();
  buf->mask.clear();
  for (const Valid* p : parts) {
    const MatrixView& s = (*p)->scores;
    AppendBytes(buf->scores, s.data, MatrixBytes(s));
    if (masked) AppendBytes(buf->mask, (*p)->mask, static_cast<size_t>(s.rows * s.cols));
  }
  return {MatrixView{buf->scores.data(), first.dtype, rows, first.cols},
          masked ? reinterpret_cast<const uint8_t*>(buf->mask.data()) : nullptr};
}

template <typename Valid>
absl::Status CheckParts(std::span<const Valid* const> parts, int64_t* rows) {
  if (parts.empty()) return absl::InvalidArgumentError("nothing to concatenate");
  *rows = 0;
  for (const Valid* p : parts) {
    if (!Concatenable(*parts.front(), *p)) {
      return absl::FailedPreconditionError(
          "inputs of different shapes, types or options cannot share a kernel call");
    }
    *rows += p->rows();
  }
  return absl::OkStatus();
}

}  // namespace

bool Concatenable(const ValidatedLossInput& a, const ValidatedLossInput& b) {
  return a.cols() == b.cols() && a->scores.dtype == b->scores.dtype &&
         LabelsKind(a.get()) == LabelsKind(b.get()) && (a->mask != nullptr) == (b->mask != nullptr);
}

bool Concatenable(const ValidatedLabelerInput& a, const ValidatedLabelerInput& b) {
  const LabelerOptions &x = a->options, &y = b->options;
  if (a.cols() != b.cols() || a->scores.dtype != b->scores.dtype ||
      (a->mask != nullptr) != (b->mask != nullptr) || x.top_k != y.top_k ||
      x.min_labels != y.min_labels ||
      (x.label_thresholds != nullptr) != (y.label_thresholds != nullptr)) {
    return false;
  }
  if (x.label_thresholds == nullptr) {
    return std::memcmp(&x.threshold, &y.threshold, sizeof(float)) == 0;
  }
  return std::memcmp(x.label_thresholds, y.label_thresholds,
                     static_cast<size_t>(a.cols()) * sizeof(float)) == 0;
}

absl::StatusOr<ValidatedLossInput> ConcatenateLossInputs(
    std::span<const ValidatedLossInput* const> parts, ConcatBuffers* buf) {
  int64_t rows = 0;
  if (absl::Status st = CheckParts(parts, &rows); !st.ok()) return st;
  if (parts.size() == 1) return *parts.front();
  const LossInput& first = parts.front()->get();
  LossInput in = first;
  std::tie(in.scores, in.mask) = ConcatenateScores(parts, rows, buf);
  if (const auto* dense = std::get_if<MatrixView>(&first.labels)) {
    buf->labels.clear();
    for (const ValidatedLossInput* p : parts) {
      AppendBytes(buf->labels, std::get<MatrixView>((*p)->labels).data,
                  MatrixBytes(std::get<MatrixView>((*p)->labels)));
    }
    in.labels = MatrixView{buf->labels.data(), dense->dtype, rows, first.scores.cols};
  } else {
    buf->row_splits.assign(1, 0);
    buf->indices.clear();
    buf->values.clear();
    for (const ValidatedLossInput* p : parts) {
      const auto& sp = std::get<SparseLabelsView>((*p)->labels);
      const int64_t base = buf->row_splits.back();
      for (size_t r = 1; r < sp.row_splits.size(); ++r) {
        buf->row_splits.push_back(base + sp.row_splits[r]);
      }
      buf->indices.insert(buf->indices.end(), sp.indices.begin(), sp.indices.end());
      buf->values.insert(buf->values.end(), sp.values.begin(), sp.values.end());
    }
    in.labels = SparseLabelsView{buf->row_splits, buf->indices, buf->values};
  }
  return internal::Validator::AlreadyValid(in);
}

absl::StatusOr<ValidatedLabelerInput> ConcatenateLabelerInputs(
    std::span<const ValidatedLabelerInput* const> parts, ConcatBuffers* buf) {
  int64_t rows = 0;
  if (absl::Status st = CheckParts(parts, &rows); !st.ok()) return st;
  if (parts.size() == 1) return *parts.front();
  LabelerInput in = parts.front()->get();
  std::tie(in.scores, in.mask) = ConcatenateScores(parts, rows, buf);
  return internal::Validator::AlreadyValid(in);
}

namespace {

MatrixView SliceMatrix(const MatrixView& m, int64_t begin, int64_t end) {
  MatrixView out = m;
  out.data =
      static_cast<const char*>(m.data) + static_cast<size_t>(begin * m.cols) * DTypeSize(m.dtype);
  out.rows = end - begin;
  return out;
}

const uint8_t* SliceMask(const uint8_t* mask, int64_t begin, int64_t cols) {
  return mask == nullptr ? nullptr : mask + begin * cols;
}

}  // namespace

ValidatedLossInput SliceRows(const ValidatedLossInput& valid, int64_t begin, int64_t end,
                             ConcatBuffers* buf) {
  LossInput in = valid.get();
  const int64_t cols = valid.cols();
  in.scores = SliceMatrix(in.scores, begin, end);
  in.mask = SliceMask(in.mask, begin, cols);
  if (const auto* dense = std::get_if<MatrixView>(&in.labels)) {
    in.labels = SliceMatrix(*dense, begin, end);
  } else {
    const auto& sp = std::get<SparseLabelsView>(in.labels);
    const int64_t first = sp.row_splits[begin], last = sp.row_splits[end];
    buf->row_splits.resize(static_cast<size_t>(end - begin + 1));
    for (int64_t r = begin; r <= end; ++r) buf->row_splits[r - begin] = sp.row_splits[r] - first;
    in.labels =
        SparseLabelsView{buf->row_splits, sp.indices.subspan(first, last - first),
                         sp.values.empty() ? sp.values : sp.values.subspan(first, last - first)};
  }
  return internal::Validator::AlreadyValid(in);
}

ValidatedLabelerInput SliceRows(const ValidatedLabelerInput& valid, int64_t begin, int64_t end) {
  LabelerInput in = valid.get();
  in.scores = SliceMatrix(in.scores, begin, end);
  in.mask = SliceMask(in.mask, begin, valid.cols());
  return internal::Validator::AlreadyValid(in);
}

}  // namespace zlpr
