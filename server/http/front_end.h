// An HTTP/1.1 server for the inference core, on Boost.Beast: the connection's mechanics are
// here, what requests mean is an Application's (the Open Inference Protocol's routes,
// server/oip/http_routes.h).
//
// --threads I/O threads serve every connection asynchronously (no thread per connection, so
// neither idle keep-alive clients nor slow ones hold one), at most max_connections at once and
// reserved_connections more for health checks. For each request the connection:
//   - reads the header (io_timeout), refuses framing that a proxy could read differently
//     (Transfer-Encoding other than one "chunked", or beside a Content-Length) and checks the
//     bearer token (health checks exempt);
//   - asks the Application to answer it, or to take its body: then it checks the
//     Content-Length (411 without, 413 over max_message_bytes), admits the request on the core
//     (503 while shutting down), and gives the body its memory once its first bytes arrive
//     (twice its length: it and what it becomes), waiting unread in turn with other bodies for at
//     most budget_wait (then 429 with Retry-After, the body read and dropped so that the client
//     sees the answer);
//   - reads the body at min_bytes_per_second or faster (after body_timeout), hands it to the
//     Application, watches the socket meanwhile (a client that closes its connection cancels
//     its request), and writes the answer at that rate too (after write_timeout).
// A handler that throws answers 500 and closes its connection; the server goes on. TLS and
// mutual TLS use OpenSSL through Asio.
#ifndef ZLPR_SERVER_HTTP_FRONT_END_H_
#define ZLPR_SERVER_HTTP_FRONT_END_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/beast/http/message.hpp"
#include "boost/beast/http/string_body.hpp"
#include "server/core/core.h"
#include "server/core/token_store.h"

namespace zlpr::server::http {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;
// A request target's path, split at '/' (empty segments dropped; the query left out).
using Path = std::vector<std::string>;

// What requests mean. Classify and the error answers run on the connection's strand; Handle
// may hand its work to other threads, and `respond` may be called from any thread, once.
class Application {
 public:
  virtual ~Application() = default;

  // Health checks: exempt from the token, and answered on the reserved connections.
  virtual bool IsHealthCheck(const Path& path) const = 0;

  struct Route {
    std::optional<Response> answer;  // answered from the header alone
    MethodId method = 0;             // otherwise: the body is read, for this method
  };
  // A request whose header passed the connection's checks.
  virtual Route Classify(const Request& header, const Path& path) = 0;

  // A request with its body, admitted: `admission` holds the body's memory and records the
  // outcome (Handle's to Finish); both live until the answer is written. `control` says when
  // the client went away.
  virtual void Handle(Request request, const Path& path, Admission* admission, CallControl control,
                      std::function<void(Response)> respond) = 0;

  // The application's form of an error answer.
  virtual Response Error(int status, const std::string& message) const = 0;
};

struct Options {
  std::string address;  // HOST:PORT ([V6]:PORT); port 0 picks a free one
  int threads = 1;      // I/O threads
  int max_connections = 1024;
  // Connections accepted beyond max_connections for health checks only (anything else on them
  // gets 503), so that probes are answered however many clients hold connections.
  int reserved_connections = 8;
  // Reading a request's header, and an idle keep-alive connection waiting for one.
  std::chrono::milliseconds io_timeout{10000};
  // A body must begin within body_timeout, and then arrive at min_bytes_per_second or faster
  // (a read due after body_timeout + received / min_bytes_per_second cuts the client off); an
  // answer likewise with write_timeout. A client holds a connection, or the memory its body
  // was given, only while it moves bytes.
  std::chrono::milliseconds body_timeout{10000};
  std::chrono::milliseconds write_timeout{20000};
  int64_t min_bytes_per_second = 1 << 20;
  // How long a body waits, unread, for the memory budget.
  std::chrono::milliseconds budget_wait{30000};
  int64_t max_message_bytes = 64 << 20;  // the largest body
  // TLS when both are set (PEM files); with client_ca also mutual.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  const TokenStore* tokens = nullptr;  // null: no token needed; must outlive the front end
};

class FrontEnd {
 public:
  // Listens on options.address; UNAVAILABLE when it cannot, INVALID_ARGUMENT for TLS files that
  // do not load. `core` and `app` must outlive the front end.
  static absl::StatusOr<std::unique_ptr<FrontEnd>> Start(const Options& options,
                                                         InferenceCore* core, Application* app);
  ~FrontEnd();

  int port() const { return port_; }
  // Stops accepting, gives answers being written `flush` to finish, then stops the I/O threads
  // (open connections close). Call after the core began shutting down (requests then get 503)
  // and its accepted calls are done.
  void Stop(std::chrono::milliseconds flush = std::chrono::milliseconds(100));

  class Impl;

 private:
  explicit FrontEnd(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace zlpr::server::http

#endif  // ZLPR_SERVER_HTTP_FRONT_END_H_
