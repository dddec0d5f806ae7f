// The inference core: everything between a front end's converter and the kernels, with no
// gRPC, protobuf, HTTP or Prometheus in it. A front end (zlpr.v1, the Open Inference Protocol's
// gRPC and HTTP bindings) turns its wire messages into typed jobs and hands them in through one
// door, an Admission; the core batches them (batcher.h), runs them on the backends' workers
// (executor.h), bounds the memory they hold (memory_budget.h), cancels what a client stops
// reading (watchdog.h), and reports what happens to a CoreListener (metrics hang off it).
//
//   InferenceCore core(options, std::move(backends), &listener);
//   const MethodId predict = core.RegisterMethod("Predict", "zlpr_v1");   // at assembly
//   core.Start();
//   ... per call:    CallScope call = core.BeginCall();                // counted for the drain
//   ... per request: Admission a = core.Admit(predict, call);          // in flight, on the clock
//                    if (absl::Status st = a.Charge(message_bytes); !st.ok()) ...
//                    core.Enqueue(&a, control, std::move(job), response_bytes, done);
//                    a.Finish(code);                                  // its outcome, recorded
//   ... on SIGTERM:  core.BeginShutdown(); core.WaitForAcceptedCalls(deadline); core.Stop();
//
// Admission and CallScope end what they began in their destructors, so that no path of a front
// end can leave a request counted in flight, its memory held, or shutdown waiting for it.
#ifndef ZLPR_SERVER_CORE_CORE_H_
#define ZLPR_SERVER_CORE_CORE_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/zlpr.h"
#include "server/core/background.h"
#include "server/core/batcher.h"
#include "server/core/executor.h"
#include "server/core/job.h"
#include "server/core/memory_budget.h"
#include "server/core/watchdog.h"

namespace zlpr::server {

// A front end's method (its name and protocol), as the core knows it: an index given at
// registration, so that per-method records cost an array access.
using MethodId = int;

// Why a request was refused, dropped or cancelled.
enum class Reject {
  kQueueFull,
  kDeadline,
  kCancelled,
  kInvalid,
  kShuttingDown,
  kUnauthenticated,
  kTooLarge,    // the response would exceed the message limit
  kMemory,      // the memory budget for requests in flight could not cover it
  kSlowReader,  // its response was not read in time: the call was cancelled
  kCount
};
const char* RejectName(Reject reason);

// What the core reports (the metrics exporter is one). Every method may be called from many
// threads at once, often on the request path: keep them cheap.
class CoreListener : public ExecutionListener {
 public:
  // At registration (before Start): `id` is `method` of `protocol` from now on.
  virtual void OnMethodRegistered(MethodId /*id*/, std::string_view /*method*/,
                                  std::string_view /*protocol*/) {}
  // A request's outcome and its time from admission to its answer; `priority` is its class
  // when it was queued (nullopt: answered before, e.g. refused).
  virtual void OnRequestDone(MethodId /*id*/, absl::StatusCode /*code*/, double /*seconds*/,
                             std::optional<Priority> /*priority*/) {}
  virtual void OnRejected(Reject /*reason*/) {}
  virtual void OnInflight(int /*delta*/) {}
  virtual void OnRequestBytes(int64_t /*bytes*/) {}
  virtual void OnResponseBytes(int64_t /*bytes*/) {}
  // The memory budget's bytes held (every change) and its limit (once).
  virtual void OnBudget(int64_t /*held*/, int64_t /*limit*/) {}
  virtual void OnQueueDepth(JobKind /*kind*/, Priority /*priority*/, int64_t /*depth*/,
                            int64_t /*capacity*/) {}
  // A request computed after its deadline had passed: wasted work.
  virtual void OnLateResult() {}
  // Connections a front end holds open (`protocol` as registered).
  virtual void OnConnections(std::string_view /*protocol*/, int /*delta*/) {}
};

// What each job type's requests cost, for the Open Inference Protocol's statistics: counts
// and total durations (atomics; read without a lock, each value consistent on its own).
struct JobStatistics {
  struct Duration {
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> ns{0};
    void Add(double seconds) {
      count.fetch_add(1, std::memory_order_relaxed);
      ns.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
    }
  };
  std::atomic<uint64_t> inference_count{0};    // rows computed
  std::atomic<uint64_t> execution_count{0};    // kernel calls
  std::atomic<uint64_t> last_inference_ms{0};  // wall clock of the last kernel call
  Duration success, fail, queue, compute;
};

// What a queued job needs to know of the call it came from: when nobody wants its result any
// more. The batcher drops a job whose deadline passed or whose call was cancelled.
struct CallControl {
  SteadyTime deadline = SteadyTime::max();
  std::function<bool()> cancelled;  // empty: the call cannot be cancelled
  // The request's class when it asked for one; else its job type's default.
  std::optional<Priority> priority;
  // Who sent it (a hash of its connection's peer): bulk callers take turns in the queue.
  uint64_t caller = 0;
};

struct CoreOptions {
  BatcherOptions batcher;
  // How bulk batches are cut into chunks between which interactive work runs.
  ChunkOptions chunks;
  // A request message of at least this many bytes is bulk work whatever its class: a front end
  // parses it on the background threads (background.h), as it serializes bulk responses.
  int64_t bulk_message_bytes = 1 << 20;
  // The background threads (0: one per 4 usable CPUs, at least one) and the priority the OS
  // runs them at. Few of them: each thread that allocates large messages gets a malloc arena
  // of its own, which keeps what is freed into it, and the peak memory under overload grows
  // with their number.
  int background_threads = 0;
  BackgroundPolicy background_policy = BackgroundPolicy::kIdle;
  // The largest message a front end accepts or sends: a job whose response cannot fit is
  // refused before it is computed (OUT_OF_RANGE).
  int64_t max_message_bytes = 64 << 20;
  // Bytes that requests in flight may hold in all (MemoryBudget).
  int64_t max_inflight_bytes = int64_t{1} << 30;
  // A response not read by its client after write_timeout plus its size at min_transfer_rate
  // (bytes per second) cancels its call (Admission::WatchWrite).
  std::chrono::milliseconds write_timeout{20000};
  int64_t min_transfer_rate = 1 << 20;
};

class InferenceCore;

// A call's place in the drain at shutdown (a unary call, a stream, an HTTP request): the core
// waits for the calls it accepted before shutdown began. Ends when destroyed.
class CallScope {
 public:
  CallScope() = default;
  CallScope(CallScope&& other) noexcept;
  CallScope& operator=(CallScope&& other) noexcept;
  ~CallScope() { End(); }
  // Begun before shutdown: the core waits for it.
  bool accepted() const { return accepted_; }
  void End();

 private:
  friend class InferenceCore;
  CallScope(InferenceCore* core, bool accepted) : core_(core), accepted_(accepted) {}
  InferenceCore* core_ = nullptr;
  bool accepted_ = false;
};

// One request, from its admission to its answer: counted in flight, its memory lease, the
// deadline of its response's write, and its outcome (method, status code, time). The
// destructor ends all of it: a request never finished is recorded as CANCELLED.
class Admission {
 public:
  Admission() = default;
  Admission(Admission&& other) noexcept;
  Admission& operator=(Admission&& other) noexcept;
  ~Admission() { End(); }

  // Refuses the request when it came after shutdown began (UNAVAILABLE), else charges the memory
  // budget
  // twice `message_bytes` (the parsed message and the batch's copy of its tensors):
  // RESOURCE_EXHAUSTED when it cannot cover them. Counted either way.
  absl::Status Charge(int64_t message_bytes);
  // Takes over memory the front end obtained itself (MemoryBudget::Wait), `headroom` of it set
  // aside for what the request will hold later (its response: Grow takes from it first);
  // UNAVAILABLE when the request came after shutdown began.
  absl::Status Adopt(MemoryBudget::Lease lease, int64_t headroom = 0);
  // More bytes for what the request holds (its response, a response's text): from its
  // headroom, then from the budget; false when the budget cannot cover them.
  bool Grow(int64_t bytes);
  // Returns what the request no longer needs (its input, once the response is built), and
  // what is left of its headroom.
  void ShrinkTo(int64_t bytes) {
    headroom_ = 0;
    lease_.ShrinkTo(bytes);
  }
  int64_t bytes() const { return lease_.bytes(); }

  // Records the outcome (the time is from admission to now) and leaves the in-flight count;
  // `response_bytes` of an answer are counted. Once: later calls are ignored.
  void Finish(absl::StatusCode code, int64_t response_bytes = 0);
  bool finished() const { return finished_; }

  // Runs `cancel` unless the response of `bytes` is written within the write timeout (plus
  // its size at the minimum rate) and DisarmWrite() (or the destructor) comes first. Counted
  // as reason="slow_reader" when it fires. One watch at a time.
  void WatchWrite(int64_t bytes, absl::AnyInvocable<void()> cancel);
  void DisarmWrite();

  SteadyTime start() const { return start_; }
  MethodId method() const { return method_; }
  // Its class, once queued.
  std::optional<Priority> priority() const { return priority_; }
  MemoryBudget::Lease& lease() { return lease_; }

 private:
  friend class InferenceCore;
  Admission(InferenceCore* core, MethodId method, bool accepted, SteadyTime start)
      : core_(core), method_(method), accepted_(accepted), start_(start) {}
  void End();
  // Refused: the request came after shutdown began.
  bool Late() const;

  InferenceCore* core_ = nullptr;
  MethodId method_ = 0;
  bool accepted_ = false;  // its call was accepted before shutdown began
  SteadyTime start_{};
  bool finished_ = false;
  MemoryBudget::Lease lease_;
  int64_t headroom_ = 0;  // of the lease, not yet used
  Watchdog::Id watch_ = 0;
  std::optional<Priority> priority_;
};

// Every open stream, so that shutdown can end them once their accepted messages are answered.
class DrainRegistry {
 public:
  class Member {
   public:
    virtual ~Member() = default;
    virtual void Drain() = 0;
  };
  void Add(Member* m) ABSL_LOCKS_EXCLUDED(mu_);
  void Remove(Member* m) ABSL_LOCKS_EXCLUDED(mu_);
  void DrainAll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  std::set<Member*> members_ ABSL_GUARDED_BY(mu_);
};

class InferenceCore {
 public:
  // `backends` must not be empty and all be of one kind; each gets a worker thread.
  // `listener` (may be null) and `clock` must outlive the core.
  InferenceCore(const CoreOptions& options, std::vector<std::unique_ptr<Backend>> backends,
                CoreListener* listener, Clock* clock = SystemClock());
  ~InferenceCore();
  InferenceCore(const InferenceCore&) = delete;
  InferenceCore& operator=(const InferenceCore&) = delete;

  // Names a front end's method; before Start().
  MethodId RegisterMethod(std::string_view method, std::string_view protocol);
  // `f` runs (on a worker thread) when the last backend that could compute stops being able
  // to (Backend::health()): the process can no longer serve. Before Start().
  void OnUnusable(std::function<void(const absl::Status&)> f) { on_unusable_ = std::move(f); }
  void Start();
  // New calls' requests get UNAVAILABLE; open streams are asked to end (DrainRegistry) once
  // they have answered what they accepted; queued requests, and those of calls accepted before,
  // are still computed, at once.
  void BeginShutdown();
  // Waits until every call accepted before BeginShutdown() ended, or `deadline`; false then.
  bool WaitForAcceptedCalls(absl::Time deadline);
  // Waits for the queues to drain and joins the workers.
  void Stop();

  CallScope BeginCall();
  // A request of `method`, of `call`, enters: counted in flight, its clock started. A request
  // of a call accepted before shutdown began is still taken (shutdown waits for it); others are
  // refused from then on (Charge, Adopt, Enqueue: UNAVAILABLE).
  Admission Admit(MethodId method, const CallScope& call);

  // Queues a converted job: refused when it came after shutdown began (UNAVAILABLE), when its
  // response
  // (`response_bytes`, its dense size) cannot fit the message limit (OUT_OF_RANGE), or when
  // the budget cannot cover twice that response besides what `admission` holds
  // (RESOURCE_EXHAUSTED), or when its queue is full. `done` runs exactly once, from this thread
  // (refused) or a worker, with the result or why there is none; `admission` and whatever the
  // job's views point into must stay alive until then.
  void Enqueue(Admission* admission, CallControl control, LossJob job, int64_t response_bytes,
               absl::AnyInvocable<void(absl::StatusOr<LossResult>)> done);
  void Enqueue(Admission* admission, CallControl control, PredictJob job, int64_t response_bytes,
               absl::AnyInvocable<void(absl::StatusOr<PredictResult>)> done);

  // OUT_OF_RANGE, counted, when a filled response of `bytes` exceeds the message limit.
  absl::Status CheckResponseSize(int64_t bytes);
  // Counts a refusal a front end decides itself (a request that does not parse, a token).
  void Rejected(Reject reason);
  // A call was cancelled (its client went away): its queued job is dropped now, not computed.
  void CallCancelled() { batcher_.Wake(); }

  // Whether a front end should parse a message of `bytes` on the background threads.
  bool IsBulkMessage(int64_t bytes) const { return bytes >= options_.bulk_message_bytes; }
  BackgroundPool& background() { return background_; }

  const CoreOptions& options() const { return options_; }
  Clock& clock() { return *clock_; }
  MemoryBudget& budget() { return budget_; }
  Watchdog& watchdog() { return watchdog_; }
  DrainRegistry& streams() { return streams_; }
  CoreListener& listener() { return *listener_; }
  bool shutting_down() const { return shutting_down_.load(); }
  // Ready for traffic: not shutting down, and a backend can compute.
  bool ready() const { return !shutting_down() && workers_.healthy() > 0; }
  const std::vector<std::unique_ptr<Backend>>& backends() const { return workers_.backends(); }
  const JobStatistics& statistics(JobKind kind) const { return stats_[static_cast<int>(kind)]; }

 private:
  friend class CallScope;
  friend class Admission;
  class Reporter;
  template <typename Job>
  void EnqueueJob(Admission* admission, CallControl control, Job job, int64_t response_bytes,
                  absl::AnyInvocable<void(absl::StatusOr<typename Job::Result>)> done);
  void CallEnds(bool accepted);

  const CoreOptions options_;
  CoreListener* const listener_;  // never null: a listener that ignores everything when none
  Clock* const clock_;
  std::function<void(const absl::Status&)> on_unusable_;
  std::array<JobStatistics, kJobKinds> stats_;
  MemoryBudget budget_;
  std::unique_ptr<Reporter> reporter_;  // the executors' listener: statistics, then listener_
  JobBatcher batcher_;
  Workers workers_;
  BackgroundPool background_;
  Watchdog watchdog_;
  DrainRegistry streams_;
  int methods_ = 0;
  std::atomic<bool> shutting_down_{false};
  absl::Mutex calls_mu_;
  int64_t accepted_calls_ ABSL_GUARDED_BY(calls_mu_) = 0;  // begun before shutdown, not ended
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_CORE_H_
