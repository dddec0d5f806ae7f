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
// Bulk batches (job.h, Priority) are computed in row chunks of about `bulk_chunk` of kernel
// time each (the rows follow from the time per element the executor measured on its recent
// kernel calls of that job type), and `between_chunks` runs after each chunk but the last: a
// worker runs the interactive work that arrived meanwhile there, so that an interactive batch
// waits for at most one chunk, never for a whole bulk batch. The kernels are row-independent, so
// a chunked job computes to the bits it gets whole.
//
// Workers is the thread side, pulling batches from the batcher until it is shut down and
// drained. A backend that can compute beside itself (Backend::NewLane: the CPU) gets two
// workers: a bulk one on the lane, at the lowered `bulk_policy` (the OS preempts it for anything
// else), and an interactive one at the server's priority, which also stands in, in chunks, for a
// bulk batch the bulk worker has left waiting (it had no CPU). Any other backend (a GPU) gets one
// worker with two Executors: bulk, and the interactive work it runs between bulk chunks. A
// worker whose backend turns unhealthy stops pulling while another backend is healthy.
#ifndef ZLPR_SERVER_CORE_EXECUTOR_H_
#define ZLPR_SERVER_CORE_EXECUTOR_H_

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/zlpr.h"
#include "server/core/background.h"
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
  // A task of class `priority` waited `seconds` from enqueue to the start of its batch.
  virtual void OnQueued(JobKind kind, Priority priority, double seconds) = 0;
  // Worker `worker` finished a batch on `backend`.
  virtual void OnBatchDone(size_t worker, const Backend& backend) = 0;
  // Worker `worker`'s backend stopped being able to compute (Backend::health() says why);
  // `healthy_left` backends still can. Once per worker.
  virtual void OnBackendUnhealthy(size_t /*worker*/, const absl::Status& /*why*/,
                                  int /*healthy_left*/) {}
  // An interactive worker took a bulk batch of `kind` that the lowered bulk worker had left
  // waiting for ChunkOptions::stand_in_after (it had no CPU).
  virtual void OnStandIn(JobKind /*kind*/) {}
};

// How bulk work is cut (CoreOptions::chunks).
struct ChunkOptions {
  // Kernel time of one chunk of a bulk batch; 0: bulk batches are computed whole.
  std::chrono::microseconds bulk_chunk{1000};
  // The time per element assumed before the first kernel call has been measured.
  double initial_ns_per_element = 2.0;
  // On a backend with a lane (Backend::NewLane): how long a due bulk batch may wait while the
  // lowered bulk worker takes none before the interactive worker computes it (in chunks).
  std::chrono::milliseconds stand_in_after{500};
};

class Executor {
 public:
  // `backend`, `clock` and `listener` (may be null) must outlive the executor.
  Executor(Backend* backend, Clock* clock, ExecutionListener* listener,
           const ChunkOptions& chunks = {});
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs after each bulk chunk but a batch's last, on the thread that runs the batch.
  void SetBetweenChunks(std::function<void()> f) { between_chunks_ = std::move(f); }

  // One result per job, in order; computed in chunks when `chunked`. Jobs in one kernel call
  // share its fate: a backend error fails every job of that group, and only those; except
  // RESOURCE_EXHAUSTED (the batch did not fit the device), after which each job of the group
  // runs on its own.
  std::vector<absl::StatusOr<LossResult>> Run(std::span<const LossJob* const> jobs,
                                              bool chunked = false);
  std::vector<absl::StatusOr<PredictResult>> Run(std::span<const PredictJob* const> jobs,
                                                 bool chunked = false);

  // Rows of one chunk of `cols` columns of a job type (at least 1), from the measured time per
  // element.
  int64_t ChunkRows(JobKind kind, int64_t cols) const;

  // Runs a batch from the batcher and answers each task with its result (and its queue time).
  // A bulk batch is computed in chunks.
  template <typename Job>
  void Execute(Batch<Job>& batch) {
    const SteadyTime start = clock_->Now();
    const Priority priority = batch.front().priority;
    std::vector<const Job*> jobs;
    jobs.reserve(batch.size());
    for (const Task<Job>& task : batch) jobs.push_back(&task.job);
    std::vector<absl::StatusOr<typename Job::Result>> results =
        Run(jobs, priority == Priority::kBulk && chunks_.bulk_chunk.count() > 0);
    for (size_t i = 0; i < batch.size(); ++i) {
      const double queued = std::chrono::duration<double>(start - batch[i].enqueued_at).count();
      if (listener_ != nullptr) listener_->OnQueued(Job::kKind, priority, queued);
      if (results[i].ok()) results[i]->timing.queue_seconds = queued;
      batch[i].done(std::move(results[i]));
    }
  }

 private:
  struct KernelCall {
    absl::Status status;
    double seconds = 0;
  };
  // Runs `call` (one backend call of `rows` x `cols`), timed and reported to the listener.
  KernelCall TimedKernelCall(JobKind kind, int64_t rows, int64_t cols,
                             const std::function<absl::Status()>& call);
  // Runs `call(begin, end)` over the rows of `in` (whole, or chunk by chunk with
  // between_chunks_ in between); the total kernel time, or the first error.
  template <typename Input, typename Call>
  KernelCall RunRows(JobKind kind, const Input& in, bool chunked, const Call& call);
  // The kernel call(s) for a group of jobs that can share them; one result per job.
  std::vector<absl::StatusOr<LossResult>> RunLossGroup(std::span<const LossJob* const> group,
                                                       const ValidatedLossInput& in, bool chunked);
  std::vector<absl::StatusOr<PredictResult>> RunPredictGroup(
      std::span<const PredictJob* const> group, const ValidatedLabelerInput& in, bool chunked);

  Backend* const backend_;
  Clock* const clock_;
  ExecutionListener* const listener_;
  const ChunkOptions chunks_;
  std::function<void()> between_chunks_;
  // Kernel time per element of each job type, a moving average of the recent kernel calls.
  std::array<double, kJobKinds> ns_per_element_;
  // Reused across batches: no allocation on the steady-state path.
  ConcatBuffers concat_, slice_;
  std::vector<float> loss_, grad_, probs_;
  LabelSets label_sets_, chunk_sets_;
};

class Workers {
 public:
  // The workers of each backend (above); `batcher`, `clock` and `listener` must outlive them.
  Workers(JobBatcher* batcher, std::vector<std::unique_ptr<Backend>> backends, Clock* clock,
          ExecutionListener* listener, const ChunkOptions& chunks = {},
          BackgroundPolicy bulk_policy = BackgroundPolicy::kNormal);
  ~Workers();  // joins

  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

  void Start();
  // Returns once the batcher is shut down and every queued task answered.
  void Join();
  // Backends that can still compute (all of them until one's health() fails).
  int healthy() const { return healthy_.load(); }

 private:
  // A backend without a lane: one worker, interactive batches between the chunks of bulk ones.
  void StartSharedWorker(size_t w);
  // A backend with `lane`: a bulk worker on the lane, lowered, and an interactive one.
  void StartClassWorkers(size_t w, Backend* lane);
  // Runs the due interactive batches on `interactive` (between two chunks of a bulk batch).
  std::function<void()> InteractiveBetweenChunks(size_t w, const Backend& backend,
                                                 Executor* interactive);

  JobBatcher* const batcher_;
  const std::vector<std::unique_ptr<Backend>> backends_;
  Clock* const clock_;
  ExecutionListener* const listener_;
  const ChunkOptions chunks_;
  const BackgroundPolicy bulk_policy_;
  std::vector<std::unique_ptr<Backend>> lanes_;  // Backend::NewLane()'s, for the bulk workers
  std::vector<std::thread> threads_;
  std::atomic<int> healthy_{0};
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_EXECUTOR_H_
