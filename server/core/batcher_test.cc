// The batcher with an injected clock and fake jobs: no threads, no gRPC, no real time (but for
// the last test, which checks the blocking NextBatch loop with the real clock).
#include "server/core/batcher.h"

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <thread>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "server/core/test_clock.h"

namespace zlpr::server {
namespace {

using std::chrono::microseconds;

struct FakeResult {};

// Two job types, as the service has two.
template <JobKind Kind>
struct FakeJob {
  using Result = FakeResult;
  static constexpr JobKind kKind = Kind;
  // One class unless a test says otherwise, so that the tests of batching see one queue per type.
  static constexpr Priority kDefaultPriority = Priority::kInteractive;
  int64_t n = 1;
  int id = 0;
  int64_t rows() const { return n; }
};
using JobA = FakeJob<JobKind::kLoss>;
using JobB = FakeJob<JobKind::kPredict>;
using TestBatcher = Batcher<JobA, JobB>;

// How a task was answered by the batcher, readable after the batcher destroyed it.
struct Fate {
  bool answered = false;
  absl::Status why;
};

class BatcherTest : public ::testing::Test {
 protected:
  BatcherOptions Options(int64_t max_rows, int64_t delay_us, int64_t queue = 100) {
    BatcherOptions o;
    o.adaptive_delay = false;
    o.max_batch_rows = max_rows;
    o.max_queue_delay = microseconds(delay_us);
    o.max_queue_size = queue;
    o.on_not_computed = [this](JobKind kind, const absl::Status& why) {
      not_computed_.emplace_back(kind, why.code());
    };
    return o;
  }
  template <typename Job = JobA>
  Task<Job> Make(int64_t rows, int id = 0, Priority priority = Job::kDefaultPriority,
                 uint64_t caller = 0) {
    fates_.push_back(std::make_shared<Fate>());
    Task<Job> t;
    t.job = Job{.n = rows, .id = id};
    t.priority = priority;
    t.caller = caller;
    t.done = [fate = fates_.back()](const absl::StatusOr<FakeResult>& r) {
      fate->answered = true;
      fate->why = r.status();
    };
    return t;
  }
  template <typename Job = JobA>
  static std::vector<int> Ids(const std::optional<TestBatcher::AnyBatch>& b) {
    std::vector<int> ids;
    for (const Task<Job>& t : std::get<Batch<Job>>(*b)) ids.push_back(t.job.id);
    return ids;
  }
  std::optional<TestBatcher::AnyBatch> Cut(TestBatcher& b) { return b.TryCut(&drops_, &next_due_); }

  FakeClock clock_;
  std::vector<std::shared_ptr<Fate>> fates_;
  std::vector<TestBatcher::Drop> drops_;
  std::vector<std::pair<JobKind, absl::StatusCode>> not_computed_;
  SteadyTime next_due_;
};

TEST_F(BatcherTest, CutsABatchAsSoonAsMaxBatchRowsWait) {
  TestBatcher b(Options(4, 1000), &clock_);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(b.Enqueue(Make(1, i)).ok());
  EXPECT_FALSE(Cut(b).has_value());
  ASSERT_TRUE(b.Enqueue(Make(1, 3)).ok());
  const auto batch = Cut(b);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Ids(batch), (std::vector<int>{0, 1, 2, 3}));
  SteadyTime next_due;
  std::vector<TestBatcher::Drop> drops;
  EXPECT_FALSE(b.TryCut(&drops, &next_due).has_value());
  EXPECT_EQ(next_due, SteadyTime::max());  // the queue is empty
}

TEST_F(BatcherTest, WaitsForTheOldestRequestsDelayThenCutsAPartialBatch) {
  TestBatcher b(Options(64, 500), &clock_);
  const SteadyTime t0 = clock_.Now();
  ASSERT_TRUE(b.Enqueue(Make(2, 7)).ok());
  clock_.Advance(microseconds(200));
  ASSERT_TRUE(b.Enqueue(Make(3, 8)).ok());
  EXPECT_FALSE(Cut(b).has_value());
  EXPECT_EQ(next_due_, t0 + microseconds(500));  // from the oldest, not the newest
  clock_.Advance(microseconds(299));
  EXPECT_FALSE(Cut(b).has_value());
  clock_.Advance(microseconds(1));
  const auto batch = Cut(b);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Ids(batch), (std::vector<int>{7, 8}));
}

TEST_F(BatcherTest, AdaptiveDelayCutsALoneRequestAtOnceAndWaitsUnderLoad) {
  BatcherOptions o = Options(64, 500);
  o.adaptive_delay = true;
  TestBatcher b(o, &clock_);
  // A lone caller: nothing would join, so no wait.
  ASSERT_TRUE(b.Enqueue(Make(1, 1)).ok());
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{1}));
  // Several callers: the batch that forms while none is cut merges them...
  ASSERT_TRUE(b.Enqueue(Make(1, 2)).ok());
  ASSERT_TRUE(b.Enqueue(Make(1, 3)).ok());
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{2, 3}));
  // ...and from then on the queue waits for more, up to the delay.
  ASSERT_TRUE(b.Enqueue(Make(1, 4)).ok());
  EXPECT_FALSE(Cut(b).has_value());
  clock_.Advance(microseconds(500));
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{4}));
  // That batch held one request: load is light again, so the next is cut at once.
  ASSERT_TRUE(b.Enqueue(Make(1, 5)).ok());
  EXPECT_TRUE(Cut(b).has_value());
}

TEST_F(BatcherTest, NeverExceedsMaxBatchRowsAndKeepsTheRestQueued) {
  TestBatcher b(Options(5, 0), &clock_);
  ASSERT_TRUE(b.Enqueue(Make(3, 0)).ok());
  ASSERT_TRUE(b.Enqueue(Make(3, 1)).ok());
  ASSERT_TRUE(b.Enqueue(Make(2, 2)).ok());
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{0}));
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{1, 2}));
}

TEST_F(BatcherTest, RunsARequestLargerThanMaxBatchRowsAloneInsteadOfRefusingIt) {
  TestBatcher b(Options(8, 1000), &clock_);
  ASSERT_TRUE(b.Enqueue(Make(100, 1)).ok());
  ASSERT_TRUE(b.Enqueue(Make(1, 2)).ok());
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{1}));  // due at once: rows >= max
}

TEST_F(BatcherTest, RefusesWithResourceExhaustedWhenTheQueueIsFullAndAnswersTheTask) {
  TestBatcher b(Options(8, 1000, /*queue=*/2), &clock_);
  ASSERT_TRUE(b.Enqueue(Make(1)).ok());
  ASSERT_TRUE(b.Enqueue(Make(1)).ok());
  const absl::Status st = b.Enqueue(Make(1));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(st.message(),
            "the interactive request queue is full (2 requests waiting); retry later");
  EXPECT_TRUE(fates_.back()->answered);
  EXPECT_EQ(fates_.back()->why, st);
  EXPECT_FALSE(fates_.front()->answered);
  ASSERT_EQ(not_computed_.size(), 1u);
  EXPECT_EQ(not_computed_[0].second, absl::StatusCode::kResourceExhausted);
  // The other job type has a queue of its own.
  EXPECT_TRUE(b.Enqueue(Make<JobB>(1)).ok());
}

TEST_F(BatcherTest, DropsCancelledAndExpiredRequestsWithoutBatchingThem) {
  TestBatcher b(Options(8, 100), &clock_);
  Task<JobA> cancelled = Make(1, 1);
  cancelled.cancelled = [] { return true; };
  Task<JobA> expired = Make(1, 2);
  expired.deadline = clock_.Now() + microseconds(50);
  ASSERT_TRUE(b.Enqueue(std::move(cancelled)).ok());
  ASSERT_TRUE(b.Enqueue(std::move(expired)).ok());
  ASSERT_TRUE(b.Enqueue(Make(1, 3)).ok());
  clock_.Advance(microseconds(100));
  EXPECT_EQ(Ids(Cut(b)), (std::vector<int>{3}));
  ASSERT_EQ(drops_.size(), 2u);
  EXPECT_FALSE(fates_[0]->answered);  // answered only when the caller runs the drops
  for (auto& d : drops_) d();
  EXPECT_EQ(fates_[0]->why.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(fates_[1]->why.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(fates_[2]->answered);
  EXPECT_EQ(not_computed_.size(), 2u);
}

TEST_F(BatcherTest, NextBatchDropsExpiredRequestsWithTheRightCode) {
  TestBatcher b(Options(8, 0), &clock_);
  Task<JobA> expired = Make(1, 1);
  expired.deadline = clock_.Now();
  expired.cancelled = [] { return true; };  // gRPC cancels expired calls: the deadline wins
  Task<JobA> cancelled = Make(1, 2);
  cancelled.cancelled = [] { return true; };
  ASSERT_TRUE(b.Enqueue(std::move(expired)).ok());
  ASSERT_TRUE(b.Enqueue(std::move(cancelled)).ok());
  ASSERT_TRUE(b.Enqueue(Make(1, 3)).ok());
  EXPECT_EQ(Ids(b.NextBatch()), (std::vector<int>{3}));
  EXPECT_EQ(fates_[0]->why.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fates_[0]->why.message(), "the deadline passed while queued");
  EXPECT_EQ(fates_[1]->why.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(fates_[1]->why.message(), "the call was cancelled while queued");
}

TEST_F(BatcherTest, TheDueQueueWithTheOldestRequestGoesFirst) {
  TestBatcher b(Options(8, 100), &clock_);
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 10)).ok());
  clock_.Advance(microseconds(10));
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 20)).ok());
  clock_.Advance(microseconds(200));
  EXPECT_EQ(Ids<JobB>(Cut(b)), (std::vector<int>{10}));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{20}));
}

TEST_F(BatcherTest, ReportsEachQueuesDepthByJobKindAndClass) {
  BatcherOptions o = Options(8, 100);
  std::vector<std::tuple<JobKind, Priority, int64_t>> depths;
  o.on_depth = [&](JobKind kind, Priority p, int64_t depth) {
    depths.emplace_back(kind, p, depth);
  };
  TestBatcher b(o, &clock_);
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 0, Priority::kBulk)).ok());
  const std::vector<std::tuple<JobKind, Priority, int64_t>> want = {
      {JobKind::kLoss, Priority::kInteractive, 1},
      {JobKind::kPredict, Priority::kInteractive, 1},
      {JobKind::kPredict, Priority::kInteractive, 2},
      {JobKind::kPredict, Priority::kBulk, 1}};
  EXPECT_EQ(depths, want);
}

TEST_F(BatcherTest, InteractiveWorkIsCutBeforeOlderBulkWork) {
  TestBatcher b(Options(4, 0), &clock_);
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 1, Priority::kBulk)).ok());
  clock_.Advance(microseconds(100));
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 2, Priority::kBulk)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 3, Priority::kInteractive)).ok());
  clock_.Advance(microseconds(100));
  // A loss asked to be interactive goes with the interactive work, not with its type's bulk.
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 4, Priority::kInteractive)).ok());
  EXPECT_EQ(Ids<JobB>(Cut(b)), (std::vector<int>{3}));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{4}));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{1, 2}));
  EXPECT_FALSE(Cut(b).has_value());
}

TEST_F(BatcherTest, TryCutNowTakesOnlyTheClassAskedForAndWaitingSaysWhatIsQueued) {
  TestBatcher b(Options(4, 0), &clock_);
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 1, Priority::kBulk)).ok());
  EXPECT_TRUE(b.Waiting(Priority::kBulk));
  EXPECT_FALSE(b.Waiting(Priority::kInteractive));
  EXPECT_FALSE(b.TryCutNow(Priority::kInteractive, &drops_).has_value());
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 2, Priority::kInteractive)).ok());
  EXPECT_TRUE(b.Waiting(Priority::kInteractive));
  EXPECT_EQ(Ids<JobB>(b.TryCutNow(Priority::kInteractive, &drops_)), (std::vector<int>{2}));
  EXPECT_FALSE(b.Waiting(Priority::kInteractive));
  EXPECT_EQ(Ids<JobA>(b.TryCutNow(Priority::kBulk, &drops_)), (std::vector<int>{1}));
  EXPECT_FALSE(b.Waiting(Priority::kBulk));
}

TEST_F(BatcherTest, AWorkerOfOneClassTakesOnlyThatClass) {
  TestBatcher b(Options(4, 0), &clock_);
  const TestBatcher::Takes bulk{.only = Priority::kBulk};
  const TestBatcher::Takes interactive{.only = Priority::kInteractive};
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 1, Priority::kInteractive)).ok());
  EXPECT_FALSE(b.TryCut(&drops_, &next_due_, bulk).has_value());
  EXPECT_EQ(next_due_, SteadyTime::max());  // nothing of its class waits: it sleeps
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 2, Priority::kBulk)).ok());
  EXPECT_EQ(Ids<JobA>(b.TryCut(&drops_, &next_due_, bulk)), (std::vector<int>{2}));
  EXPECT_EQ(Ids<JobB>(b.TryCut(&drops_, &next_due_, interactive)), (std::vector<int>{1}));
}

TEST_F(BatcherTest, AStandInTakesBulkWorkOnlyOnceNoBulkWorkerTookAnyForItsDelay) {
  TestBatcher b(Options(1, 0), &clock_);
  const TestBatcher::Takes bulk{.only = Priority::kBulk};
  const TestBatcher::Takes stand_in{.only = Priority::kInteractive,
                                    .stand_in_after = std::chrono::milliseconds(500)};
  const SteadyTime t0 = clock_.Now();
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 1, Priority::kBulk)).ok());
  EXPECT_FALSE(b.TryCut(&drops_, &next_due_, stand_in).has_value());
  EXPECT_EQ(next_due_, t0 + std::chrono::milliseconds(500));  // it wakes to look again then
  clock_.Advance(std::chrono::milliseconds(300));
  // The bulk worker takes it in time; the next task, due at once, counts from that cut.
  EXPECT_EQ(Ids<JobA>(b.TryCut(&drops_, &next_due_, bulk)), (std::vector<int>{1}));
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 2, Priority::kBulk)).ok());
  clock_.Advance(std::chrono::milliseconds(499));
  EXPECT_FALSE(b.TryCut(&drops_, &next_due_, stand_in).has_value());
  EXPECT_EQ(next_due_, t0 + std::chrono::milliseconds(800));
  // The bulk worker has had no CPU for 500 ms: the stand-in takes the task, but interactive
  // work first.
  clock_.Advance(std::chrono::milliseconds(1));
  ASSERT_TRUE(b.Enqueue(Make<JobB>(1, 3, Priority::kInteractive)).ok());
  EXPECT_EQ(Ids<JobB>(b.TryCut(&drops_, &next_due_, stand_in)), (std::vector<int>{3}));
  EXPECT_EQ(Ids<JobA>(b.TryCut(&drops_, &next_due_, stand_in)), (std::vector<int>{2}));
  // Its cut is not the bulk worker's (still starved): a task that has waited as long is the
  // stand-in's at once, one that just came waits.
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 4, Priority::kBulk)).ok());
  clock_.Advance(std::chrono::milliseconds(500));
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 5, Priority::kBulk)).ok());
  EXPECT_EQ(Ids<JobA>(b.TryCut(&drops_, &next_due_, stand_in)), (std::vector<int>{4}));
  EXPECT_FALSE(b.TryCut(&drops_, &next_due_, stand_in).has_value());  // 5 came just now
  EXPECT_EQ(next_due_, clock_.Now() + std::chrono::milliseconds(500));
}

TEST_F(BatcherTest, AFullBulkQueueDoesNotRefuseInteractiveWork) {
  TestBatcher b(Options(4, 1000, /*queue=*/2), &clock_);
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 1, Priority::kBulk)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 2, Priority::kBulk)).ok());
  const absl::Status full = b.Enqueue(Make<JobA>(1, 3, Priority::kBulk));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "the bulk request queue is full (2 requests waiting); retry later");
  EXPECT_TRUE(b.Enqueue(Make<JobA>(1, 4, Priority::kInteractive)).ok());
}

TEST_F(BatcherTest, CallersOfOneQueueTakeTurns) {
  // Caller 7 queued five tasks before caller 9 queued two: batches of 4 rows alternate them.
  TestBatcher b(Options(4, 0), &clock_);
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 70 + i, Priority::kBulk, 7)).ok());
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 90 + i, Priority::kBulk, 9)).ok());
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{70, 90, 71, 91}));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{72, 73, 74}));
}

TEST_F(BatcherTest, ATrainerSendingThreeTimesAsFastGetsNoMoreThanItsShare) {
  // Two trainers flood the bulk queue, one with three requests per tick and one with one,
  // while the worker computes two per tick: the slower one gets half of the work (all it asks
  // for), not the quarter that first come, first served would give it.
  TestBatcher b(Options(1, 0, /*queue=*/100000), &clock_);
  int id = 0;
  std::map<uint64_t, int> served;
  for (int tick = 0; tick < 100; ++tick) {
    for (int i = 0; i < 3; ++i)
      ASSERT_TRUE(b.Enqueue(Make<JobA>(1, id++, Priority::kBulk, 1)).ok());
    ASSERT_TRUE(b.Enqueue(Make<JobA>(1, id++, Priority::kBulk, 2)).ok());
    for (int k = 0; k < 2; ++k) {
      auto batch = Cut(b);
      ASSERT_TRUE(batch.has_value());
      for (const Task<JobA>& t : std::get<Batch<JobA>>(*batch)) ++served[t.caller];
    }
    clock_.Advance(microseconds(1000));
  }
  EXPECT_EQ(served[2], 100);
  EXPECT_EQ(served[1], 100);
}

TEST_F(BatcherTest, ExpiredTasksLeaveTheirCallersTurn) {
  TestBatcher b(Options(4, 1000), &clock_);
  Task<JobA> late = Make<JobA>(1, 1, Priority::kBulk, 5);
  late.deadline = clock_.Now() + microseconds(10);
  ASSERT_TRUE(b.Enqueue(std::move(late)).ok());
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 2, Priority::kBulk, 6)).ok());
  clock_.Advance(microseconds(2000));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{2}));
  ASSERT_EQ(drops_.size(), 1u);
  for (auto& d : drops_) d();
  EXPECT_EQ(fates_[0]->why.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(b.Enqueue(Make<JobA>(1, 3, Priority::kBulk, 5)).ok());
  clock_.Advance(microseconds(2000));
  EXPECT_EQ(Ids<JobA>(Cut(b)), (std::vector<int>{3}));
}

TEST_F(BatcherTest, ShutdownRefusesNewWorkAndHandsOutQueuedWorkWithoutWaiting) {
  TestBatcher b(Options(64, 1000000), &clock_);
  ASSERT_TRUE(b.Enqueue(Make(1, 1)).ok());
  b.Shutdown();
  const absl::Status st = b.Enqueue(Make(1, 2));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fates_.back()->why.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Ids(b.NextBatch()), (std::vector<int>{1}));  // no waiting for the 1 s delay
  EXPECT_FALSE(b.NextBatch().has_value());               // drained
}

// Options for the tests with worker threads and the real clock: room for every task they queue.
BatcherOptions ThreadsOptions(int64_t max_rows, microseconds delay) {
  BatcherOptions o;
  o.max_batch_rows = max_rows;
  o.max_queue_delay = delay;
  o.max_queue_size = 100000;
  return o;
}

TEST(BatcherThreadsTest, WorkersReceiveEveryRequestExactlyOnce) {
  TestBatcher b(ThreadsOptions(16, microseconds(200)));
  std::atomic<int64_t> rows{0};
  std::vector<std::thread> workers;
  for (int i = 0; i < 3; ++i) {
    workers.emplace_back([&] {
      while (auto batch = b.NextBatch()) {
        std::visit(
            [&](auto& tasks) {
              int64_t n = 0;
              for (auto& t : tasks) n += t.job.rows();
              EXPECT_LE(n, 16);
              rows += n;
            },
            *batch);
      }
    });
  }
  for (int i = 0; i < 5000; ++i) {
    Task<JobA> a;
    ASSERT_TRUE(b.Enqueue(std::move(a)).ok());
    Task<JobB> c;
    ASSERT_TRUE(b.Enqueue(std::move(c)).ok());
  }
  b.Shutdown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(rows.load(), 10000);
}

TEST(BatcherThreadsTest, WorkersOfOneClassEachReceiveEveryRequestOfTheirsExactlyOnce) {
  // Two workers, one per class, as a CPU backend has them: every task is taken once, by the
  // worker of its class, whichever of them sleeps when it comes.
  TestBatcher b(ThreadsOptions(4, microseconds(50)));
  std::array<std::atomic<int64_t>, kPriorities> rows{};
  std::atomic<int> wrong_class{0};
  std::vector<std::thread> workers;
  for (Priority p : {Priority::kInteractive, Priority::kBulk}) {
    workers.emplace_back([&, p] {
      while (auto batch = b.NextBatch({.only = p})) {
        std::visit(
            [&](auto& tasks) {
              for (auto& t : tasks) {
                if (t.priority != p) ++wrong_class;
                rows[static_cast<size_t>(p)] += t.job.rows();
              }
            },
            *batch);
      }
    });
  }
  for (int i = 0; i < 3000; ++i) {
    Task<JobA> a;
    a.priority = i % 3 == 0 ? Priority::kInteractive : Priority::kBulk;
    ASSERT_TRUE(b.Enqueue(std::move(a)).ok());
    if (i % 100 == 0) std::this_thread::sleep_for(microseconds(200));  // let both sleep at times
  }
  b.Shutdown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(wrong_class.load(), 0);
  EXPECT_EQ(rows[static_cast<size_t>(Priority::kInteractive)].load(), 1000);
  EXPECT_EQ(rows[static_cast<size_t>(Priority::kBulk)].load(), 2000);
}

}  // namespace
}  // namespace zlpr::server
