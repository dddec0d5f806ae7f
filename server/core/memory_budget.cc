// MemoryBudget's reclaimer and the machine's memory.
#include "server/core/memory_budget.h"

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

namespace zlpr::server {

struct MemoryBudget::Ticket::Waiter {
  int64_t bytes;
  absl::AnyInvocable<void(Lease)> granted;
  bool done = false;  // granted or cancelled (guarded by the budget's mu_)
};

MemoryBudget::Ticket MemoryBudget::Wait(int64_t bytes, absl::AnyInvocable<void(Lease)> granted) {
  if (bytes < 0 || bytes > limit_) return Ticket();
  auto waiter = std::make_shared<Ticket::Waiter>(Ticket::Waiter{bytes, std::move(granted)});
  {
    absl::MutexLock lock(&mu_);
    waiting_.fetch_add(1);
    if (queue_.empty() && Take(bytes)) {
      waiting_.fetch_sub(1);
      waiter->done = true;
    } else {
      queue_.push_back(waiter);
      return Ticket(this, std::move(waiter));
    }
  }
  waiter->granted(Lease(this, bytes));
  return Ticket();
}

void MemoryBudget::ServeWaiters() {
  std::vector<std::shared_ptr<Ticket::Waiter>> served;
  {
    absl::MutexLock lock(&mu_);
    while (!queue_.empty()) {
      Ticket::Waiter& head = *queue_.front();
      if (!head.done) {
        if (!Take(head.bytes)) break;  // in order: nobody passes the head
        head.done = true;
        served.push_back(queue_.front());
      }
      queue_.pop_front();
      waiting_.fetch_sub(1);
    }
  }
  for (auto& w : served) w->granted(Lease(this, w->bytes));
}

bool MemoryBudget::Ticket::Cancel() {
  if (budget_ == nullptr) return false;
  bool cancelled = false;
  {
    absl::MutexLock lock(&budget_->mu_);
    if (!waiter_->done) {
      waiter_->done = true;  // left in the queue, skipped (and dropped) when it reaches the head
      cancelled = true;
    }
  }
  // A cancelled head may have held up the waiters behind it.
  if (cancelled) budget_->ServeWaiters();
  budget_ = nullptr;
  waiter_.reset();
  return cancelled;
}

Reclaimer::Reclaimer(const MemoryBudget* budget, std::chrono::milliseconds period,
                     int64_t min_returned)
    : budget_(budget), period_(period), min_returned_(min_returned), thread_([this] { Run(); }) {}

Reclaimer::~Reclaimer() {
  stop_.Notify();
  thread_.join();
}

void Reclaimer::Run() {
  int64_t returned_at_trim = budget_->returned();
  while (!stop_.WaitForNotificationWithTimeout(absl::FromChrono(period_))) {
    const int64_t returned = budget_->returned();
    if (returned - returned_at_trim < min_returned_) continue;
    if (budget_->held() > budget_->limit() / 4) continue;  // still busy: the memory is in use
    returned_at_trim = returned;
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
    trims_.fetch_add(1);
  }
}

namespace {

// The first line of `path` as a byte count; nullopt when absent or "max" (no limit).
std::optional<int64_t> ReadLimit(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value) || value <= 0) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

int64_t AvailableMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  int64_t bytes = pages > 0 && page > 0 ? int64_t{pages} * page : int64_t{8} << 30;
  // cgroup v2, then v1 (whose "no limit" is a huge number, which min() ignores).
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    if (const std::optional<int64_t> limit = ReadLimit(path)) bytes = std::min(bytes, *limit);
  }
  return bytes;
}

int64_t DefaultMemoryShare() { return std::max<int64_t>(AvailableMemoryBytes() / 16, 256 << 20); }

}  // namespace zlpr::server
