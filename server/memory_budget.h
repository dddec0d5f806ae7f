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
// Freed memory is given back to the system (malloc_trim) by Reclaimer once the load is gone:
// glibc keeps large freed blocks in its arenas, so without it a burst of large requests would
// leave the process resident at its peak.
#ifndef ZLPR_SERVER_MEMORY_BUDGET_H_
#define ZLPR_SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <thread>

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
    // Returns the bytes now.
    void Reset() {
      if (budget_ != nullptr) budget_->Give(bytes_);
      budget_ = nullptr;
      bytes_ = 0;
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

  int64_t limit() const { return limit_; }
  int64_t held() const { return held_.load(std::memory_order_relaxed); }
  // Bytes returned since construction (the reclaimer's measure of freed memory).
  int64_t returned() const { return returned_.load(std::memory_order_relaxed); }

 private:
  bool Take(int64_t bytes) {
    if (bytes < 0 || bytes > limit_) return false;
    int64_t held = held_.load(std::memory_order_relaxed);
    do {
      if (held > limit_ - bytes) return false;
    } while (!held_.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed));
    if (on_change_) on_change_(held + bytes);
    return true;
  }
  void Give(int64_t bytes) {
    if (bytes == 0) return;
    const int64_t held = held_.fetch_sub(bytes, std::memory_order_relaxed) - bytes;
    returned_.fetch_add(bytes, std::memory_order_relaxed);
    if (on_change_) on_change_(held);
  }

  const int64_t limit_;
  const std::function<void(int64_t)> on_change_;
  std::atomic<int64_t> held_{0};
  std::atomic<int64_t> returned_{0};
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

#endif  // ZLPR_SERVER_MEMORY_BUDGET_H_
