// libFuzzer harness: raw bytes as a whole HTTP session against a real server on loopback (the
// HTTP front end's parser, the Open Inference Protocol's router, codec and error paths, the CPU
// backend). Each input is written on a fresh connection, as it is (request lines, headers,
// bodies, several pipelined requests), then the connection is half-closed and everything the
// server answers is read. Checked: the server closes the connection promptly; everything it
// sends parses as HTTP/1.1 responses; every JSON body is strict JSON (UTF-8); no 5xx but 503
// (health checks on reserved connections, readiness); and every so often a fresh connection's
// health check and inference are still answered. A crash, a sanitizer report or a broken check
// is a finding.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/string_body.hpp"
#include "google/protobuf/stubs/logging.h"
#include "nlohmann/json.hpp"
#include "server/server.h"

namespace {

namespace bhttp = boost::beast::http;

void Check(bool ok, const char* what, std::string_view detail = {}) {
  if (ok) return;
  std::fprintf(stderr, "http_session_fuzzer: %s does not hold\n%.*s\n", what,
               static_cast<int>(std::min<size_t>(detail.size(), 2000)), detail.data());
  std::abort();
}

zlpr::server::Server* TheServer() {
  static zlpr::server::Server* const server = [] {
    zlpr::server::ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "";
    o.http_address = "127.0.0.1:0";
    o.http_threads = 1;
    o.http_max_connections = 4;
    o.backend = "cpu";
    o.threads = 1;
    o.max_message_bytes = 1 << 20;
    o.max_inflight_bytes = 16 << 20;
    // A connection the input leaves half-sent is cut off quickly; nothing waits on it anyway
    // (the harness half-closes every connection).
    o.http_timeout = std::chrono::milliseconds(500);
    o.http_budget_wait = std::chrono::milliseconds(100);
    auto s = zlpr::server::Server::Start(o);
    Check(s.ok(), "the server starts", s.ok() ? "" : s.status().ToString());
    return s->release();  // lives for the whole run
  }();
  return server;
}

// Writes `bytes` on a fresh connection, half-closes it and returns all that comes back.
std::string Exchange(int port, std::string_view bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  Check(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "connect");
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server closed first (it refused what it read): fine
    sent += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    // 0: closed. Else a reset (the server closed with input unread: fine) or the 5 s timeout:
    // a connection whose client finished must not be held that long.
    Check(n == 0 || errno != EAGAIN, "the server closes a finished connection promptly", out);
    break;
  }
  close(fd);
  return out;
}

// Every response in `out` is well-formed HTTP/1.1, JSON bodies strict JSON.
void CheckResponses(std::string_view out) {
  boost::beast::flat_buffer buffer;
  while (!out.empty()) {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64 << 20);
    parser.skip(false);
    boost::beast::error_code ec;
    const size_t used = parser.put(boost::asio::buffer(out.data(), out.size()), ec);
    if (ec == bhttp::error::need_more) {
      // A HEAD answer announces a body it does not carry: what is left is that header alone.
      Check(out.find("\r\n\r\n") != std::string_view::npos, "the last response is whole",
            out);
      return;
    }
    Check(!ec, "the server's bytes parse as HTTP", out);
    if (!parser.is_done()) {
      parser.put_eof(ec);
      Check(!ec, "a response ends where it says", out);
    }
    const auto& res = parser.get();
    const int status = res.result_int();
    Check(status >= 100 && status < 600, "a status code", out);
    Check(status < 500 || status == 503, "no server error but 503", out);
    const auto type = res.find(bhttp::field::content_type);
    if (type != res.end() && type->value() == "application/json" && !res.body().empty()) {
      Check(nlohmann::json::accept(res.body()), "a JSON body is JSON (UTF-8)", res.body());
    }
    out.remove_prefix(used);
  }
}

void CheckStillServing(int port) {
  Check(Exchange(port, "GET /v2/health/live HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200", 0) == 0,
        "a health check is answered");
  const std::string body =
      R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,2],"data":[1,-1]}]})";
  const std::string res = Exchange(
      port, "POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body);
  Check(res.rfind("HTTP/1.1 200", 0) == 0, "an inference is answered", res);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  TheServer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int runs = 0;
  const int port = TheServer()->http_port();
  CheckResponses(Exchange(port, std::string_view(reinterpret_cast<const char*>(data), size)));
  if (++runs % 100 == 0) CheckStillServing(port);
  return 0;
}
