// Watchdog: one thread waiting for the earliest deadline.
#include "server/core/watchdog.h"

#include "absl/time/time.h"

namespace zlpr::server {

Watchdog::Watchdog() : thread_([this] { Run(); }) {}

Watchdog::~Watchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

Watchdog::Id Watchdog::Arm(Clock::time_point deadline, absl::AnyInvocable<void()> fire) {
  absl::MutexLock lock(&mu_);
  const Id id = next_id_++;
  due_.emplace(std::make_pair(deadline, id), std::move(fire));
  armed_.emplace(id, deadline);
  return id;
}

void Watchdog::Disarm(Id id) {
  if (id == 0) return;
  absl::AnyInvocable<void()> dropped;  // destroyed outside the lock
  absl::MutexLock lock(&mu_);
  if (auto it = armed_.find(id); it != armed_.end()) {
    auto entry = due_.find({it->second, id});
    dropped = std::move(entry->second);
    due_.erase(entry);
    armed_.erase(it);
    return;
  }
  if (std::this_thread::get_id() == thread_.get_id()) return;  // from the callback itself
  struct Firing {
    const Id* firing;
    Id id;
  };
  Firing firing{&firing_, id};
  mu_.Await(absl::Condition(
      +[](Firing* f) { return *f->firing != f->id; }, &firing));
}

int64_t Watchdog::fired() const {
  absl::MutexLock lock(&mu_);
  return fired_;
}

void Watchdog::Run() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    const Clock::time_point now = Clock::now();
    if (due_.empty() || due_.begin()->first.first > now) {
      // Woken by a new earlier entry, stop_, or the earliest deadline.
      const Clock::time_point until =
          due_.empty() ? now + std::chrono::hours(1) : due_.begin()->first.first;
      const Id earliest = due_.empty() ? 0 : due_.begin()->first.second;
      struct Wake {
        const Watchdog* w;
        Id earliest;
      };
      Wake wake{this, earliest};
      mu_.AwaitWithTimeout(
          absl::Condition(
              +[](Wake* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                return w->w->stop_ ||
                       (!w->w->due_.empty() && w->w->due_.begin()->first.second != w->earliest);
              },
              &wake),
          absl::FromChrono(until - now));
      continue;
    }
    auto entry = due_.begin();
    const Id id = entry->first.second;
    absl::AnyInvocable<void()> fire = std::move(entry->second);
    due_.erase(entry);
    armed_.erase(id);
    firing_ = id;
    mu_.Unlock();
    fire();
    fire = nullptr;
    mu_.Lock();
    firing_ = 0;
    ++fired_;
  }
}

}  // namespace zlpr::server
