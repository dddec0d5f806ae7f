// zlpr::Client against a real server on loopback: blocking, async and future calls, streams
// with backpressure, errors, health and info, round_robin over several servers.
#include "zlpr/client.h"

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/test_util.h"
#include "server/server.h"
#include "server/test_support.h"

namespace zlpr {
namespace {

using server::MetricValue;
using ::testing::HasSubstr;

std::unique_ptr<server::Server> StartServer(int64_t max_message_bytes = 64 << 20) {
  server::ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.threads = 1;
  o.batcher.max_queue_delay = std::chrono::microseconds(200);
  o.max_message_bytes = max_message_bytes;
  auto s = server::Server::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

std::unique_ptr<Client> Connect(const std::string& target) {
  ClientOptions o;
  o.target = target;
  o.default_deadline = std::chrono::seconds(20);
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartServer();
    client_ = Connect(absl::StrCat("127.0.0.1:", server_->grpc_port()));
    problem_ = testing::MakeProblem(
        {.rows = 3, .cols = 40, .labels = testing::Labels::kSparseSoft, .mask = true, .seed = 12});
    cpu_->Loss(problem_.Input(false), {want_loss_.data(), want_grad_.data()}).IgnoreError();
  }
  LossCall Call(bool sparse) const {
    LossCall c;
    c.request_id = "c1";
    c.rows = 3;
    c.cols = 40;
    c.scores = problem_.scores;
    if (sparse) {
      c.row_splits = problem_.row_splits;
      c.indices = problem_.indices;
      c.values = problem_.values;
    } else {
      c.dense_labels = problem_.dense;
    }
    c.mask = problem_.mask;
    c.want_grad = true;
    return c;
  }

  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Client> client_;
  testing::Problem problem_;
  std::unique_ptr<Backend> cpu_ = NewCpuBackend({.threads = 1});
  std::vector<float> want_loss_ = std::vector<float>(3), want_grad_ = std::vector<float>(120);
};

TEST_F(ClientTest, ComputeLossBlockingReturnsTheKernelsResults) {
  for (bool sparse : {false, true}) {
    auto r = client_->ComputeLoss(Call(sparse));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->request_id, "c1");
    EXPECT_EQ(r->loss, want_loss_);
    EXPECT_EQ(r->grad, want_grad_);
    EXPECT_NEAR(r->loss_sum, want_loss_[0] + want_loss_[1] + want_loss_[2], 1e-6);
    EXPECT_GE(r->batch_rows, 3u);
  }
}

TEST_F(ClientTest, EveryPriorityGivesTheSameAnswer) {
  for (Priority priority : {Priority::kDefault, Priority::kInteractive, Priority::kBulk}) {
    LossCall call = Call(false);
    call.priority = priority;
    auto r = client_->ComputeLoss(call);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->loss, want_loss_);
    EXPECT_EQ(r->grad, want_grad_);
  }
}

TEST_F(ClientTest, AsyncAndFutureCallsComplete) {
  std::promise<absl::StatusOr<LossResult>> got;
  client_->ComputeLossAsync(Call(false),
                            [&](absl::StatusOr<LossResult> r) { got.set_value(std::move(r)); });
  auto fut = client_->ComputeLossFuture(Call(true));
  const auto a = got.get_future().get();
  const auto b = fut.get();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->loss, want_loss_);
  EXPECT_EQ(b->loss, want_loss_);
  PredictCall p;
  p.rows = 3;
  p.cols = 40;
  p.scores = problem_.scores;
  p.top_k = 2;
  p.want_probs = true;
  auto pr = client_->PredictFuture(p).get();
  ASSERT_TRUE(pr.ok()) << pr.status();
  ASSERT_EQ(pr->labels.size(), 3u);
  for (const auto& row : pr->labels) EXPECT_LE(row.size(), 2u);
  EXPECT_EQ(pr->dense_probs.size(), 120u);
}

TEST_F(ClientTest, NarrowGradientsComeBackWidened) {
  LossCall c = Call(false);
  c.grad_dtype = DType::kFloat16;
  auto r = client_->ComputeLoss(c);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->grad.size(), want_grad_.size());
  for (size_t i = 0; i < want_grad_.size(); ++i) {
    EXPECT_NEAR(r->grad[i], want_grad_[i], 1e-3 * std::abs(want_grad_[i]) + 1e-7);
  }
}

TEST_F(ClientTest, ServerErrorsArriveAsStatusWithTheServersMessage) {
  LossCall c = Call(false);
  std::vector<float> bad(problem_.scores);
  bad[41] = std::nanf("");
  c.scores = bad;
  auto r = client_->ComputeLoss(c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "scores[1, 1] is NaN");
}

TEST_F(ClientTest, LossStreamKeepsOrderAndAppliesBackpressure) {
  auto stream = client_->OpenLossStream(/*window=*/4);
  constexpr int kMessages = 50;
  std::atomic<int> sent{0};
  std::thread sender([&] {
    for (int i = 0; i < kMessages; ++i) {
      LossCall c = Call(i % 2 == 0);
      c.request_id = std::to_string(i);
      std::vector<float> bad;
      if (i == 10) {
        bad = problem_.scores;
        bad[0] = std::numeric_limits<float>::infinity();
        c.scores = bad;
      }
      ASSERT_TRUE(stream->Send(c).ok());
      ++sent;
    }
  });
  for (int i = 0; i < kMessages; ++i) {
    auto r = stream->Receive();
    // Never more than the window ahead of what was received.
    EXPECT_LE(sent.load(), i + 1 + 4);
    if (i == 10) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(r.status().message(), HasSubstr("scores[0, 0] is +inf"));
      continue;
    }
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->request_id, std::to_string(i));
    EXPECT_EQ(r->loss, want_loss_);
  }
  sender.join();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ClientTest, PredictStreamAndInfoAndHealth) {
  auto stream = client_->OpenPredictStream(8);
  PredictCall p;
  p.rows = 3;
  p.cols = 40;
  p.scores = problem_.scores;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream->Send(p).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream->Receive().ok());
  EXPECT_TRUE(stream->Finish().ok());

  auto info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->backend, "cpu");
  EXPECT_EQ(info->max_message_bytes, 64 << 20);
  auto healthy = client_->Healthy("zlpr.v1.ZlprService");
  ASSERT_TRUE(healthy.ok());
  EXPECT_TRUE(*healthy);
}

TEST(ClientSplitTest, CallsOverTheMessageLimitAreSplitByRowsAndBitIdentical) {
  auto server = StartServer();
  const std::string target = absl::StrCat("127.0.0.1:", server->grpc_port());
  auto whole = Connect(target);
  ClientOptions o;
  o.target = target;
  o.max_message_bytes = 64 << 10;  // 64 KiB: 200 x 300 fp32 scores and labels need ~7 requests
  auto small = Client::Create(o);
  ASSERT_TRUE(small.ok()) << small.status();
  for (auto labels : {testing::Labels::kSoft, testing::Labels::kSparseSoft}) {
    const testing::Problem p = testing::MakeProblem(
        {.rows = 200, .cols = 300, .labels = labels, .mask = true, .seed = 21});
    LossCall call;
    call.rows = 200;
    call.cols = 300;
    call.scores = p.scores;
    if (labels == testing::Labels::kSparseSoft) {
      call.row_splits = p.row_splits;
      call.indices = p.indices;
      call.values = p.values;
    } else {
      call.dense_labels = p.dense;
    }
    call.mask = p.mask;
    call.want_grad = true;
    call.request_id = "split";
    auto a = whole->ComputeLoss(call);
    auto b = (*small)->ComputeLoss(call);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    EXPECT_EQ(b->request_id, "split");
    EXPECT_EQ(a->loss, b->loss);
    EXPECT_EQ(a->grad, b->grad);
    EXPECT_EQ(a->loss_sum, b->loss_sum);
    EXPECT_EQ(a->loss_mean, b->loss_mean);
    PredictCall pc;
    pc.rows = 200;
    pc.cols = 300;
    pc.scores = p.scores;
    pc.top_k = 3;
    pc.want_probs = true;
    auto pa = whole->Predict(pc);
    auto pb = (*small)->Predict(pc);
    ASSERT_TRUE(pa.ok() && pb.ok()) << pa.status() << pb.status();
    EXPECT_EQ(pa->labels, pb->labels);
    EXPECT_EQ(pa->dense_probs, pb->dense_probs);
  }
  // A split call's errors are the server's, as for one call.
  std::vector<float> scores(200 * 300, 0.0f), labels(200 * 300, 0.0f);
  scores[150 * 300 + 7] = std::nanf("");
  LossCall bad;
  bad.rows = 200;
  bad.cols = 300;
  bad.scores = scores;
  bad.dense_labels = labels;
  auto r = (*small)->ComputeLoss(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("is NaN"));
}

// A default client learns the server's --max_message_bytes (one GetServerInfo, kept) and splits
// over it: a 64 x 10000 loss+gradient (2.5 MB of scores, as much of labels) against a server that
// takes 1 MiB is answered as one call to a server with the default limit answers it.
TEST(ClientSplitTest, TheServersMessageLimitIsLearnedOnceAndCallsAreSplitUnderIt) {
  auto small_server = StartServer(1 << 20);
  auto big_server = StartServer();
  auto small = Connect(absl::StrCat("127.0.0.1:", small_server->grpc_port()));
  auto whole = Connect(absl::StrCat("127.0.0.1:", big_server->grpc_port()));
  const testing::Problem p = testing::MakeProblem(
      {.rows = 64, .cols = 10000, .labels = testing::Labels::kSoft, .seed = 5});
  LossCall call;
  call.rows = 64;
  call.cols = 10000;
  call.scores = p.scores;
  call.dense_labels = p.dense;
  call.want_grad = true;
  auto a = whole->ComputeLoss(call);
  ASSERT_TRUE(a.ok()) << a.status();
  for (int i = 0; i < 2; ++i) {
    auto b = small->ComputeLoss(call);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(a->loss, b->loss);
    EXPECT_EQ(a->grad, b->grad);
    EXPECT_EQ(a->loss_sum, b->loss_sum);
  }
  PredictCall pc;
  pc.rows = 64;
  pc.cols = 10000;
  pc.scores = p.scores;
  pc.want_probs = true;
  auto pa = whole->Predict(pc);
  auto pb = small->Predict(pc);
  ASSERT_TRUE(pa.ok() && pb.ok()) << pa.status() << pb.status();
  EXPECT_EQ(pa->labels, pb->labels);
  EXPECT_EQ(pa->dense_probs, pb->dense_probs);
  auto limit = small->MessageLimit();
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(*limit, 1 << 20);
  const std::string metrics = server::HttpGet(small_server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics,
                        "zlpr_requests_total{code=\"OK\",method=\"GetServerInfo\","
                        "protocol=\"zlpr_v1\"}"),
            1);
  // One request of the same call over the limit is refused, as before: the split is what helps.
  ClientOptions fixed;
  fixed.target = absl::StrCat("127.0.0.1:", small_server->grpc_port());
  fixed.max_message_bytes = 64 << 20;
  auto unsplit = Client::Create(fixed);
  ASSERT_TRUE(unsplit.ok());
  EXPECT_EQ((*unsplit)->ComputeLoss(call).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ClientBalancingTest, SeveralAddressesAreBalancedRoundRobin) {
  auto a = StartServer();
  auto b = StartServer();
  auto client =
      Connect(absl::StrCat("ipv4:127.0.0.1:", a->grpc_port(), ",127.0.0.1:", b->grpc_port()));
  const testing::Problem p = testing::MakeProblem({.rows = 1, .cols = 8, .seed = 1});
  PredictCall call;
  call.rows = 1;
  call.cols = 8;
  call.scores = p.scores;
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(client->Predict(call).ok());
  const std::string sample =
      "zlpr_requests_total{code=\"OK\",method=\"Predict\",protocol=\"zlpr_v1\"}";
  const double on_a = MetricValue(server::HttpGet(a->metrics_port(), "/metrics"), sample);
  const double on_b = MetricValue(server::HttpGet(b->metrics_port(), "/metrics"), sample);
  EXPECT_EQ(on_a + on_b, 40);
  EXPECT_GE(on_a, 10);
  EXPECT_GE(on_b, 10);
}

TEST(ClientOptionsTest, ServiceConfigRetriesUnavailableWithRoundRobin) {
  ClientOptions o;
  const std::string json = ServiceConfigJson(o);
  EXPECT_THAT(json, HasSubstr(R"("round_robin")"));
  EXPECT_THAT(json, HasSubstr(R"("retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"])"));
  EXPECT_THAT(json, HasSubstr(R"("maxAttempts": 5)"));
  o.target = "";
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientRetryTest, AnUnreachableServerIsUnavailableAfterRetries) {
  ClientOptions o;
  o.target = "127.0.0.1:1";  // nothing listens there
  o.default_deadline = std::chrono::seconds(5);
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  auto info = (*client)->GetServerInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace zlpr
