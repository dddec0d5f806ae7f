// The whole server on loopback (port 0): every RPC against the kernels on the same input,
// every validation error with its exact code, queue full, deadline, cancellation, streams,
// batching, graceful shutdown, /metrics and health.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <optional>
#include <regex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "kernels/test_util.h"
#include "server/server.h"
#include "server/test_support.h"
#include "zlpr/v1/tensor.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr::server {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// --- Helpers -------------------------------------------------------------------------------

v1::Tensor FloatTensor(const std::vector<float>& v, int64_t rows, int64_t cols) {
  v1::Tensor t;
  v1::EncodeMatrix(v, rows, cols, DType::kFloat32, &t);
  return t;
}

v1::Tensor MaskTensor(const std::vector<uint8_t>& v, int64_t rows, int64_t cols) {
  v1::Tensor t;
  v1::EncodeMask(v, rows, cols, &t);
  return t;
}

std::vector<float> Floats(const v1::Tensor& t) {
  absl::StatusOr<std::vector<float>> v = v1::DecodeFloats(t, "tensor");
  EXPECT_TRUE(v.ok()) << v.status();
  return v.value_or(std::vector<float>());
}

v1::LossRequest LossRequestOf(const testing::Problem& p, bool sparse, bool want_grad) {
  v1::LossRequest req;
  req.set_request_id("req-" + std::to_string(p.spec.seed));
  *req.mutable_scores() = FloatTensor(p.scores, p.spec.rows, p.spec.cols);
  if (sparse) {
    auto* sp = req.mutable_sparse_labels();
    for (int64_t v : p.row_splits) sp->add_row_splits(v);
    for (int32_t v : p.indices) sp->add_indices(v);
    for (float v : p.values) sp->add_values(v);
  } else {
    *req.mutable_dense_labels() = FloatTensor(p.dense, p.spec.rows, p.spec.cols);
  }
  if (!p.mask.empty()) *req.mutable_mask() = MaskTensor(p.mask, p.spec.rows, p.spec.cols);
  req.set_want_grad(want_grad);
  return req;
}

// Counts outstanding async calls; Wait() returns when all are done.
class CallCounter {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++pending_;
  }
  void Done(const grpc::Status& st) {
    absl::MutexLock lock(&mu_);
    codes_.push_back(st.error_code());
    --pending_;
  }
  std::vector<grpc::StatusCode> Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* pending) { return *pending == 0; }, &pending_));
    return codes_;
  }

 private:
  absl::Mutex mu_;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<grpc::StatusCode> codes_ ABSL_GUARDED_BY(mu_);
};

class ServiceTest : public ::testing::Test {
 protected:
  void StartServer(BatcherOptions batcher = DefaultBatcher(),
                   const std::function<void(ServerOptions&)>& tweak = nullptr) {
    ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";
    o.backend = "cpu";
    o.threads = 2;
    o.batcher = std::move(batcher);
    o.shutdown_grace = std::chrono::seconds(20);
    if (tweak) tweak(o);
    auto s = backends_.empty() ? Server::Start(o) : Server::Start(o, std::move(backends_));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ZlprService::NewStub(channel_);
  }
  static BatcherOptions DefaultBatcher() {
    BatcherOptions b;
    b.max_batch_rows = 256;
    b.max_queue_delay = std::chrono::microseconds(200);
    b.max_queue_size = 1024;
    b.adaptive_delay = false;  // tests that hold requests in the queue rely on the delay
    return b;
  }
  std::string Metrics() { return HttpGet(server_->metrics_port(), "/metrics"); }

  std::vector<std::unique_ptr<Backend>> backends_;  // set: StartServer serves with these
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ZlprService::Stub> stub_;
  std::unique_ptr<Backend> cpu_ = NewCpuBackend({.threads = 1});
};

TEST(ServerStartTest, APortInUseIsAClearErrorNotACrash) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.backend = "cpu";
  auto first = Server::Start(o);
  ASSERT_TRUE(first.ok());
  o.grpc_address = absl::StrCat("127.0.0.1:", (*first)->grpc_port());
  auto second = Server::Start(o);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("could not listen there"));
  o.backend = "tpu";
  EXPECT_EQ(Server::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerStartTest, OptionsOutOfRangeAreRefusedNamingTheFlag) {
  std::vector<std::pair<std::function<void(ServerOptions&)>, std::string>> cases = {
      {[](ServerOptions& o) { o.grpc_address = "127.0.0.1:99999"; },
       "--grpc_address=127.0.0.1:99999: expected HOST:PORT with a port from 0 to 65535"},
      {[](ServerOptions& o) { o.grpc_address = ""; }, "--grpc_address: empty; use HOST:PORT"},
      {[](ServerOptions& o) { o.metrics_address = "localhost"; },
       "--metrics_address=localhost: expected HOST:PORT with a port from 0 to 65535"},
      {[](ServerOptions& o) { o.batcher.max_batch_rows = 0; },
       "--max_batch_rows=0: must be 1 to 1048576"},
      {[](ServerOptions& o) { o.batcher.max_batch_rows = -5; },
       "--max_batch_rows=-5: must be 1 to 1048576"},
      {[](ServerOptions& o) { o.batcher.max_queue_size = 0; },
       "--max_queue_size=0: must be 1 to 1048576"},
      {[](ServerOptions& o) { o.batcher.max_queue_delay = std::chrono::microseconds(-1); },
       "--max_queue_delay_us=-1: must be 0 to 60000000"},
      {[](ServerOptions& o) { o.max_message_bytes = 0; },
       "--max_message_bytes=0: must be 1024 to 2147483647"},
      {[](ServerOptions& o) { o.max_message_bytes = -1; },
       "--max_message_bytes=-1: must be 1024 to 2147483647"},
      {[](ServerOptions& o) { o.threads = -2; }, "--threads=-2: must be 0 to 1024"},
      {[](ServerOptions& o) { o.threads = 100000; }, "--threads=100000: must be 0 to 1024"},
      {[](ServerOptions& o) { o.shutdown_grace = std::chrono::milliseconds(-1000); },
       "--shutdown_grace_s=-1: must be 0 to 3600"},
  };
  cases.emplace_back(
      [](ServerOptions& o) {
        o.devices = {0, 2, 0};
      },
      "--devices: device 0 is listed twice");
  cases.emplace_back([](ServerOptions& o) { o.cuda_memory_limit_bytes = -1; },
                     "--cuda_memory_limit_bytes=-1: must be 0 to 1125899906842624");
  cases.emplace_back([](ServerOptions& o) { o.http_timeout = milliseconds(10); },
                     "--http_timeout_s=0.01: must be 0.1 to 3600");
  cases.emplace_back([](ServerOptions& o) { o.write_timeout = milliseconds(-2000); },
                     "--write_timeout_s=-2: must be 0.1 to 3600");
  cases.emplace_back([](ServerOptions& o) { o.min_transfer_rate = 10; },
                     "--min_transfer_bytes_per_s=10: must be 1024 to 1099511627776");
  cases.emplace_back([](ServerOptions& o) { o.http_budget_wait = std::chrono::hours(1); },
                     "--http_budget_wait_s=3600: must be 0 to 600");
  cases.emplace_back([](ServerOptions& o) { o.grpc_keepalive = milliseconds(0); },
                     "--grpc_keepalive_s=0: must be 1 to 86400");
  cases.emplace_back([](ServerOptions& o) { o.grpc_max_connection_age = milliseconds(-1000); },
                     "--grpc_max_connection_age_s=-1: must be 0 to 31536000");
  for (const auto& [change, message] : cases) {
    ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "";
    o.backend = "cpu";
    change(o);
    const absl::Status st = Server::Start(o).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_EQ(st.message(), message);
  }
}

TEST(ResponseLimitTest, AResponseThatCannotFitIsRefusedBeforeComputingWithOutOfRange) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.threads = 1;
  o.max_message_bytes = 64 << 10;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::ZlprService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->grpc_port()), grpc::InsecureChannelCredentials()));
  // 20 x 1000 fp16 scores (40 kB) asking for an fp32 gradient (80 kB) or probabilities.
  const testing::Problem p = testing::MakeProblem({.rows = 20, .cols = 1000, .seed = 4});
  v1::LossRequest loss;
  v1::EncodeMatrix(p.scores, 20, 1000, DType::kFloat16, loss.mutable_scores());
  auto* sp = loss.mutable_sparse_labels();
  sp->mutable_row_splits()->Add(p.row_splits.begin(), p.row_splits.end());
  sp->mutable_indices()->Add(p.indices.begin(), p.indices.end());
  loss.set_want_grad(true);
  {
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    const grpc::Status st = stub->ComputeLoss(&ctx, loss, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_THAT(st.error_message(), ::testing::StartsWith("the response would be at least 80"));
    EXPECT_THAT(st.error_message(), HasSubstr("over the message limit of 65536 bytes"));
  }
  loss.set_grad_dtype(v1::BFLOAT16);  // 40 kB of gradient fits
  {
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    EXPECT_TRUE(stub->ComputeLoss(&ctx, loss, &resp).ok());
  }
  v1::PredictRequest predict;
  *predict.mutable_scores() = loss.scores();
  predict.set_want_probs(true);
  {
    grpc::ClientContext ctx;
    v1::PredictResponse resp;
    EXPECT_EQ(stub->Predict(&ctx, predict, &resp).error_code(), grpc::StatusCode::OUT_OF_RANGE);
  }
  const std::string metrics = HttpGet((*server)->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "zlpr_rows_total{op=\"loss\"}"), 20);  // the bf16 one only
  EXPECT_EQ(MetricValue(metrics, "zlpr_rows_total{op=\"predict\"}"), 0);
  // Label lists depend on the scores, so their size is known only after the labeler ran: every
  // label of 20 x 1000 (about 9 bytes each) is over the limit, and answered as clearly.
  predict.set_want_probs(false);
  predict.set_threshold(0.0001f);
  {
    grpc::ClientContext ctx;
    v1::PredictResponse resp;
    const grpc::Status st = stub->Predict(&ctx, predict, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_THAT(st.error_message(), HasSubstr("over the message limit of 65536 bytes"));
  }
  EXPECT_EQ(MetricValue(HttpGet((*server)->metrics_port(), "/metrics"),
                        "zlpr_rejected_requests_total{reason=\"too_large\"}"),
            3);
}

// --- Results equal the kernels' -------------------------------------------------------------

TEST_F(ServiceTest, ComputeLossReturnsTheKernelsLossAndGradientPerRow) {
  StartServer();
  for (bool sparse : {false, true}) {
    const testing::Problem p = testing::MakeProblem(
        {.rows = 5, .cols = 37, .labels = testing::Labels::kSoft, .mask = true, .seed = 21});
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    const grpc::Status st = stub_->ComputeLoss(&ctx, LossRequestOf(p, sparse, true), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    std::vector<float> loss(5), grad(5 * 37);
    ASSERT_TRUE(cpu_->Loss(p.Input(false), {loss.data(), grad.data()}).ok());
    EXPECT_EQ(resp.request_id(), "req-21");
    EXPECT_EQ(std::vector<float>(resp.loss().begin(), resp.loss().end()), loss);
    EXPECT_EQ(Floats(resp.grad()), grad);
    EXPECT_THAT(resp.grad().shape(), ::testing::ElementsAre(5, 37));
    double sum = 0;
    for (float l : loss) sum += l;
    EXPECT_DOUBLE_EQ(resp.loss_sum(), sum);
    EXPECT_DOUBLE_EQ(resp.loss_mean(), sum / 5);
    EXPECT_GE(resp.timing().batch_rows(), 5u);
    const auto& trailers = ctx.GetServerTrailingMetadata();
    EXPECT_EQ(trailers.count("zlpr-queue-seconds"), 1u);
    EXPECT_EQ(trailers.count("zlpr-compute-seconds"), 1u);
  }
}

TEST_F(ServiceTest, ComputeLossNarrowsTheGradientToTheAskedDtype) {
  StartServer();
  const testing::Problem p = testing::MakeProblem({.rows = 2, .cols = 9, .seed = 3});
  v1::LossRequest req = LossRequestOf(p, false, true);
  req.set_grad_dtype(v1::BFLOAT16);
  grpc::ClientContext ctx;
  v1::LossResponse resp;
  ASSERT_TRUE(stub_->ComputeLoss(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.grad().dtype(), v1::BFLOAT16);
  ASSERT_EQ(resp.grad().data().size(), 2u * 9 * 2);
  std::vector<float> loss(2), grad(18);
  ASSERT_TRUE(cpu_->Loss(p.Input(false), {loss.data(), grad.data()}).ok());
  const std::vector<float> widened = Floats(resp.grad());
  ASSERT_EQ(widened.size(), 18u);
  // Narrowed with round-to-nearest-even: exactly the bf16 of the fp32 gradient.
  for (int i = 0; i < 18; ++i) EXPECT_EQ(widened[i], BFloat16ToFloat(FloatToBFloat16(grad[i])));
}

TEST_F(ServiceTest, PredictReturnsTheKernelsLabelSetsAndProbabilities) {
  StartServer();
  const testing::Problem p =
      testing::MakeProblem({.rows = 4, .cols = 50, .mask = true, .scale = 2.0f, .seed = 5});
  v1::PredictRequest req;
  req.set_request_id("p1");
  *req.mutable_scores() = FloatTensor(p.scores, 4, 50);
  *req.mutable_mask() = MaskTensor(p.mask, 4, 50);
  req.set_threshold(0.3f);
  req.set_top_k(3);
  req.set_min_labels(2);
  req.set_want_probs(true);
  grpc::ClientContext ctx;
  v1::PredictResponse resp;
  ASSERT_TRUE(stub_->Predict(&ctx, req, &resp).ok());
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, 4, 50};
  in.mask = p.mask.data();
  in.options = {0.3f, nullptr, 3, 2};
  LabelSets sets;
  std::vector<float> probs(200);
  ASSERT_TRUE(cpu_->Label(in, &sets, probs.data()).ok());
  EXPECT_EQ(resp.request_id(), "p1");
  ASSERT_EQ(resp.rows_size(), 4);
  for (int r = 0; r < 4; ++r) {
    const std::vector<int32_t> want(sets.labels.begin() + sets.row_offsets[r],
                                    sets.labels.begin() + sets.row_offsets[r + 1]);
    EXPECT_EQ(std::vector<int32_t>(resp.rows(r).labels().begin(), resp.rows(r).labels().end()),
              want);
    EXPECT_EQ(resp.rows(r).probs_size(), resp.rows(r).labels_size());
  }
  EXPECT_EQ(Floats(resp.probs()), probs);
}

TEST_F(ServiceTest, GetServerInfoDescribesBackendBatcherAndLimits) {
  BatcherOptions b = DefaultBatcher();
  b.max_batch_rows = 77;
  StartServer(b);
  grpc::ClientContext ctx;
  v1::ServerInfo info;
  ASSERT_TRUE(stub_->GetServerInfo(&ctx, v1::ServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.version(), Version());
  EXPECT_EQ(info.backend(), "cpu");
  ASSERT_EQ(info.devices_size(), 1);
  EXPECT_THAT(info.devices(0), HasSubstr("cpu ("));
  EXPECT_EQ(info.batcher().max_batch_rows(), 77);
  EXPECT_EQ(info.batcher().max_queue_delay_us(), 200);
  EXPECT_EQ(info.batcher().bulk_chunk_us(), 1000);
  EXPECT_EQ(info.batcher().bulk_threads(), "idle");
  EXPECT_EQ(info.limits().max_message_bytes(), 64 << 20);
}

TEST_F(ServiceTest, ARequestsPriorityChoosesItsClassAndAnUnknownOneIsRefused) {
  StartServer();
  const testing::Problem p = testing::MakeProblem({.rows = 2, .cols = 9, .seed = 3});
  auto count = [&](const char* cls) {
    return MetricValue(
        Metrics(), absl::StrCat("zlpr_class_request_duration_seconds_count{class=\"", cls, "\"}"));
  };
  for (v1::Priority priority :
       {v1::PRIORITY_DEFAULT, v1::PRIORITY_INTERACTIVE, v1::PRIORITY_BULK}) {
    v1::LossRequest req = LossRequestOf(p, false, false);
    req.set_priority(priority);
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    ASSERT_TRUE(stub_->ComputeLoss(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(count("bulk"), 2);  // the loss's default, and asked
  EXPECT_EQ(count("interactive"), 1);
  v1::LossRequest bad = LossRequestOf(p, false, false);
  bad.set_priority(static_cast<v1::Priority>(7));
  grpc::ClientContext ctx;
  v1::LossResponse resp;
  const grpc::Status st = stub_->ComputeLoss(&ctx, bad, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(),
            "priority = 7 is not a Priority (0 the operation's default, 1 interactive, 2 bulk)");
}

TEST_F(ServiceTest, LargeMessagesParsedAndAnsweredOnTheBackgroundThreadsGiveTheSameResults) {
  // Over 1 MiB: parsed on the background threads, and (bulk) serialized there; unary and
  // streamed, beside a small one that takes the inline path.
  StartServer();
  const testing::Problem big = testing::MakeProblem(
      {.rows = 300, .cols = 1000, .labels = testing::Labels::kSoft, .seed = 5});
  const testing::Problem small = testing::MakeProblem({.rows = 2, .cols = 9, .seed = 6});
  std::vector<float> loss(300), grad(300 * 1000);
  ASSERT_TRUE(cpu_->Loss(big.Input(false), {loss.data(), grad.data()}).ok());
  {
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    ASSERT_TRUE(stub_->ComputeLoss(&ctx, LossRequestOf(big, false, true), &resp).ok());
    EXPECT_EQ(std::vector<float>(resp.loss().begin(), resp.loss().end()), loss);
    EXPECT_EQ(Floats(resp.grad()), grad);
  }
  grpc::ClientContext ctx;
  auto stream = stub_->StreamLoss(&ctx);
  for (const testing::Problem* q : {&big, &small, &big}) {
    ASSERT_TRUE(stream->Write(LossRequestOf(*q, false, true)));
  }
  stream->WritesDone();
  v1::LossResponse resp;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.request_id(), i == 1 ? "req-6" : "req-5");  // in order
    EXPECT_FALSE(resp.has_error()) << resp.error().message();
    if (i != 1) {
      EXPECT_EQ(Floats(resp.grad()), grad);
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
}

// --- Every validation error, with its exact code and message ------------------------------

struct BadLoss {
  const char* name;
  std::function<void(v1::LossRequest&)> mutate;
  const char* message;
};

TEST_F(ServiceTest, InvalidLossRequestsGetInvalidArgumentNamingFieldRowAndColumn) {
  StartServer();
  const testing::Problem p = testing::MakeProblem({.rows = 3, .cols = 4, .seed = 1});
  const BadLoss cases[] = {
      {"nan",
       [](v1::LossRequest& r) {
         std::string* d = r.mutable_scores()->mutable_data();
         const float nan = std::nanf("");
         std::memcpy(d->data() + 4 * 6, &nan, 4);
       },
       "scores[1, 2] is NaN"},
      {"short data", [](v1::LossRequest& r) { r.mutable_scores()->mutable_data()->resize(40); },
       "scores.data has 40 bytes, expected 3 x 4 x 4 = 48"},
      {"1-d shape", [](v1::LossRequest& r) { r.mutable_scores()->mutable_shape()->RemoveLast(); },
       "scores.shape [3] must have two dimensions [rows, cols]"},
      {"unset dtype",
       [](v1::LossRequest& r) { r.mutable_scores()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       "scores.dtype is unset: use FLOAT32, FLOAT16 or BFLOAT16"},
      {"no labels", [](v1::LossRequest& r) { r.clear_dense_labels(); },
       "labels: missing: set dense_labels or sparse_labels"},
      {"label range",
       [](v1::LossRequest& r) {
         std::string* d = r.mutable_dense_labels()->mutable_data();
         const float two = 2.0f;
         std::memcpy(d->data() + 4 * 11, &two, 4);
       },
       "dense_labels[2, 3] = 2 is outside [0, 1]"},
      {"mask dtype",
       [](v1::LossRequest& r) {
         *r.mutable_mask() = FloatTensor(std::vector<float>(12, 1.0f), 3, 4);
       },
       "mask.dtype FLOAT32 is not allowed: use UINT8"},
      {"mask value",
       [](v1::LossRequest& r) {
         std::vector<uint8_t> m(12, 1);
         m[5] = 9;
         *r.mutable_mask() = MaskTensor(m, 3, 4);
       },
       "mask[1, 1] = 9 must be 0 or 1"},
      {"grad dtype", [](v1::LossRequest& r) { r.set_grad_dtype(v1::UINT8); },
       "grad.dtype UINT8 is not allowed: use FLOAT32, FLOAT16 or BFLOAT16"},
      {"sparse order",
       [](v1::LossRequest& r) {
         auto* sp = r.mutable_sparse_labels();
         sp->add_row_splits(0);
         sp->add_row_splits(2);
         sp->add_row_splits(2);
         sp->add_row_splits(2);
         sp->add_indices(3);
         sp->add_indices(1);
       },
       "sparse_labels.indices[1] (row 0, column 1) is not greater than the previous index 3: "
       "indices must be strictly increasing within a row"},
  };
  for (const BadLoss& c : cases) {
    v1::LossRequest req = LossRequestOf(p, false, true);
    c.mutate(req);
    grpc::ClientContext ctx;
    v1::LossResponse resp;
    const grpc::Status st = stub_->ComputeLoss(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_EQ(st.error_message(), c.message) << c.name;
  }
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"invalid\"}") == 10;
  }));
  EXPECT_EQ(MetricValue(Metrics(),
                        "zlpr_requests_total{code=\"INVALID_ARGUMENT\",method=\"ComputeLoss\","
                        "protocol=\"zlpr_v1\"}"),
            10);
}

TEST_F(ServiceTest, InvalidPredictRequestsGetInvalidArgument) {
  StartServer();
  const std::vector<float> s(6, 0.5f);
  struct Case {
    std::function<void(v1::PredictRequest&)> mutate;
    const char* message;
  } cases[] = {
      {[](v1::PredictRequest& r) { r.set_threshold(1.0f); }, "threshold = 1 must be in (0, 1)"},
      {[](v1::PredictRequest& r) {
         *r.mutable_label_thresholds() = FloatTensor({0.5f, 0.5f}, 1, 2);
       },
       "label_thresholds.shape [1, 2] (8 bytes) must be [3] or [n, 3] of FLOAT32 (one per "
       "column)"},
      {[](v1::PredictRequest& r) {
         v1::Tensor t = FloatTensor({0.5f, 0.0f, 0.5f}, 1, 3);
         t.mutable_shape()->RemoveLast();
         t.set_shape(0, 3);
         *r.mutable_label_thresholds() = t;
       },
       "label_thresholds[1] = 0 must be in (0, 1)"},
      {[](v1::PredictRequest& r) { r.clear_scores(); }, "scores: missing"},
  };
  for (const auto& c : cases) {
    v1::PredictRequest req;
    *req.mutable_scores() = FloatTensor(s, 2, 3);
    c.mutate(req);
    grpc::ClientContext ctx;
    v1::PredictResponse resp;
    const grpc::Status st = stub_->Predict(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(st.error_message(), c.message);
  }
}

// --- Queue full, deadline, cancellation -----------------------------------------------------

TEST_F(ServiceTest, AFullQueueAnswersResourceExhaustedAtOnce) {
  BatcherOptions b = DefaultBatcher();
  b.max_queue_size = 1;
  b.max_queue_delay = std::chrono::seconds(30);  // the first request waits
  StartServer(b);
  const testing::Problem p = testing::MakeProblem({.rows = 1, .cols = 8, .seed = 2});
  const v1::LossRequest req = LossRequestOf(p, false, false);
  CallCounter calls;
  grpc::ClientContext first_ctx;
  v1::LossResponse first_resp;
  calls.Add();
  stub_->async()->ComputeLoss(&first_ctx, &req, &first_resp,
                              [&](const grpc::Status& st) { calls.Done(st); });
  ASSERT_TRUE(WaitUntil(
      [&] { return MetricValue(Metrics(), "zlpr_queue_depth{class=\"bulk\",op=\"loss\"}") == 1; }));
  grpc::ClientContext ctx;
  v1::LossResponse resp;
  const grpc::Status st = stub_->ComputeLoss(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(st.error_message(), "the bulk request queue is full (1 requests waiting); retry later");
  EXPECT_EQ(MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"queue_full\"}"), 1);
  server_->Shutdown();  // the queued request is still answered
  EXPECT_EQ(calls.Wait(), std::vector<grpc::StatusCode>{grpc::StatusCode::OK});
}

TEST_F(ServiceTest, ARequestWhoseDeadlinePassesWhileQueuedIsNotComputed) {
  BatcherOptions b = DefaultBatcher();
  b.max_queue_delay = std::chrono::seconds(30);
  StartServer(b);
  const testing::Problem p = testing::MakeProblem({.rows = 1, .cols = 8, .seed = 2});
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + milliseconds(100));
  v1::LossResponse resp;
  const grpc::Status st = stub_->ComputeLoss(&ctx, LossRequestOf(p, false, false), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"deadline\"}") == 1;
  }));
  EXPECT_EQ(MetricValue(Metrics(), "zlpr_rows_total{op=\"loss\"}"), 0);
  EXPECT_EQ(MetricValue(Metrics(), "zlpr_queue_depth{class=\"bulk\",op=\"loss\"}"), 0);
  EXPECT_EQ(MetricValue(Metrics(), "zlpr_late_results_total"), 0);  // dropped, not computed late
}

TEST_F(ServiceTest, ARequestCancelledWhileQueuedIsNotComputed) {
  BatcherOptions b = DefaultBatcher();
  b.max_queue_delay = std::chrono::seconds(30);
  StartServer(b);
  const testing::Problem p = testing::MakeProblem({.rows = 1, .cols = 8, .seed = 2});
  const v1::PredictRequest req = [&] {
    v1::PredictRequest r;
    *r.mutable_scores() = FloatTensor(p.scores, 1, 8);
    return r;
  }();
  CallCounter calls;
  grpc::ClientContext ctx;
  v1::PredictResponse resp;
  calls.Add();
  stub_->async()->Predict(&ctx, &req, &resp, [&](const grpc::Status& st) { calls.Done(st); });
  ASSERT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_queue_depth{class=\"interactive\",op=\"predict\"}") == 1;
  }));
  ctx.TryCancel();
  EXPECT_EQ(calls.Wait(), std::vector<grpc::StatusCode>{grpc::StatusCode::CANCELLED});
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"cancelled\"}") == 1;
  }));
  EXPECT_EQ(MetricValue(Metrics(), "zlpr_rows_total{op=\"predict\"}"), 0);
}

// --- Streams --------------------------------------------------------------------------------

TEST_F(ServiceTest, StreamLossAnswersInOrderWithPerMessageErrorsAndGoesOn) {
  StartServer();
  grpc::ClientContext ctx;
  auto stream = stub_->StreamLoss(&ctx);
  std::vector<testing::Problem> problems;
  for (int i = 0; i < 20; ++i) {
    problems.push_back(testing::MakeProblem({.rows = 1 + i % 4,
                                             .cols = 33,
                                             .labels = testing::Labels::kSparseHard,
                                             .seed = static_cast<uint64_t>(100 + i)}));
  }
  std::thread writer([&] {
    for (int i = 0; i < 20; ++i) {
      v1::LossRequest req = LossRequestOf(problems[i], i % 2 == 0, true);
      req.set_request_id(std::to_string(i));
      if (i == 7) req.mutable_scores()->set_dtype(v1::UINT8);  // a bad message mid-stream
      ASSERT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
  });
  v1::LossResponse resp;
  int n = 0;
  while (stream->Read(&resp)) {
    EXPECT_EQ(resp.request_id(), std::to_string(n)) << "out of order";
    if (n == 7) {
      EXPECT_EQ(resp.error().code(), 3);
      EXPECT_EQ(resp.error().message(),
                "scores.dtype UINT8 is not allowed: use FLOAT32, FLOAT16 or BFLOAT16");
    } else {
      EXPECT_FALSE(resp.has_error());
      const testing::Problem& p = problems[n];
      std::vector<float> loss(p.spec.rows), grad(p.spec.rows * 33);
      ASSERT_TRUE(cpu_->Loss(p.Input(false), {loss.data(), grad.data()}).ok());
      EXPECT_EQ(std::vector<float>(resp.loss().begin(), resp.loss().end()), loss);
      EXPECT_EQ(Floats(resp.grad()), grad);
    }
    ++n;
  }
  writer.join();
  EXPECT_EQ(n, 20);
  EXPECT_TRUE(stream->Finish().ok());
}

// A client that stops reading its responses: the write that cannot complete cancels the call
// after --write_timeout_s (plus the response's size at the minimum rate), and the memory its
// messages held goes back. Without it, the stream held its share of the budget until the
// client went away.
TEST_F(ServiceTest, AStreamWhoseClientStopsReadingIsCancelledAndItsMemoryReturned) {
  StartServer(DefaultBatcher(), [](ServerOptions& o) {
    o.write_timeout = milliseconds(300);
    o.min_transfer_rate = 64 << 20;
  });
  grpc::ClientContext ctx;
  auto stream = stub_->StreamPredict(&ctx);
  // Each answer carries 256 x 4096 probabilities (4 MiB): far more than the flow-control
  // window lets through unread.
  constexpr int kRows = 256, kCols = 4096;
  v1::PredictRequest req;
  *req.mutable_scores() = FloatTensor(std::vector<float>(kRows * kCols, 0.25f), kRows, kCols);
  req.set_want_probs(true);
  for (int i = 0; i < 6; ++i) {
    if (!stream->Write(req)) break;
  }
  const auto held = [&] { return MetricValue(Metrics(), "zlpr_inflight_bytes{kind=\"held\"}"); };
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"slow_reader\"}") >= 1;
  }));
  EXPECT_TRUE(WaitUntil([&] { return held() == 0; })) << held();
  v1::PredictResponse resp;
  while (stream->Read(&resp)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServiceTest, AnInferenceStreamWhoseClientStopsReadingIsCancelledAndItsMemoryReturned) {
  StartServer(DefaultBatcher(), [](ServerOptions& o) {
    o.write_timeout = milliseconds(300);
    o.min_transfer_rate = 64 << 20;
  });
  grpc::ClientContext ctx;
  auto stream = inference::GRPCInferenceService::NewStub(channel_)->ModelStreamInfer(&ctx);
  constexpr int kRows = 256, kCols = 4096;
  inference::ModelInferRequest req;
  req.set_model_name("zlpr_predict");
  auto* in = req.add_inputs();
  in->set_name("scores");
  in->set_datatype("FP32");
  in->add_shape(kRows);
  in->add_shape(kCols);
  const std::vector<float> scores(kRows * kCols, 0.25f);
  req.add_raw_input_contents(
      std::string(reinterpret_cast<const char*>(scores.data()), scores.size() * sizeof(float)));
  req.add_outputs()->set_name("probs");  // 4 MiB an answer
  for (int i = 0; i < 6; ++i) {
    if (!stream->Write(req)) break;
  }
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(Metrics(), "zlpr_rejected_requests_total{reason=\"slow_reader\"}") >= 1;
  }));
  EXPECT_TRUE(
      WaitUntil([&] { return MetricValue(Metrics(), "zlpr_inflight_bytes{kind=\"held\"}") == 0; }));
  inference::ModelStreamInferResponse resp;
  while (stream->Read(&resp)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServiceTest, StreamPredictAnswersEveryMessageInOrder) {
  StartServer();
  grpc::ClientContext ctx;
  auto stream = stub_->StreamPredict(&ctx);
  const int kMessages = 200;  // more than the stream window: reading pauses and resumes
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) {
      v1::PredictRequest req;
      req.set_request_id(std::to_string(i));
      const float s = (i % 3 == 0) ? 1.0f : -1.0f;
      *req.mutable_scores() = FloatTensor({s, -s, 0.25f}, 1, 3);
      if (i == 50) req.set_threshold(-1.0f);
      ASSERT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
  });
  v1::PredictResponse resp;
  int n = 0;
  while (stream->Read(&resp)) {
    ASSERT_EQ(resp.request_id(), std::to_string(n));
    if (n == 50) {
      EXPECT_EQ(resp.error().code(), 3);
      EXPECT_EQ(resp.error().message(), "threshold = -1 must be in (0, 1)");
    } else {
      ASSERT_EQ(resp.rows_size(), 1);
      const std::vector<int32_t> want =
          n % 3 == 0 ? std::vector<int32_t>{0, 2} : std::vector<int32_t>{1, 2};
      EXPECT_EQ(std::vector<int32_t>(resp.rows(0).labels().begin(), resp.rows(0).labels().end()),
                want);
    }
    ++n;
  }
  writer.join();
  EXPECT_EQ(n, kMessages);
  EXPECT_TRUE(stream->Finish().ok());
}

// Sends `bytes` as the whole message of a unary call to `method` and returns the status.
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& bytes) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  absl::Mutex mu;
  std::optional<grpc::Status> status;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status st) {
    absl::MutexLock lock(&mu);
    status = std::move(st);
  });
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](std::optional<grpc::Status>* s) { return s->has_value(); }, &status));
  return *status;
}

TEST_F(ServiceTest, AnUnparseableUnaryRequestGetsInvalidArgumentAndIsCounted) {
  StartServer();
  // A field 1 (request_id) whose length runs past the end, and a request_id that is not UTF-8.
  const std::string truncated("\x0a\x7f\x01\x02", 4);
  const std::string not_utf8("\x0a\x02\xff\xfe", 4);
  for (const char* method : {"/zlpr.v1.ZlprService/ComputeLoss", "/zlpr.v1.ZlprService/Predict"}) {
    for (const std::string& bytes : {truncated, not_utf8}) {
      const grpc::Status st = RawUnaryCall(channel_, method, bytes);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
      EXPECT_THAT(st.error_message(), HasSubstr("(4 bytes) is not a valid zlpr.v1."));
      EXPECT_THAT(st.error_message(), HasSubstr("it does not parse"));
    }
  }
  const std::string m = Metrics();
  EXPECT_EQ(MetricValue(m,
                        "zlpr_requests_total{code=\"INVALID_ARGUMENT\",method=\"ComputeLoss\","
                        "protocol=\"zlpr_v1\"}"),
            2);
  EXPECT_EQ(
      MetricValue(
          m,
          "zlpr_requests_total{code=\"INVALID_ARGUMENT\",method=\"Predict\",protocol=\"zlpr_v1\"}"),
      2);
  EXPECT_EQ(MetricValue(m, "zlpr_rejected_requests_total{reason=\"invalid\"}"), 4);
  // The server goes on.
  v1::PredictRequest req;
  *req.mutable_scores() = FloatTensor({1, -1}, 1, 2);
  v1::PredictResponse resp;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub_->Predict(&ctx, req, &resp).ok());
}

TEST_F(ServiceTest, AStreamMessageThatDoesNotParseEndsTheStreamWithInvalidArgument) {
  StartServer();
  grpc::ClientContext ctx;
  auto stream = stub_->StreamPredict(&ctx);
  for (int i = 0; i < 3; ++i) {
    v1::PredictRequest req;
    // Message 1's request_id is not UTF-8: the client serializes it (logging a complaint), the
    // server cannot parse it.
    req.set_request_id(i == 1 ? std::string("\xff\xfe", 2) : std::to_string(i));
    *req.mutable_scores() = FloatTensor({1, -1}, 1, 2);
    if (!stream->Write(req)) break;  // the server may have ended the stream already
  }
  stream->WritesDone();
  std::vector<std::string> answered;
  for (v1::PredictResponse resp; stream->Read(&resp);) answered.push_back(resp.request_id());
  EXPECT_EQ(answered, std::vector<std::string>{"0"});
  const grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("stream message 1: the message"));
  EXPECT_THAT(st.error_message(), HasSubstr("is not a valid zlpr.v1.PredictRequest"));
  EXPECT_THAT(st.error_message(), HasSubstr("the messages sent after it were not answered"));
  EXPECT_EQ(MetricValue(Metrics(),
                        "zlpr_requests_total{code=\"INVALID_ARGUMENT\",method="
                        "\"StreamPredict\",protocol=\"zlpr_v1\"}"),
            1);
}

TEST_F(ServiceTest, TheMemoryBudgetRefusesWhatItCannotCoverAndIsReturnedAfterwards) {
  StartServer(DefaultBatcher(), [](ServerOptions& o) { o.max_inflight_bytes = 1 << 20; });
  v1::ServerInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetServerInfo(&ctx, {}, &info).ok());
  }
  EXPECT_EQ(info.limits().max_inflight_bytes(), 1 << 20);
  // 80 x 1000 fp32 scores and labels: 640 000 bytes, charged twice: over the 1 MiB budget.
  const testing::Problem big = testing::MakeProblem({.rows = 80, .cols = 1000, .seed = 5});
  v1::LossResponse resp;
  {
    grpc::ClientContext ctx;
    const grpc::Status st = stub_->ComputeLoss(&ctx, LossRequestOf(big, false, false), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(st.error_message(), HasSubstr("of the 1048576-byte budget, --max_inflight_bytes"));
  }
  // 50 x 1000: its message fits (800 000 bytes charged), but not with its gradient (another
  // 2 x 200 000): refused before computing.
  const testing::Problem half = testing::MakeProblem({.rows = 50, .cols = 1000, .seed = 6});
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->ComputeLoss(&ctx, LossRequestOf(half, false, true), &resp).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // Within it: answered, and the budget is whole again afterwards, also over a stream.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(WaitUntil(
        [&] { return MetricValue(Metrics(), "zlpr_inflight_bytes{kind=\"held\"}") == 0; }));
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->ComputeLoss(&ctx, LossRequestOf(half, false, false), &resp).ok());
  }
  // A call's lease is returned when gRPC is done with its response, which can be just after
  // the client has it.
  auto budget_free = [&] {
    return MetricValue(Metrics(), "zlpr_inflight_bytes{kind=\"held\"}") == 0;
  };
  ASSERT_TRUE(WaitUntil(budget_free));
  {
    grpc::ClientContext ctx;
    auto stream = stub_->StreamLoss(&ctx);
    ASSERT_TRUE(stream->Write(LossRequestOf(half, false, false)));
    ASSERT_TRUE(stream->Write(LossRequestOf(big, false, false)));
    stream->WritesDone();
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_FALSE(resp.has_error());
    ASSERT_TRUE(stream->Read(&resp));  // over the budget: answered in its place
    EXPECT_EQ(resp.error().code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(stream->Finish().ok());
  }
  const std::string m = Metrics();
  EXPECT_EQ(MetricValue(m, "zlpr_rejected_requests_total{reason=\"memory\"}"), 3);
  EXPECT_EQ(MetricValue(m, "zlpr_inflight_bytes{kind=\"limit\"}"), 1 << 20);
  EXPECT_TRUE(WaitUntil(budget_free));
}

TEST_F(ServiceTest, OpenInferenceProtocolRequestsTakeTheSamePathAndBatchWithZlprOnes) {
  StartServer();
  auto oip = inference::GRPCInferenceService::NewStub(channel_);
  const testing::Problem p = testing::MakeProblem({.rows = 5, .cols = 37, .seed = 31});
  std::vector<float> want_loss(5), want_grad(5 * 37);
  ASSERT_TRUE(cpu_->Loss(p.Input(false), {want_loss.data(), want_grad.data()}).ok());
  inference::ModelInferRequest req;
  req.set_model_name("zlpr_loss");
  req.set_id("oip-1");
  for (const char* name : {"scores", "labels"}) {
    auto* in = req.add_inputs();
    in->set_name(name);
    in->set_datatype("FP32");
    in->add_shape(5);
    in->add_shape(37);
    const std::vector<float>& v = std::string_view(name) == "scores" ? p.scores : p.dense;
    req.add_raw_input_contents(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  }
  // Concurrently with zlpr.v1 calls of the same shape: they may share a batch.
  std::vector<std::thread> others;
  for (int i = 0; i < 4; ++i) {
    others.emplace_back([&] {
      grpc::ClientContext ctx;
      v1::LossResponse resp;
      EXPECT_TRUE(stub_->ComputeLoss(&ctx, LossRequestOf(p, false, true), &resp).ok());
    });
  }
  inference::ModelInferResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status st = oip->ModelInfer(&ctx, req, &resp);
  for (auto& t : others) t.join();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.id(), "oip-1");
  ASSERT_EQ(resp.outputs_size(), 2);
  ASSERT_EQ(resp.raw_output_contents_size(), 2);
  EXPECT_EQ(resp.outputs(0).name(), "loss");
  std::vector<float> loss(5), grad(5 * 37);
  ASSERT_EQ(resp.raw_output_contents(0).size(), 5 * 4u);
  ASSERT_EQ(resp.raw_output_contents(1).size(), 5 * 37 * 4u);
  std::memcpy(loss.data(), resp.raw_output_contents(0).data(), 5 * 4);
  std::memcpy(grad.data(), resp.raw_output_contents(1).data(), 5 * 37 * 4);
  EXPECT_EQ(loss, want_loss);
  EXPECT_EQ(grad, want_grad);
  // A bad input names the tensor; the count is shared with zlpr.v1's metrics.
  req.mutable_inputs(1)->set_datatype("INT64");
  grpc::ClientContext ctx2;
  const grpc::Status bad = oip->ModelInfer(&ctx2, req, &resp);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("input 'labels': datatype INT64 is not allowed"));
  const std::string m = Metrics();
  EXPECT_EQ(MetricValue(
                m, "zlpr_requests_total{code=\"OK\",method=\"ModelInfer\",protocol=\"oip_grpc\"}"),
            1);
  EXPECT_EQ(MetricValue(m, "zlpr_rows_total{op=\"loss\"}"), 25);
}

TEST_F(ServiceTest, ShutdownEndsAnOpenStreamAfterAnsweringWhatItSent) {
  StartServer();
  grpc::ClientContext ctx;
  auto stream = stub_->StreamPredict(&ctx);
  v1::PredictRequest req;
  *req.mutable_scores() = FloatTensor({1.0f, -1.0f}, 1, 2);
  ASSERT_TRUE(stream->Write(req));
  v1::PredictResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_FALSE(resp.has_error());
  // The trainer keeps the stream open; the server goes down.
  std::thread stopper([&] { server_->Shutdown(); });
  EXPECT_FALSE(stream->Read(&resp));
  const grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(), "the server is shutting down");
  stopper.join();
}

// --- Batching -------------------------------------------------------------------------------

TEST_F(ServiceTest, ConcurrentRequestsAreMergedIntoOneBatch) {
  BatcherOptions b = DefaultBatcher();
  b.max_batch_rows = 16;
  b.max_queue_delay = std::chrono::seconds(30);  // only a full batch is cut
  StartServer(b);
  const int kCalls = 16;
  std::vector<v1::PredictRequest> reqs(kCalls);
  std::vector<v1::PredictResponse> resps(kCalls);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  CallCounter calls;
  for (int i = 0; i < kCalls; ++i) {
    *reqs[i].mutable_scores() = FloatTensor({static_cast<float>(i) - 8.0f, 0.5f}, 1, 2);
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    calls.Add();
    stub_->async()->Predict(ctxs[i].get(), &reqs[i], &resps[i],
                            [&](const grpc::Status& st) { calls.Done(st); });
  }
  for (grpc::StatusCode c : calls.Wait()) EXPECT_EQ(c, grpc::StatusCode::OK);
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_EQ(resps[i].timing().batch_rows(), 16u) << "request " << i;
    const std::vector<int32_t> want = i > 8 ? std::vector<int32_t>{0, 1} : std::vector<int32_t>{1};
    EXPECT_EQ(
        std::vector<int32_t>(resps[i].rows(0).labels().begin(), resps[i].rows(0).labels().end()),
        want);
  }
  const std::string m = Metrics();
  EXPECT_EQ(MetricValue(m, "zlpr_batch_rows_count{op=\"predict\"}"), 1);
  EXPECT_EQ(MetricValue(m, "zlpr_batch_rows_sum{op=\"predict\"}"), 16);
}

// --- Shutdown, metrics, health --------------------------------------------------------------

TEST_F(ServiceTest, GracefulShutdownUnderLoadAnswersEveryAcceptedRequest) {
  BatcherOptions b = DefaultBatcher();
  b.max_batch_rows = 8;
  b.max_queue_delay = std::chrono::milliseconds(5);
  StartServer(b);
  const int kCalls = 64;
  const testing::Problem p = testing::MakeProblem({.rows = 2, .cols = 1000, .seed = 9});
  const v1::LossRequest req = LossRequestOf(p, false, true);
  std::vector<v1::LossResponse> resps(kCalls);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  CallCounter calls;
  for (int i = 0; i < kCalls; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    calls.Add();
    stub_->async()->ComputeLoss(ctxs[i].get(), &req, &resps[i],
                                [&](const grpc::Status& st) { calls.Done(st); });
  }
  // Every call accepted (queued or running) before the shutdown starts.
  ASSERT_TRUE(WaitUntil([&] {
    const std::string m = Metrics();
    return MetricValue(m, "zlpr_inflight_requests") +
               MetricValue(m,
                           "zlpr_requests_total{code=\"OK\",method=\"ComputeLoss\",protocol=\"zlpr_"
                           "v1\"}") ==
           kCalls;
  }));
  server_->Shutdown();
  const std::vector<grpc::StatusCode> codes = calls.Wait();
  ASSERT_EQ(codes.size(), static_cast<size_t>(kCalls));
  for (grpc::StatusCode c : codes) EXPECT_EQ(c, grpc::StatusCode::OK);
  for (const auto& r : resps) EXPECT_EQ(r.loss_size(), 2);
  // After shutdown the port refuses.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + milliseconds(500));
  v1::LossResponse resp;
  EXPECT_EQ(stub_->ComputeLoss(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ServiceTest, MetricsEndpointParsesAndCarriesEveryFamily) {
  StartServer();
  const testing::Problem p = testing::MakeProblem({.rows = 3, .cols = 10, .seed = 4});
  grpc::ClientContext ctx;
  v1::LossResponse resp;
  ASSERT_TRUE(stub_->ComputeLoss(&ctx, LossRequestOf(p, false, true), &resp).ok());
  std::string body;
  ASSERT_TRUE(WaitUntil([&] {
    body = Metrics();
    return MetricValue(
               body,
               "zlpr_requests_total{code=\"OK\",method=\"ComputeLoss\",protocol=\"zlpr_v1\"}") == 1;
  }));
  // Every line is a comment or `name{labels} value` in the text exposition format.
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfaN]+$)");
  int samples = 0;
  for (absl::string_view line : absl::StrSplit(body, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    EXPECT_TRUE(std::regex_match(std::string(line), sample)) << std::string(line);
    ++samples;
  }
  EXPECT_GT(samples, 50);
  for (const char* family :
       {"zlpr_requests_total", "zlpr_request_duration_seconds", "zlpr_queue_duration_seconds",
        "zlpr_compute_duration_seconds", "zlpr_batch_rows", "zlpr_rows_total", "zlpr_queue_depth",
        "zlpr_inflight_requests", "zlpr_rejected_requests_total", "zlpr_request_bytes_total",
        "zlpr_response_bytes_total", "zlpr_build_info", "zlpr_inflight_bytes",
        "zlpr_late_results_total", "zlpr_class_request_duration_seconds",
        "zlpr_bulk_stand_ins_total"}) {
    EXPECT_THAT(body, HasSubstr(absl::StrCat("# TYPE ", family, " "))) << family;
  }
  EXPECT_EQ(MetricValue(body, "zlpr_rows_total{op=\"loss\"}"), 3);
  EXPECT_EQ(MetricValue(body, "zlpr_bulk_stand_ins_total{op=\"loss\"}"), 0);  // it had the CPU
  EXPECT_EQ(MetricValue(
                body, absl::StrCat("zlpr_build_info{backend=\"cpu\",version=\"", Version(), "\"}")),
            1);
  EXPECT_EQ(MetricValue(body, "zlpr_compute_duration_seconds_count{backend=\"cpu\",op=\"loss\"}"),
            1);
  EXPECT_GT(MetricValue(body, "zlpr_request_bytes_total"), 3 * 10 * 8);
  EXPECT_GT(MetricValue(body, "zlpr_response_bytes_total"), 3 * 10 * 4);
}

// A CPU backend that a test can break, as a GPU whose device reset failed is broken: from then
// on health() and every call say UNAVAILABLE.
class BreakableBackend final : public Backend {
 public:
  explicit BreakableBackend(std::atomic<bool>* broken) : broken_(broken) {}
  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string Describe() const override { return "breakable cpu"; }
  absl::Status health() const override {
    return broken_->load() ? absl::UnavailableError("cuda:7 is unusable: the test broke it")
                           : absl::OkStatus();
  }
  using Backend::Label;
  using Backend::Loss;
  absl::Status Loss(const ValidatedLossInput& in, const LossOutput& out) override {
    ZLPR_RETURN_IF_ERROR(health());
    return cpu_->Loss(in, out);
  }
  absl::Status Label(const ValidatedLabelerInput& in, LabelSets* out, float* probs) override {
    ZLPR_RETURN_IF_ERROR(health());
    return cpu_->Label(in, out, probs);
  }

 private:
  std::atomic<bool>* const broken_;
  std::unique_ptr<Backend> cpu_ = NewCpuBackend({.threads = 1});
};

TEST_F(ServiceTest, WhenNoBackendCanComputeHealthTurnsNotServingAndCallsGetUnavailable) {
  std::atomic<bool> broken{false};
  backends_.push_back(std::make_unique<BreakableBackend>(&broken));
  StartServer();
  v1::PredictRequest req;
  *req.mutable_scores() = FloatTensor(std::vector<float>{1.0f, -1.0f, 0.5f}, 1, 3);
  req.set_top_k(1);
  auto predict = [&] {
    grpc::ClientContext ctx;
    v1::PredictResponse resp;
    return stub_->Predict(&ctx, req, &resp);
  };
  auto health = grpc::health::v1::Health::NewStub(channel_);
  auto status = [&] {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest hreq;
    hreq.set_service("zlpr.v1.ZlprService");
    grpc::health::v1::HealthCheckResponse resp;
    EXPECT_TRUE(health->Check(&ctx, hreq, &resp).ok());
    return resp.status();
  };
  ASSERT_TRUE(predict().ok());
  EXPECT_EQ(status(), grpc::health::v1::HealthCheckResponse::SERVING);
  broken = true;
  const grpc::Status st = predict();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(), "cuda:7 is unusable: the test broke it");
  EXPECT_TRUE(
      WaitUntil([&] { return status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING; }));
  // The Open Inference Protocol's readiness says the same.
  auto oip = inference::GRPCInferenceService::NewStub(channel_);
  grpc::ClientContext ctx;
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(oip->ServerReady(&ctx, inference::ServerReadyRequest(), &ready).ok());
  EXPECT_FALSE(ready.ready());
  // The last worker stays and answers: nothing waits for a backend that will not come back.
  EXPECT_EQ(predict().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ServiceTest, HealthIsServingThenNotServingAfterShutdownBegins) {
  StartServer();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "zlpr.v1.ZlprService"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service("no.such.Service");
    grpc::health::v1::HealthCheckResponse resp;
    EXPECT_EQ(health->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  grpc::ClientContext watch_ctx;
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("zlpr.v1.ZlprService");
  auto watch = health->Watch(&watch_ctx, req);
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  std::thread stopper([&] { server_->Shutdown(); });
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  watch_ctx.TryCancel();
  stopper.join();
}

}  // namespace
}  // namespace zlpr::server

namespace zlpr::server {
namespace {

// A server for the shutdown tests: CPU, one thread, no metrics endpoint, a long grace.
std::unique_ptr<Server> StartForShutdown() {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.backend = "cpu";
  o.threads = 1;
  o.shutdown_grace = std::chrono::seconds(10);
  auto s = Server::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

TEST(ShutdownTest, UnderLoadNoCallSentBeforeShutdownEndsOtherThanOkOrUnavailable) {
  const testing::Problem p = testing::MakeProblem({.rows = 1, .cols = 1000, .seed = 2});
  v1::PredictRequest req;
  v1::EncodeMatrix(p.scores, 1, 1000, DType::kFloat32, req.mutable_scores());
  req.set_top_k(5);
  for (int run = 0; run < 10; ++run) {
    std::unique_ptr<Server> server = StartForShutdown();
    ASSERT_NE(server, nullptr);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->grpc_port()),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::ZlprService::NewStub(channel);
    using Clock = std::chrono::steady_clock;
    struct Outcome {
      Clock::time_point sent;
      grpc::StatusCode code;
    };
    absl::Mutex mu;
    std::vector<Outcome> outcomes;
    std::atomic<bool> stop{false};
    std::vector<std::thread> callers;
    for (int i = 0; i < 16; ++i) {
      callers.emplace_back([&] {
        while (!stop.load()) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
          v1::PredictResponse resp;
          const Clock::time_point sent = Clock::now();
          const grpc::Status st = stub->Predict(&ctx, req, &resp);
          absl::MutexLock lock(&mu);
          outcomes.push_back({sent, st.error_code()});
        }
      });
    }
    ASSERT_TRUE(WaitUntil([&] {
      absl::MutexLock lock(&mu);
      return outcomes.size() > 200;
    }));
    const Clock::time_point signal = Clock::now();
    server->Shutdown();
    stop.store(true);
    for (std::thread& t : callers) t.join();
    absl::MutexLock lock(&mu);
    int before = 0, bad = 0;
    for (const Outcome& o : outcomes) {
      if (o.sent >= signal) continue;
      ++before;
      if (o.code != grpc::StatusCode::OK && o.code != grpc::StatusCode::UNAVAILABLE) {
        ++bad;
        ADD_FAILURE() << "run " << run << ": a call sent before the shutdown ended with code "
                      << o.code;
      }
    }
    EXPECT_GT(before, 200);
    EXPECT_EQ(bad, 0) << "run " << run;
  }
}

TEST(ShutdownTest, HealthWatchesAndIdleConnectionsDoNotHoldTheExit) {
  std::unique_ptr<Server> server = StartForShutdown();
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  // An idle connection...
  auto idle = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->grpc_port()),
                                  grpc::InsecureChannelCredentials());
  ASSERT_TRUE(idle->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5)));
  // ...and an open health watch.
  grpc::ClientContext watch_ctx;
  grpc::health::v1::HealthCheckRequest watch_req;
  auto watch = grpc::health::v1::Health::NewStub(channel)->Watch(&watch_ctx, watch_req);
  grpc::health::v1::HealthCheckResponse first;
  ASSERT_TRUE(watch->Read(&first));
  EXPECT_EQ(first.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  // ...and an Open Inference Protocol stream waiting for its next request.
  grpc::ClientContext stream_ctx;
  auto oip = inference::GRPCInferenceService::NewStub(channel)->ModelStreamInfer(&stream_ctx);
  {
    inference::ModelInferRequest req;
    req.set_model_name("zlpr_predict");
    auto* in = req.add_inputs();
    in->set_name("scores");
    in->set_datatype("FP32");
    in->add_shape(1);
    in->add_shape(1);
    in->mutable_contents()->add_fp32_contents(1.0f);
    ASSERT_TRUE(oip->Write(req));
    inference::ModelStreamInferResponse resp;
    ASSERT_TRUE(oip->Read(&resp));  // answered: the stream now waits for the next request
    EXPECT_EQ(resp.error_message(), "");
  }
  const auto start = std::chrono::steady_clock::now();
  server->Shutdown();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0) << "the 10 s grace is for work in flight, and there is none";
  EXPECT_EQ(oip->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  watch_ctx.TryCancel();
}

}  // namespace
}  // namespace zlpr::server
