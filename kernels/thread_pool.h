// A fixed pool of worker threads running index-parallel loops (ParallelFor).
#ifndef ZLPR_KERNELS_THREAD_POOL_H_
#define ZLPR_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace zlpr::internal {

// The CPUs this process may run on: those of its affinity mask (taskset, a container's cpuset),
// at most its cgroup's CPU quota rounded up (a container's CPU limit; v2's cpu.max, v1's
// cfs_quota_us), at least 1. std::thread::hardware_concurrency() counts the machine's, and a
// pool sized by it on a CPU-limited container has more runnable threads than CPUs: every batch
// then waits for threads the scheduler has no CPU for.
int UsableCpus();

// The CPUs a cgroup quota allows, rounded up: from cgroup v2's cpu.max ("max 100000",
// "150000 100000"), or from v1's quota and period ("-1" is no limit); nullopt for no limit or a
// text that does not parse.
std::optional<int> CpusOfQuota(std::string_view cpu_max);
std::optional<int> CpusOfQuota(std::string_view quota_us, std::string_view period_us);

// `threads` - 1 workers plus the calling thread run each loop. Which thread runs which index
// is not fixed, so callers make every index's result independent of that (the kernels do:
// an index is a row or a fixed column chunk of a row). One ParallelFor at a time.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) for every i in [0, n), spread over the pool; returns when all are done.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunShare();

  std::vector<std::thread> workers_;
  absl::Mutex mu_;
  absl::CondVar start_cv_;
  absl::CondVar done_cv_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int active_ ABSL_GUARDED_BY(mu_) = 0;  // workers still inside the current loop
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // The current loop: written under mu_ before generation_ moves on, read (without the lock) by
  // workers that saw it move, and by no one once active_ is back to 0.
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace zlpr::internal

#endif  // ZLPR_KERNELS_THREAD_POOL_H_
