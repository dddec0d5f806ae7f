// MemoryBudget's reclaimer and the machine's memory.
#include "server/memory_budget.h"

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

namespace zlpr::server {

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
