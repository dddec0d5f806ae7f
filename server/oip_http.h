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
//
// HTTP is served by CivetWeb (already linked through prometheus-cpp), one connection per thread
// (--http_threads); a handler thread waits for its request's batch. JSON is read by nlohmann's
// SAX parser: the numbers of an input's "data" go straight into the tensor's bytes, so a JSON
// tensor costs its floats, not a DOM node per number. Errors are {"error": "..."} with the
// gRPC binding's message and the HTTP status of its code (400, 401, 404, 413, 429, 503, ...).
// The bearer token (same file as the gRPC port) is required on every path but /v2/health/*,
// and checked before the body is read.
//
// Plaintext only: Debian's CivetWeb loads OpenSSL at run time through the 1.1 API, which
// OpenSSL 3 no longer exports (SSL_get_peer_certificate), so its TLS cannot start. The server
// refuses --http_address with --tls_cert rather than serve HTTP in the clear beside a TLS gRPC
// port; terminate TLS in front of it (an ingress or a sidecar) or use the gRPC binding.
#ifndef ZLPR_SERVER_OIP_HTTP_H_
#define ZLPR_SERVER_OIP_HTTP_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/auth.h"
#include "server/service.h"

struct mg_context;
struct mg_connection;

namespace zlpr::server {

struct HttpOptions {
  std::string address;  // HOST:PORT; port 0 picks a free one
  int threads = 64;     // connections served at once (each holds a thread while open)
  // A read or write that stalls this long closes the connection (slow or stuck clients).
  std::chrono::milliseconds io_timeout{10000};
  const TokenStore* tokens = nullptr;  // null: no token needed; must outlive the front end
  int64_t max_message_bytes = 64 << 20;  // the largest request body
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

// The JSON of a response; binary outputs' bytes follow it in `*binary`. Non-finite floats are
// written as NaN, Infinity and -Infinity (as Python's json and JavaScript read them).
std::string FormatInferResponse(const inference::ModelInferResponse& response,
                                const HttpOutputFormat& format, std::string* binary);

// The HTTP status of a gRPC status code (400 for INVALID_ARGUMENT, 429 RESOURCE_EXHAUSTED, ...).
int HttpStatus(absl::StatusCode code);

class HttpFrontEnd {
 public:
  // Listens on options.address; UNAVAILABLE when it cannot.
  // `service` runs the requests and must outlive this.
  static absl::StatusOr<std::unique_ptr<HttpFrontEnd>> Start(const HttpOptions& options,
                                                             ZlprServiceImpl* service);
  ~HttpFrontEnd();

  int port() const { return port_; }
  // Stops listening, closes idle connections and waits for the handlers in progress. Call after
  // the service began shutting down (requests then get 503) and before it stops.
  void Stop();

 private:
  HttpFrontEnd(const HttpOptions& options, ZlprServiceImpl* service)
      : options_(options), service_(service) {}
  static int Dispatch(mg_connection* conn, void* self);
  int Handle(mg_connection* conn);
  int Infer(mg_connection* conn, const std::string& model, const std::string& version);

  const HttpOptions options_;
  ZlprServiceImpl* const service_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_OIP_HTTP_H_
