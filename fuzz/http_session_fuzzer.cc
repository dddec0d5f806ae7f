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
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
               static_cast<int>(std::min<size_t>(detail.size(), 20000)), detail.data());
  std::abort();
}

zlpr::server::Server* TheServer() {
  static zlpr::server::Server* const server = [] {
    zlpr::server::ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";  // read when a check fails
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

// Writes `bytes` on a fresh connection, half-closes it (unless `request_close`: the request
// asks the server to close) and returns all that comes back.
std::string Exchange(int port, std::string_view bytes, bool request_close = false) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  // Thousands of connections a second outrun the ephemeral ports of one address (the server's
  // closed ones wait in TIME_WAIT): each comes from another of loopback's addresses.
  static unsigned next_source = 0;
  sockaddr_in source{};
  source.sin_family = AF_INET;
  source.sin_addr.s_addr = htonl((127u << 24) | (2u + next_source++ % 250u));
  Check(bind(fd, reinterpret_cast<sockaddr*>(&source), sizeof source) == 0, "bind");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  // libFuzzer's timer (SIGALRM) may interrupt a call: the connection then completes on its own.
  bool connected = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  if (!connected && errno == EINTR) {
    pollfd p{.fd = fd, .events = POLLOUT, .revents = 0};
    while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
    }
    int error = 0;
    socklen_t length = sizeof error;
    connected = getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
  }
  if (!connected) {
    int fds = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
      fds += e.exists() ? 1 : 0;
    Check(false, "connect",
          std::string(std::strerror(errno)) + ", open fds " + std::to_string(fds));
  }
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server closed first (it refused what it read): fine
    sent += static_cast<size_t>(n);
  }
  // A half-closed client is gone as far as a queued inference goes (it is cancelled, 499).
  if (!request_close) shutdown(fd, SHUT_WR);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    // 0: closed. Else a reset (the server closed with input unread: fine) or the 5 s timeout:
    // a connection whose client finished must not be held that long.
    Check(n == 0 || errno != EAGAIN, "the server closes a finished connection promptly", out);
    break;
  }
  const linger abort_on_close{.l_onoff = 1, .l_linger = 0};  // no TIME_WAIT on this side
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  close(fd);
  return out;
}

// For each request the input holds, in order, whether it is a HEAD (whose answer has no body
// although its header says how long GET's would be).
std::vector<bool> HeadRequests(std::string_view in) {
  std::vector<bool> heads;
  while (!in.empty()) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.body_limit(64 << 20);
    parser.eager(true);
    boost::beast::error_code ec;
    size_t used = 0;
    while (!parser.is_done() && used < in.size()) {
      const size_t n = parser.put(boost::asio::buffer(in.data() + used, in.size() - used), ec);
      used += n;
      if (ec == bhttp::error::need_more && n > 0) {
        ec = {};
        continue;
      }
      if (ec) return heads;
      if (n == 0) break;
    }
    if (!parser.is_header_done()) return heads;
    heads.push_back(parser.get().method() == bhttp::verb::head);
    if (!parser.is_done()) return heads;
    in.remove_prefix(used);
  }
  return heads;
}

// Every response in `out` is well-formed HTTP/1.1, JSON bodies strict JSON.
void CheckResponses(std::string_view out, const std::vector<bool>& heads) {
  for (size_t i = 0; !out.empty();) {  // i: the request being answered
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64 << 20);
    parser.eager(true);
    parser.skip(i < heads.size() && heads[i]);
    size_t used = 0;
    boost::beast::error_code ec;
    while (!parser.is_done() && used < out.size()) {
      const size_t n = parser.put(boost::asio::buffer(out.data() + used, out.size() - used), ec);
      used += n;
      if (ec == bhttp::error::need_more) {
        ec = {};
        if (n == 0) break;
        continue;
      }
      Check(!ec, "the server's bytes parse as HTTP", out);
    }
    if (!parser.is_done()) {
      Check(false, "the last response is whole", out);
    }
    const auto& res = parser.get();
    const int status = res.result_int();
    Check(status >= 100 && status < 600, "a status code", out);
    if (status >= 200) ++i;  // 100 Continue precedes its request's answer
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
      port,
      "POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nConnection: close\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n" + body,
      /*request_close=*/true);
  if (res.rfind("HTTP/1.1 200", 0) != 0) {
    const std::string metrics =
        Exchange(TheServer()->metrics_port(), "GET /metrics HTTP/1.0\r\n\r\n");
    Check(false, "an inference is answered", res + "\n--- metrics ---\n" + metrics);
  }
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
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  CheckResponses(Exchange(port, in), HeadRequests(in));
  if (++runs % 100 == 0) CheckStillServing(port);
  return 0;
}
