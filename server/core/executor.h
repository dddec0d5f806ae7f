// The executor: runs batches of typed jobs on one backend. It groups the jobs that can share a
// kernel call (same shape, types and options), concatenates each group (the kernels are
// batch-invariant, so every row computes to the bits it gets alone), runs the backend once per
// group, and slices the results back into one absl::StatusOr<Result> per job. It knows the
// kernels and the batcher's types only: no gRPC, no protobuf, no Prometheus.
//
//   Executor executor(backend.get(), SystemClock(), &listener);
//   std::vector<absl::StatusOr<LossResult>> results = executor.Run(jobs);   // pure
//   executor.Execute(batch);   // a batch from the batcher: runs it and answers every task
//
// Workers is the thread side: one thread per backend, each with its own Executor, pulling
// batches from the batcher until it is shut down and drained. A worker whose backend turns
// unhealthy stops pulling while another backend is healthy.
#ifndef ZLPR_SERVER_CORE_EXECUTOR_H_
#define ZLPR_SERVER_CORE_EXECUTOR_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/zlpr.h"
#include "server/core/batcher.h"
#include "server/core/job.h"

namespace zlpr::server {

// The batcher the service runs: one queue for each kind of job.
using JobBatcher = Batcher<LossJob, PredictJob>;

// What an executor reports as it runs (metrics hang off this); every method may be called from
// several worker threads at once.
class ExecutionListener {
 public:
  virtual ~ExecutionListener() = default;
  // One kernel call of `rows` rows took `seconds`.
  virtual void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) = 0;
  // A task waited `seconds` from enqueue to the start of its batch.
  virtual void OnQueued(JobKind kind, double seconds) = 0;
  // Worker `worker` finished a batch on `backend`.
  virtual void OnBatchDone(size_t worker, const Backend& backend) = 0;
  // Worker `worker`'s backend stopped being able to compute (Backend::health() says why);
  // `healthy_left` backends still can. Once per worker.
  virtual void OnBackendUnhealthy(size_t /*worker*/, const absl::Status& /*why*/,
                                  int /*healthy_left*/) {}
};

class Executor {
 public:
  // `backend`, `clock` and `listener` (may be null) must outlive the executor.
  Executor(Backend* backend, Clock* clock, ExecutionListener* listener);
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // One result per job, in order. Jobs in one kernel call share its fate: a backend error
  // fails every job of that group, and only those; except RESOURCE_EXHAUSTED (the batch did
  // not fit the device), after which each job of the group runs on its own.
  std::vector<absl::StatusOr<LossResult>> Run(std::span<const LossJob* const> jobs);
  std::vector<absl::StatusOr<PredictResult>> Run(std::span<const PredictJob* const> jobs);

  // Runs a batch from the batcher and answers each task with its result (and its queue time).
  template <typename Job>
  void Execute(Batch<Job>& batch) {
    const SteadyTime start = clock_->Now();
    std::vector<const Job*> jobs;
    jobs.reserve(batch.size());
    for (const Task<Job>& task : batch) jobs.push_back(&task.job);
    std::vector<absl::StatusOr<typename Job::Result>> results = Run(jobs);
    for (size_t i = 0; i < batch.size(); ++i) {
      const double queued = std::chrono::duration<double>(start - batch[i].enqueued_at).count();
      if (listener_ != nullptr) listener_->OnQueued(Job::kKind, queued);
      if (results[i].ok()) results[i]->timing.queue_seconds = queued;
      batch[i].done(std::move(results[i]));
    }
  }

 private:
  struct KernelCall {
    absl::Status status;
    double seconds = 0;
  };
  // Runs `call` (one backend call of `rows` rows), timed and reported to the listener.
  KernelCall TimedKernelCall(JobKind kind, int64_t rows, const std::function<absl::Status()>& call);
  // One kernel call for a group of jobs that can share it; one result per job.
  std::vector<absl::StatusOr<LossResult>> RunLossGroup(std::span<const LossJob* const> group,
                                                       const ValidatedLossInput& in);
  std::vector<absl::StatusOr<PredictResult>> RunPredictGroup(
      std::span<const PredictJob* const> group, const ValidatedLabelerInput& in);

  Backend* const backend_;
  Clock* const clock_;
  ExecutionListener* const listener_;
  // Reused across batches: no allocation on the steady-state path.
  ConcatBuffers concat_;
  std::vector<float> loss_, grad_, probs_;
  LabelSets label_sets_;
};

class Workers {
 public:
  // One worker per backend; `batcher`, `clock` and `listener` must outlive the workers.
  Workers(JobBatcher* batcher, std::vector<std::unique_ptr<Backend>> backends, Clock* clock,
          ExecutionListener* listener);
  ~Workers();  // joins

  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

  void Start();
  // Returns once the batcher is shut down and every queued task answered.
  void Join();
  // Backends that can still compute (all of them until one's health() fails).
  int healthy() const { return healthy_.load(); }

 private:
  JobBatcher* const batcher_;
  const std::vector<std::unique_ptr<Backend>> backends_;
  Clock* const clock_;
  ExecutionListener* const listener_;
  std::vector<std::thread> threads_;
  std::atomic<int> healthy_{0};
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_EXECUTOR_H_
