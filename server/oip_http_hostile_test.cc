// The HTTP binding under hostile clients, each case through a real server on loopback with raw
// bytes on the socket: whatever a request holds, it gets an answer (or its connection closes)
// and the server goes on serving everyone else.
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "server/test_support.h"

namespace zlpr::server {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

std::unique_ptr<Server> StartHttpServer() {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.http_address = "127.0.0.1:0";
  o.http_threads = 1;  // one I/O thread: if it died, nothing would answer
  o.backend = "cpu";
  o.threads = 1;
  auto s = Server::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

std::string BodyOf(const std::string& response) {
  const size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

// The server still answers a health check and an inference.
void ExpectStillServing(const Server& server) {
  EXPECT_EQ(StatusOf(RawExchange(server.http_port(),
                                 "GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n")),
            200);
  const std::string body =
      R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,2],"data":[1,-1]}]})";
  const std::string res = RawExchange(
      server.http_port(),
      absl::StrCat("POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nConnection: close\r\n"
                   "Content-Length: ",
                   body.size(), "\r\n\r\n", body));
  EXPECT_EQ(StatusOf(res), 200) << res;
}

// An error body is JSON (with bytes that are not UTF-8 replaced) naming what is wrong.
void ExpectJsonError(const std::string& response, int status, const std::string& says) {
  EXPECT_EQ(StatusOf(response), status) << response;
  const json j = json::parse(BodyOf(response), nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << response;
  EXPECT_THAT(j["error"].get<std::string>(), HasSubstr(says));
}

std::string Infer(const std::string& model, const std::string& extra_headers,
                  const std::string& body) {
  return absl::StrCat("POST /v2/models/", model, "/infer HTTP/1.1\r\nConnection: close\r\n",
                      extra_headers, "Content-Length: ", body.size(), "\r\n\r\n", body);
}

TEST(OipHttpHostileTest, APathThatIsNotUtf8IsAnsweredAndTheServerGoesOn) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  ExpectJsonError(
      RawExchange(server->http_port(), "GET /v2/health/\xff HTTP/1.1\r\nConnection: close\r\n\r\n"),
      404, "no such endpoint: GET /v2/health/\xef\xbf\xbd");
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, AModelNameThatIsNotUtf8IsAnsweredAndTheServerGoesOn) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  ExpectJsonError(
      RawExchange(server->http_port(),
                  "GET /v2/models/m\xc3\x28/config HTTP/1.1\r\nConnection: close\r\n\r\n"),
      404, "unknown model 'm\xef\xbf\xbd(");
  ExpectJsonError(RawExchange(server->http_port(), Infer("\xfe\xff", "", "{}")), 404,
                  "unknown model");
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, HeadersThatAreNotUtf8AreAnsweredAndTheServerGoesOn) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  ExpectJsonError(
      RawExchange(server->http_port(),
                  Infer("zlpr_predict", "Content-Encoding: gz\xffip\r\n", R"({"inputs":[]})")),
      400, "Content-Encoding gz\xef\xbf\xbdip is not supported");
  ExpectJsonError(RawExchange(server->http_port(),
                              Infer("zlpr_predict", "Inference-Header-Content-Length: 1\xff\r\n",
                                    R"({"inputs":[]})")),
                  400, "Inference-Header-Content-Length '1\xef\xbf\xbd' is not a number");
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, ARawByteThatIsNotUtf8InsideAJsonStringIsAnsweredAndTheServerGoesOn) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  ExpectJsonError(RawExchange(server->http_port(), Infer("zlpr_predict", "", "{\"id\":\"a\xff\"}")),
                  400, "the request is not valid JSON");
  ExpectJsonError(RawExchange(server->http_port(), Infer("zlpr_predict", "", "{\"\xc0\xaf\":1}")),
                  400, "the request is not valid JSON");
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, HeadIsAnsweredWithTheHeaderOnly) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  // Two requests in one write: the second answer must start right after the first one's header.
  const std::string res = RawExchange(
      server->http_port(),
      "HEAD /v2 HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(StatusOf(res), 200) << res;
  const size_t end = res.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos);
  EXPECT_THAT(res.substr(0, end), HasSubstr("Content-Length: "));
  EXPECT_NE(res.substr(0, end).find("Content-Length: 0"), 0u);
  EXPECT_EQ(StatusOf(res.substr(end + 4)), 200) << res;
}

TEST(OipHttpHostileTest, ATransferEncodingOtherThanChunkedIsRefusedAndTheConnectionClosed) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  const std::string smuggled = "GET /v2/health/live HTTP/1.1\r\n\r\n";
  for (const char* te :
       {"xchunked", "chunked, gzip", "gzip", "chunked\r\nTransfer-Encoding: chunked"}) {
    const std::string res = RawExchange(
        server->http_port(), absl::StrCat("POST /v2/models/zlpr_predict/infer HTTP/1.1\r\n"
                                          "Transfer-Encoding: ",
                                          te, "\r\n\r\n", smuggled));
    // Beast refuses some forms itself ("bad Transfer-Encoding"), the binding the rest.
    ExpectJsonError(res, 400, "Transfer-Encoding");
    // One answer, not a second one for the body taken as a request.
    EXPECT_EQ(res.find("HTTP/1.1", 1), std::string::npos) << te << "\n" << res;
    EXPECT_THAT(res, HasSubstr("Connection: close"));
  }
  const std::string both = RawExchange(
      server->http_port(), absl::StrCat("POST /v2/models/zlpr_predict/infer HTTP/1.1\r\n"
                                        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                                        smuggled));
  EXPECT_EQ(StatusOf(both), 400) << both;
  EXPECT_EQ(both.find("HTTP/1.1", 1), std::string::npos) << both;
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, AKeyGivenTwiceIsRefused) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  // The first "inputs" held the data, the second (the one a DOM keeps) none.
  const std::string body =
      R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,3],"data":[1,-1,0.5]}],)"
      R"("inputs":[{"name":"scores","datatype":"FP32","shape":[1,3]}]})";
  ExpectJsonError(RawExchange(server->http_port(), Infer("zlpr_predict", "", body)), 400,
                  "request: key 'inputs' given twice");
  ExpectJsonError(
      RawExchange(server->http_port(),
                  Infer("zlpr_predict", "",
                        R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,1],)"
                        R"("data":[1],"data":[2]}]})")),
      400, "inputs[0]: key 'data' given twice");
}

// A connection that has sent `header` and keeps its socket open.
class OpenConnection {
 public:
  OpenConnection(int port, const std::string& header) : fd_(ConnectLoopback(port)) { Send(header); }
  ~OpenConnection() { Close(); }
  void Send(const std::string& bytes) { (void)!write(fd_, bytes.data(), bytes.size()); }
  // Everything until the server closes the connection (or 10 s pass).
  std::string ReadAll() {
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = read(fd_, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    return out;
  }
  // One response (its header and a Content-Length body) or "" when the connection ends first.
  std::string ReadResponse() {
    std::string out;
    char c;
    while (out.find("\r\n\r\n") == std::string::npos) {
      if (read(fd_, &c, 1) != 1) return "";
      out.push_back(c);
    }
    const size_t at = out.find("Content-Length: ");
    size_t left = at == std::string::npos ? 0 : std::stoul(out.substr(at + 16));
    while (left > 0) {
      if (read(fd_, &c, 1) != 1) return "";
      out.push_back(c);
      --left;
    }
    return out;
  }
  void HalfClose() { shutdown(fd_, SHUT_WR); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

ServerOptions BudgetOptions(int64_t max_inflight_bytes) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "127.0.0.1:0";
  o.http_address = "127.0.0.1:0";
  o.http_threads = 1;
  o.backend = "cpu";
  o.threads = 1;
  o.max_inflight_bytes = max_inflight_bytes;
  return o;
}

std::string PostHeader(size_t content_length, const std::string& extra = "") {
  return absl::StrCat("POST /v2/models/zlpr_predict/infer HTTP/1.1\r\n", extra,
                      "Content-Length: ", content_length, "\r\n\r\n");
}

// {"inputs":[scores [1, n] of -1 as binary]}, padded to `size` bytes with spaces in the JSON.
std::pair<std::string, size_t> BinaryPredictBody(size_t n) {
  const std::string header =
      absl::StrCat(R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,)", n,
                   R"(],"parameters":{"binary_data_size":)", 4 * n,
                   R"(}}],"outputs":[{"name":"label_count"}]})");
  const std::vector<float> scores(n, -1.0f);
  return {header + std::string(reinterpret_cast<const char*>(scores.data()), 4 * n), header.size()};
}

// A client that half-closes its connection after its request has gone as far as a queued
// inference goes: the request is dropped, not computed, and the answer (499) still reaches the
// client, which may read it.
TEST(OipHttpHostileTest, AClientThatHalfClosesAfterItsRequestGetsItsAnswer) {
  ServerOptions o = BudgetOptions(0);
  o.batcher.max_queue_delay = std::chrono::seconds(2);  // queued: the close is seen first
  o.batcher.adaptive_delay = false;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string body =
      R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,2],"data":[1,-1]}]})";
  OpenConnection conn((*server)->http_port(), PostHeader(body.size()) + body);
  conn.HalfClose();
  const std::string res = conn.ReadResponse();
  ExpectJsonError(res, 499, "cancelled");
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, HeadersAloneHoldNoMemory) {
  // A budget of 8 MiB; three clients declare bodies of 2 MiB (4 MiB charged each) and send
  // nothing more. Others' requests are answered all along.
  auto server = Server::Start(BudgetOptions(8 << 20));
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<OpenConnection>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(std::make_unique<OpenConnection>((*server)->http_port(), PostHeader(2 << 20)));
  }
  const auto [body, json_length] = BinaryPredictBody(200000);  // 800 KB: 1.6 MB charged
  for (int i = 0; i < 3; ++i) {
    const std::string res = RawExchange(
        (*server)->http_port(),
        absl::StrCat(PostHeader(body.size(), absl::StrCat("Connection: close\r\n"
                                                          "Inference-Header-Content-Length: ",
                                                          json_length, "\r\n")),
                     body));
    EXPECT_EQ(StatusOf(res), 200) << res.substr(0, 400);
  }
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, ABodyThatTricklesIsCutOffAndItsMemoryReturned) {
  ServerOptions o = BudgetOptions(64 << 20);
  o.http_timeout = std::chrono::milliseconds(300);
  o.min_transfer_rate = 64 << 10;  // 64 KiB/s
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const auto held = [&] {
    return MetricValue(HttpGet((*server)->metrics_port(), "/metrics"),
                       "zlpr_inflight_bytes{kind=\"held\"}");
  };
  OpenConnection trickle((*server)->http_port(), PostHeader(1 << 20) + "{");
  // The body got its memory: twice it, and as much for its answer.
  ASSERT_TRUE(WaitUntil([&] { return held() == 4 << 20; }));
  // One byte every 100 ms is far below 64 KiB/s: cut off within the 300 ms start plus a little.
  const auto start = std::chrono::steady_clock::now();
  bool closed = false;
  for (int i = 0; i < 100 && !closed; ++i) {
    trickle.Send(" ");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    closed = held() == 0;
  }
  EXPECT_TRUE(closed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(trickle.ReadAll(), "");  // nobody to answer: the connection just closes
  ExpectStillServing(**server);
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, HealthChecksAreAnsweredWhenEveryConnectionIsTaken) {
  ServerOptions o = BudgetOptions(0);
  o.http_max_connections = 4;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<OpenConnection>> taken;
  for (int i = 0; i < 4; ++i) {
    taken.push_back(std::make_unique<OpenConnection>((*server)->http_port(), "GET /v2 HT"));
  }
  // The four are being served (their headers are being read) before the probes arrive.
  ASSERT_TRUE(WaitUntil([&] {
    return MetricValue(HttpGet((*server)->metrics_port(), "/metrics"),
                       "zlpr_open_connections{protocol=\"oip_http\"}") == 4;
  }));
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(
        StatusOf(RawExchange((*server)->http_port(), "GET /v2/health/ready HTTP/1.1\r\n\r\n")),
        200);
  }
  const std::string other = RawExchange((*server)->http_port(), "GET /v2 HTTP/1.1\r\n\r\n");
  ExpectJsonError(other, 503, "only health checks are answered on this one");
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, ABodyWaitsUnreadForMemoryAndIsAnsweredWhenItFrees) {
  const auto payload = BinaryPredictBody(250000);  // 1 MB
  const std::string& body = payload.first;
  const size_t json_length = payload.second;
  // Room for one request (twice its body, and as much for its answer), not for two.
  ServerOptions o = BudgetOptions(5 << 20);
  o.http_budget_wait = std::chrono::seconds(5);
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string header = PostHeader(
      body.size(), absl::StrCat("Inference-Header-Content-Length: ", json_length, "\r\n"));
  OpenConnection first((*server)->http_port(), header + body.substr(0, 1000));
  const auto held = [&] {
    return MetricValue(HttpGet((*server)->metrics_port(), "/metrics"),
                       "zlpr_inflight_bytes{kind=\"held\"}");
  };
  ASSERT_TRUE(WaitUntil([&] { return held() == 4.0 * body.size(); }));
  OpenConnection second((*server)->http_port(), header + body);  // waits for the first
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(held(), 4.0 * body.size());
  first.Send(body.substr(1000));  // the first completes, and its memory goes to the second
  EXPECT_EQ(StatusOf(first.ReadResponse()), 200);
  const std::string res = second.ReadResponse();
  EXPECT_EQ(StatusOf(res), 200) << res;
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, ABodyThatWaitsTooLongIsAnswered429AndTheConnectionGoesOn) {
  const auto payload = BinaryPredictBody(250000);
  const std::string& body = payload.first;
  const size_t json_length = payload.second;
  ServerOptions o = BudgetOptions(3 << 20);
  o.http_budget_wait = std::chrono::milliseconds(300);
  o.http_timeout = std::chrono::seconds(30);  // the first client holds its body's memory
  o.min_transfer_rate = 1024;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string header = PostHeader(
      body.size(), absl::StrCat("Inference-Header-Content-Length: ", json_length, "\r\n"));
  OpenConnection first((*server)->http_port(), header + body.substr(0, 1000));
  ASSERT_TRUE(WaitUntil([&] {
    return MetricValue(HttpGet((*server)->metrics_port(), "/metrics"),
                       "zlpr_inflight_bytes{kind=\"held\"}") == 2.0 * body.size();
  }));
  OpenConnection second((*server)->http_port(), header + body);
  const std::string refused = second.ReadResponse();
  ExpectJsonError(refused, 429, "could not hold this request's");
  EXPECT_THAT(refused, HasSubstr("Retry-After: 1"));
  // The body was read and dropped: the connection serves the next request.
  const std::string small =
      R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,2],"data":[1,-1]}]})";
  second.Send(PostHeader(small.size()) + small);
  EXPECT_EQ(StatusOf(second.ReadResponse()), 200);
  (*server)->Shutdown();
}

TEST(OipHttpHostileTest, MetricsOnTheHttpPortNeedTheToken) {
  const std::string token_file =
      absl::StrCat(::testing::TempDir(), "/zlpr_http_metrics_token_", getpid());
  {
    FILE* f = std::fopen(token_file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("t0ken\n", f);
    std::fclose(f);
  }
  ServerOptions o = BudgetOptions(0);
  o.metrics_address = "";
  o.http_metrics = true;
  o.auth_token_file = token_file;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectJsonError(
      RawExchange((*server)->http_port(), "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"),
      401, "needs a bearer token");
  const std::string res = RawExchange(
      (*server)->http_port(),
      "GET /metrics HTTP/1.1\r\nAuthorization: bearer t0ken\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(res), 200) << res.substr(0, 300);
  EXPECT_THAT(res, HasSubstr("zlpr_build_info"));
  (*server)->Shutdown();
  std::remove(token_file.c_str());
}

}  // namespace
}  // namespace zlpr::server
