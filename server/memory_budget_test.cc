// MemoryBudget: leases that never overdraw the budget, also when taken from many threads.
#include "server/memory_budget.h"

#include <atomic>
#include <barrier>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

TEST(MemoryBudgetTest, LeasesNeverOverdrawAndAreReturnedWhenDestroyed) {
  std::vector<int64_t> seen;
  MemoryBudget budget(100, [&](int64_t held) { seen.push_back(held); });
  std::optional<MemoryBudget::Lease> a = budget.TryAcquire(60);
  ASSERT_TRUE(a.has_value());
  EXPECT_FALSE(budget.TryAcquire(41).has_value());
  EXPECT_FALSE(budget.TryAcquire(101).has_value());  // never fits, even when idle
  EXPECT_FALSE(budget.TryAcquire(-1).has_value());
  EXPECT_TRUE(a->TryGrow(40));
  EXPECT_FALSE(a->TryGrow(1));
  EXPECT_EQ(a->bytes(), 100);
  EXPECT_EQ(budget.held(), 100);
  MemoryBudget::Lease moved = *std::move(a);
  a.reset();  // the moved-from lease returns nothing
  EXPECT_EQ(budget.held(), 100);
  moved.Reset();
  EXPECT_EQ(budget.held(), 0);
  EXPECT_EQ(budget.returned(), 100);
  EXPECT_EQ(seen, (std::vector<int64_t>{60, 100, 0}));
  EXPECT_TRUE(budget.TryAcquire(100).has_value());
}

TEST(MemoryBudgetTest, ConcurrentLeasesStayWithinTheLimit) {
  MemoryBudget budget(1000);
  std::atomic<int64_t> max_seen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        std::optional<MemoryBudget::Lease> lease = budget.TryAcquire(1 + i % 300);
        int64_t held = budget.held();
        int64_t prev = max_seen.load();
        while (held > prev && !max_seen.compare_exchange_weak(prev, held)) {
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(max_seen.load(), 1000);
  EXPECT_EQ(budget.held(), 0);
}

// Leases held at once by racing threads: exactly as many as fit are granted, every round.
// (The loop above cannot promise that its threads overlap on a busy machine; this one makes
// them, with a barrier between taking and returning.)
TEST(MemoryBudgetTest, RacingThreadsGetExactlyWhatFits) {
  constexpr int kThreads = 8, kRounds = 300;
  MemoryBudget budget(1000);
  std::barrier sync(kThreads);
  std::atomic<int> granted{0};
  std::vector<int> per_round(kRounds, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        std::optional<MemoryBudget::Lease> lease = budget.TryAcquire(200);  // 5 of 8 fit
        if (lease.has_value()) granted.fetch_add(1);
        sync.arrive_and_wait();  // every thread has tried; the granted leases are all held
        if (t == 0) {
          per_round[round] = granted.exchange(0);
          EXPECT_EQ(budget.held(), 1000) << "round " << round;
        }
        sync.arrive_and_wait();
        lease.reset();
        sync.arrive_and_wait();  // all returned before the next round
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int round = 0; round < kRounds; ++round) EXPECT_EQ(per_round[round], 5) << round;
  EXPECT_EQ(budget.held(), 0);
}

TEST(ReclaimerTest, TrimsOnceFreedBytesPassTheThresholdAndTheLoadIsLow) {
  MemoryBudget budget(1000);
  Reclaimer reclaimer(&budget, std::chrono::milliseconds(5), /*min_returned=*/500);
  { auto small = budget.TryAcquire(100); }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(reclaimer.trims(), 0);  // 100 bytes returned: not worth a trim
  auto busy = budget.TryAcquire(900);
  busy.reset();  // 1000 returned, budget idle
  for (int i = 0; i < 400 && reclaimer.trims() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(reclaimer.trims(), 1);
}

}  // namespace
}  // namespace zlpr::server
