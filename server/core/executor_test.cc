// The executor with a fake backend and an injected clock: grouping, concatenation, slicing,
// narrowing, error isolation and timing, without gRPC, kernels or real time.
#include "server/core/executor.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "server/core/test_clock.h"

namespace zlpr::server {
namespace {

using std::chrono::microseconds;

// Computes something simple and row-local (loss = row sum of scores, gradient = 2s, label = the
// row's largest column, probability = 0.25 everywhere), takes 5 ms of fake time per call, and
// fails every call whose input has `fail_cols` columns.
class FakeBackend final : public Backend {
 public:
  explicit FakeBackend(FakeClock* clock) : clock_(clock) {}
  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string Describe() const override { return "fake"; }

  using Backend::Label;
  using Backend::Loss;
  absl::Status Loss(const ValidatedLossInput& in, const LossOutput& out) override {
    ZLPR_RETURN_IF_ERROR(health());
    calls.push_back(in.rows());
    kinds.push_back('L');
    if (on_call) on_call();
    clock_->Advance(microseconds(5000));
    if (in.cols() == fail_cols) return absl::InternalError("the device fell over");
    if (in.rows() > max_rows) return absl::ResourceExhaustedError("too many rows for the device");
    const auto* s = static_cast<const float*>(in->scores.data);
    for (int64_t r = 0; r < in.rows(); ++r) {
      out.loss[r] = 0;
      for (int64_t c = 0; c < in.cols(); ++c) out.loss[r] += s[r * in.cols() + c];
    }
    if (out.grad != nullptr) {
      for (int64_t i = 0; i < in.rows() * in.cols(); ++i) out.grad[i] = 2 * s[i];
    }
    return absl::OkStatus();
  }
  absl::Status Label(const ValidatedLabelerInput& in, LabelSets* out, float* probs) override {
    ZLPR_RETURN_IF_ERROR(health());
    calls.push_back(in.rows());
    kinds.push_back('P');
    if (on_call) on_call();
    clock_->Advance(microseconds(5000));
    const auto* s = static_cast<const float*>(in->scores.data);
    out->row_offsets = {0};
    out->labels.clear();
    out->probs.clear();
    for (int64_t r = 0; r < in.rows(); ++r) {
      int32_t best = 0;
      for (int32_t c = 1; c < in.cols(); ++c) {
        if (s[r * in.cols() + c] > s[r * in.cols() + best]) best = c;
      }
      out->labels.push_back(best);
      out->probs.push_back(0.75f);
      out->row_offsets.push_back(static_cast<int64_t>(out->labels.size()));
    }
    if (probs != nullptr) std::fill(probs, probs + in.rows() * in.cols(), 0.25f);
    return absl::OkStatus();
  }

  // Unhealthy (UNAVAILABLE, for good, and so is every call) once `healthy_calls` calls were
  // made; -1: never.
  absl::Status health() const override {
    return healthy_calls >= 0 && static_cast<int>(calls.size()) >= healthy_calls
               ? absl::UnavailableError("the fake device is gone")
               : absl::OkStatus();
  }

  std::vector<int64_t> calls;     // rows of each kernel call
  std::string kinds;              // L (loss) or P (labeler), one per call
  std::function<void()> on_call;  // runs at the start of each call
  int64_t fail_cols = -1;
  int64_t max_rows = 1 << 30;  // larger calls fail with RESOURCE_EXHAUSTED
  int healthy_calls = -1;

 private:
  FakeClock* const clock_;
};

class RecordingListener final : public ExecutionListener {
 public:
  void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) override {
    kernel_calls.push_back({kind, rows, seconds, ok});
  }
  void OnQueued(JobKind, Priority, double seconds) override { queued.push_back(seconds); }
  void OnBatchDone(size_t, const Backend&) override {}

  struct Call {
    JobKind kind;
    int64_t rows;
    double seconds;
    bool ok;
  };
  std::vector<Call> kernel_calls;
  std::vector<double> queued;
};

// Scores r * 10 + c of `rows` x `cols`, owned by the test so that views stay valid.
struct Data {
  std::vector<float> scores, labels;
  Data(int64_t rows, int64_t cols, float base = 0)
      : scores(rows * cols), labels(rows * cols, 0.0f) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const int64_t row = i / cols;  // whole rows: the row's base value
      scores[i] = base + static_cast<float>(row * 10 + i % cols);
    }
  }
};

class ExecutorTest : public ::testing::Test {
 protected:
  LossJob LossOf(const Data& d, int64_t rows, int64_t cols, bool grad,
                 DType grad_dtype = DType::kFloat32) {
    LossInput in;
    in.scores = {d.scores.data(), DType::kFloat32, rows, cols};
    in.labels = MatrixView{d.labels.data(), DType::kFloat32, rows, cols};
    auto valid = ValidateLossInput(in);
    EXPECT_TRUE(valid.ok()) << valid.status();
    return LossJob{.input = *valid, .want_grad = grad, .grad_dtype = grad_dtype};
  }
  PredictJob PredictOf(const Data& d, int64_t rows, int64_t cols, bool probs, uint32_t top_k = 1) {
    LabelerInput in;
    in.scores = {d.scores.data(), DType::kFloat32, rows, cols};
    in.options.top_k = top_k;
    auto valid = ValidateLabelerInput(in);
    EXPECT_TRUE(valid.ok()) << valid.status();
    return PredictJob{.input = *valid, .want_probs = probs};
  }
  static std::vector<float> Floats(const std::string& bytes) {
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
    return v;
  }

  FakeClock clock_;
  FakeBackend backend_{&clock_};
  RecordingListener listener_;
  Executor executor_{&backend_, &clock_, &listener_};
};

TEST_F(ExecutorTest, ConcatenatesCompatibleJobsIntoOneKernelCallAndSlicesTheResultsBack) {
  const Data a(2, 3, 0), b(3, 3, 100), c(1, 3, 1000);
  const LossJob ja = LossOf(a, 2, 3, true), jb = LossOf(b, 3, 3, true), jc = LossOf(c, 1, 3, true);
  const LossJob* jobs[] = {&ja, &jb, &jc};
  const auto results = executor_.Run(jobs);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{6}));
  ASSERT_EQ(results.size(), 3u);
  for (const auto& r : results) ASSERT_TRUE(r.ok()) << r.status();
  // Row r of job b: 3 * (100 + 10 r) + (0 + 1 + 2).
  EXPECT_EQ(results[1]->loss, (std::vector<float>{303, 333, 363}));
  EXPECT_EQ(results[1]->loss_sum, 999);
  EXPECT_EQ(results[1]->loss_mean, 333);
  EXPECT_EQ(Floats(results[2]->grad), (std::vector<float>{2000, 2002, 2004}));
  EXPECT_EQ(results[0]->cols, 3);
  EXPECT_EQ(results[0]->timing.batch_rows, 6);
  EXPECT_DOUBLE_EQ(results[0]->timing.compute_seconds, 0.005);
  ASSERT_EQ(listener_.kernel_calls.size(), 1u);
  EXPECT_EQ(listener_.kernel_calls[0].rows, 6);
  EXPECT_TRUE(listener_.kernel_calls[0].ok);
}

TEST_F(ExecutorTest, JobsThatCannotShareAKernelCallRunInGroupsOfTheirOwn) {
  const Data a(1, 3), b(1, 4), c(2, 3);
  const LossJob ja = LossOf(a, 1, 3, false), jb = LossOf(b, 1, 4, false),
                jc = LossOf(c, 2, 3, false), jd = LossOf(c, 2, 3, true);
  const LossJob* jobs[] = {&ja, &jb, &jc, &jd};
  const auto results = executor_.Run(jobs);
  // Groups in order of their first job: {a, c} (3 columns, no gradient), {b}, {d}.
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(results[2]->loss, (std::vector<float>{3, 33}));
  EXPECT_TRUE(results[2]->grad.empty());
  EXPECT_EQ(Floats(results[3]->grad).size(), 6u);
}

TEST_F(ExecutorTest, NarrowsEachJobsGradientToItsOwnDtype) {
  const Data a(1, 2, 0.5f);
  const LossJob half = LossOf(a, 1, 2, true, DType::kFloat16);
  const LossJob brain = LossOf(a, 1, 2, true, DType::kBFloat16);
  const LossJob full = LossOf(a, 1, 2, true, DType::kFloat32);
  const LossJob* jobs[] = {&half, &brain, &full};
  const auto results = executor_.Run(jobs);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{3}));  // one call; narrowed when sliced
  ASSERT_EQ(results[0]->grad.size(), 4u);
  uint16_t h[2], bf[2];
  std::memcpy(h, results[0]->grad.data(), 4);
  std::memcpy(bf, results[1]->grad.data(), 4);
  EXPECT_EQ(h[1], FloatToFloat16(3.0f));  // 2 * 1.5
  EXPECT_EQ(bf[0], FloatToBFloat16(1.0f));
  EXPECT_EQ(results[1]->grad_dtype, DType::kBFloat16);
  EXPECT_EQ(Floats(results[2]->grad), (std::vector<float>{1.0f, 3.0f}));
}

TEST_F(ExecutorTest, ABackendErrorFailsTheJobsOfThatKernelCallOnly) {
  backend_.fail_cols = 4;
  const Data a(1, 3), b(2, 4);
  const LossJob ja = LossOf(a, 1, 3, false), jb = LossOf(b, 2, 4, false),
                jc = LossOf(b, 1, 4, false);
  const LossJob* jobs[] = {&ja, &jb, &jc};
  const auto results = executor_.Run(jobs);
  EXPECT_TRUE(results[0].ok());
  EXPECT_EQ(results[1].status(), absl::InternalError("the device fell over"));
  EXPECT_EQ(results[2].status(), absl::InternalError("the device fell over"));
  ASSERT_EQ(listener_.kernel_calls.size(), 2u);
  EXPECT_FALSE(listener_.kernel_calls[1].ok);
}

TEST_F(ExecutorTest, ABatchThatDoesNotFitTheDeviceIsRetriedJobByJob) {
  backend_.max_rows = 4;
  const Data a(2, 3), c(5, 3);
  const LossJob ja = LossOf(a, 2, 3, false), jb = LossOf(a, 2, 3, false),
                jc = LossOf(c, 5, 3, false);
  const LossJob* jobs[] = {&ja, &jb, &jc};
  const auto results = executor_.Run(jobs);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{9, 2, 2, 5}));  // together, then one by one
  ASSERT_TRUE(results[0].ok() && results[1].ok());
  EXPECT_EQ(results[0]->loss, (std::vector<float>{3, 33}));
  EXPECT_EQ(results[1]->loss, (std::vector<float>{3, 33}));
  EXPECT_EQ(results[2].status(), absl::ResourceExhaustedError("too many rows for the device"));
}

// Thread-safe: the workers call it from their threads.
class HealthListener final : public ExecutionListener {
 public:
  void OnKernelCall(JobKind, int64_t, double, bool) override {}
  void OnQueued(JobKind, Priority, double) override {}
  void OnBatchDone(size_t, const Backend&) override {}
  void OnStandIn(JobKind) override { ++stand_ins; }
  void OnBackendUnhealthy(size_t worker, const absl::Status& why, int left) override {
    absl::MutexLock lock(&mu);
    events.push_back({worker, why, left});
  }
  struct Event {
    size_t worker;
    absl::Status why;
    int left;
  };
  absl::Mutex mu;
  std::vector<Event> events;
  std::atomic<int> stand_ins{0};
};

// Enqueues `n` one-row loss jobs and waits for every answer; the answers' codes.
std::vector<absl::StatusCode> RunThroughWorkers(std::vector<std::unique_ptr<Backend>> backends,
                                                HealthListener* listener, int n, int* healthy) {
  BatcherOptions o;
  o.adaptive_delay = false;
  o.max_batch_rows = 1;
  o.max_queue_delay = microseconds(0);
  JobBatcher batcher(o);
  Workers workers(&batcher, std::move(backends), SystemClock(), listener);
  workers.Start();
  const Data d(1, 3);
  absl::Mutex mu;
  std::vector<absl::StatusCode> codes;
  for (int i = 0; i < n; ++i) {
    LossInput in;
    in.scores = {d.scores.data(), DType::kFloat32, 1, 3};
    in.labels = MatrixView{d.labels.data(), DType::kFloat32, 1, 3};
    Task<LossJob> task{.job = LossJob{.input = *ValidateLossInput(in)},
                       .done = [&](const absl::StatusOr<LossResult>& r) {
                         absl::MutexLock lock(&mu);
                         codes.push_back(r.status().code());
                       }};
    EXPECT_TRUE(batcher.Enqueue(std::move(task)).ok());
  }
  batcher.Shutdown();
  workers.Join();
  *healthy = workers.healthy();
  return codes;
}

TEST(WorkersTest, AWorkerWhoseBackendBreaksLeavesTheQueueToTheOthers) {
  FakeClock clock;
  auto breaking = std::make_unique<FakeBackend>(&clock);
  breaking->healthy_calls = 0;  // gone before its first batch: its worker must not take one
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(std::move(breaking));
  FakeClock clock2;
  backends.push_back(std::make_unique<FakeBackend>(&clock2));
  HealthListener listener;
  int healthy = -1;
  const auto codes = RunThroughWorkers(std::move(backends), &listener, 50, &healthy);
  ASSERT_EQ(codes.size(), 50u);
  // Every job is answered OK: the worker of the broken backend left before taking a batch
  // (whichever worker the batcher would have woken first), and the other took every one.
  EXPECT_EQ(std::count(codes.begin(), codes.end(), absl::StatusCode::kOk), 50);
  EXPECT_EQ(healthy, 1);
  absl::MutexLock lock(&listener.mu);
  ASSERT_EQ(listener.events.size(), 1u);
  EXPECT_EQ(listener.events[0].worker, 0u);
  EXPECT_EQ(listener.events[0].left, 1);
  EXPECT_EQ(listener.events[0].why, absl::UnavailableError("the fake device is gone"));
}

TEST(WorkersTest, TheLastWorkerStaysAndAnswersUnavailable) {
  FakeClock clock;
  auto breaking = std::make_unique<FakeBackend>(&clock);
  breaking->healthy_calls = 3;
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(std::move(breaking));
  HealthListener listener;
  int healthy = -1;
  const auto codes = RunThroughWorkers(std::move(backends), &listener, 10, &healthy);
  ASSERT_EQ(codes.size(), 10u);
  EXPECT_EQ(std::count(codes.begin(), codes.end(), absl::StatusCode::kOk), 3);
  EXPECT_EQ(std::count(codes.begin(), codes.end(), absl::StatusCode::kUnavailable), 7);
  EXPECT_EQ(healthy, 0);
  absl::MutexLock lock(&listener.mu);
  ASSERT_EQ(listener.events.size(), 1u);
  EXPECT_EQ(listener.events[0].left, 0);
}

TEST_F(ExecutorTest, PredictResultsAreSlicedPerJobWithTheirProbabilities) {
  const Data a(2, 3), b(1, 3);
  const PredictJob ja = PredictOf(a, 2, 3, true), jb = PredictOf(b, 1, 3, true),
                   jc = PredictOf(b, 1, 3, true, /*top_k=*/2);
  const PredictJob* jobs[] = {&ja, &jb, &jc};
  const auto results = executor_.Run(jobs);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{3, 1}));  // top_k differs: own group
  ASSERT_TRUE(results[0].ok() && results[1].ok() && results[2].ok());
  EXPECT_EQ(results[0]->labels.row_offsets, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(results[0]->labels.labels, (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(results[1]->labels.row_offsets, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(results[1]->labels.probs, (std::vector<float>{0.75f}));
  EXPECT_EQ(Floats(results[0]->probs), std::vector<float>(6, 0.25f));
  EXPECT_EQ(Floats(results[1]->probs), std::vector<float>(3, 0.25f));
  EXPECT_EQ(results[2]->cols, 3);
}

TEST_F(ExecutorTest, ExecuteAnswersEveryTaskCutByTheBatcherWithItsQueueTime) {
  BatcherOptions o;
  o.adaptive_delay = false;
  o.max_batch_rows = 8;
  o.max_queue_delay = microseconds(300);
  JobBatcher batcher(o, &clock_);
  const Data a(1, 3), b(2, 3);
  std::vector<absl::StatusOr<LossResult>> answers(2);
  auto task = [&](const Data& d, int64_t rows, int i) {
    return Task<LossJob>{
        .job = LossOf(d, rows, 3, false),
        .done = [&answers, i](absl::StatusOr<LossResult> r) { answers[i] = std::move(r); }};
  };
  ASSERT_TRUE(batcher.Enqueue(task(a, 1, 0)).ok());
  clock_.Advance(microseconds(100));
  ASSERT_TRUE(batcher.Enqueue(task(b, 2, 1)).ok());
  clock_.Advance(microseconds(200));
  std::vector<JobBatcher::Drop> drops;
  SteadyTime next_due;
  std::optional<JobBatcher::AnyBatch> batch = batcher.TryCut(&drops, &next_due);
  ASSERT_TRUE(batch.has_value());
  std::visit([&](auto& tasks) { executor_.Execute(tasks); }, *batch);
  ASSERT_TRUE(answers[0].ok() && answers[1].ok());
  EXPECT_DOUBLE_EQ(answers[0]->timing.queue_seconds, 300e-6);
  EXPECT_DOUBLE_EQ(answers[1]->timing.queue_seconds, 200e-6);
  EXPECT_EQ(answers[1]->loss, (std::vector<float>{3, 33}));
  EXPECT_EQ(answers[1]->timing.batch_rows, 3);
  EXPECT_EQ(listener_.queued.size(), 2u);
}

TEST_F(ExecutorTest, ChunkedBulkJobsComputeToTheResultsOfTheWholeWithWorkBetweenTheChunks) {
  // 2 rows of 3 columns a chunk at first; the fake backend's 5 ms per call then makes the
  // measured time per element larger and the chunks a row each.
  Executor chunked(&backend_, &clock_, &listener_,
                   {.bulk_chunk = microseconds(1000), .initial_ns_per_element = 1e6 / 6});
  int between = 0;
  chunked.SetBetweenChunks([&] { ++between; });
  const Data a(7, 3), b(2, 3, 50);
  const LossJob ja = LossOf(a, 7, 3, true), jb = LossOf(b, 2, 3, true, DType::kFloat16);
  const LossJob* jobs[] = {&ja, &jb};
  const auto whole = executor_.Run(jobs);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{9}));
  backend_.calls.clear();
  const auto parts = chunked.Run(jobs, /*chunked=*/true);
  EXPECT_EQ(backend_.calls, (std::vector<int64_t>{2, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(between, 7);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(whole[i].ok() && parts[i].ok());
    EXPECT_EQ(parts[i]->loss, whole[i]->loss);
    EXPECT_EQ(parts[i]->loss_sum, whole[i]->loss_sum);
    EXPECT_EQ(parts[i]->grad, whole[i]->grad);
    EXPECT_DOUBLE_EQ(parts[i]->timing.compute_seconds, 8 * 0.005);
  }

  const Data p(5, 3);
  const PredictJob jp = PredictOf(p, 5, 3, true), jq = PredictOf(p, 5, 3, true);
  const PredictJob* predicts[] = {&jp, &jq};
  const auto whole_labels = executor_.Run(predicts);
  backend_.calls.clear();
  const auto chunked_labels = chunked.Run(predicts, /*chunked=*/true);
  EXPECT_EQ(backend_.calls.size(), 9u);  // 2 rows, then 1 at a time
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(whole_labels[i].ok() && chunked_labels[i].ok());
    EXPECT_EQ(chunked_labels[i]->labels.row_offsets, whole_labels[i]->labels.row_offsets);
    EXPECT_EQ(chunked_labels[i]->labels.labels, whole_labels[i]->labels.labels);
    EXPECT_EQ(chunked_labels[i]->labels.probs, whole_labels[i]->labels.probs);
    EXPECT_EQ(chunked_labels[i]->probs, whole_labels[i]->probs);
  }
}

// A destination the caller gives (a shared-memory output) receives the bits the result would
// have carried: a lone job's kernel writes it in place, a job in a group gets its slice, a
// chunked job its chunks; the result then carries no bytes.
TEST_F(ExecutorTest, GradientsAndProbabilitiesGoToTheJobsDestinationWhenItGivesOne) {
  const Data a(3, 4), b(2, 4, 100);
  const LossJob plain_a = LossOf(a, 3, 4, true), plain_b = LossOf(b, 2, 4, true);
  const LossJob* plain[] = {&plain_a, &plain_b};
  const auto want = executor_.Run(plain);
  std::vector<float> out_a(12, -1), out_b(8, -1), lone(12, -1), chunks(12, -1);
  LossJob ja = LossOf(a, 3, 4, true), jb = LossOf(b, 2, 4, true);
  ja.grad_out = out_a.data();
  jb.grad_out = out_b.data();
  const LossJob* group[] = {&ja, &jb};
  const auto got = executor_.Run(group);
  LossJob alone = LossOf(a, 3, 4, true);
  alone.grad_out = lone.data();
  const LossJob* one[] = {&alone};
  const auto got_alone = executor_.Run(one);
  Executor chunked(&backend_, &clock_, &listener_,
                   {.bulk_chunk = microseconds(1000), .initial_ns_per_element = 1e6 / 4});
  alone.grad_out = chunks.data();
  const auto got_chunked = chunked.Run(one, /*chunked=*/true);
  ASSERT_TRUE(got[0].ok() && got[1].ok() && got_alone[0].ok() && got_chunked[0].ok());
  EXPECT_EQ(out_a, Floats(want[0]->grad));
  EXPECT_EQ(out_b, Floats(want[1]->grad));
  EXPECT_EQ(lone, Floats(want[0]->grad));
  EXPECT_EQ(chunks, Floats(want[0]->grad));
  for (const auto* r : {&got[0], &got[1], &got_alone[0], &got_chunked[0]}) {
    EXPECT_TRUE((*r)->grad_written);
    EXPECT_TRUE((*r)->grad.empty());
  }
  EXPECT_EQ(got[1]->loss, want[1]->loss);

  std::vector<float> probs(12, -1);
  PredictJob jp = PredictOf(a, 3, 4, true);
  jp.probs_out = probs.data();
  const PredictJob* predicts[] = {&jp};
  const auto labels = executor_.Run(predicts);
  ASSERT_TRUE(labels[0].ok());
  EXPECT_EQ(probs, std::vector<float>(12, 0.25f));
  EXPECT_TRUE(labels[0]->probs_written);
  EXPECT_TRUE(labels[0]->probs.empty());
  EXPECT_EQ(labels[0]->labels.labels, (std::vector<int32_t>{3, 3, 3}));
}

TEST_F(ExecutorTest, AnErrorInAChunkFailsTheGroupAndStopsIt) {
  Executor chunked(&backend_, &clock_, &listener_,
                   {.bulk_chunk = microseconds(1000), .initial_ns_per_element = 1e6 / 4});
  backend_.healthy_calls = 2;
  const Data a(6, 4);
  const LossJob ja = LossOf(a, 6, 4, false);
  const LossJob* jobs[] = {&ja};
  const auto results = chunked.Run(jobs, /*chunked=*/true);
  EXPECT_EQ(results[0].status(), absl::UnavailableError("the fake device is gone"));
  EXPECT_EQ(backend_.calls.size(), 2u);
}

TEST(WorkersTest, InteractiveWorkArrivingDuringABulkBatchRunsAfterTheCurrentChunk) {
  // One worker computes a 6-row bulk loss in chunks of a row; a predict arrives while the first
  // chunk computes, and is computed right after it, before the rest of the bulk batch.
  FakeClock clock;
  BatcherOptions o;
  o.adaptive_delay = false;
  o.max_queue_delay = microseconds(0);
  JobBatcher batcher(o, &clock);
  auto fake = std::make_unique<FakeBackend>(&clock);
  FakeBackend* backend = fake.get();
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(std::move(fake));
  HealthListener listener;
  Workers workers(&batcher, std::move(backends), &clock, &listener,
                  {.bulk_chunk = microseconds(1000), .initial_ns_per_element = 1e6 / 3});
  const Data d(6, 3);
  LossInput loss;
  loss.scores = {d.scores.data(), DType::kFloat32, 6, 3};
  loss.labels = MatrixView{d.labels.data(), DType::kFloat32, 6, 3};
  LabelerInput label;
  label.scores = {d.scores.data(), DType::kFloat32, 1, 3};
  absl::Mutex mu;
  std::vector<char> answered;
  auto answer = [&](char what) {
    absl::MutexLock lock(&mu);
    answered.push_back(what);
  };
  ASSERT_TRUE(batcher
                  .Enqueue(Task<LossJob>{.job = LossJob{.input = *ValidateLossInput(loss)},
                                         .done = [&](const auto&) { answer('L'); }})
                  .ok());
  bool arrived = false;
  backend->on_call = [&] {
    if (std::exchange(arrived, true)) return;  // once, from the worker, in the first chunk
    ASSERT_TRUE(
        batcher
            .Enqueue(Task<PredictJob>{.job = PredictJob{.input = *ValidateLabelerInput(label)},
                                      .done = [&](const auto&) { answer('P'); }})
            .ok());
  };
  workers.Start();
  {
    absl::MutexLock lock(&mu, absl::Condition(
                                  +[](std::vector<char>* a) { return a->size() == 2; }, &answered));
  }
  batcher.Shutdown();
  workers.Join();
  EXPECT_EQ(backend->kinds, "LPLLLLL");
  EXPECT_EQ(answered, (std::vector<char>{'P', 'L'}));
}

// A backend with lanes: every instance records which calls it took and at which OS scheduling
// policy. The lane's loss calls say they began (`lane_entered`) and wait for `release`; with
// `hold_labels`, the first instance's label calls say so (`labeling`) and wait for `resume`.
class LanedBackend final : public Backend {
 public:
  struct Shared {
    bool hold_labels = false;
    absl::Notification lane_entered, release, labeling, resume;
    absl::Mutex mu;
    std::vector<std::string> calls ABSL_GUARDED_BY(mu);  // "<instance> <L|P> <policy>"
    // The policy of the thread that made the lane, which the lane's own threads would inherit.
    std::atomic<int> lane_made_at{-1};

    void ReleaseAll() {
      for (absl::Notification* n : {&release, &resume}) {
        if (!n->HasBeenNotified()) n->Notify();
      }
    }
  };
  LanedBackend(Shared* shared, int instance) : shared_(shared), instance_(instance) {}
  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string Describe() const override { return "laned fake"; }
  std::unique_ptr<Backend> NewLane() const override {
    shared_->lane_made_at = sched_getscheduler(0);
    return std::make_unique<LanedBackend>(shared_, instance_ + 1);
  }

  using Backend::Label;
  using Backend::Loss;
  absl::Status Loss(const ValidatedLossInput& in, const LossOutput& out) override {
    Record('L');
    if (instance_ > 0) {
      if (!shared_->lane_entered.HasBeenNotified()) shared_->lane_entered.Notify();
      shared_->release.WaitForNotification();
    }
    std::fill(out.loss, out.loss + in.rows(), 1.0f);
    if (out.grad != nullptr) std::fill(out.grad, out.grad + in.rows() * in.cols(), 0.0f);
    return absl::OkStatus();
  }
  absl::Status Label(const ValidatedLabelerInput& in, LabelSets* out, float* probs) override {
    Record('P');
    if (instance_ == 0 && shared_->hold_labels) {
      if (!shared_->labeling.HasBeenNotified()) shared_->labeling.Notify();
      shared_->resume.WaitForNotification();
    }
    out->row_offsets.assign(static_cast<size_t>(in.rows()) + 1, 0);
    out->labels.clear();
    out->probs.clear();
    if (probs != nullptr) std::fill(probs, probs + in.rows() * in.cols(), 0.5f);
    return absl::OkStatus();
  }

 private:
  void Record(char what) {
    const int policy = sched_getscheduler(0);
    absl::MutexLock lock(&shared_->mu);
    shared_->calls.push_back(absl::StrCat(instance_, " ", std::string(1, what), " ",
                                          policy == SCHED_IDLE ? "idle" : "normal"));
  }
  Shared* const shared_;
  const int instance_;
};

// One-row tasks for Workers on a LanedBackend.
struct LaneTest {
  LaneTest() : data(2, 3) {
    BatcherOptions o;
    o.adaptive_delay = false;
    o.max_batch_rows = 1;
    o.max_queue_delay = microseconds(0);
    batcher = std::make_unique<JobBatcher>(o);
  }
  // Whatever a test asserted, no worker is left waiting.
  ~LaneTest() { Finish(); }
  void Start(const ChunkOptions& chunks) {
    std::vector<std::unique_ptr<Backend>> backends;
    backends.push_back(std::make_unique<LanedBackend>(&shared, 0));
    workers = std::make_unique<Workers>(batcher.get(), std::move(backends), SystemClock(),
                                        &listener, chunks, BackgroundPolicy::kIdle);
    workers->Start();
  }
  // Lets every call go on, shuts the batcher down and joins the workers.
  void Finish() {
    shared.ReleaseAll();
    batcher->Shutdown();
    if (workers != nullptr) workers->Join();
  }
  // A task's answer that must be OK, and notifies `done`.
  static auto Succeeds(absl::Notification* done) {
    return [done](const auto& r) {
      EXPECT_TRUE(r.ok()) << r.status();
      done->Notify();
    };
  }
  void Loss(absl::Notification* done) {
    LossInput in;
    in.scores = {data.scores.data(), DType::kFloat32, 1, 3};
    in.labels = MatrixView{data.labels.data(), DType::kFloat32, 1, 3};
    ASSERT_TRUE(batcher
                    ->Enqueue(Task<LossJob>{.job = LossJob{.input = *ValidateLossInput(in)},
                                            .done = Succeeds(done)})
                    .ok());
  }
  void Predict(absl::Notification* done) {
    LabelerInput in;
    in.scores = {data.scores.data(), DType::kFloat32, 1, 3};
    ASSERT_TRUE(
        batcher
            ->Enqueue(Task<PredictJob>{.job = PredictJob{.input = *ValidateLabelerInput(in)},
                                       .done = Succeeds(done)})
            .ok());
  }
  std::vector<std::string> Calls() {
    absl::MutexLock lock(&shared.mu);
    return shared.calls;
  }
  static bool Within(absl::Notification& n) {
    return n.WaitForNotificationWithTimeout(absl::Seconds(60));
  }
  const Data data;
  HealthListener listener;
  LanedBackend::Shared shared;
  std::unique_ptr<JobBatcher> batcher;
  std::unique_ptr<Workers> workers;
};

TEST(WorkersTest, OnABackendWithALaneInteractiveWorkIsComputedWhileABulkBatchIsStillComputing) {
  LaneTest t;
  // The interactive worker never stands in here: the loss can only be the bulk worker's.
  t.Start({.stand_in_after = std::chrono::hours(1)});
  absl::Notification loss_done, predict_done;
  t.Loss(&loss_done);
  ASSERT_TRUE(LaneTest::Within(t.shared.lane_entered));
  // The loss holds the lane until released; the predict is answered meanwhile, by the other
  // worker, on the backend itself, at the server's priority; the loss ran on the lane, lowered.
  t.Predict(&predict_done);
  ASSERT_TRUE(LaneTest::Within(predict_done));
  EXPECT_FALSE(loss_done.HasBeenNotified());
  t.shared.release.Notify();
  ASSERT_TRUE(LaneTest::Within(loss_done));
  t.Finish();
  EXPECT_EQ(t.Calls(), (std::vector<std::string>{"1 L idle", "0 P normal"}));
  EXPECT_EQ(t.shared.lane_made_at.load(), SCHED_IDLE);
  EXPECT_EQ(t.listener.stand_ins.load(), 0);
}

TEST(WorkersTest, ABulkBatchTheLoweredWorkerLeavesWaitingIsComputedByTheInteractiveWorker) {
  LaneTest t;
  t.shared.hold_labels = true;
  t.Start({.stand_in_after = std::chrono::milliseconds(20)});
  // The interactive worker is busy with a predict while the first loss comes, so the bulk
  // worker takes that loss, and holds it as if it had no CPU.
  absl::Notification predict, first, second;
  t.Predict(&predict);
  ASSERT_TRUE(LaneTest::Within(t.shared.labeling));
  t.Loss(&first);
  ASSERT_TRUE(LaneTest::Within(t.shared.lane_entered));
  t.shared.resume.Notify();
  ASSERT_TRUE(LaneTest::Within(predict));
  // The second loss waits for the bulk worker until the interactive worker stands in (on the
  // backend itself, at the server's priority).
  t.Loss(&second);
  ASSERT_TRUE(LaneTest::Within(second));
  EXPECT_FALSE(first.HasBeenNotified());
  t.shared.release.Notify();
  ASSERT_TRUE(LaneTest::Within(first));
  t.Finish();
  EXPECT_EQ(t.Calls(), (std::vector<std::string>{"0 P normal", "1 L idle", "0 L normal"}));
  EXPECT_EQ(t.listener.stand_ins.load(), 1);
}

}  // namespace
}  // namespace zlpr::server
