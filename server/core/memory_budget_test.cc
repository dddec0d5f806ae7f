// MemoryBudget: leases that never overdraw the budget, also when taken from many threads.
#include "server/core/memory_budget.h"

#include <atomic>
#include <barrier>
#include <optional>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
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
  a.reset();  // NOLINT(bugprone-use-after-move): the moved-from lease returns nothing
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

TEST(MemoryBudgetTest, ShrinkToReturnsWhatALeaseNoLongerNeeds) {
  MemoryBudget budget(100);
  auto lease = budget.TryAcquire(80);
  ASSERT_TRUE(lease.has_value());
  lease->ShrinkTo(30);
  EXPECT_EQ(lease->bytes(), 30);
  EXPECT_EQ(budget.held(), 30);
  lease->ShrinkTo(50);  // never grows
  lease->ShrinkTo(-1);
  EXPECT_EQ(budget.held(), 30);
  lease.reset();
  EXPECT_EQ(budget.held(), 0);
}

TEST(MemoryBudgetTest, WaitersAreServedInOrderAsBytesAreReturned) {
  MemoryBudget budget(100);
  std::vector<std::pair<int, MemoryBudget::Lease>> granted;
  granted.reserve(8);  // a callback appends while another element returns its bytes
  auto grant = [&](int id) {
    return [&granted, id](MemoryBudget::Lease l) { granted.emplace_back(id, std::move(l)); };
  };
  MemoryBudget::Ticket now = budget.Wait(60, grant(0));  // fits: granted at once
  ASSERT_EQ(granted.size(), 1u);
  EXPECT_FALSE(now.Cancel());
  MemoryBudget::Ticket big = budget.Wait(70, grant(1));
  MemoryBudget::Ticket small = budget.Wait(10, grant(2));  // would fit, but waits its turn
  EXPECT_EQ(granted.size(), 1u);
  EXPECT_EQ(budget.held(), 60);
  granted[0].second.Reset();  // 100 free: the 70, then the 10
  ASSERT_EQ(granted.size(), 3u);
  EXPECT_EQ(granted[1].first, 1);
  EXPECT_EQ(granted[2].first, 2);
  EXPECT_EQ(budget.held(), 80);
  EXPECT_FALSE(big.Cancel());  // already granted
  // Over the limit: never queued, never granted.
  MemoryBudget::Ticket never = budget.Wait(101, grant(3));
  EXPECT_FALSE(never.Cancel());
  granted.clear();
  EXPECT_EQ(budget.held(), 0);
}

TEST(MemoryBudgetTest, ACancelledWaiterNoLongerHoldsUpThoseBehindIt) {
  MemoryBudget budget(100);
  auto held = budget.TryAcquire(50);
  std::vector<int> granted;
  std::vector<MemoryBudget::Lease> leases;
  MemoryBudget::Ticket big = budget.Wait(90, [&](MemoryBudget::Lease l) {
    granted.push_back(90);
    leases.push_back(std::move(l));
  });
  MemoryBudget::Ticket small = budget.Wait(40, [&](MemoryBudget::Lease l) {
    granted.push_back(40);
    leases.push_back(std::move(l));
  });
  EXPECT_TRUE(granted.empty());
  EXPECT_TRUE(big.Cancel());  // the 40 fits beside the 50 now
  EXPECT_EQ(granted, std::vector<int>({40}));
  EXPECT_EQ(budget.held(), 90);
  held.reset();
  leases.clear();
  EXPECT_EQ(budget.held(), 0);
  EXPECT_FALSE(small.Cancel());
}

TEST(MemoryBudgetTest, ConcurrentWaitersAreAllServedAndTheBudgetIsNeverOverdrawn) {
  MemoryBudget budget(1000);
  std::atomic<int> served{0};
  std::atomic<int64_t> max_held{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        absl::Notification got;
        MemoryBudget::Lease lease;
        MemoryBudget::Ticket ticket =
            budget.Wait(100 + (t * 37 + i) % 400, [&](MemoryBudget::Lease l) {
              lease = std::move(l);
              got.Notify();
            });
        got.WaitForNotification();
        int64_t held = budget.held(), prev = max_held.load();
        while (held > prev && !max_held.compare_exchange_weak(prev, held)) {
        }
        served.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(served.load(), 8 * 2000);
  EXPECT_LE(max_held.load(), 1000);
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
