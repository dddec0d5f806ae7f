// HttpRoutes: what each Open Inference Protocol path answers.
#include "server/oip/http_routes.h"

#include <algorithm>
#include <exception>
#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/post.hpp"
#include "boost/asio/thread_pool.hpp"
#include "boost/beast/http/field.hpp"
#include "boost/beast/http/status.hpp"
#include "boost/beast/http/verb.hpp"
#include "server/oip/converter.h"
#include "server/oip/http_codec.h"
#include "server/oip/models.h"

namespace zlpr::server::oip {

namespace bhttp = boost::beast::http;

namespace {

// JSON up to this size is parsed and formatted where the request is (about 0.1 ms of work);
// larger goes to the codec pool.
constexpr size_t kInlineCodecBytes = 64 << 10;

// Room for a response's JSON envelope (names, shapes, parameters).
constexpr int64_t kEnvelopeBytes = 4096;

http::Response JsonResponse(int status, std::string body) {
  http::Response res{static_cast<bhttp::status>(status), 11};
  res.set(bhttp::field::content_type, "application/json");
  res.body() = std::move(body);
  return res;
}

http::Response MethodNotAllowed(const char* allowed) {
  http::Response res =
      JsonResponse(405, ErrorText(absl::StrCat("this method is not allowed here: use ", allowed)));
  res.set(bhttp::field::allow, allowed);
  return res;
}

bool IsInfer(const http::Path& path) {
  return path.size() >= 4 && path[0] == "v2" && path[1] == "models" && path.back() == "infer" &&
         (path.size() == 4 || (path.size() == 6 && path[3] == "versions"));
}

}  // namespace

// Parses large JSON requests and formats large JSON responses off the I/O threads.
class HttpRoutes::CodecPool {
 public:
  explicit CodecPool(int threads) : pool_(static_cast<size_t>(std::max(1, threads))) {}
  ~CodecPool() { pool_.join(); }
  template <typename F>
  void Post(F&& f) {
    boost::asio::post(pool_, std::forward<F>(f));
  }

 private:
  boost::asio::thread_pool pool_;
};

// One inference request on its way: the body (its binary tensors are views of it), what it
// became, the response, and where the answer goes.
struct HttpRoutes::InferState {
  http::Request request;
  Admission* admission = nullptr;
  CallControl control;
  std::function<void(http::Response)> respond;
  std::string model;
  std::string version;
  std::optional<size_t> header_length;
  oip::Request parsed;
  OutputFormat format;
  oip::Response response;
};

HttpRoutes::HttpRoutes(InferenceCore* core, HttpRoutesOptions options)
    : core_(core),
      options_(std::move(options)),
      infer_method_(core->RegisterMethod("ModelInfer", "oip_http")),
      shm_method_(core->RegisterMethod("SharedMemoryRegister", "oip_http")),
      inference_(core, options_.shared_memory),
      codec_pool_(std::make_unique<CodecPool>(options_.codec_threads)) {}

HttpRoutes::~HttpRoutes() = default;

bool HttpRoutes::IsHealthCheck(const http::Path& path) const {
  return path.size() == 3 && path[0] == "v2" && path[1] == "health";
}

http::Response HttpRoutes::Error(int status, const std::string& message) const {
  return JsonResponse(status, ErrorText(message));
}

http::Application::Route HttpRoutes::Classify(const http::Request& header, const http::Path& path) {
  if (IsInfer(path)) {
    if (header.method() != bhttp::verb::post) return {.answer = MethodNotAllowed("POST")};
    return {.method = infer_method_};
  }
  if (path.size() >= 2 && path[0] == "v2" &&
      (path[1] == "systemsharedmemory" || path[1] == "cudasharedmemory")) {
    return SharedMemory(header, path);
  }
  return {.answer = Get(header, path)};
}

http::Application::Route HttpRoutes::SharedMemory(const http::Request& header,
                                                  const http::Path& path) {
  const bool cuda = path[1] == "cudasharedmemory";
  const auto error = [this](const absl::Status& st) -> Route {
    return {.answer = Error(HttpStatus(st.code()), std::string(st.message()))};
  };
  // [v2, kind, action] or [v2, kind, region, NAME, action]
  std::string name;
  if (path.size() == 5 && path[2] == "region") {
    name = path[3];
  } else if (path.size() != 3) {
    return error(absl::NotFoundError(absl::StrFormat(
        "no such endpoint: %s (see /v2/%s/status, region/NAME/register, unregister)",
        std::string(header.target()), path[1])));
  }
  const std::string& action = path.back();
  const bool get = header.method() == bhttp::verb::get || header.method() == bhttp::verb::head;
  const bool post = header.method() == bhttp::verb::post;
  if (action == "status") {
    if (!get) return {.answer = MethodNotAllowed("GET")};
    if (cuda) {
      const absl::Status st = CudaSharedMemoryStatusOf(name);
      return st.ok() ? Route{.answer = JsonResponse(200, "[]")} : error(st);
    }
    if (options_.shared_memory == nullptr) return error(SharedMemoryOff());
    auto regions = options_.shared_memory->Status(name);
    if (!regions.ok()) return error(regions.status());
    return {.answer = JsonResponse(
                200, SystemSharedMemoryStatusText(SystemSharedMemoryStatusOf(*regions)))};
  }
  if (action == "unregister") {
    if (!post) return {.answer = MethodNotAllowed("POST")};
    if (cuda) return {.answer = JsonResponse(200, "")};
    if (options_.shared_memory == nullptr) return error(SharedMemoryOff());
    options_.shared_memory->Unregister(name);
    return {.answer = JsonResponse(200, "")};
  }
  if (action == "register" && !name.empty()) {
    if (!post) return {.answer = MethodNotAllowed("POST")};
    if (cuda) return error(CudaSharedMemoryRefusal(options_.cuda_backend));
    if (options_.shared_memory == nullptr) return error(SharedMemoryOff());
    return {.method = shm_method_};
  }
  return error(absl::NotFoundError(
      absl::StrFormat("no such endpoint: %s (see /v2/%s/status, region/NAME/register, unregister)",
                      std::string(header.target()), path[1])));
}

absl::Status HttpRoutes::Register(const http::Request& request, const http::Path& path) {
  absl::StatusOr<SharedMemoryRegistration> r = ParseSharedMemoryRegistration(request.body());
  if (!r.ok()) return r.status();
  return options_.shared_memory->Register(path[3], r->key, r->offset, r->byte_size);
}

// Health, metadata, readiness, configuration, statistics, metrics.
http::Response HttpRoutes::Get(const http::Request& req, const http::Path& path) {
  const bool get = req.method() == bhttp::verb::get || req.method() == bhttp::verb::head;
  const auto error = [this](const absl::Status& st) {
    return Error(HttpStatus(st.code()), std::string(st.message()));
  };
  const auto not_found = [&] {
    return error(absl::NotFoundError(
        absl::StrFormat("no such endpoint: %s %s (see the protocol's /v2 paths)",
                        std::string(req.method_string()), std::string(req.target()))));
  };
  if (path.size() == 1 && path[0] == "metrics" && options_.metrics_text) {
    if (!get) return MethodNotAllowed("GET");
    http::Response res{bhttp::status::ok, 11};
    res.set(bhttp::field::content_type, "text/plain; version=0.0.4");
    res.body() = options_.metrics_text();
    return res;
  }
  if (path.empty() || path[0] != "v2") return not_found();
  if (path.size() == 3 && path[1] == "health" && (path[2] == "live" || path[2] == "ready")) {
    if (!get) return MethodNotAllowed("GET");
    const bool ok = path[2] == "live" || core_->ready();
    return JsonResponse(ok ? 200 : 503, "");
  }
  if (!get) return MethodNotAllowed("GET");
  if (path.size() == 1) {
    return JsonResponse(200, ServerMetadataText(ServerMetadataOf(
                                 options_.version, options_.shared_memory != nullptr)));
  }
  if (path[1] != "models" || path.size() < 3) return not_found();
  if (path.size() == 3 && path[2] == "stats") {
    return JsonResponse(200, StatisticsText(*StatisticsOf(*core_, "", "")));
  }
  const std::string& model = path[2];
  std::string version;
  size_t next = 3;
  if (path.size() >= 5 && path[3] == "versions") {
    version = path[4];
    next = 5;
  }
  if (path.size() > next + 1) return not_found();
  const std::string action = path.size() == next ? "" : path[next];
  if (action.empty()) {
    auto r = ModelMetadataOf(model, version);
    return r.ok() ? JsonResponse(200, ModelMetadataText(*r)) : error(r.status());
  }
  if (action == "ready") {
    if (absl::Status st = CheckModel(model, version); !st.ok()) return error(st);
    return JsonResponse(core_->ready() ? 200 : 503, "");
  }
  if (action == "config") {
    auto r = ModelConfigOf(model, version, core_->options().batcher);
    return r.ok() ? JsonResponse(200, ModelConfigText(*r)) : error(r.status());
  }
  if (action == "stats") {
    auto r = StatisticsOf(*core_, model, version);
    return r.ok() ? JsonResponse(200, StatisticsText(*r)) : error(r.status());
  }
  return not_found();
}

void HttpRoutes::Handle(http::Request request, const http::Path& path, Admission* admission,
                        CallControl control, std::function<void(http::Response)> respond) {
  if (!IsInfer(path)) {  // a shared-memory registration (Classify sent nothing else here)
    const absl::Status st = Register(request, path);
    admission->Finish(st.code());
    return respond(st.ok() ? JsonResponse(200, "")
                           : Error(HttpStatus(st.code()), std::string(st.message())));
  }
  auto state = std::make_shared<InferState>();
  state->admission = admission;
  state->control = std::move(control);
  state->respond = std::move(respond);
  state->model = path[2];
  state->version = path.size() == 6 ? path[4] : "";
  if (const auto it = request.find("Inference-Header-Content-Length"); it != request.end()) {
    uint64_t n;
    if (!absl::SimpleAtoi(absl::string_view(it->value().data(), it->value().size()), &n)) {
      core_->Rejected(Reject::kInvalid);
      return Answer(state, absl::InvalidArgumentError(absl::StrFormat(
                               "Inference-Header-Content-Length '%s' is not a number of bytes",
                               std::string(it->value()))));
    }
    state->header_length = static_cast<size_t>(std::min<uint64_t>(n, SIZE_MAX));
  }
  // An unknown model is refused before its body is parsed.
  if (absl::Status st = CheckModel(state->model, state->version); !st.ok()) {
    core_->Rejected(Reject::kInvalid);
    return Answer(state, st);
  }
  const bool large = state->header_length.value_or(request.body().size()) > kInlineCodecBytes;
  state->request = std::move(request);
  OffTheIoThreadIf(large, state, [this, state] {
    absl::Status parsed =
        ParseInferRequest(state->request.body(), state->header_length, state->model, state->version,
                          &state->parsed, &state->format);
    if (!parsed.ok()) {
      core_->Rejected(Reject::kInvalid);
      return Answer(state, parsed);
    }
    Infer(state);
  });
}

void HttpRoutes::OffTheIoThreadIf(bool large, std::shared_ptr<InferState> state,
                                  std::function<void()> work) {
  // An exception (memory running out) answers this request with 500; the server goes on.
  auto guarded = [this, state = std::move(state), work = std::move(work)] {
    try {
      work();
    } catch (const std::exception& e) {
      state->admission->Finish(absl::StatusCode::kInternal);
      state->respond(Error(500, absl::StrCat("the server could not handle this request (an "
                                             "internal error: ",
                                             e.what(), ")")));
    }
  };
  if (large) return codec_pool_->Post(std::move(guarded));
  guarded();
}

void HttpRoutes::Infer(const std::shared_ptr<InferState>& state) {
  inference_.Run(state->admission, state->control, &state->parsed, &state->response,
                 [this, state](const absl::Status& st) {
                   // The body and what it became are no longer needed.
                   state->request = http::Request();
                   state->parsed = oip::Request();
                   Answer(state, st);
                 });
}

void HttpRoutes::Answer(const std::shared_ptr<InferState>& state, const absl::Status& status) {
  if (!status.ok()) {
    state->admission->Finish(status.code());
    return state->respond(Error(HttpStatus(status.code()), std::string(status.message())));
  }
  // The text is held beside the response until it is sent: at most ~16 characters a value, a
  // binary output's own bytes. The outputs' own bytes are within what the admission holds
  // already (its input's memory, its headroom): only what the text needs beyond them is charged.
  int64_t bound = kEnvelopeBytes, raw_bytes = 0;
  for (const Output& o : state->response.outputs) {
    const auto raw = static_cast<int64_t>(o.data.size());
    raw_bytes += raw;
    bound += state->format.IsBinary(o.name) ? raw : 4 * raw + 64;
  }
  if (!state->admission->Grow(std::max<int64_t>(0, bound - raw_bytes))) {
    core_->Rejected(Reject::kMemory);
    state->admission->Finish(absl::StatusCode::kResourceExhausted);
    return state->respond(
        Error(429,
              "the server's memory for requests in flight cannot hold this response as "
              "JSON now: ask for its outputs as binary data (parameters.binary_data) or "
              "retry later"));
  }
  OffTheIoThreadIf(
      bound - kEnvelopeBytes > static_cast<int64_t>(kInlineCodecBytes), state, [this, state] {
        size_t json_length = 0;
        std::string body = FormatInferResponse(state->response, state->format, &json_length);
        state->response = oip::Response();
        const bool binary = json_length < body.size();
        http::Response res{bhttp::status::ok, 11};
        res.set(bhttp::field::content_type,
                binary ? "application/octet-stream" : "application/json");
        if (binary) {
          res.set("Inference-Header-Content-Length", std::to_string(json_length));
        }
        state->admission->Finish(absl::StatusCode::kOk, static_cast<int64_t>(body.size()));
        res.body() = std::move(body);
        state->respond(std::move(res));
      });
}

}  // namespace zlpr::server::oip
