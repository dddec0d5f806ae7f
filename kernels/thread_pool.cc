// ThreadPool: workers wait on a generation counter; indices are claimed with one atomic.
#include "kernels/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <string>

namespace zlpr::internal {
namespace {

std::string FirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// The whole of `s` (trimmed) as a decimal integer.
bool ParseInt(std::string_view s, int64_t* value) {
  s = Trim(s);
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, *value);
  return !s.empty() && ec == std::errc() && ptr == end;
}

}  // namespace

std::optional<int> CpusOfQuota(std::string_view quota_us, std::string_view period_us) {
  int64_t quota = 0, period = 0;
  if (!ParseInt(quota_us, &quota) || !ParseInt(period_us, &period) || quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return static_cast<int>(std::min<int64_t>((quota - 1) / period + 1, 1 << 20));
}

std::optional<int> CpusOfQuota(std::string_view cpu_max) {
  cpu_max = Trim(cpu_max);
  const size_t space = cpu_max.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  // "max" does not parse: no limit.
  return CpusOfQuota(cpu_max.substr(0, space), cpu_max.substr(space + 1));
}

int UsableCpus() {
  int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    cpus = CPU_COUNT(&set);
  }
  std::optional<int> quota = CpusOfQuota(FirstLine("/sys/fs/cgroup/cpu.max"));
  if (!quota.has_value()) {
    quota = CpusOfQuota(FirstLine("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                        FirstLine("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  }
  if (quota.has_value()) cpus = std::min(cpus, *quota);
  return std::max(1, cpus);
}

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
