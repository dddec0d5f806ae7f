// The CPU backend: rows (and fixed-size column chunks of long rows) spread over a thread pool,
// each chunk run through the SIMD loops of cpu_simd.cc.
//
// Batch invariance and determinism come from the chunking: a row is always cut into the same
// kChunk-column pieces (a function of the column count alone), each piece is reduced by the
// same SIMD code whichever thread runs it, and the pieces' partial states are merged in column
// order. Single-chunk rows finish inside one task, so their gradient is scaled while still in
// cache; longer rows finish in a second parallel pass after the per-row merge.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "hwy/targets.h"
#include "kernels/cpu_simd.h"
#include "kernels/thread_pool.h"
#include "kernels/validate.h"
#include "kernels/zlpr.h"

namespace zlpr {
namespace {

using internal::ThreadPool;

constexpr int64_t kChunk = 8192;                 // columns per chunk
constexpr int64_t kElementsPerTask = 32 * 1024;  // short rows are grouped into tasks this big
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Partial log-sum-exp state of one chunk: both terms, each as max (>= 0) and shifted sum.
struct ChunkState {
  float mp = 0, rp = 0, mn = 0, rn = 0;
  bool hard = true;
};

// One log-sum-exp term of a row: LSE({0} ∪ values) = m + log(e^{-m} + r), where m >= 0 is
// the largest value (or 0) and r = Σ e^{v - m}.
struct Lse {
  float m = 0, r = 0;
  float D() const { return std::exp(-m) + r; }
  // With m = 0, log1p(r) keeps the precision of small losses that log(1 + r) would lose.
  float Value() const { return m == 0.0f ? std::log1p(r) : m + std::log(D()); }
  // e^{mc - LSE}: the factor that turns a chunk's e^{v - mc} into e^{v - LSE}. Computed from
  // D() rather than from the rounded LSE, whose absolute error grows with m.
  float Scale(float mc) const { return std::exp(mc - m) / D(); }
  // Merges a chunk's (mc, rc); chunks are merged in column order.
  void Add(float mc, float rc) {
    const float nm = std::max(m, mc);
    r = r * std::exp(m - nm) + rc * std::exp(mc - nm);
    m = nm;
  }
};

struct RowTotals {
  Lse p, n;
  float loss = 0;
};

RowTotals MergeRow(const ChunkState* states, int64_t n) {
  RowTotals t;
  for (int64_t k = 0; k < n; ++k) {
    t.p.Add(states[k].mp, states[k].rp);
    t.n.Add(states[k].mn, states[k].rn);
  }
  t.loss = t.p.Value() + t.n.Value();
  return t;
}

// A row total below this can only come from subnormal labels: a label >= 2^-126 on the entry
// that sets a term's maximum keeps that term's total D >= 2^-126 (and 1 - t >= 2^-24 keeps the
// negative one above that). Scaling the gradient by 1/D would then overflow, so such rows are
// evaluated exactly instead (ExactRow).
constexpr float kMinRowTotal = 1e-30f;

bool NeedsExactRow(const RowTotals& t) { return t.p.D() < kMinRowTotal || t.n.D() < kMinRowTotal; }

// One LSE term in double, online from the appended zero (docs/MATH.md, "Stable evaluation").
struct ExactLse {
  double m = 0, r = 1;
  void Add(double v) {
    if (v > m) {
      r = r * std::exp(m - v) + 1;
      m = v;
    } else {
      r += std::exp(v - m);
    }
  }
  double Value() const { return m + std::log(r); }
};

// Per-thread buffers for widened, masked or densified chunks.
struct Scratch {
  std::vector<float> s, t;
  Scratch() : s(kChunk), t(kChunk) {}
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Row r, columns [c0, c0 + n) of the scores, in fp32 with masked entries at -inf.
const float* LoadScores(const MatrixView& scores, const uint8_t* mask, int64_t r, int64_t c0,
                        int64_t n, float* buf) {
  const int64_t off = r * scores.cols + c0;
  if (scores.dtype == DType::kFloat32 && mask == nullptr) {
    return static_cast<const float*>(scores.data) + off;
  }
  WidenToFloat(ElementAt(scores.data, scores.dtype, off), n, scores.dtype, buf);
  if (mask != nullptr) {
    for (int64_t i = 0; i < n; ++i) buf[i] = mask[off + i] != 0 ? buf[i] : kNegInf;
  }
  return buf;
}

// Row r, columns [c0, c0 + n) of the labels, dense fp32.
const float* LoadLabels(const LossInput& in, int64_t r, int64_t c0, int64_t n, float* buf) {
  if (const auto* dense = std::get_if<MatrixView>(&in.labels)) {
    const int64_t off = r * dense->cols + c0;
    const float* t = static_cast<const float*>(dense->data) + off;
    if (dense->dtype != DType::kFloat32) {
      WidenToFloat(ElementAt(dense->data, dense->dtype, off), n, dense->dtype, buf);
      t = buf;
    }
    return t;
  }
  const auto& sp = std::get<SparseLabelsView>(in.labels);
  std::fill(buf, buf + n, 0.0f);
  const int32_t* first = sp.indices.data() + sp.row_splits[r];
  const int32_t* last = sp.indices.data() + sp.row_splits[r + 1];
  const int32_t* it = std::lower_bound(first, last, static_cast<int32_t>(c0));
  for (; it != last && *it < c0 + n; ++it) {
    buf[*it - c0] = sp.values.empty() ? 1.0f : sp.values[it - sp.indices.data()];
  }
  return buf;
}

struct ChunkRef {
  const float* s;
  const float* t;
};

ChunkRef LoadChunk(const LossInput& in, int64_t r, int64_t c0, int64_t n) {
  Scratch& scratch = ThreadScratch();
  return {LoadScores(in.scores, in.mask, r, c0, n, scratch.s.data()),
          LoadLabels(in, r, c0, n, scratch.t.data())};
}

// The reduction pass of one chunk; with `e` set (hard labels), keeps each entry's exp there.
ChunkState ReduceChunk(const ChunkRef& c, int64_t n, float* e) {
  ChunkState st;
  st.hard = internal::ChunkMax(c.s, c.t, n, &st.mp, &st.mn);
  if (st.hard) {
    internal::ChunkSumsHard(c.s, c.t, n, st.mp, st.mn, e, &st.rp, &st.rn);
  } else {
    internal::ChunkSumsSoft(c.s, c.t, n, st.mp, st.mn, &st.rp, &st.rn);
  }
  return st;
}

// Row r in double with log t folded into each exponent (x = -s + log t, y = s + log(1 - t)), for
// the rows NeedsExactRow picks: their fp32 totals are too small to scale by. Writes the loss
// and, when `grad` is set, the row's gradient.
void ExactRow(const LossInput& in, int64_t r, float* loss, float* grad) {
  const int64_t cols = in.scores.cols;
  std::vector<float> s(static_cast<size_t>(cols)), t(static_cast<size_t>(cols));
  for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
    const int64_t n = std::min(kChunk, cols - c0);
    const ChunkRef c = LoadChunk(in, r, c0, n);
    std::copy(c.s, c.s + n, s.begin() + c0);
    std::copy(c.t, c.t + n, t.begin() + c0);
  }
  ExactLse p, q;
  for (int64_t i = 0; i < cols; ++i) {
    if (s[i] == kNegInf) continue;
    if (t[i] > 0.0f) p.Add(-static_cast<double>(s[i]) + std::log(static_cast<double>(t[i])));
    if (t[i] < 1.0f) q.Add(static_cast<double>(s[i]) + std::log1p(-static_cast<double>(t[i])));
  }
  const double pv = p.Value(), nv = q.Value();
  *loss = static_cast<float>(pv + nv);
  if (grad == nullptr) return;
  for (int64_t i = 0; i < cols; ++i) {
    double g = 0;
    if (s[i] != kNegInf) {
      const double si = s[i], ti = t[i];
      if (ti < 1.0) g += std::exp(si + std::log1p(-ti) - nv);
      if (ti > 0.0) g -= std::exp(-si + std::log(ti) - pv);
    }
    grad[i] = static_cast<float>(g);
  }
}

void GradChunk(const ChunkRef& c, int64_t n, const ChunkState& st, const RowTotals& tot, float* g) {
  const float sp = tot.p.Scale(st.mp), sn = tot.n.Scale(st.mn);
  if (st.hard) {
    internal::ChunkGradHard(c.t, n, sp, sn, g);
  } else {
    internal::ChunkGradSoft(c.s, c.t, n, st.mp, st.mn, sp, sn, g);
  }
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, std::string note) : pool_(threads), note_(std::move(note)) {}

  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string Describe() const override {
    return absl::StrFormat("cpu (%s, %d threads)%s", CpuSimdTarget(), pool_.threads(),
                           note_.empty() ? "" : " (" + note_ + ")");
  }

  std::unique_ptr<Backend> NewLane() const override {
    return std::make_unique<CpuBackend>(pool_.threads(), note_);
  }

  using Backend::Label;
  using Backend::Loss;
  absl::Status Loss(const ValidatedLossInput& valid, const LossOutput& out) override;
  absl::Status Label(const ValidatedLabelerInput& valid, LabelSets* out, float* probs) override;

 protected:
  internal::ThreadPool* validation_pool() override { return &pool_; }

 private:
  // Calls fn(r) for every row, grouping short rows into tasks of about kElementsPerTask.
  template <typename Fn>
  void ForEachRow(int64_t rows, int64_t cols, const Fn& fn) {
    const int64_t per_task = std::max<int64_t>(1, kElementsPerTask / cols);
    const int64_t tasks = (rows + per_task - 1) / per_task;
    pool_.ParallelFor(tasks, [&](int64_t t) {
      const int64_t r1 = std::min(rows, (t + 1) * per_task);
      for (int64_t r = t * per_task; r < r1; ++r) fn(r);
    });
  }

  ThreadPool pool_;
  const std::string note_;
  std::vector<ChunkState> states_;
  std::vector<RowTotals> totals_;
  std::vector<std::vector<int32_t>> row_labels_;
};

absl::Status CpuBackend::Loss(const ValidatedLossInput& valid, const LossOutput& out) {
  const LossInput& in = valid.get();
  const int64_t rows = in.scores.rows, cols = in.scores.cols;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;

  if (chunks == 1) {
    ForEachRow(rows, cols, [&](int64_t r) {
      const ChunkRef c = LoadChunk(in, r, 0, cols);
      float* g = out.grad != nullptr ? out.grad + r * cols : nullptr;
      const ChunkState st = ReduceChunk(c, cols, g);
      const RowTotals tot = MergeRow(&st, 1);
      if (NeedsExactRow(tot)) return ExactRow(in, r, &out.loss[r], g);
      out.loss[r] = tot.loss;
      if (g != nullptr) GradChunk(c, cols, st, tot, g);
    });
    return absl::OkStatus();
  }

  // Long rows: reduce every (row, chunk) in parallel, merge per row in column order, then
  // scale (hard labels) or compute (soft labels) the gradient chunk by chunk.
  const int64_t units = rows * chunks;
  states_.resize(static_cast<size_t>(units));
  totals_.resize(static_cast<size_t>(rows));
  auto chunk_span = [&](int64_t u, int64_t* r, int64_t* c0) {
    *r = u / chunks;
    *c0 = (u % chunks) * kChunk;
    return std::min(kChunk, cols - *c0);
  };
  pool_.ParallelFor(units, [&](int64_t u) {
    int64_t r, c0;
    const int64_t n = chunk_span(u, &r, &c0);
    float* g = out.grad != nullptr ? out.grad + r * cols + c0 : nullptr;
    states_[u] = ReduceChunk(LoadChunk(in, r, c0, n), n, g);
  });
  for (int64_t r = 0; r < rows; ++r) {
    totals_[r] = MergeRow(&states_[r * chunks], chunks);
    out.loss[r] = totals_[r].loss;
  }
  if (out.grad != nullptr) {
    pool_.ParallelFor(units, [&](int64_t u) {
      int64_t r, c0;
      const int64_t n = chunk_span(u, &r, &c0);
      if (NeedsExactRow(totals_[r])) return;
      GradChunk(LoadChunk(in, r, c0, n), n, states_[u], totals_[r], out.grad + r * cols + c0);
    });
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (!NeedsExactRow(totals_[r])) continue;
    ExactRow(in, r, &out.loss[r], out.grad != nullptr ? out.grad + r * cols : nullptr);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Label(const ValidatedLabelerInput& valid, LabelSets* out, float* probs) {
  const LabelerInput& in = valid.get();
  const int64_t rows = in.scores.rows, cols = in.scores.cols;
  const LabelerOptions& opt = in.options;

  std::vector<float> z;  // per-label thresholds in score space
  if (opt.label_thresholds != nullptr) {
    z.resize(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) z[c] = internal::ScoreThreshold(opt.label_thresholds[c]);
  }
  const float z_global = internal::ScoreThreshold(opt.threshold);
  if (row_labels_.size() < static_cast<size_t>(rows)) row_labels_.resize(rows);

  ForEachRow(rows, cols, [&](int64_t r) {
    thread_local std::vector<float> s_buf, top_s;
    thread_local std::vector<int32_t> cand;
    s_buf.resize(static_cast<size_t>(cols));
    const float* s = LoadScores(in.scores, in.mask, r, 0, cols, s_buf.data());
    if (probs != nullptr) internal::Probs(s, static_cast<size_t>(cols), probs + r * cols);
    const float* zp = z.empty() ? nullptr : z.data();
    std::vector<int32_t>& labels = row_labels_[r];

    if (opt.top_k > 0) {
      labels.resize(opt.top_k);
      top_s.resize(opt.top_k);
      labels.resize(internal::TopK(s, zp, z_global, static_cast<size_t>(cols), opt.top_k,
                                   labels.data(), top_s.data()));
    } else {
      cand.resize(static_cast<size_t>(cols) + internal::kCandidatesSlack);
      const size_t n =
          internal::Candidates(s, zp, z_global, static_cast<size_t>(cols), cand.data());
      std::sort(cand.begin(), cand.begin() + n,
                [s](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      labels.assign(cand.begin(), cand.begin() + n);
    }

    if (labels.size() < opt.min_labels) {
      // Top up with the most probable unmasked entries not selected yet: the same top-k over
      // the row with the selected entries taken out.
      if (s != s_buf.data()) std::copy(s, s + cols, s_buf.begin());
      for (int32_t c : labels) s_buf[c] = kNegInf;
      const size_t need = opt.min_labels - labels.size();
      const size_t have = labels.size();
      labels.resize(have + need);
      top_s.resize(need);
      const size_t got = internal::TopK(s_buf.data(), nullptr, kNegInf, static_cast<size_t>(cols),
                                        need, labels.data() + have, top_s.data());
      labels.resize(have + got);
    }
  });

  out->row_offsets.resize(static_cast<size_t>(rows) + 1);
  out->row_offsets[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    out->row_offsets[r + 1] = out->row_offsets[r] + static_cast<int64_t>(row_labels_[r].size());
  }
  out->labels.resize(static_cast<size_t>(out->row_offsets[rows]));
  out->probs.resize(out->labels.size());
  std::vector<float> picked;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<int32_t>& labels = row_labels_[r];
    const int64_t off = out->row_offsets[r];
    std::copy(labels.begin(), labels.end(), out->labels.begin() + off);
    // The same SIMD sigmoid as the dense probabilities, so both agree to the bit.
    picked.resize(labels.size());
    for (size_t k = 0; k < labels.size(); ++k) {
      picked[k] = LoadAsFloat(in.scores.data, in.scores.dtype, r * cols + labels[k]);
    }
    internal::Probs(picked.data(), picked.size(), out->probs.data() + off);
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<Backend> NewCpuBackend(const CpuOptions& options) {
  int threads = options.threads;
  if (threads <= 0) threads = internal::UsableCpus();
  return std::make_unique<CpuBackend>(threads, options.note);
}

std::string CpuSimdTarget() {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  return targets.empty() ? "scalar" : hwy::TargetName(targets.front());
}

const char* BackendKindName(BackendKind kind) { return kind == BackendKind::kCpu ? "cpu" : "cuda"; }

}  // namespace zlpr
