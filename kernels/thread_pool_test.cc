// ThreadPool::ParallelFor runs every index exactly once, for any pool and loop size; the CPUs a
// process may use follow its affinity and its cgroup's quota.
#include "kernels/thread_pool.h"

#include <sched.h>

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace zlpr::internal {
namespace {

TEST(ThreadPoolTest, RunsEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int64_t n : {0, 1, 3, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.ParallelFor(n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "index " << i;
    }
  }
}

TEST(ThreadPoolTest, CanBeReusedManyTimes) {
  ThreadPool pool(3);
  std::atomic<int64_t> sum{0};
  for (int round = 0; round < 200; ++round) {
    pool.ParallelFor(17, [&](int64_t i) { sum.fetch_add(i); });
  }
  EXPECT_EQ(sum.load(), 200 * (16 * 17 / 2));
}

TEST(UsableCpusTest, ACgroupQuotaIsRoundedUpAndNoLimitIsNone) {
  EXPECT_EQ(CpusOfQuota("max 100000"), std::nullopt);
  EXPECT_EQ(CpusOfQuota("200000 100000\n"), 2);
  EXPECT_EQ(CpusOfQuota("150000 100000"), 2);  // 1.5 CPUs: two threads may run
  EXPECT_EQ(CpusOfQuota("50000 100000"), 1);
  EXPECT_EQ(CpusOfQuota("-1", "100000"), std::nullopt);  // cgroup v1's "no limit"
  EXPECT_EQ(CpusOfQuota("400000", "100000"), 4);
  for (const char* bad : {"", "100000", "x 100000", "100000 0", "1 2 3", "0 100000"}) {
    EXPECT_EQ(CpusOfQuota(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(CpusOfQuota("9223372036854775807 1"), 1 << 20);
}

TEST(UsableCpusTest, NeverMoreThanTheAffinityMaskAllows) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cpus = UsableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, CPU_COUNT(&set));

  // Narrowed to one CPU (as `taskset -c 0` would), the process may use one. The mask is the
  // calling thread's, which is what sched_getaffinity(0) reads.
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) {
      CPU_SET(c, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(UsableCpus(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(set), &set), 0);
}

}  // namespace
}  // namespace zlpr::internal
