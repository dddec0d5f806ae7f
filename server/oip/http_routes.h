// The Open Inference Protocol's HTTP/REST binding: its routes, as the HTTP front end's
// Application (server/http/front_end.h), over the same core as the gRPC bindings.
//
//   GET  /v2                                    server metadata
//   GET  /v2/health/live, /v2/health/ready      200, or 503 (not ready: shutting down)
//   GET  /v2/models/{m}[/versions/{v}]          model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready    200, or 404 (unknown) / 503 (shutting down)
//   GET  /v2/models/{m}[/versions/{v}]/config   model configuration (Triton's JSON form)
//   GET  /v2/models[/{m}[/versions/{v}]]/stats  statistics (Triton's statistics extension)
//   POST /v2/models/{m}[/versions/{v}]/infer    inference: JSON tensors, or the binary tensor
//                                               extension (Inference-Header-Content-Length)
//   GET  /metrics                               Prometheus metrics, when metrics_text is set
//
// An inference body is converted once, into the binding-free Request (http_codec.h), whose
// binary tensors stay views of the body; it runs through oip::Inference, so HTTP requests batch
// with every other protocol's. JSON texts over 64 KiB (a request's, or a response's) are parsed
// and formatted on a codec pool, so that an I/O thread, which serves many connections, is never
// held by one large body. Errors are {"error": "..."} with the gRPC binding's message and the
// HTTP status of its code (400, 401, 404, 411, 413, 429, 503, ...).
#ifndef ZLPR_SERVER_OIP_HTTP_ROUTES_H_
#define ZLPR_SERVER_OIP_HTTP_ROUTES_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "server/core/core.h"
#include "server/http/front_end.h"
#include "server/oip/inference.h"

namespace zlpr::server::oip {

struct HttpRoutesOptions {
  std::string version;
  int codec_threads = 1;  // the pool that parses and formats large JSON texts
  // When set, GET /metrics answers its text (Prometheus' exposition format), behind the HTTP
  // port's TLS and token.
  std::function<std::string()> metrics_text;
  // The shared-memory extension's regions (--allow_client_shm); null: off.
  SharedMemoryRegistry* shared_memory = nullptr;
  bool cuda_backend = false;  // for a CUDA registration's refusal
};

class HttpRoutes final : public http::Application {
 public:
  // Registers its method with `core`, which must outlive it; before core->Start().
  HttpRoutes(InferenceCore* core, HttpRoutesOptions options);
  // Joins the codec pool: call after the front end stopped.
  ~HttpRoutes() override;

  bool IsHealthCheck(const http::Path& path) const override;
  Route Classify(const http::Request& header, const http::Path& path) override;
  void Handle(http::Request request, const http::Path& path, Admission* admission,
              CallControl control, std::function<void(http::Response)> respond) override;
  http::Response Error(int status, const std::string& message) const override;

  struct InferState;

 private:
  http::Response Get(const http::Request& header, const http::Path& path);
  // /v2/systemsharedmemory/... and /v2/cudasharedmemory/...: status and unregister from the
  // header alone; a registration's body is read first (Register).
  Route SharedMemory(const http::Request& header, const http::Path& path);
  absl::Status Register(const http::Request& request, const http::Path& path);
  // Runs `work` here, or on the codec pool when `large`; an exception answers 500.
  void OffTheIoThreadIf(bool large, std::shared_ptr<InferState> state, std::function<void()> work);
  void Infer(const std::shared_ptr<InferState>& state);
  void Answer(const std::shared_ptr<InferState>& state, const absl::Status& status);

  InferenceCore* const core_;
  const HttpRoutesOptions options_;
  const MethodId infer_method_;
  const MethodId shm_method_;
  Inference inference_;
  class CodecPool;
  std::unique_ptr<CodecPool> codec_pool_;
};

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_HTTP_ROUTES_H_
