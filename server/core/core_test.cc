// InferenceCore without any front end: admission and its RAII end, charges and refusals, the
// drain of accepted calls, jobs through the CPU backend, and the write watchdog.
#include "server/core/core.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

using std::chrono::milliseconds;

// Records what the core reports.
class Recorder final : public CoreListener {
 public:
  void OnMethodRegistered(MethodId id, std::string_view method, std::string_view) override {
    absl::MutexLock lock(&mu_);
    methods.emplace_back(id, std::string(method));
  }
  void OnRequestDone(MethodId id, absl::StatusCode code, double,
                     std::optional<Priority> priority) override {
    absl::MutexLock lock(&mu_);
    done.emplace_back(id, code);
    classes.push_back(priority);
  }
  void OnRejected(Reject reason) override { rejected[static_cast<int>(reason)].fetch_add(1); }
  void OnInflight(int delta) override { inflight.fetch_add(delta); }
  void OnBudget(int64_t held, int64_t) override { budget_held.store(held); }
  void OnKernelCall(JobKind, int64_t, double, bool) override { kernel_calls.fetch_add(1); }
  void OnQueued(JobKind, Priority, double) override {}
  void OnBatchDone(size_t, const Backend&) override {}

  std::vector<std::optional<Priority>> Classes() {
    absl::MutexLock lock(&mu_);
    return classes;
  }
  std::vector<std::pair<MethodId, absl::StatusCode>> Done() {
    absl::MutexLock lock(&mu_);
    return done;
  }
  int Rejected(Reject reason) { return rejected[static_cast<int>(reason)].load(); }

  std::vector<std::pair<MethodId, std::string>> methods;
  std::atomic<int> inflight{0};
  std::atomic<int64_t> budget_held{0};
  std::atomic<int> kernel_calls{0};

 private:
  absl::Mutex mu_;
  std::vector<std::pair<MethodId, absl::StatusCode>> done ABSL_GUARDED_BY(mu_);
  std::vector<std::optional<Priority>> classes ABSL_GUARDED_BY(mu_);
  std::array<std::atomic<int>, static_cast<int>(Reject::kCount)> rejected{};
};

class CoreTest : public ::testing::Test {
 protected:
  void Make(const CoreOptions& options = {}) {
    std::vector<std::unique_ptr<Backend>> backends;
    backends.push_back(NewCpuBackend({.threads = 1}));
    core_ = std::make_unique<InferenceCore>(options, std::move(backends), &recorder_);
    method_ = core_->RegisterMethod("Predict", "test");
    core_->Start();
    call_ = core_->BeginCall();
  }

  Recorder recorder_;
  std::unique_ptr<InferenceCore> core_;
  MethodId method_ = -1;
  CallScope call_;  // the call the tests' requests belong to (no call: not accepted)
};

TEST_F(CoreTest, AnAdmissionEndsWhateverPathTheRequestTook) {
  Make({.max_inflight_bytes = 1000});
  EXPECT_EQ(recorder_.methods.size(), 1u);
  {
    Admission a = core_->Admit(method_, call_);
    EXPECT_EQ(recorder_.inflight.load(), 1);
    ASSERT_TRUE(a.Charge(100).ok());  // twice the message
    EXPECT_EQ(core_->budget().held(), 200);
    // Dropped without an answer: recorded as cancelled, memory and in-flight count returned.
  }
  EXPECT_EQ(core_->budget().held(), 0);
  EXPECT_EQ(recorder_.inflight.load(), 0);
  ASSERT_EQ(recorder_.Done().size(), 1u);
  EXPECT_EQ(recorder_.Done()[0].second, absl::StatusCode::kCancelled);
  {
    Admission a = core_->Admit(method_, call_);
    a.Finish(absl::StatusCode::kOk);
    a.Finish(absl::StatusCode::kInternal);  // once only
    Admission moved = std::move(a);         // the moved-from one ends nothing
  }
  ASSERT_EQ(recorder_.Done().size(), 2u);
  EXPECT_EQ(recorder_.Done()[1].second, absl::StatusCode::kOk);
  EXPECT_EQ(recorder_.inflight.load(), 0);
}

TEST_F(CoreTest, ChargesAreRefusedOverTheBudget) {
  Make({.max_inflight_bytes = 1000});
  Admission big = core_->Admit(method_, call_);
  const absl::Status over = big.Charge(501);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.message().find("--max_inflight_bytes"), std::string::npos);
  EXPECT_EQ(recorder_.Rejected(Reject::kMemory), 1);
}

// Shutdown waits for the calls it accepted: their requests are still taken (and computed),
// those of calls that came after are refused.
TEST_F(CoreTest, AfterShutdownBeganOnlyTheCallsAcceptedBeforeItAreServed) {
  Make();
  core_->BeginShutdown();
  const CallScope late_call = core_->BeginCall();
  Admission late = core_->Admit(method_, late_call);
  EXPECT_EQ(late.Charge(1).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(recorder_.Rejected(Reject::kShuttingDown), 1);
  Admission accepted = core_->Admit(method_, call_);
  ASSERT_TRUE(accepted.Charge(12).ok());
  const std::vector<float> scores = {2.0f, -2.0f, 0.1f};
  LabelerInput in{.scores = MatrixView{scores.data(), DType::kFloat32, 1, 3}};
  absl::Notification done;
  absl::Status status = absl::UnknownError("not run");
  core_->Enqueue(&accepted, CallControl{}, PredictJob{.input = *ValidateLabelerInput(in)}, 100,
                 [&](const absl::StatusOr<PredictResult>& r) {
                   status = r.status();
                   done.Notify();
                 });
  done.WaitForNotification();
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(CoreTest, ShutdownWaitsForTheCallsAcceptedBeforeIt) {
  Make();
  call_.End();
  CallScope before = core_->BeginCall();
  EXPECT_TRUE(before.accepted());
  core_->BeginShutdown();
  CallScope after = core_->BeginCall();
  EXPECT_FALSE(after.accepted());
  EXPECT_FALSE(core_->WaitForAcceptedCalls(absl::Now() + absl::Milliseconds(20)));
  before.End();
  EXPECT_TRUE(core_->WaitForAcceptedCalls(absl::Now() + absl::Seconds(5)));
}

TEST_F(CoreTest, AJobIsComputedAndItsResponseMemoryCharged) {
  Make({.max_inflight_bytes = 1 << 20});
  const std::vector<float> scores = {2.0f, -2.0f, 0.1f};
  LabelerInput in{.scores = MatrixView{scores.data(), DType::kFloat32, 1, 3}};
  absl::StatusOr<ValidatedLabelerInput> valid = ValidateLabelerInput(in);
  ASSERT_TRUE(valid.ok());
  Admission a = core_->Admit(method_, call_);
  ASSERT_TRUE(a.Charge(12).ok());
  absl::Notification done;
  absl::StatusOr<PredictResult> result;
  core_->Enqueue(&a, CallControl{}, PredictJob{.input = *std::move(valid), .want_probs = true},
                 /*response_bytes=*/100, [&](absl::StatusOr<PredictResult> r) {
                   result = std::move(r);
                   done.Notify();
                 });
  EXPECT_EQ(a.bytes(), 24 + 200);  // the request twice, the response twice
  done.WaitForNotification();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->labels.labels, std::vector<int32_t>({0, 2}));
  EXPECT_EQ(result->probs.size(), 3 * sizeof(float));
  EXPECT_EQ(recorder_.kernel_calls.load(), 1);
  EXPECT_EQ(core_->statistics(JobKind::kPredict).inference_count.load(), 1u);
}

TEST_F(CoreTest, AResponseThatCannotFitTheMessageLimitIsRefusedBeforeItIsComputed) {
  Make({.max_message_bytes = 1000});
  const std::vector<float> scores = {1.0f};
  LabelerInput in{.scores = MatrixView{scores.data(), DType::kFloat32, 1, 1}};
  Admission a = core_->Admit(method_, call_);
  absl::Status status;
  core_->Enqueue(&a, CallControl{}, PredictJob{.input = *ValidateLabelerInput(in)}, 1001,
                 [&](const absl::StatusOr<PredictResult>& r) { status = r.status(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(recorder_.Rejected(Reject::kTooLarge), 1);
  EXPECT_EQ(recorder_.kernel_calls.load(), 0);
}

TEST_F(CoreTest, AWriteNotDoneInTimeCancelsItsCall) {
  Make({.write_timeout = milliseconds(20), .min_transfer_rate = 1 << 20});
  absl::Notification cancelled;
  {
    Admission a = core_->Admit(method_, call_);
    a.WatchWrite(0, [&] { cancelled.Notify(); });
    EXPECT_TRUE(cancelled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  }
  EXPECT_EQ(recorder_.Rejected(Reject::kSlowReader), 1);
}

TEST_F(CoreTest, AWriteWatchDisarmedOrEndedWithItsAdmissionNeverFires) {
  Make({.write_timeout = std::chrono::hours(1)});
  std::atomic<bool> fired{false};
  {
    Admission a = core_->Admit(method_, call_);
    a.WatchWrite(0, [&] { fired.store(true); });
    a.DisarmWrite();  // from here on the callback cannot run
  }
  {
    Admission a = core_->Admit(method_, call_);
    a.WatchWrite(1 << 20, [&] { fired.store(true); });
  }  // the destructor disarms
  EXPECT_EQ(core_->watchdog().fired(), 0);
  EXPECT_FALSE(fired.load());
  EXPECT_EQ(recorder_.Rejected(Reject::kSlowReader), 0);
}

TEST_F(CoreTest, ABodyTheFrontEndFoundMemoryForIsAdopted) {
  Make({.max_inflight_bytes = 1000});
  std::optional<MemoryBudget::Lease> lease = core_->budget().TryAcquire(300);
  ASSERT_TRUE(lease.has_value());
  Admission a = core_->Admit(method_, call_);
  ASSERT_TRUE(a.Adopt(*std::move(lease)).ok());
  EXPECT_EQ(a.bytes(), 300);
  a.ShrinkTo(100);
  EXPECT_EQ(core_->budget().held(), 100);
  EXPECT_EQ(recorder_.budget_held.load(), 100);
}

TEST_F(CoreTest, HeadroomSetAsideAtAdmissionIsUsedBeforeTheBudget) {
  Make({.max_inflight_bytes = 1000});
  std::optional<MemoryBudget::Lease> lease = core_->budget().TryAcquire(400);
  ASSERT_TRUE(lease.has_value());
  Admission a = core_->Admit(method_, call_);
  ASSERT_TRUE(a.Adopt(*std::move(lease), /*headroom=*/200).ok());
  auto rest = core_->budget().TryAcquire(600);  // the budget is full now
  ASSERT_TRUE(rest.has_value());
  EXPECT_TRUE(a.Grow(150));  // from the headroom
  EXPECT_TRUE(a.Grow(50));
  EXPECT_FALSE(a.Grow(1));  // the headroom is spent and the budget full
  EXPECT_EQ(a.bytes(), 400);
  a.ShrinkTo(100);
  EXPECT_EQ(core_->budget().held(), 700);
  rest.reset();
  EXPECT_TRUE(a.Grow(10));  // from the budget again
  EXPECT_EQ(a.bytes(), 110);
}

TEST_F(CoreTest, ARequestIsRecordedWithItsClassOnceQueued) {
  Make({.max_inflight_bytes = 1 << 20});
  const std::vector<float> scores = {2.0f, -2.0f, 0.1f};
  LabelerInput in{.scores = MatrixView{scores.data(), DType::kFloat32, 1, 3}};
  for (std::optional<Priority> asked :
       {std::optional<Priority>(), std::optional(Priority::kBulk)}) {
    Admission a = core_->Admit(method_, call_);
    ASSERT_TRUE(a.Charge(12).ok());
    absl::Notification done;
    core_->Enqueue(&a, CallControl{.priority = asked},
                   PredictJob{.input = *ValidateLabelerInput(in)}, 100,
                   [&](const absl::StatusOr<PredictResult>&) { done.Notify(); });
    done.WaitForNotification();
    EXPECT_EQ(a.priority(), asked.value_or(Priority::kInteractive));
    a.Finish(absl::StatusCode::kOk);
  }
  Admission refused = core_->Admit(method_, call_);
  refused.Finish(absl::StatusCode::kInvalidArgument);  // never queued: no class
  const std::vector<std::optional<Priority>> want = {Priority::kInteractive, Priority::kBulk,
                                                     std::nullopt};
  EXPECT_EQ(recorder_.Classes(), want);
}

}  // namespace
}  // namespace zlpr::server
