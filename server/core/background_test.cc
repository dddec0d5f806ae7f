// The background pool: tasks run on threads the OS runs at the lowered priority, and inline
// once the pool stopped.
#include "server/core/background.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

struct Seen {
  int policy = -1;
  int nice = 0;
};

Seen RunOn(BackgroundPool& pool) {
  Seen seen;
  absl::Notification done;
  pool.Post([&] {
    seen.policy = sched_getscheduler(0);
    seen.nice = getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
    done.Notify();
  });
  done.WaitForNotification();
  return seen;
}

TEST(BackgroundPoolTest, ThreadsRunAtThePolicysPriority) {
  // (No rescue within the test: a loaded machine may keep an idle thread waiting.)
  BackgroundPool idle(1, BackgroundPolicy::kIdle, absl::Hours(1));
  EXPECT_EQ(RunOn(idle).policy, SCHED_IDLE);
  BackgroundPool nice(1, BackgroundPolicy::kNice, absl::Hours(1));
  const Seen n = RunOn(nice);
  EXPECT_EQ(n.policy, SCHED_OTHER);
  EXPECT_EQ(n.nice, 19);
  BackgroundPool normal(1, BackgroundPolicy::kNormal);
  const Seen o = RunOn(normal);
  EXPECT_EQ(o.policy, SCHED_OTHER);
  EXPECT_EQ(o.nice, getpriority(PRIO_PROCESS, 0));
}

TEST(BackgroundPoolTest, StopRunsWhatIsQueuedAndLaterTasksRunInline) {
  std::atomic<int> ran{0};
  BackgroundPool pool(2, BackgroundPolicy::kNormal);
  for (int i = 0; i < 100; ++i) pool.Post([&] { ran.fetch_add(1); });
  pool.Stop();
  EXPECT_EQ(ran.load(), 100);
  pool.Post([&] { ran.fetch_add(1); });
  EXPECT_EQ(ran.load(), 101);  // inline
}

// A task the lowered threads never get to (here: there are none) runs once it has waited
// max_wait, on the rescue thread at the server's own priority.
TEST(BackgroundPoolTest, ATaskThatWaitsTooLongRunsAtTheServersPriority) {
  BackgroundPool pool(0, BackgroundPolicy::kIdle, absl::Milliseconds(1));
  const Seen seen = RunOn(pool);
  EXPECT_EQ(seen.policy, SCHED_OTHER);
  EXPECT_EQ(seen.nice, getpriority(PRIO_PROCESS, 0));
  // And Stop still runs what is queued.
  std::atomic<int> ran{0};
  BackgroundPool stopped(0, BackgroundPolicy::kIdle, absl::Hours(1));
  for (int i = 0; i < 3; ++i) stopped.Post([&] { ++ran; });
  stopped.Stop();
  EXPECT_EQ(ran.load(), 3);
}

TEST(BackgroundPoolTest, PoliciesParseByName) {
  EXPECT_EQ(*ParseBackgroundPolicy("idle"), BackgroundPolicy::kIdle);
  EXPECT_EQ(*ParseBackgroundPolicy("nice"), BackgroundPolicy::kNice);
  EXPECT_EQ(*ParseBackgroundPolicy("normal"), BackgroundPolicy::kNormal);
  EXPECT_EQ(ParseBackgroundPolicy("fast").status().message(),
            "'fast' is not a policy: idle, nice or normal");
}

}  // namespace
}  // namespace zlpr::server
