// ThreadPool: workers wait on a generation counter; indices are claimed with one atomic.
#include "kernels/thread_pool.h"

namespace zlpr::internal {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  start_cv_.SignalAll();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunShare() {
  for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_;
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    (*fn_)(i);
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    fn_ = &fn;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    active_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_cv_.SignalAll();
  RunShare();
  absl::MutexLock lock(&mu_);
  while (active_ != 0) done_cv_.Wait(&mu_);
  fn_ = nullptr;
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && generation_ == seen) start_cv_.Wait(&mu_);
      if (stop_) return;
      seen = generation_;
    }
    RunShare();
    {
      absl::MutexLock lock(&mu_);
      if (--active_ == 0) done_cv_.Signal();
    }
  }
}

}  // namespace zlpr::internal
