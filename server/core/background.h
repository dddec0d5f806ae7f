// Threads the OS runs at a lower priority than the rest of the server, for the bulk work a front
// end does itself: parsing a large request and serializing a bulk request's response. On a
// loaded machine the interactive path (its gRPC threads, the worker) then preempts that work
// instead of sharing the CPU with it. The policy is one of:
//
//   idle    SCHED_IDLE: runs only when nothing else of any priority wants the CPU;
//   nice    nice 19 (SCHED_OTHER): about 1.5 % of a CPU's share against a nice-0 thread;
//   normal  the server's own priority (no isolation; for comparison).
//
// Both lower a thread's priority, which needs no capability; where even that is refused (a
// seccomp profile), the pool says so on stderr once and runs at the default priority.
//
// Lowered, never starved: a CPU kept busy at the server's priority (gRPC's threads reading a
// flood of large messages, most of them refused) would leave an idle-priority thread no CPU at
// all, and the bulk requests already admitted would hold the memory budget while nobody parses
// them, so that every later one is refused too. A rescue thread at the server's priority runs
// the queue's tasks while the lowered threads take none for `max_wait` (500 ms by default) with
// a task waiting: bulk work yields the CPU but still moves. (A long queue that the lowered
// threads work through is left to them.)
//
//   BackgroundPool pool(2, BackgroundPolicy::kIdle);
//   pool.Post([] { ... });  // runs on one of its threads, or inline once the pool stopped
#ifndef ZLPR_SERVER_CORE_BACKGROUND_H_
#define ZLPR_SERVER_CORE_BACKGROUND_H_

#include <deque>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace zlpr::server {

enum class BackgroundPolicy { kIdle, kNice, kNormal };
absl::StatusOr<BackgroundPolicy> ParseBackgroundPolicy(std::string_view name);
const char* BackgroundPolicyName(BackgroundPolicy policy);

// Lowers the calling thread's priority by `policy` (threads it starts inherit it); where the OS
// refuses, says so on stderr once per process and leaves it as it was.
void LowerThisThread(BackgroundPolicy policy);

class BackgroundPool {
 public:
  BackgroundPool(int threads, BackgroundPolicy policy,
                 absl::Duration max_wait = absl::Milliseconds(500));
  ~BackgroundPool();  // runs what is queued, then joins
  BackgroundPool(const BackgroundPool&) = delete;
  BackgroundPool& operator=(const BackgroundPool&) = delete;

  // Runs `task` on a pool thread; inline once Stop() was called.
  void Post(absl::AnyInvocable<void()> task) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs what is queued and joins the threads; later Posts run inline.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Queued {
    absl::AnyInvocable<void()> task;
    absl::Time posted;
  };
  void Loop(BackgroundPolicy policy);
  void Rescue();
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !tasks_.empty() || stopping_; }

  const absl::Duration max_wait_;
  absl::Mutex mu_;
  std::deque<Queued> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_taken_ ABSL_GUARDED_BY(mu_);  // when a lowered thread last took a task
  std::vector<std::thread> threads_;            // the pool's, at the lowered priority
  std::thread rescuer_;                         // at the server's priority
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_BACKGROUND_H_
