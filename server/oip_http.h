// The Open Inference Protocol's HTTP/REST binding (KServe v2 REST, as Triton serves it), on
// --http_address, over the same request path as the gRPC binding: a request body becomes an
// inference::ModelInferRequest and runs through OipInference (oip_service.h), so HTTP requests
// batch with zlpr.v1 and gRPC ones, are charged to the same memory budget and counted in the same
// metrics (protocol="oip_http").
//
//   GET  /v2                                    server metadata
//   GET  /v2/health/live, /v2/health/ready      200, or 503 (not ready: shutting down)
//   GET  /v2/models/{m}[/versions/{v}]          model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready    200, or 404 (unknown) / 503 (shutting down)
//   GET  /v2/models/{m}[/versions/{v}]/config   model configuration (Triton's JSON form)
//   GET  /v2/models[/{m}[/versions/{v}]]/stats  statistics (Triton's statistics extension)
//   POST /v2/models/{m}[/versions/{v}]/infer    inference: JSON tensors, or the binary tensor
//                                               extension (Inference-Header-Content-Length)
//   GET  /metrics                               Prometheus metrics, with --http_metrics
//
// HTTP is served by Boost.Beast on Asio, asynchronously: --http_threads I/O threads serve every
// connection (no thread per connection, so neither idle keep-alive clients nor slow ones hold
// a thread), at most --http_max_connections at once. A request's header is read first: the
// bearer token (same file as the gRPC port; /v2/health/* exempt), the method and path, and the
// Content-Length against --max_message_bytes are checked before any of the body is read, and
// the body is charged to the memory budget before it is read. JSON is read by nlohmann's SAX
// parser: the numbers of an input's "data" go straight into the tensor's bytes, so a JSON tensor
// costs its floats, not a DOM node per number. While a request is computed its connection
// holds no thread; the worker's completion is posted back to the connection's strand. A client
// that closes its connection meanwhile cancels its request: if it is still queued, it is
// dropped rather than computed (rejected reason="cancelled"), as a cancelled gRPC call is.
// Errors are {"error": "..."} with the gRPC binding's message and the HTTP status of its code
// (400, 401, 404, 411, 413, 429, 503, ...). TLS and mutual TLS use the gRPC port's files
// (OpenSSL through Asio).
#ifndef ZLPR_SERVER_OIP_HTTP_H_
#define ZLPR_SERVER_OIP_HTTP_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/auth.h"
#include "server/service.h"

namespace zlpr::server {

struct HttpOptions {
  std::string address;    // HOST:PORT ([V6]:PORT); port 0 picks a free one
  // I/O threads (parsing and formatting run on them); 0: one per 4 hardware threads, at least 1.
  int threads = 0;
  int max_connections = 1024;  // connections open at once; beyond them, see below
  // Connections accepted beyond max_connections for health checks only (anything else on them
  // gets 503), so that probes are answered however many clients hold connections.
  int reserved_connections = 8;
  // Reading a request's header, and an idle keep-alive connection waiting for one.
  std::chrono::milliseconds io_timeout{10000};
  // A body must begin within body_timeout of its header, and then arrive at min_bytes_per_second
  // or faster (after body_timeout + received / min_bytes_per_second it is cut off); a response
  // likewise, with write_timeout. A client holds a connection, or the memory a body was given,
  // only while it moves bytes.
  std::chrono::milliseconds body_timeout{10000};
  std::chrono::milliseconds write_timeout{20000};
  int64_t min_bytes_per_second = 1 << 20;
  // A body the memory budget cannot cover yet is held unread (the client's sends block, as under
  // gRPC's flow control) until the budget can, in arrival order, for at most this long; then
  // 429 with Retry-After, its bytes read and dropped so that the client sees the answer.
  std::chrono::milliseconds budget_wait{5000};
  // TLS when both are set (PEM files, as --tls_cert and --tls_key); with client_ca also mutual.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  const TokenStore* tokens = nullptr;  // null: no token needed; must outlive the front end
  int64_t max_message_bytes = 64 << 20;  // the largest request body
  // When set, GET /metrics answers its text (Prometheus' exposition format) on this port, with
  // its TLS and token, for scrapers that must not reach the plaintext metrics port.
  std::function<std::string()> metrics_text;
  int64_t max_batch_rows = 256;          // what the model configuration reports
  std::string version;
};

// How the client asked for each output: in the JSON ("data") or as binary data after it.
struct HttpOutputFormat {
  bool all_binary = false;         // request parameter binary_data_output
  std::set<std::string> binary;    // outputs with parameters.binary_data = true
  std::set<std::string> json;      // outputs with parameters.binary_data = false
  bool IsBinary(const std::string& name) const {
    return binary.count(name) > 0 || (all_binary && json.count(name) == 0);
  }
};

// Parses an inference request body for `model` (and `version`, may be empty) into `request`:
// the JSON header (the first `header_length` bytes; all of the body without the binary tensor
// extension), then the binary tensors, in input order. Every input's contents end up in
// raw_input_contents. INVALID_ARGUMENT naming the key, input and element otherwise.
absl::Status ParseInferRequest(std::string_view body, std::optional<size_t> header_length,
                               const std::string& model, const std::string& version,
                               inference::ModelInferRequest* request, HttpOutputFormat* format);

// A response's body: its JSON, then the binary outputs' bytes (the binary tensor extension);
// `*json_length` is the JSON's length (the body's whole length without binary outputs).
// Non-finite floats are written as NaN, Infinity and -Infinity (as Python's json reads them).
std::string FormatInferResponse(const inference::ModelInferResponse& response,
                                const HttpOutputFormat& format, size_t* json_length);

// The HTTP status of a gRPC status code (400 for INVALID_ARGUMENT, 429 RESOURCE_EXHAUSTED, ...).
int HttpStatus(absl::StatusCode code);

class HttpFrontEnd {
 public:
  // Listens on options.address; UNAVAILABLE when it cannot, INVALID_ARGUMENT for TLS files that
  // do not load. `service` runs the requests and must outlive this.
  static absl::StatusOr<std::unique_ptr<HttpFrontEnd>> Start(const HttpOptions& options,
                                                             ZlprServiceImpl* service);
  ~HttpFrontEnd();

  int port() const { return port_; }
  // Stops accepting, gives responses being written `flush` to finish, then stops the I/O
  // threads (open connections close). Call after the service began shutting down (requests then
  // get 503) and its accepted calls are done.
  void Stop(std::chrono::milliseconds flush = std::chrono::milliseconds(100));

  class Impl;

 private:
  explicit HttpFrontEnd(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_OIP_HTTP_H_
