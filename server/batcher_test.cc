// The batcher with an injected clock: no threads, no gRPC, no real time (but for the last
// test, which checks the blocking NextBatch loop with the real clock).
#include "server/batcher.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

using std::chrono::microseconds;

class FakeClock final : public Clock {
 public:
  SteadyTime Now() const override { return now_; }
  void Advance(microseconds d) { now_ += d; }

 private:
  SteadyTime now_ = SteadyTime{} + std::chrono::hours(1);
};

// What happened to a FakeWork, readable after the batcher destroyed it.
struct Fate {
  bool dropped = false;
  absl::Status why;
};

class FakeWork final : public Work {
 public:
  FakeWork(int64_t rows, std::shared_ptr<Fate> fate, int work_id = 0)
      : id(work_id), rows_(rows), fate_(std::move(fate)) {}
  int64_t rows() const override { return rows_; }
  bool Cancelled() const override { return cancelled; }
  SteadyTime deadline() const override { return deadline_at; }
  void Drop(absl::Status why) override {
    fate_->dropped = true;
    fate_->why = std::move(why);
  }
  const int id;
  bool cancelled = false;
  SteadyTime deadline_at = SteadyTime::max();

 private:
  int64_t rows_;
  std::shared_ptr<Fate> fate_;
};

class BatcherTest : public ::testing::Test {
 protected:
  BatcherOptions Options(int64_t max_rows, int64_t delay_us, int64_t queue = 100, int ops = 1) {
    BatcherOptions o;
    o.adaptive_delay = false;
    o.num_ops = ops;
    o.max_batch_rows = max_rows;
    o.max_queue_delay = microseconds(delay_us);
    o.max_queue_size = queue;
    return o;
  }
  std::unique_ptr<FakeWork> Make(int64_t rows, int id = 0) {
    fates_.push_back(std::make_shared<Fate>());
    return std::make_unique<FakeWork>(rows, fates_.back(), id);
  }
  static std::vector<int> Ids(const Batch& b) {
    std::vector<int> ids;
    for (const auto& w : b) ids.push_back(static_cast<const FakeWork&>(*w).id);
    return ids;
  }

  FakeClock clock_;
  std::vector<std::shared_ptr<Fate>> fates_;
  int op_ = -1;
  Batch batch_;
  std::vector<std::unique_ptr<Work>> dropped_;
  SteadyTime next_due_;
};

TEST_F(BatcherTest, CutsABatchAsSoonAsMaxBatchRowsWait) {
  Batcher b(Options(4, 1000), &clock_);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(b.Enqueue(0, Make(1, i)).ok());
  EXPECT_FALSE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  ASSERT_TRUE(b.Enqueue(0, Make(1, 3)).ok());
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(op_, 0);
  EXPECT_EQ(Ids(batch_), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(b.depth(0), 0);
}

TEST_F(BatcherTest, WaitsForTheOldestRequestsDelayThenCutsAPartialBatch) {
  Batcher b(Options(64, 500), &clock_);
  const SteadyTime t0 = clock_.Now();
  ASSERT_TRUE(b.Enqueue(0, Make(2, 7)).ok());
  clock_.Advance(microseconds(200));
  ASSERT_TRUE(b.Enqueue(0, Make(3, 8)).ok());
  EXPECT_FALSE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(next_due_, t0 + microseconds(500));  // from the oldest, not the newest
  clock_.Advance(microseconds(299));
  EXPECT_FALSE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  clock_.Advance(microseconds(1));
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{7, 8}));
}

TEST_F(BatcherTest, AdaptiveDelayCutsALoneRequestAtOnceAndWaitsUnderLoad) {
  BatcherOptions o = Options(64, 500);
  o.adaptive_delay = true;
  Batcher b(o, &clock_);
  // A lone caller: nothing would join, so no wait.
  ASSERT_TRUE(b.Enqueue(0, Make(1, 1)).ok());
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{1}));
  batch_.clear();
  // Several callers: the batch that forms while none is cut merges them...
  ASSERT_TRUE(b.Enqueue(0, Make(1, 2)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(1, 3)).ok());
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{2, 3}));
  batch_.clear();
  // ...and from then on the queue waits for more, up to the delay.
  ASSERT_TRUE(b.Enqueue(0, Make(1, 4)).ok());
  EXPECT_FALSE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  clock_.Advance(microseconds(500));
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{4}));
  batch_.clear();
  // That batch held one request: load is light again, so the next is cut at once.
  ASSERT_TRUE(b.Enqueue(0, Make(1, 5)).ok());
  EXPECT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
}

TEST_F(BatcherTest, NeverExceedsMaxBatchRowsAndKeepsTheRestQueued) {
  Batcher b(Options(5, 0), &clock_);
  ASSERT_TRUE(b.Enqueue(0, Make(3, 0)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(3, 1)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(2, 2)).ok());
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{0}));
  batch_.clear();
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{1, 2}));
}

TEST_F(BatcherTest, RunsARequestLargerThanMaxBatchRowsAloneInsteadOfRefusingIt) {
  Batcher b(Options(8, 1000), &clock_);
  ASSERT_TRUE(b.Enqueue(0, Make(100, 1)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(1, 2)).ok());
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));  // due at once: rows >= max
  EXPECT_EQ(Ids(batch_), (std::vector<int>{1}));
}

TEST_F(BatcherTest, RejectsWithResourceExhaustedWhenTheQueueIsFull) {
  Batcher b(Options(8, 1000, /*queue=*/2), &clock_);
  ASSERT_TRUE(b.Enqueue(0, Make(1)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(1)).ok());
  const absl::Status st = b.Enqueue(0, Make(1));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(st.message(), "the request queue is full (2 requests waiting); retry later");
  EXPECT_FALSE(fates_.back()->dropped);  // refused, not dropped: the caller answers
}

TEST_F(BatcherTest, DropsCancelledAndExpiredRequestsWithoutBatchingThem) {
  Batcher b(Options(8, 100), &clock_);
  auto cancelled = Make(1, 1);
  cancelled->cancelled = true;
  auto expired = Make(1, 2);
  expired->deadline_at = clock_.Now() + microseconds(50);
  ASSERT_TRUE(b.Enqueue(0, std::move(cancelled)).ok());
  ASSERT_TRUE(b.Enqueue(0, std::move(expired)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(1, 3)).ok());
  clock_.Advance(microseconds(100));
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{3}));
  ASSERT_EQ(dropped_.size(), 2u);
  for (auto& w : dropped_) w->Drop(absl::CancelledError("x"));
  EXPECT_TRUE(fates_[0]->dropped);
  EXPECT_TRUE(fates_[1]->dropped);
  EXPECT_FALSE(fates_[2]->dropped);
}

TEST_F(BatcherTest, NextBatchDropsExpiredRequestsWithTheRightCode) {
  Batcher b(Options(8, 0), &clock_);
  auto expired = Make(1, 1);
  expired->deadline_at = clock_.Now();
  auto cancelled = Make(1, 2);
  cancelled->cancelled = true;
  ASSERT_TRUE(b.Enqueue(0, std::move(expired)).ok());
  ASSERT_TRUE(b.Enqueue(0, std::move(cancelled)).ok());
  ASSERT_TRUE(b.Enqueue(0, Make(1, 3)).ok());
  ASSERT_TRUE(b.NextBatch(&op_, &batch_));
  EXPECT_EQ(Ids(batch_), (std::vector<int>{3}));
  EXPECT_EQ(fates_[0]->why.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fates_[1]->why.code(), absl::StatusCode::kCancelled);
}

TEST_F(BatcherTest, TheDueQueueWithTheOldestRequestGoesFirst) {
  Batcher b(Options(8, 100, 100, /*ops=*/2), &clock_);
  ASSERT_TRUE(b.Enqueue(1, Make(1, 10)).ok());
  clock_.Advance(microseconds(10));
  ASSERT_TRUE(b.Enqueue(0, Make(1, 20)).ok());
  clock_.Advance(microseconds(200));
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(op_, 1);
  batch_.clear();
  ASSERT_TRUE(b.TryCut(&op_, &batch_, &dropped_, &next_due_));
  EXPECT_EQ(op_, 0);
}

TEST_F(BatcherTest, ShutdownRefusesNewWorkAndHandsOutQueuedWorkWithoutWaiting) {
  Batcher b(Options(64, 1000000), &clock_);
  ASSERT_TRUE(b.Enqueue(0, Make(1, 1)).ok());
  b.Shutdown();
  const absl::Status st = b.Enqueue(0, Make(1, 2));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(b.NextBatch(&op_, &batch_));  // no waiting for the 1 s delay
  EXPECT_EQ(Ids(batch_), (std::vector<int>{1}));
  EXPECT_FALSE(b.NextBatch(&op_, &batch_));  // drained
}

TEST(BatcherThreadsTest, WorkersReceiveEveryRequestExactlyOnce) {
  BatcherOptions o;
  o.max_batch_rows = 16;
  o.max_queue_delay = microseconds(200);
  o.max_queue_size = 100000;
  Batcher b(o);
  std::atomic<int64_t> rows{0};
  std::vector<std::thread> workers;
  for (int i = 0; i < 3; ++i) {
    workers.emplace_back([&] {
      int op;
      Batch batch;
      while (b.NextBatch(&op, &batch)) {
        int64_t n = 0;
        for (auto& w : batch) n += w->rows();
        EXPECT_LE(n, 16);
        rows += n;
      }
    });
  }
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(b.Enqueue(0, std::make_unique<FakeWork>(1, std::make_shared<Fate>())).ok());
  }
  b.Shutdown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(rows.load(), 5000);
}

}  // namespace
}  // namespace zlpr::server
