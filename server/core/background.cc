// BackgroundPool: a FIFO of tasks served by threads at a lowered OS priority, and by a rescue
// thread at the server's while those take none for too long.
#include "server/core/background.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace zlpr::server {
namespace {

// Lowers the calling thread's priority; false (errno set) when the OS refused.
bool TryLowerThisThread(BackgroundPolicy policy) {
  switch (policy) {
    case BackgroundPolicy::kIdle: {
      sched_param param{};
      param.sched_priority = 0;
      return sched_setscheduler(0, SCHED_IDLE, &param) == 0;  // 0: the calling thread
    }
    case BackgroundPolicy::kNice:
      return setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19) == 0;
    case BackgroundPolicy::kNormal:
      return true;
  }
  return true;
}

}  // namespace

void LowerThisThread(BackgroundPolicy policy) {
  static std::atomic<bool> warned{false};
  if (!TryLowerThisThread(policy) && !warned.exchange(true)) {
    std::fprintf(stderr,
                 "zlpr-server: could not lower the bulk threads' priority (--bulk_threads=%s: "
                 "%s); they run at the server's priority\n",
                 BackgroundPolicyName(policy), std::strerror(errno));
  }
}

absl::StatusOr<BackgroundPolicy> ParseBackgroundPolicy(std::string_view name) {
  if (name == "idle") return BackgroundPolicy::kIdle;
  if (name == "nice") return BackgroundPolicy::kNice;
  if (name == "normal") return BackgroundPolicy::kNormal;
  return absl::InvalidArgumentError(
      absl::StrCat("'", std::string(name), "' is not a policy: idle, nice or normal"));
}

const char* BackgroundPolicyName(BackgroundPolicy policy) {
  switch (policy) {
    case BackgroundPolicy::kIdle:
      return "idle";
    case BackgroundPolicy::kNice:
      return "nice";
    case BackgroundPolicy::kNormal:
      return "normal";
  }
  return "?";
}

BackgroundPool::BackgroundPool(int threads, BackgroundPolicy policy, absl::Duration max_wait)
    : max_wait_(max_wait), last_taken_(absl::Now()) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this, policy] { Loop(policy); });
  rescuer_ = std::thread([this] { Rescue(); });
}

BackgroundPool::~BackgroundPool() { Stop(); }

void BackgroundPool::Post(absl::AnyInvocable<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      tasks_.push_back({.task = std::move(task), .posted = absl::Now()});
      return;
    }
  }
  task();
}

void BackgroundPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  if (rescuer_.joinable()) rescuer_.join();
}

void BackgroundPool::Loop(BackgroundPolicy policy) {
  pthread_setname_np(pthread_self(), "zlpr-bulk");  // as top -H and /proc show it
  LowerThisThread(policy);
  for (;;) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_, absl::Condition(this, &BackgroundPool::Ready));
      if (tasks_.empty()) return;  // stopping, and nothing left
      task = std::move(tasks_.front().task);
      tasks_.pop_front();
      last_taken_ = absl::Now();
    }
    task();
  }
}

void BackgroundPool::Rescue() {
  pthread_setname_np(pthread_self(), "zlpr-bulk-late");
  for (;;) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      for (;;) {
        if (stopping_) {
          if (tasks_.empty()) return;
          break;  // helps drain what is queued
        }
        if (tasks_.empty()) {
          mu_.Await(absl::Condition(this, &BackgroundPool::Ready));
          continue;
        }
        // Starved: a task waiting, and the lowered threads have taken none for max_wait (a long
        // queue they work through is not starvation).
        const absl::Time due = std::max(last_taken_, tasks_.front().posted) + max_wait_;
        if (absl::Now() >= due) break;  // the pool has had no CPU: run it here
        // Woken at its due time, or by Stop; the pool may take it meanwhile.
        mu_.AwaitWithDeadline(absl::Condition(&stopping_), due);
      }
      task = std::move(tasks_.front().task);
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace zlpr::server
