// Helpers for tests that run a server on loopback: raw HTTP exchanges, GET of /metrics, sample
// lookup and a bounded wait on a condition; and the core's test clock.
#ifndef ZLPR_SERVER_TEST_SUPPORT_H_
#define ZLPR_SERVER_TEST_SUPPORT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

#include "absl/strings/str_split.h"
#include "server/core/test_clock.h"

namespace zlpr::server {

// A TCP connection to 127.0.0.1:port (-1 when refused), reads giving up after 10 s.
inline int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

// GET http://127.0.0.1:port/path; the body ("" when the server does not answer in 10 s).
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? resp : resp.substr(body + 4);
}

// Writes `request` (raw bytes, sent as they are) to 127.0.0.1:port and returns everything the
// server sends back until it closes the connection or 10 s pass ("" when refused). The request
// should ask for `Connection: close`.
inline std::string RawExchange(int port, const std::string& request) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  (void)!write(fd, request.data(), request.size());
  std::string resp;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  return resp;
}

// The status code of the first HTTP response in `response` (0 when there is none).
inline int StatusOf(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return std::atoi(response.substr(9, 3).c_str());
}

// The value of the sample `name{labels}` (exactly as exposed), or -1 when absent.
inline double MetricValue(const std::string& body, const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.substr(0, sample.size()) == sample && line.size() > sample.size() &&
        line[sample.size()] == ' ') {
      return std::stod(std::string(line.substr(sample.size() + 1)));
    }
  }
  return -1;
}

// Polls `cond` until it holds or 10 s pass.
inline bool WaitUntil(const std::function<bool()>& cond) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return cond();
}

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_TEST_SUPPORT_H_
