// libFuzzer harness: bytes -> zlpr.v1 request -> conversion and validation -> (when valid) the
// CPU kernels, with the invariants of docs/MATH.md checked on every result. The first byte picks
// the message type (even: LossRequest, odd: PredictRequest); the rest is the serialized message.
// Anything but a clean INVALID_ARGUMENT or a result that holds the invariants aborts.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "google/protobuf/stubs/logging.h"
#include "server/zlpr_v1/convert.h"
#include "zlpr/v1/zlpr.pb.h"

namespace {

// Work per input is bounded by the input itself (every tensor's data is in the message); this
// only keeps one input from taking seconds.
constexpr int64_t kMaxElements = int64_t{1} << 20;

zlpr::Backend& Cpu() {
  static const std::unique_ptr<zlpr::Backend> backend = zlpr::NewCpuBackend({.threads = 1});
  return *backend;
}

// Aborts, saying which invariant failed, when `ok` is false.
void Check(bool ok, const char* what = "invariant") {
  if (ok) return;
  std::fprintf(stderr, "convert_fuzzer: %s does not hold\n", what);
  std::abort();
}

// The largest |score| of row r among the entries that count (docs/MATH.md: a row's loss exceeds
// fp32's range only when its scores come near fp32's own limit).
float MaxAbsScore(const zlpr::LossInput& in, int64_t r) {
  float m = 0.0f;
  for (int64_t c = 0; c < in.scores.cols; ++c) {
    const float s = zlpr::LoadAsFloat(in.scores.data, in.scores.dtype, r * in.scores.cols + c);
    if (s != -INFINITY && (in.mask == nullptr || in.mask[r * in.scores.cols + c] != 0)) {
      m = std::max(m, std::fabs(s));
    }
  }
  return m;
}

// Prints row r's scores, labels and mask, for triage.
void DumpRow(const zlpr::LossInput& in, int64_t r) {
  const int64_t cols = in.scores.cols;
  std::vector<float> t(cols, 0.0f);
  if (const auto* d = std::get_if<zlpr::MatrixView>(&in.labels)) {
    zlpr::WidenToFloat(zlpr::ElementAt(d->data, d->dtype, r * cols), cols, d->dtype, t.data());
  } else {
    const auto& sp = std::get<zlpr::SparseLabelsView>(in.labels);
    for (int64_t k = sp.row_splits[r]; k < sp.row_splits[r + 1]; ++k) {
      t[sp.indices[k]] = sp.values.empty() ? 1.0f : sp.values[k];
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    std::fprintf(stderr, "  [%lld] s=%.9g t=%.9g mask=%d\n", static_cast<long long>(c),
                 zlpr::LoadAsFloat(in.scores.data, in.scores.dtype, r * cols + c), t[c],
                 in.mask == nullptr ? 1 : in.mask[r * cols + c]);
  }
}

void RunLoss(const zlpr::server::LossJob& job) {
  const int64_t rows = job.rows(), cols = job.input.cols();
  if (rows * cols > kMaxElements) return;
  std::vector<float> loss(rows, -1.0f), grad(job.want_grad ? rows * cols : 0, 9.0f);
  const absl::Status st =
      Cpu().Loss(job.input, {loss.data(), job.want_grad ? grad.data() : nullptr});
  Check(st.ok());
  for (int64_t r = 0; r < rows; ++r) {
    if (std::isnan(loss[r]) || loss[r] < 0.0f ||
        (!std::isfinite(loss[r]) && MaxAbsScore(job.input.get(), r) < 1e38f)) {
      std::fprintf(stderr, "row %lld of %lld x %lld: loss %g, largest |score| %g\n",
                   static_cast<long long>(r), static_cast<long long>(rows),
                   static_cast<long long>(cols), loss[r], MaxAbsScore(job.input.get(), r));
      Check(false, "loss: not NaN, >= 0, finite unless a score is beyond 1e38");
    }
  }
  for (size_t i = 0; i < grad.size(); ++i) {
    if (!(grad[i] >= -1.0f && grad[i] <= 1.0f)) {
      std::fprintf(stderr, "gradient[%zu] = %g (row %lld)\n", i, grad[i],
                   static_cast<long long>(i / cols));
      DumpRow(job.input.get(), static_cast<int64_t>(i) / cols);
      Check(false, "gradient in [-1, 1]");
    }
  }
}

void RunPredict(const zlpr::server::PredictJob& job) {
  const int64_t rows = job.rows(), cols = job.input.cols();
  if (rows * cols > kMaxElements) return;
  zlpr::LabelSets sets;
  std::vector<float> probs(job.want_probs ? rows * cols : 0, -1.0f);
  const absl::Status st = Cpu().Label(job.input, &sets, job.want_probs ? probs.data() : nullptr);
  Check(st.ok());
  Check(sets.row_offsets.size() == static_cast<size_t>(rows) + 1 && sets.row_offsets[0] == 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = sets.row_offsets[r + 1] - sets.row_offsets[r];
    Check(n >= 0 && n <= cols);
    const uint32_t top_k = job.input->options.top_k;
    if (top_k > 0) Check(n <= std::max<int64_t>(top_k, job.input->options.min_labels));
  }
  Check(sets.labels.size() == sets.probs.size());
  for (size_t i = 0; i < sets.labels.size(); ++i) {
    Check(sets.labels[i] >= 0 && sets.labels[i] < cols);
    Check(sets.probs[i] >= 0.0f && sets.probs[i] <= 1.0f);
  }
  for (float p : probs) Check(p >= 0.0f && p <= 1.0f);
}

}  // namespace

// Protobuf logs a line for every string field that is not UTF-8, which random bytes often are.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool predict = (data[0] & 1) != 0;
  const auto* body = reinterpret_cast<const char*>(data + 1);
  const int body_size = static_cast<int>(size - 1);
  if (predict) {
    zlpr::v1::PredictRequest request;
    if (!request.ParseFromArray(body, body_size)) return 0;
    absl::StatusOr<zlpr::server::PredictJob> job = zlpr::server::PredictJobFromRequest(request);
    if (!job.ok()) {
      Check(job.status().code() == absl::StatusCode::kInvalidArgument);
      return 0;
    }
    Check(zlpr::server::DenseResponseBytes(*job, request.request_id().size()) > 0);
    RunPredict(*job);
  } else {
    zlpr::v1::LossRequest request;
    if (!request.ParseFromArray(body, body_size)) return 0;
    absl::StatusOr<zlpr::server::LossJob> job = zlpr::server::LossJobFromRequest(request);
    if (!job.ok()) {
      Check(job.status().code() == absl::StatusCode::kInvalidArgument);
      return 0;
    }
    Check(zlpr::server::DenseResponseBytes(*job, request.request_id().size()) > 0);
    RunLoss(*job);
  }
  return 0;
}
