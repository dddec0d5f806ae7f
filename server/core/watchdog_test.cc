// Watchdog: callbacks at their deadlines, in order; a disarmed one never runs, and Disarm waits
// for one that is running.
#include "server/core/watchdog.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

using std::chrono::milliseconds;

TEST(WatchdogTest, CallbacksRunAtTheirDeadlinesInOrder) {
  Watchdog watchdog;
  // The watchdog's thread is held in a first callback while the others are armed, so that all
  // of them are due when it comes back, whatever the machine's load: it runs them by deadline,
  // not by arming order.
  absl::Notification holding, release;
  watchdog.Arm(Watchdog::Clock::now(), [&] {
    holding.Notify();
    release.WaitForNotification();
  });
  holding.WaitForNotification();
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification last;
  const auto past = Watchdog::Clock::now() - milliseconds(10);
  watchdog.Arm(past + milliseconds(3), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(3);
    last.Notify();
  });
  watchdog.Arm(past + milliseconds(2), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(2);
  });
  watchdog.Arm(past + milliseconds(1), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(1);
  });
  release.Notify();
  last.WaitForNotification();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, std::vector<int>({1, 2, 3}));
}

TEST(WatchdogTest, ACallbackIsNotRunBeforeItsDeadline) {
  Watchdog watchdog;
  absl::Notification ran;
  const auto start = Watchdog::Clock::now();
  watchdog.Arm(start + milliseconds(50), [&] { ran.Notify(); });
  ran.WaitForNotification();
  EXPECT_GE(Watchdog::Clock::now() - start, milliseconds(50));
}

TEST(WatchdogTest, ADisarmedCallbackNeverRuns) {
  Watchdog watchdog;
  std::atomic<int> ran{0};
  const Watchdog::Id id =
      watchdog.Arm(Watchdog::Clock::now() + std::chrono::hours(1), [&] { ran.fetch_add(1); });
  watchdog.Disarm(id);
  absl::Notification after;
  const Watchdog::Id later = watchdog.Arm(Watchdog::Clock::now(), [&] { after.Notify(); });
  after.WaitForNotification();
  watchdog.Disarm(later);  // returns once that callback has finished
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(watchdog.fired(), 1);
  watchdog.Disarm(id);  // again: ignored
  watchdog.Disarm(0);   // never armed: ignored
}

TEST(WatchdogTest, DisarmWaitsForACallbackThatIsRunning) {
  Watchdog watchdog;
  absl::Notification running, release;
  std::atomic<bool> finished{false};
  const Watchdog::Id id = watchdog.Arm(Watchdog::Clock::now(), [&] {
    running.Notify();
    release.WaitForNotification();
    finished.store(true);
  });
  running.WaitForNotification();
  std::thread releaser([&] {
    std::this_thread::sleep_for(milliseconds(50));
    release.Notify();
  });
  watchdog.Disarm(id);
  EXPECT_TRUE(finished.load());
  releaser.join();
}

TEST(WatchdogTest, ACallbackMayDisarmItself) {
  Watchdog watchdog;
  absl::Notification done;
  std::atomic<Watchdog::Id> id{0};
  id = watchdog.Arm(Watchdog::Clock::now() + milliseconds(10), [&] {
    watchdog.Disarm(id.load());
    done.Notify();
  });
  done.WaitForNotification();
}

TEST(WatchdogTest, AnEarlierEntryWakesTheThread) {
  Watchdog watchdog;
  watchdog.Arm(Watchdog::Clock::now() + std::chrono::hours(1), [] {});
  absl::Notification soon;
  const auto start = Watchdog::Clock::now();
  watchdog.Arm(start + milliseconds(10), [&] { soon.Notify(); });
  ASSERT_TRUE(soon.WaitForNotificationWithTimeout(absl::Seconds(5)));
}

}  // namespace
}  // namespace zlpr::server
