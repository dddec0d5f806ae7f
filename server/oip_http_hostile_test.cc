// The HTTP binding under hostile clients, each case through a real server on loopback with raw
// bytes on the socket: whatever a request holds, it gets an answer (or its connection closes)
// and the server goes on serving everyone else.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
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
  ExpectJsonError(RawExchange(server->http_port(),
                              "GET /v2/health/\xff HTTP/1.1\r\nConnection: close\r\n\r\n"),
                  404, "no such endpoint: GET /v2/health/\xef\xbf\xbd");
  ExpectStillServing(*server);
}

TEST(OipHttpHostileTest, AModelNameThatIsNotUtf8IsAnsweredAndTheServerGoesOn) {
  auto server = StartHttpServer();
  ASSERT_NE(server, nullptr);
  ExpectJsonError(RawExchange(server->http_port(),
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
  ExpectJsonError(
      RawExchange(server->http_port(), Infer("zlpr_predict", "", "{\"\xc0\xaf\":1}")), 400,
      "the request is not valid JSON");
  ExpectStillServing(*server);
}

}  // namespace
}  // namespace zlpr::server
