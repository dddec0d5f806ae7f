// The Open Inference Protocol's HTTP binding through a real server on loopback: many keep-alive
// clients at once (the worker's completions posted back to each connection's strand; run under
// ThreadSanitizer by `make test-tsan`), answers against the CPU reference, and shutdown with
// requests in flight.
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "server/test_support.h"

namespace zlpr::server {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using json = nlohmann::json;
using ::testing::HasSubstr;

// A blocking keep-alive HTTP/1.1 connection.
class Connection {
 public:
  explicit Connection(int port) : stream_(ioc_) {
    stream_.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                  static_cast<unsigned short>(port)));
  }
  // Writes a POST; `header_length`: the JSON's length when binary tensors follow it (0: all
  // JSON).
  void Send(const std::string& target, const std::string& body, size_t header_length = 0) {
    http::request<http::string_body> req{http::verb::post, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (header_length > 0) {
      req.set("Inference-Header-Content-Length", std::to_string(header_length));
    }
    req.body() = body;
    req.prepare_payload();
    http::write(stream_, req);
  }
  // Send, then read the response.
  http::response<http::string_body> Post(const std::string& target, const std::string& body,
                                         size_t header_length = 0) {
    Send(target, body, header_length);
    http::response<http::string_body> res;
    http::read(stream_, buffer_, res);
    return res;
  }

 private:
  boost::asio::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

std::string PredictBody(int k) {
  // Row k: scores k, -k, 0.5: labels {0, 2} for k >= 1 at the default threshold.
  return json{{"id", std::to_string(k)},
              {"inputs",
               {{{"name", "scores"},
                 {"datatype", "FP32"},
                 {"shape", {1, 3}},
                 {"data", {static_cast<double>(k), -static_cast<double>(k), 0.5}}}}},
              {"outputs", {{{"name", "labels"}}, {{"name", "label_count"}}}}}
      .dump();
}

// A server on loopback (ports picked by the system) with the HTTP binding, on one CPU worker,
// without a metrics endpoint.
ServerOptions HttpServerOptions() {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.http_address = "127.0.0.1:0";
  o.http_threads = 2;
  o.backend = "cpu";
  o.threads = 1;
  return o;
}

std::unique_ptr<Server> StartServer(int64_t max_inflight_bytes = 0) {
  ServerOptions o = HttpServerOptions();
  o.max_inflight_bytes = max_inflight_bytes;
  auto s = Server::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

TEST(OipHttpTest, ConcurrentKeepAliveClientsGetTheirOwnAnswers) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->http_port(), 0);
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      Connection conn(server->http_port());
      for (int i = 1; i <= 25; ++i) {
        const int k = c * 100 + i;
        auto res = conn.Post("/v2/models/zlpr_predict/infer", PredictBody(k));
        const json j = json::parse(res.body(), nullptr, false);
        if (res.result_int() != 200 || j.is_discarded() || j["id"] != std::to_string(k) ||
            j["outputs"][0]["data"] != json({0, 2}) || j["outputs"][1]["data"] != json({2})) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// JSON texts over 64 KiB are parsed and formatted on the codec pool, not on an I/O thread:
// several clients at once, each request ~300 KB of JSON and its probabilities ~500 KB back.
TEST(OipHttpTest, LargeJsonRequestsAndResponsesAreAnsweredRight) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  constexpr int kRows = 30, kCols = 1000;
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      Connection conn(server->http_port());
      for (int i = 0; i < 3; ++i) {
        const int k = c * 10 + i;
        std::vector<double> scores(kRows * kCols);
        for (int e = 0; e < kRows * kCols; ++e) scores[e] = ((e * 7 + k) % 11 - 5) / 4.0;
        const std::string body = json{{"id", std::to_string(k)},
                                      {"inputs",
                                       {{{"name", "scores"},
                                         {"datatype", "FP32"},
                                         {"shape", {kRows, kCols}},
                                         {"data", scores}}}},
                                      {"outputs", {{{"name", "probs"}}, {{"name", "label_count"}}}}}
                                     .dump();
        if (body.size() <= (64 << 10)) wrong.fetch_add(1000);  // not large enough to count
        auto res = conn.Post("/v2/models/zlpr_predict/infer", body);
        const json j = json::parse(res.body(), nullptr, false);
        if (res.result_int() != 200 || j.is_discarded() || j["id"] != std::to_string(k)) {
          wrong.fetch_add(1);
          continue;
        }
        const json& probs = j["outputs"][0]["data"];
        const json& counts = j["outputs"][1]["data"];
        if (probs.size() != static_cast<size_t>(kRows) * kCols || counts.size() != kRows) {
          wrong.fetch_add(1);
          continue;
        }
        for (int e = 0; e < kRows * kCols; e += 997) {  // p = sigma(2s)
          const double want = 1.0 / (1.0 + std::exp(-2.0 * scores[e]));
          if (std::abs(probs[e].get<double>() - want) > 1e-6) wrong.fetch_add(1);
        }
        for (int r = 0; r < kRows; ++r) {  // labels above 0.5: the positive scores of the row
          int positive = 0;
          for (int col = 0; col < kCols; ++col) positive += scores[r * kCols + col] > 0 ? 1 : 0;
          if (counts[r] != positive) wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(OipHttpTest, BadRequestsNameWhatIsWrongAndTheConnectionGoesOn) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Connection conn(server->http_port());
  auto res = conn.Post("/v2/models/zlpr_predict/infer", R"({"inputs": [{"name": "scores",
      "datatype": "FP32", "shape": [1, 2], "data": [1, "x"]}]})");
  EXPECT_EQ(res.result_int(), 400);
  EXPECT_THAT(res.body(), HasSubstr("inputs[0].data: element 1 is not a number"));
  res = conn.Post("/v2/models/zlpr_nope/infer", PredictBody(1));
  EXPECT_EQ(res.result_int(), 404);
  res = conn.Post("/v2/models/zlpr_predict/infer", PredictBody(3));  // same connection
  EXPECT_EQ(res.result_int(), 200);
}

TEST(OipHttpTest, ShutdownAnswersTheRequestsInFlight) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      try {
        Connection conn(server->http_port());
        while (!stop.load()) {
          const auto res = conn.Post("/v2/models/zlpr_predict/infer", PredictBody(1));
          (res.result_int() == 200   ? ok
           : res.result_int() == 503 ? unavailable
                                     : other)
              .fetch_add(1);
          if (res.result_int() != 200) break;
        }
      } catch (const std::exception&) {
        // The connection closed at shutdown between requests: nothing was lost.
      }
    });
  }
  while (ok.load() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server->Shutdown();
  stop.store(true);
  for (auto& t : clients) t.join();
  EXPECT_GE(ok.load(), 20);
  EXPECT_EQ(other.load(), 0);
}

TEST(OipHttpTest, ARequestWhoseClientLeavesWhileItIsQueuedIsNotComputed) {
  ServerOptions o = HttpServerOptions();
  o.metrics_address = "127.0.0.1:0";
  // A lone request waits 3 s in the queue; its client's close is seen at once.
  o.batcher.max_queue_delay = std::chrono::seconds(3);
  o.batcher.adaptive_delay = false;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const auto metric = [&](const std::string& sample) {
    return MetricValue(HttpGet((*server)->metrics_port(), "/metrics"), sample);
  };
  {
    Connection leaving((*server)->http_port());
    leaving.Send("/v2/models/zlpr_predict/infer", PredictBody(1));
    ASSERT_TRUE(WaitUntil(
        [&] { return metric("zlpr_queue_depth{class=\"interactive\",op=\"predict\"}") == 1; }));
  }  // the client goes away without its answer
  EXPECT_TRUE(
      WaitUntil([&] { return metric("zlpr_rejected_requests_total{reason=\"cancelled\"}") == 1; }));
  EXPECT_EQ(metric("zlpr_queue_depth{class=\"interactive\",op=\"predict\"}"), 0);
  EXPECT_EQ(metric("zlpr_rows_total{op=\"predict\"}"), 0);
  // A client that stays gets its answer after the same wait: the watch does not take a live
  // connection for a closed one.
  Connection conn((*server)->http_port());
  const auto res = conn.Post("/v2/models/zlpr_predict/infer", PredictBody(2));
  EXPECT_EQ(res.result_int(), 200) << res.body();
  (*server)->Shutdown();
}

TEST(OipHttpTest, AnHttpPortInUseFailsTheStartCleanly) {
  auto first = StartServer();
  ASSERT_NE(first, nullptr);
  ServerOptions o = HttpServerOptions();
  o.http_address = absl::StrCat("127.0.0.1:", first->http_port());
  auto second = Server::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("could not listen there"));
  Connection conn(first->http_port());  // the first one still serves
  EXPECT_EQ(conn.Post("/v2/models/zlpr_predict/infer", PredictBody(2)).result_int(), 200);
}

// The body is charged to the memory budget (twice: it and its parsed form) from before it is
// read until it is parsed; then the computation charges the parsed request instead. A budget of
// three bodies admits a request (it once held both charges while computing, four bodies, and
// answered 429); one and a half bodies refuses it before reading it.
TEST(OipHttpTest, TheBodyIsChargedUntilItIsParsedNotWhileTheRequestIsComputed) {
  constexpr int kCols = 250000;
  const std::string header = json{{"inputs",
                                   {{{"name", "scores"},
                                     {"datatype", "FP32"},
                                     {"shape", {1, kCols}},
                                     {"parameters", {{"binary_data_size", 4 * kCols}}}}}},
                                  {"outputs", {{{"name", "label_count"}}}}}
                                 .dump();
  const std::vector<float> scores(kCols, -1.0f);  // p = 0.12 everywhere: no label
  const std::string body =
      header + std::string(reinterpret_cast<const char*>(scores.data()), 4 * kCols);
  const auto size = static_cast<int64_t>(body.size());
  {
    auto server = StartServer(3 * size);
    ASSERT_NE(server, nullptr);
    Connection conn(server->http_port());
    for (int i = 0; i < 3; ++i) {  // and nothing is left charged after each
      auto res = conn.Post("/v2/models/zlpr_predict/infer", body, header.size());
      ASSERT_EQ(res.result_int(), 200) << res.body();
      EXPECT_EQ(json::parse(res.body())["outputs"][0]["data"], json::array({0}));
    }
  }
  auto server = StartServer(3 * size / 2);
  ASSERT_NE(server, nullptr);
  Connection conn(server->http_port());
  auto res = conn.Post("/v2/models/zlpr_predict/infer", body, header.size());
  EXPECT_EQ(res.result_int(), 429);
  EXPECT_THAT(res.body(), HasSubstr("--max_inflight_bytes"));
}

}  // namespace
}  // namespace zlpr::server
