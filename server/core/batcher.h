// The dynamic batcher: queues per job type and request class, feeding worker threads with
// batches.
//
// A queue is due when max_batch_rows rows wait or its oldest task has waited max_queue_delay.
// With adaptive_delay (the default) the wait applies only while the load makes it pay off,
// i.e. when the queue's previous batch held more than one task; under light load (a lone
// caller) a task is cut at once, so waiting never adds latency where no other task would have
// joined. A worker cuts a batch from a due queue, under the lock (tasks cancelled or past
// their deadline are dropped, not computed), and runs it outside the lock: interactive queues
// before bulk ones whenever both are due (job.h, Priority), and among queues of one class the
// one whose oldest task is oldest. Within a queue each caller (a connection) has its own FIFO
// and the callers take turns, one task each (round robin), so one caller's many requests cannot
// starve another's. A task larger than max_batch_rows is a batch of its own. A full queue
// refuses at once (RESOURCE_EXHAUSTED). Clock is injected, so tests drive it without threads,
// gRPC or real time. One mutex and condition variable, as Triton's dynamic batcher.
//
//   Batcher<LossJob, PredictJob> batcher({.max_batch_rows = 256, .max_queue_size = 1024});
//   batcher.Enqueue(Task<LossJob>{.job = ..., .done = ...});        // from request handlers
//   while (auto batch = batcher.NextBatch()) std::visit(run, *batch);  // in each worker
//   auto urgent = batcher.TryCutNow(Priority::kInteractive, &drops);   // between bulk chunks
//
// Every task's `done` runs exactly once: from Enqueue (refused), from NextBatch (dropped: the
// caller cancelled or the deadline passed) or from whoever runs the batch (the executor). A
// cancellation is seen when the caller says so (Wake()) or at the next cut, a deadline when it
// passes: nothing polls.
#ifndef ZLPR_SERVER_CORE_BATCHER_H_
#define ZLPR_SERVER_CORE_BATCHER_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/job.h"

namespace zlpr::server {

using SteadyTime = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SteadyTime Now() const = 0;
};

// The real steady clock.
Clock* SystemClock();

// One job waiting to be computed, and what the batcher needs to know of its caller.
template <typename Job>
struct Task {
  Job job;
  // After this the result is of no use.
  SteadyTime deadline = SteadyTime::max();
  // True once the caller gave up (checked while queued); empty: never.
  std::function<bool()> cancelled;
  // Runs exactly once, with the result or with why the job was not computed.
  absl::AnyInvocable<void(absl::StatusOr<typename Job::Result>)> done;
  Priority priority = Job::kDefaultPriority;
  // Who sent it (a connection): the callers of one queue take turns.
  uint64_t caller = 0;
  // Set by Enqueue.
  SteadyTime enqueued_at{};
};

template <typename Job>
using Batch = std::vector<Task<Job>>;

struct BatcherOptions {
  int64_t max_batch_rows = 256;
  std::chrono::microseconds max_queue_delay{250};
  int64_t max_queue_size = 1024;  // tasks per job type and class
  // Wait for max_queue_delay only when the queue's previous batch merged several tasks;
  // false: always wait (up to max_queue_delay or max_batch_rows).
  bool adaptive_delay = true;
  // Called under the batcher's lock whenever a queue's length changes (keep it cheap: a gauge).
  std::function<void(JobKind kind, Priority priority, int64_t depth)> on_depth;
  // Called (outside the lock) for every task the batcher answers itself, before its `done`:
  // refused (RESOURCE_EXHAUSTED, UNAVAILABLE) or dropped (CANCELLED, DEADLINE_EXCEEDED).
  std::function<void(JobKind kind, const absl::Status& why)> on_not_computed;
};

template <typename... Jobs>
class Batcher {
 public:
  using AnyBatch = std::variant<Batch<Jobs>...>;
  // A dropped task's answer, to run outside the lock.
  using Drop = absl::AnyInvocable<void()>;

  explicit Batcher(const BatcherOptions& options, Clock* clock = SystemClock())
      : options_(options), clock_(clock) {}
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `task`, or answers it at once (RESOURCE_EXHAUSTED when its queue is full,
  // UNAVAILABLE after Shutdown()) and returns that status.
  template <typename Job>
  absl::Status Enqueue(Task<Job> task) {
    const Priority priority = task.priority;  // read before TryQueue moves the task away
    absl::Status refused = TryQueue(task);
    if (!refused.ok()) {
      NotComputed<Job>(refused);
      task.done(refused);
      return refused;
    }
    SignalFor(static_cast<int>(priority));
    return absl::OkStatus();
  }

  // Which batches a worker takes: of class `only`, or of any class (interactive first). With
  // `stand_in_after`, also a batch of another class once one has been due that long while no
  // worker took a batch of that class: Workers' interactive worker stands in so for a bulk worker
  // the OS runs at a lowered priority and has left without CPU.
  struct Takes {
    std::optional<Priority> only;
    std::chrono::nanoseconds stand_in_after{0};
  };

  // Blocks until a batch this worker takes is due and returns it, or returns nullopt once shut
  // down and drained. Cancelled and expired tasks met on the way are answered, outside the lock.
  std::optional<AnyBatch> NextBatch(const Takes& takes = {}) {
    const int cls = ClassOf(takes);
    absl::CondVar& cv = cv_[Waiters(cls)];
    const bool stand_in = takes.stand_in_after.count() > 0;
    for (;;) {
      std::vector<Drop> drops;
      std::optional<AnyBatch> batch;
      bool drained = false;
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          const SteadyTime now = clock_->Now();
          SteadyTime next_due;
          batch = CutForLocked(now, takes, &drops, &next_due);
          if (batch.has_value() || !drops.empty()) break;
          if (shutdown_ && next_due == SteadyTime::max()) {
            drained = true;
            break;
          }
          if (stand_in) stand_ins_.fetch_add(1, std::memory_order_relaxed);
          if (next_due == SteadyTime::max()) {
            cv.Wait(&mu_);
          } else {
            cv.WaitWithTimeout(&mu_, absl::FromChrono(next_due - now));
          }
          if (stand_in) stand_ins_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      for (Drop& d : drops) d();
      if (batch.has_value()) {
        SignalFor(cls);  // another worker may take the next due batch
        return batch;
      }
      if (drained) return std::nullopt;
    }
  }

  // The non-blocking core of NextBatch, for tests with an injected clock: cuts a batch that the
  // worker `takes` if one is due at clock->Now(); else sets *next_due to when the next one will
  // be (SteadyTime::max() when every queue it could take from is empty). Tasks to drop are
  // appended to *drops, for the caller to run outside any lock.
  std::optional<AnyBatch> TryCut(std::vector<Drop>* drops, SteadyTime* next_due,
                                 const Takes& takes = {}) {
    absl::MutexLock lock(&mu_);
    return CutForLocked(clock_->Now(), takes, drops, next_due);
  }

  // A due batch of class `priority` if there is one, without waiting: what a worker computing
  // bulk work runs between two chunks. Tasks to drop are appended to *drops.
  std::optional<AnyBatch> TryCutNow(Priority priority, std::vector<Drop>* drops) {
    absl::MutexLock lock(&mu_);
    SteadyTime next_due;
    return TryCutLocked(clock_->Now(), static_cast<int>(priority), drops, &next_due);
  }

  // Whether a task of class `priority` waits (due or not): lets a worker skip TryCutNow's lock.
  bool Waiting(Priority priority) const {
    return waiting_[static_cast<int>(priority)].load(std::memory_order_relaxed) > 0;
  }

  // A queued task's caller may have gone (its `cancelled` turned true): waiting workers look
  // again now, and drop it if it is still queued.
  void Wake() { SignalAll(); }

  // Hands queued tasks out at once, without waiting for the delay, and new ones as they come
  // (the calls accepted before a shutdown still send theirs).
  void Drain() {
    {
      absl::MutexLock lock(&mu_);
      draining_ = true;
    }
    SignalAll();
  }

  // Refuses new tasks; queued ones are still handed out (at once, without waiting for the
  // delay), after which NextBatch returns nullopt.
  void Shutdown() {
    {
      absl::MutexLock lock(&mu_);
      shutdown_ = true;
    }
    SignalAll();
  }

 private:
  // How early gRPC's deadline timer may cancel a call, compared with our steady clock.
  static constexpr std::chrono::milliseconds kDeadlineSlack{20};
  static constexpr int kAnyClass = -1;

  // The class a worker that `takes` so takes batches of (kAnyClass: of every class).
  static int ClassOf(const Takes& takes) {
    return takes.only.has_value() ? static_cast<int>(*takes.only) : kAnyClass;
  }
  // Workers wait on the condition variable of the class they take (the last one: any class), so
  // that a task wakes a worker that can take it, never only one that cannot.
  static size_t Waiters(int cls) {
    return cls == kAnyClass ? kPriorities : static_cast<size_t>(cls);
  }
  // Work of class `cls` (kAnyClass: of some class) may be due: wakes one worker of each kind
  // that could take it, and a stand-in of another class, which must learn when to step in.
  void SignalFor(int cls) {
    const bool stand_ins = stand_ins_.load(std::memory_order_relaxed) > 0;
    for (int c = 0; c < kPriorities; ++c) {
      if (cls == kAnyClass || c == cls || stand_ins) cv_[Waiters(c)].Signal();
    }
    cv_[Waiters(kAnyClass)].Signal();
  }
  void SignalAll() {
    for (absl::CondVar& cv : cv_) cv.SignalAll();
  }

  // One queue (a job type and a class): a FIFO per caller, the callers with tasks in turn order.
  template <typename Job>
  struct Queue {
    std::unordered_map<uint64_t, std::deque<Task<Job>>> flows;
    std::deque<uint64_t> turns;  // callers with tasks; the front one gives the next task
    int64_t rows = 0;
    int64_t tasks = 0;
    size_t last_batch_tasks = 0;  // tasks in the queue's previous batch
  };
  template <typename Job>
  using Classes = std::array<Queue<Job>, kPriorities>;

  // Moves `task` into its queue, or leaves it (and says why) when it cannot be queued.
  template <typename Job>
  absl::Status TryQueue(Task<Job>& task) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const auto cls = static_cast<size_t>(task.priority);
    Queue<Job>& q = std::get<Classes<Job>>(queues_)[cls];
    if (shutdown_) return absl::UnavailableError("the server is shutting down");
    if (q.tasks >= options_.max_queue_size) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the ", PriorityName(task.priority), " request queue is full (",
                       options_.max_queue_size, " requests waiting); retry later"));
    }
    task.enqueued_at = clock_->Now();
    q.rows += task.job.rows();
    ++q.tasks;
    std::deque<Task<Job>>& flow = q.flows[task.caller];
    if (flow.empty()) q.turns.push_back(task.caller);
    flow.push_back(std::move(task));
    DepthChanged<Job>(q, cls);
    return absl::OkStatus();
  }

  template <typename Job>
  void DepthChanged(const Queue<Job>& q, size_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t waiting = 0;
    std::apply([&](const auto&... c) { ((waiting += c[cls].tasks), ...); }, queues_);
    waiting_[cls].store(waiting, std::memory_order_relaxed);
    if (options_.on_depth) options_.on_depth(Job::kKind, static_cast<Priority>(cls), q.tasks);
  }

  template <typename Job>
  void NotComputed(const absl::Status& why) {
    if (options_.on_not_computed) options_.on_not_computed(Job::kKind, why);
  }

  // Moves the tasks nobody waits for any more out of `q` (into *drops); the earliest deadline
  // still ahead, so that the worker wakes then to drop that one too.
  template <typename Job>
  SteadyTime DropExpiredLocked(Queue<Job>& q, size_t cls, SteadyTime now, std::vector<Drop>* drops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SteadyTime earliest = SteadyTime::max();
    const int64_t before = q.tasks;
    for (auto flow = q.flows.begin(); flow != q.flows.end();) {
      std::deque<Task<Job>>& tasks = flow->second;
      for (auto it = tasks.begin(); it != tasks.end();) {
        // A call whose deadline passed is also cancelled by gRPC, whose timer may fire a little
        // before our clock reaches the deadline: the deadline is the reason then.
        absl::Status why;
        if (it->deadline <= now) {
          why = absl::DeadlineExceededError("the deadline passed while queued");
        } else if (it->cancelled && it->cancelled()) {
          why = it->deadline <= now + kDeadlineSlack
                    ? absl::DeadlineExceededError("the deadline passed while queued")
                    : absl::CancelledError("the call was cancelled while queued");
        }
        if (why.ok()) {
          earliest = std::min(earliest, it->deadline);
          ++it;
          continue;
        }
        q.rows -= it->job.rows();
        --q.tasks;
        drops->push_back([this, task = std::move(*it), why]() mutable {
          NotComputed<Job>(why);
          task.done(why);
        });
        it = tasks.erase(it);
      }
      if (tasks.empty()) {
        q.turns.erase(std::find(q.turns.begin(), q.turns.end(), flow->first));
        flow = q.flows.erase(flow);
      } else {
        ++flow;
      }
    }
    if (q.tasks != before) DepthChanged<Job>(q, cls);
    return earliest;
  }

  // When the oldest task of `q` arrived (SteadyTime::max() when `q` is empty).
  template <typename Job>
  static SteadyTime OldestLocked(const Queue<Job>& q) {
    SteadyTime oldest = SteadyTime::max();
    for (const auto& [caller, tasks] : q.flows)
      oldest = std::min(oldest, tasks.front().enqueued_at);
    return oldest;
  }

  // When `q` is due, given its oldest task's arrival.
  template <typename Job>
  SteadyTime DueLocked(const Queue<Job>& q, SteadyTime oldest) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const bool wait = q.rows < options_.max_batch_rows && !shutdown_ && !draining_ &&
                      (!options_.adaptive_delay || q.last_batch_tasks > 1);
    return wait ? oldest + options_.max_queue_delay : oldest;
  }

  template <typename Job>
  Batch<Job> CutLocked(Queue<Job>& q, size_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Batch<Job> batch;
    int64_t rows = 0;
    while (!q.turns.empty()) {
      const uint64_t caller = q.turns.front();
      std::deque<Task<Job>>& tasks = q.flows[caller];
      const int64_t n = tasks.front().job.rows();
      if (!batch.empty() && rows + n > options_.max_batch_rows) break;
      rows += n;
      q.rows -= n;
      --q.tasks;
      batch.push_back(std::move(tasks.front()));
      tasks.pop_front();
      q.turns.pop_front();
      if (tasks.empty()) {
        q.flows.erase(caller);
      } else {
        q.turns.push_back(caller);
      }
    }
    q.last_batch_tasks = batch.size();
    DepthChanged<Job>(q, cls);
    return batch;
  }

  // The batch a worker that `takes` so cuts at `now`: of its class(es); else, for a stand-in, a
  // batch of another class that no worker has cut for stand_in_after since it was due.
  std::optional<AnyBatch> CutForLocked(SteadyTime now, const Takes& takes, std::vector<Drop>* drops,
                                       SteadyTime* next_due) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int cls = ClassOf(takes);
    std::optional<AnyBatch> batch = TryCutLocked(now, cls, drops, next_due);
    if (batch.has_value() || cls == kAnyClass || takes.stand_in_after.count() <= 0) return batch;
    for (int other = 0; other < kPriorities; ++other) {
      if (other == cls) continue;
      const SteadyTime due = EarliestDueLocked(other);
      if (due == SteadyTime::max()) continue;
      const SteadyTime step_in = std::max(due, last_cut_[other]) + takes.stand_in_after;
      if (step_in <= now) {
        SteadyTime ignored;
        return TryCutLocked(now, other, drops, &ignored, /*stand_in=*/true);
      }
      *next_due = std::min(*next_due, step_in);
    }
    return std::nullopt;
  }

  // When the first queue of class `cls` is (or was) due; SteadyTime::max() when all are empty.
  SteadyTime EarliestDueLocked(int cls) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SteadyTime due = SteadyTime::max();
    std::apply(
        [&](const auto&... classes) {
          auto visit = [&](const auto& c) {
            const auto& q = c[static_cast<size_t>(cls)];
            if (q.tasks > 0) due = std::min(due, DueLocked(q, OldestLocked(q)));
          };
          (visit(classes), ...);
        },
        queues_);
    return due;
  }

  // Cuts a due batch: of class `only`, or of any class (kAnyClass: interactive first).
  // A stand-in's cut leaves last_cut_ as it was: the workers of that class are still starved.
  std::optional<AnyBatch> TryCutLocked(SteadyTime now, int only, std::vector<Drop>* drops,
                                       SteadyTime* next_due, bool stand_in = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    *next_due = SteadyTime::max();
    // The due queue of the most urgent class whose oldest task is oldest goes first.
    constexpr size_t kNone = sizeof...(Jobs) * kPriorities;
    size_t best = kNone;
    int best_class = kPriorities;
    SteadyTime best_oldest = SteadyTime::max();
    size_t index = 0;
    std::apply(
        [&](auto&... classes) {
          auto visit = [&](auto& c) {
            for (size_t cls = 0; cls < kPriorities; ++cls, ++index) {
              if (only != kAnyClass && static_cast<int>(cls) != only) continue;
              auto& q = c[cls];
              const SteadyTime earliest_deadline = DropExpiredLocked(q, cls, now, drops);
              if (q.tasks == 0) continue;
              *next_due = std::min(*next_due, earliest_deadline);
              const SteadyTime oldest = OldestLocked(q);
              const SteadyTime due = DueLocked(q, oldest);
              if (due > now) {
                *next_due = std::min(*next_due, due);
                continue;
              }
              const int rank = static_cast<int>(cls);
              if (rank < best_class || (rank == best_class && oldest < best_oldest)) {
                best = index;
                best_class = rank;
                best_oldest = oldest;
              }
            }
          };
          (visit(classes), ...);
        },
        queues_);
    if (best == kNone) return std::nullopt;
    std::optional<AnyBatch> batch;
    index = 0;
    std::apply(
        [&](auto&... classes) {
          auto visit = [&](auto& c) {
            for (size_t cls = 0; cls < kPriorities; ++cls, ++index) {
              if (index != best) continue;
              batch.emplace(CutLocked(c[cls], cls));
              if (!stand_in) last_cut_[cls] = now;
            }
          };
          (visit(classes), ...);
        },
        queues_);
    return batch;
  }

  const BatcherOptions options_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  std::array<absl::CondVar, kPriorities + 1> cv_;  // by Waiters()
  std::tuple<Classes<Jobs>...> queues_ ABSL_GUARDED_BY(mu_);
  // When a worker (not a stand-in) last cut a batch of each class.
  std::array<SteadyTime, kPriorities> last_cut_ ABSL_GUARDED_BY(mu_){};
  // Stand-ins waiting in NextBatch (read without the lock by SignalFor()).
  std::atomic<int> stand_ins_{0};
  // Tasks queued per class, over every job type (read without the lock by Waiting()).
  std::array<std::atomic<int64_t>, kPriorities> waiting_{};
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_BATCHER_H_
