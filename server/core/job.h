// The typed, proto-free jobs a front end turns each request into, and what the executor gives
// back for them. Everything after conversion (batcher, executor, backends) sees only these:
// adding a front end is a converter and a reactor, nothing more.
//
//   LossJob job{.input = *ValidateLossInput(in), .want_grad = true};   // from a converter
//   ... the batcher queues it, the executor runs it ...
//   absl::StatusOr<LossResult> r;   // r->loss, r->grad (bytes of grad_dtype), r->timing
#ifndef ZLPR_SERVER_CORE_JOB_H_
#define ZLPR_SERVER_CORE_JOB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/zlpr.h"

namespace zlpr::server {

// The kinds of job, for metrics and logs (each kind has its own queue in the batcher).
enum class JobKind { kLoss, kPredict };
inline constexpr int kJobKinds = 2;
constexpr const char* JobKindName(JobKind kind) {
  return kind == JobKind::kLoss ? "loss" : "predict";
}

// A request's class. Interactive work (an online prediction API: small requests, a latency
// budget of milliseconds) is taken before bulk work (a trainer's large loss calls: throughput)
// whenever both wait, and bulk work is computed in chunks between which interactive work runs
// (docs/ARCHITECTURE.md, "Request classes"). Each job type has a default; a request may ask
// for the other.
enum class Priority { kInteractive, kBulk };
inline constexpr int kPriorities = 2;
constexpr const char* PriorityName(Priority p) {
  return p == Priority::kInteractive ? "interactive" : "bulk";
}

// Where a job's time went on the server.
struct Timing {
  double queue_seconds = 0;    // from enqueue to the start of its batch
  double compute_seconds = 0;  // the kernel call that computed it (shared with its group)
  int64_t batch_rows = 0;      // rows of that kernel call
};

struct LossResult {
  std::vector<float> loss;  // one per row
  double loss_sum = 0;      // accumulated in double
  double loss_mean = 0;
  // rows x cols elements of grad_dtype when the job asked for the gradient, else empty. Held
  // as bytes so that a front end can move it into its wire message without a copy.
  std::string grad;
  bool grad_written = false;  // the gradient went to the job's grad_out instead, grad is empty
  int64_t cols = 0;
  DType grad_dtype = DType::kFloat32;
  Timing timing;
};

struct LossJob {
  using Result = LossResult;
  static constexpr JobKind kKind = JobKind::kLoss;
  static constexpr Priority kDefaultPriority = Priority::kBulk;

  ValidatedLossInput input;  // views into the request, which outlives the job
  bool want_grad = false;
  DType grad_dtype = DType::kFloat32;
  // Where the fp32 gradient goes instead of LossResult::grad (rows x cols, float-aligned): the
  // caller's memory, e.g. a shared-memory output, which the kernel then writes in place. Must
  // outlive the job.
  float* grad_out = nullptr;

  int64_t rows() const { return input.rows(); }
};

struct PredictResult {
  LabelSets labels;  // this job's rows only, row_offsets from 0
  // rows x cols fp32 probabilities σ(2s) when the job asked for them, else empty (bytes, as
  // LossResult::grad).
  std::string probs;
  bool probs_written = false;  // the probabilities went to the job's probs_out, probs is empty
  int64_t cols = 0;
  Timing timing;
};

struct PredictJob {
  using Result = PredictResult;
  static constexpr JobKind kKind = JobKind::kPredict;
  static constexpr Priority kDefaultPriority = Priority::kInteractive;

  ValidatedLabelerInput input;  // views into the request, which outlives the job
  bool want_probs = false;
  float* probs_out = nullptr;  // as LossJob::grad_out, for the probabilities

  int64_t rows() const { return input.rows(); }
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_JOB_H_
