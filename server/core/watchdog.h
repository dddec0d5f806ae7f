// Runs callbacks at deadlines, on one thread of its own: how the server cancels a call whose
// client stopped reading its response (gRPC has no write deadline of its own).
//
//   Watchdog watchdog;
//   Watchdog::Id id = watchdog.Arm(now + timeout, [ctx] { ctx->TryCancel(); });
//   ... the write completes ...
//   watchdog.Disarm(id);  // from here on the callback will not run, and is not running
//
// Callbacks must be short (they delay the ones after them) and must not call Disarm on another
// watchdog entry that waits for this thread.
#ifndef ZLPR_SERVER_CORE_WATCHDOG_H_
#define ZLPR_SERVER_CORE_WATCHDOG_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace zlpr::server {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  using Id = uint64_t;  // 0 is never an armed entry

  Watchdog();
  // Joins the thread; callbacks not yet due never run.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Runs `fire` once at `deadline` (soon, when it has passed) unless disarmed first.
  Id Arm(Clock::time_point deadline, absl::AnyInvocable<void()> fire) ABSL_LOCKS_EXCLUDED(mu_);

  // After this returns, `id`'s callback does not run and is not running (it waits for one that
  // is, unless called from that callback). An id that fired or was disarmed is ignored.
  void Disarm(Id id) ABSL_LOCKS_EXCLUDED(mu_);

  // Callbacks that ran so far.
  int64_t fired() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run();

  mutable absl::Mutex mu_;
  std::map<std::pair<Clock::time_point, Id>, absl::AnyInvocable<void()>> due_ ABSL_GUARDED_BY(mu_);
  std::map<Id, Clock::time_point> armed_ ABSL_GUARDED_BY(mu_);
  Id next_id_ ABSL_GUARDED_BY(mu_) = 1;
  Id firing_ ABSL_GUARDED_BY(mu_) = 0;  // the callback running now
  int64_t fired_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_WATCHDOG_H_
