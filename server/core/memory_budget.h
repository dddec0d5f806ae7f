// A server-wide budget of the bytes that requests in flight hold: every call charges what it
// will keep (its message, the batch's copy of its tensors, its response) when it arrives, and is
// refused with RESOURCE_EXHAUSTED when the budget cannot cover it, before anything is allocated
// for it. The lease is returned when the response has been handed to gRPC.
//
//   MemoryBudget budget(1 << 30);
//   std::optional<MemoryBudget::Lease> lease = budget.TryAcquire(2 * request_bytes);
//   if (!lease) return RESOURCE_EXHAUSTED;
//   if (!lease->TryGrow(response_bytes)) return RESOURCE_EXHAUSTED;
//   ... // the lease returns its bytes when destroyed
//
// A caller that would rather wait than be refused (the HTTP binding holds a body unread until it
// can be covered, as gRPC's flow control does) queues with Wait(): waiters are served in order
// as bytes are returned, each as soon as its bytes fit.
//
// Freed memory is given back to the system (malloc_trim) by Reclaimer once the load is gone:
// glibc keeps large freed blocks in its arenas, so without it a burst of large requests would
// leave the process resident at its peak.
#ifndef ZLPR_SERVER_CORE_MEMORY_BUDGET_H_
#define ZLPR_SERVER_CORE_MEMORY_BUDGET_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace zlpr::server {

class MemoryBudget {
 public:
  // `limit` bytes in all; `on_change(held)` is told every change (keep it cheap: a gauge).
  explicit MemoryBudget(int64_t limit, std::function<void(int64_t)> on_change = nullptr)
      : limit_(limit), on_change_(std::move(on_change)) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept
        : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
    Lease& operator=(Lease&& other) noexcept {
      if (this != &other) {
        Reset();
        budget_ = std::exchange(other.budget_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
      }
      return *this;
    }
    ~Lease() { Reset(); }

    // Adds `bytes` to this lease when the budget has them; false (and no change) otherwise.
    bool TryGrow(int64_t bytes) {
      if (budget_ == nullptr || !budget_->Take(bytes)) return false;
      bytes_ += bytes;
      return true;
    }
    // Returns what this lease holds beyond `bytes` (no change when it holds no more).
    void ShrinkTo(int64_t bytes) {
      if (budget_ == nullptr || bytes < 0 || bytes >= bytes_) return;
      budget_->Give(std::exchange(bytes_, bytes) - bytes);
    }
    // Returns the bytes now.
    void Reset() {
      // Cleared before the bytes go back: Give() may run a waiter's callback, which must see
      // this lease empty.
      MemoryBudget* budget = std::exchange(budget_, nullptr);
      const int64_t bytes = std::exchange(bytes_, 0);
      if (budget != nullptr) budget->Give(bytes);
    }
    int64_t bytes() const { return bytes_; }

   private:
    friend class MemoryBudget;
    Lease(MemoryBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    MemoryBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  // A lease of `bytes` (0 to limit), or nullopt when the bytes held by others leave too little.
  std::optional<Lease> TryAcquire(int64_t bytes) {
    if (!Take(bytes)) return std::nullopt;
    return Lease(this, bytes);
  }

  // A place in the queue of Wait(); Cancel() leaves it.
  class Ticket {
   public:
    Ticket() = default;
    // True when the wait ended here, before its bytes were granted; false when `granted` has
    // run or is running (its lease is then the caller's to drop).
    bool Cancel();
    // Whether the bytes were not granted at once (the caller waits; Cancel() is worth calling).
    bool queued() const { return waiter_ != nullptr; }

   private:
    friend class MemoryBudget;
    struct Waiter;
    Ticket(MemoryBudget* budget, std::shared_ptr<Waiter> waiter)
        : budget_(budget), waiter_(std::move(waiter)) {}
    MemoryBudget* budget_ = nullptr;
    std::shared_ptr<Waiter> waiter_;
  };

  // Takes `bytes` (0 to limit) for the caller as soon as they fit, waiting behind earlier
  // waiters: `granted` runs once with the lease, at once in this thread when they fit now (and
  // nobody waits), else in the thread that returns the bytes that make them fit. Keep `granted`
  // cheap (post the lease to where it is used). `bytes` over the limit never fit: nothing is
  // queued and `granted` never runs (check against limit() first).
  Ticket Wait(int64_t bytes, absl::AnyInvocable<void(Lease)> granted) ABSL_LOCKS_EXCLUDED(mu_);

  int64_t limit() const { return limit_; }
  int64_t held() const { return held_.load(std::memory_order_relaxed); }
  // Bytes returned since construction (the reclaimer's measure of freed memory).
  int64_t returned() const { return returned_.load(std::memory_order_relaxed); }

 private:
  bool Take(int64_t bytes) {
    if (bytes < 0 || bytes > limit_) return false;
    int64_t held = held_.load();  // sequentially consistent: see Give()
    do {
      if (held > limit_ - bytes) return false;
    } while (!held_.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed));
    if (on_change_) on_change_(held + bytes);
    return true;
  }
  void Give(int64_t bytes) {
    if (bytes == 0) return;
    // Sequentially consistent with Wait(): either it sees these bytes back, or this sees it
    // waiting (a waiter is counted before it tries to take its bytes).
    const int64_t held = held_.fetch_sub(bytes) - bytes;
    returned_.fetch_add(bytes, std::memory_order_relaxed);
    if (on_change_) on_change_(held);
    if (waiting_.load() > 0) ServeWaiters();
  }
  void ServeWaiters() ABSL_LOCKS_EXCLUDED(mu_);

  const int64_t limit_;
  const std::function<void(int64_t)> on_change_;
  std::atomic<int64_t> held_{0};
  std::atomic<int64_t> returned_{0};
  std::atomic<int64_t> waiting_{0};  // waiters queued, or about to be
  absl::Mutex mu_;
  std::deque<std::shared_ptr<Ticket::Waiter>> queue_ ABSL_GUARDED_BY(mu_);
};

// Gives freed heap memory back to the system once a budget's load has gone: every `period`, when
// at least `min_returned` bytes were returned to the budget since the last trim and the budget
// is at most a quarter used, malloc_trim(0) (glibc; a no-op elsewhere). One thread.
class Reclaimer {
 public:
  Reclaimer(const MemoryBudget* budget, std::chrono::milliseconds period, int64_t min_returned);
  ~Reclaimer();
  // Trims performed so far.
  int64_t trims() const { return trims_.load(); }

 private:
  void Run();

  const MemoryBudget* const budget_;
  const std::chrono::milliseconds period_;
  const int64_t min_returned_;
  std::atomic<int64_t> trims_{0};
  absl::Notification stop_;
  std::thread thread_;
};

// The default --max_inflight_bytes and --transport_memory_bytes: a sixteenth of the memory this
// process may use (the cgroup's limit when one is set, as in a container, else the machine's
// physical memory), at least 256 MiB. 1.5 GiB on a 24 GiB machine.
int64_t DefaultMemoryShare();

// The memory this process may use: the cgroup (v2 or v1) limit when set, else physical memory.
int64_t AvailableMemoryBytes();

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_MEMORY_BUDGET_H_
