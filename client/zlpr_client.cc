// zlpr::Client on a gRPC channel: plain spans in, protobuf inside, plain vectors out.
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "zlpr/client.h"
#include "zlpr/v1/tensor.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr {
namespace {

absl::Status FromGrpc(const grpc::Status& st) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}

static_assert(static_cast<int>(Priority::kDefault) == v1::PRIORITY_DEFAULT &&
              static_cast<int>(Priority::kInteractive) == v1::PRIORITY_INTERACTIVE &&
              static_cast<int>(Priority::kBulk) == v1::PRIORITY_BULK);

v1::LossRequest ToRequest(const LossCall& c) {
  v1::LossRequest r;
  r.set_request_id(c.request_id);
  v1::EncodeMatrix(c.scores, c.rows, c.cols, DType::kFloat32, r.mutable_scores());
  if (!c.row_splits.empty()) {
    v1::SparseLabels* sp = r.mutable_sparse_labels();
    sp->mutable_row_splits()->Add(c.row_splits.begin(), c.row_splits.end());
    sp->mutable_indices()->Add(c.indices.begin(), c.indices.end());
    sp->mutable_values()->Add(c.values.begin(), c.values.end());
  } else {
    v1::EncodeMatrix(c.dense_labels, c.rows, c.cols, DType::kFloat32, r.mutable_dense_labels());
  }
  if (!c.mask.empty()) v1::EncodeMask(c.mask, c.rows, c.cols, r.mutable_mask());
  r.set_want_grad(c.want_grad);
  r.set_grad_dtype(v1::ToWire(c.grad_dtype));
  r.set_priority(static_cast<v1::Priority>(c.priority));  // the same numbers on the wire
  return r;
}

v1::PredictRequest ToRequest(const PredictCall& c) {
  v1::PredictRequest r;
  r.set_request_id(c.request_id);
  v1::EncodeMatrix(c.scores, c.rows, c.cols, DType::kFloat32, r.mutable_scores());
  if (c.threshold.has_value()) r.set_threshold(*c.threshold);
  if (!c.label_thresholds.empty()) {
    v1::EncodeVector(c.label_thresholds, r.mutable_label_thresholds());
  }
  r.set_top_k(c.top_k);
  r.set_min_labels(c.min_labels);
  r.set_want_probs(c.want_probs);
  if (!c.mask.empty()) v1::EncodeMask(c.mask, c.rows, c.cols, r.mutable_mask());
  r.set_priority(static_cast<v1::Priority>(c.priority));
  return r;
}

// A response tensor widened to fp32; DATA_LOSS when the server sent something malformed.
absl::StatusOr<std::vector<float>> ResponseFloats(const v1::Tensor& t, const char* field) {
  absl::StatusOr<std::vector<float>> v = v1::DecodeFloats(t, field);
  if (!v.ok()) return absl::DataLossError("the server's response: " + v.status().ToString());
  return v;
}

template <typename Result>
void SetTiming(const v1::Timing& t, Result* out) {
  out->queue_seconds = t.queue_seconds();
  out->compute_seconds = t.compute_seconds();
  out->batch_rows = t.batch_rows();
}

absl::StatusOr<LossResult> FromResponse(const v1::LossResponse& resp) {
  LossResult out;
  out.request_id = resp.request_id();
  out.loss.assign(resp.loss().begin(), resp.loss().end());
  out.loss_sum = resp.loss_sum();
  out.loss_mean = resp.loss_mean();
  if (resp.has_grad()) {
    absl::StatusOr<std::vector<float>> grad = ResponseFloats(resp.grad(), "grad");
    if (!grad.ok()) return grad.status();
    out.grad = *std::move(grad);
  }
  SetTiming(resp.timing(), &out);
  return out;
}

absl::StatusOr<PredictResult> FromResponse(const v1::PredictResponse& resp) {
  PredictResult out;
  out.request_id = resp.request_id();
  for (const v1::RowLabels& row : resp.rows()) {
    out.labels.emplace_back(row.labels().begin(), row.labels().end());
    out.probs.emplace_back(row.probs().begin(), row.probs().end());
  }
  if (resp.has_probs()) {
    absl::StatusOr<std::vector<float>> probs = ResponseFloats(resp.probs(), "probs");
    if (!probs.ok()) return probs.status();
    out.dense_probs = *std::move(probs);
  }
  SetTiming(resp.timing(), &out);
  return out;
}

// --- Splitting a call over the message limit --------------------------------------------------

// What a request or response carries besides its tensors (ids, shapes, sums, timing, framing).
constexpr int64_t kSlackBytes = 4096;

// [begin, end) row ranges whose requests and responses each stay under `limit`, given the
// bytes per row of each; one range when the whole call fits.
std::vector<std::pair<int64_t, int64_t>> RowRanges(int64_t rows, double request_row_bytes,
                                                   double response_row_bytes, int64_t fixed_bytes,
                                                   int64_t limit) {
  const double per_row = std::max({request_row_bytes, response_row_bytes, 1.0});
  const int64_t n = std::max<int64_t>(
      1, static_cast<int64_t>(static_cast<double>(limit - kSlackBytes - fixed_bytes) / per_row));
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int64_t b = 0; b < rows; b += n) ranges.emplace_back(b, std::min(b + n, rows));
  if (ranges.empty()) ranges.emplace_back(0, rows);
  return ranges;
}

// Rows [begin, end) of a call: views of the dense parts; sparse labels re-based into `splits`.
LossCall SliceRows(const LossCall& c, int64_t begin, int64_t end, std::vector<int64_t>* splits) {
  LossCall part = c;
  const auto n = static_cast<size_t>(end - begin), cols = static_cast<size_t>(c.cols);
  part.rows = end - begin;
  part.scores = c.scores.subspan(begin * cols, n * cols);
  if (!c.dense_labels.empty()) part.dense_labels = c.dense_labels.subspan(begin * cols, n * cols);
  if (!c.mask.empty()) part.mask = c.mask.subspan(begin * cols, n * cols);
  if (!c.row_splits.empty()) {
    const int64_t lo = c.row_splits[begin], hi = c.row_splits[end];
    splits->clear();
    for (int64_t r = begin; r <= end; ++r) splits->push_back(c.row_splits[r] - lo);
    part.row_splits = *splits;
    part.indices = c.indices.subspan(lo, hi - lo);
    if (!c.values.empty()) part.values = c.values.subspan(lo, hi - lo);
  }
  return part;
}

PredictCall SliceRows(const PredictCall& c, int64_t begin, int64_t end) {
  PredictCall part = c;
  const auto n = static_cast<size_t>(end - begin), cols = static_cast<size_t>(c.cols);
  part.rows = end - begin;
  part.scores = c.scores.subspan(begin * cols, n * cols);
  if (!c.mask.empty()) part.mask = c.mask.subspan(begin * cols, n * cols);
  return part;  // label_thresholds are per column: every part carries them whole
}

// Whether a call's spans are consistent enough to be sliced; otherwise it is sent whole and the
// server names what is wrong.
bool Sliceable(const LossCall& c) {
  const auto cells = static_cast<size_t>(c.rows * c.cols);
  if (c.rows <= 0 || c.cols <= 0 || c.scores.size() != cells) return false;
  if (!c.mask.empty() && c.mask.size() != cells) return false;
  if (c.row_splits.empty()) return c.dense_labels.size() == cells;
  if (c.row_splits.size() != static_cast<size_t>(c.rows + 1) || c.row_splits.front() != 0 ||
      c.row_splits.back() != static_cast<int64_t>(c.indices.size())) {
    return false;
  }
  for (size_t r = 1; r < c.row_splits.size(); ++r) {
    if (c.row_splits[r] < c.row_splits[r - 1]) return false;
  }
  return c.values.empty() || c.values.size() == c.indices.size();
}

bool Sliceable(const PredictCall& c) {
  const auto cells = static_cast<size_t>(c.rows * c.cols);
  return c.rows > 0 && c.cols > 0 && c.scores.size() == cells &&
         (c.mask.empty() || c.mask.size() == cells);
}

std::vector<std::pair<int64_t, int64_t>> Ranges(const LossCall& c, int64_t limit) {
  if (!Sliceable(c)) return {{0, c.rows}};
  const double cols = static_cast<double>(c.cols);
  double request = 4 * cols + (c.mask.empty() ? 0 : cols);
  request += c.row_splits.empty()
                 ? 4 * cols
                 : 8 + 8 * static_cast<double>(c.indices.size()) / static_cast<double>(c.rows);
  const double response =
      4 + (c.want_grad ? cols * static_cast<double>(DTypeSize(c.grad_dtype)) : 0);
  return RowRanges(c.rows, request, response, 0, limit);
}

std::vector<std::pair<int64_t, int64_t>> Ranges(const PredictCall& c, int64_t limit) {
  if (!Sliceable(c)) return {{0, c.rows}};
  const double cols = static_cast<double>(c.cols);
  const double request = 4 * cols + (c.mask.empty() ? 0 : cols);
  // A row's label list can hold every column: an int32 label and a float32 probability each.
  const double response = 16 + 8 * cols + (c.want_probs ? 4 * cols : 0);
  const auto fixed = static_cast<int64_t>(4 * c.label_thresholds.size());
  return RowRanges(c.rows, request, response, fixed, limit);
}

// The result of consecutive row ranges, as one call would have given it: the sum accumulated
// over the rows in order in double, as the server does.
LossResult Merge(std::vector<LossResult> parts, const std::string& request_id) {
  LossResult out;
  out.request_id = request_id;
  for (LossResult& p : parts) {
    out.loss.insert(out.loss.end(), p.loss.begin(), p.loss.end());
    out.grad.insert(out.grad.end(), p.grad.begin(), p.grad.end());
    out.queue_seconds += p.queue_seconds;
    out.compute_seconds += p.compute_seconds;
    out.batch_rows = std::max(out.batch_rows, p.batch_rows);
  }
  for (float l : out.loss) out.loss_sum += l;
  out.loss_mean = out.loss.empty() ? 0 : out.loss_sum / static_cast<double>(out.loss.size());
  return out;
}

PredictResult Merge(std::vector<PredictResult> parts, const std::string& request_id) {
  PredictResult out;
  out.request_id = request_id;
  for (PredictResult& p : parts) {
    std::move(p.labels.begin(), p.labels.end(), std::back_inserter(out.labels));
    std::move(p.probs.begin(), p.probs.end(), std::back_inserter(out.probs));
    out.dense_probs.insert(out.dense_probs.end(), p.dense_probs.begin(), p.dense_probs.end());
    out.queue_seconds += p.queue_seconds;
    out.compute_seconds += p.compute_seconds;
    out.batch_rows = std::max(out.batch_rows, p.batch_rows);
  }
  return out;
}

// A stream response's per-message error, as a Status; OK when there is none.
template <typename Response>
absl::Status MessageError(const Response& resp) {
  if (!resp.has_error() || resp.error().code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(resp.error().code()), resp.error().message());
}

// One bidirectional stream with a bounded window of requests in flight.
template <typename Call, typename Result, typename Request, typename Response, typename Base>
class WindowedStream final : public Base {
 public:
  using Open = std::function<std::unique_ptr<grpc::ClientReaderWriter<Request, Response>>(
      grpc::ClientContext*)>;
  WindowedStream(int window, const std::string& auth_token, const Open& open)
      : window_(std::max(1, window)) {
    if (!auth_token.empty()) ctx_.AddMetadata("authorization", "Bearer " + auth_token);
    stream_ = open(&ctx_);
  }
  ~WindowedStream() override {
    bool finished;
    {
      absl::MutexLock lock(&mu_);
      finished = finished_;
    }
    if (!finished) {
      ctx_.TryCancel();
      (void)stream_->Finish();
    }
  }

  absl::Status Send(const Call& call) override {
    {
      absl::MutexLock lock(&mu_);
      if (writes_done_) return absl::FailedPreconditionError("Send after Finish");
      mu_.Await(absl::Condition(this, &WindowedStream::CanSend));
      if (broken_) return absl::UnavailableError("the stream is broken");
      ++in_flight_;
    }
    if (!stream_->Write(ToRequest(call))) {
      absl::MutexLock lock(&mu_);
      broken_ = true;
      return absl::UnavailableError("the stream is closed: Finish() tells why");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Result> Receive() override {
    Response resp;
    const bool read = stream_->Read(&resp);
    {
      absl::MutexLock lock(&mu_);
      if (!read) {
        broken_ = true;  // wakes a Send() waiting for the window
        return absl::OutOfRangeError("no more results on this stream");
      }
      --in_flight_;
    }
    if (absl::Status st = MessageError(resp); !st.ok()) return st;
    return FromResponse(resp);
  }

  absl::Status Finish() override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return absl::FailedPreconditionError("Finish called twice");
      writes_done_ = true;
      finished_ = true;
    }
    stream_->WritesDone();
    Response drain;
    while (stream_->Read(&drain)) {
    }
    return FromGrpc(stream_->Finish());
  }

 private:
  bool CanSend() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_flight_ < window_ || broken_;
  }

  const int window_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<Request, Response>> stream_;
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class GrpcClient final : public Client {
 public:
  GrpcClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options_(options),
        channel_(std::move(channel)),
        stub_(v1::ZlprService::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)) {}

  absl::StatusOr<int64_t> MessageLimit() override {
    if (options_.max_message_bytes > 0) return options_.max_message_bytes;
    absl::MutexLock lock(&limit_mu_);
    if (learned_limit_ == 0) {
      absl::StatusOr<ServerInfo> info = GetServerInfo();
      if (!info.ok()) return info.status();
      if (info->max_message_bytes <= 0) {
        return absl::DataLossError("the server's GetServerInfo has no max_message_bytes");
      }
      learned_limit_ = info->max_message_bytes;
    }
    return learned_limit_;
  }

  absl::StatusOr<LossResult> ComputeLoss(const LossCall& call) override {
    absl::StatusOr<int64_t> limit = MessageLimit();
    if (!limit.ok()) return limit.status();
    const auto ranges = Ranges(call, *limit);
    if (ranges.size() == 1) return ComputeLossWhole(call);
    // Over the message limit: one request per range, concurrently, reassembled in order.
    std::vector<std::vector<int64_t>> splits(ranges.size());
    std::vector<std::future<absl::StatusOr<LossResult>>> futures;
    for (size_t i = 0; i < ranges.size(); ++i) {
      futures.push_back(
          ComputeLossFuture(SliceRows(call, ranges[i].first, ranges[i].second, &splits[i])));
    }
    return Gather(futures, call.request_id);
  }

  absl::StatusOr<PredictResult> Predict(const PredictCall& call) override {
    absl::StatusOr<int64_t> limit = MessageLimit();
    if (!limit.ok()) return limit.status();
    const auto ranges = Ranges(call, *limit);
    if (ranges.size() == 1) return PredictWhole(call);
    std::vector<std::future<absl::StatusOr<PredictResult>>> futures;
    for (const auto& [begin, end] : ranges)
      futures.push_back(PredictFuture(SliceRows(call, begin, end)));
    return Gather(futures, call.request_id);
  }

 private:
  // The results of split calls in order, or the first error.
  template <typename Result>
  static absl::StatusOr<Result> Gather(std::vector<std::future<absl::StatusOr<Result>>>& futures,
                                       const std::string& request_id) {
    std::vector<Result> parts;
    absl::Status first_error;
    for (auto& f : futures) {
      absl::StatusOr<Result> r = f.get();
      if (!r.ok()) {
        if (first_error.ok()) first_error = r.status();
      } else {
        parts.push_back(*std::move(r));
      }
    }
    if (!first_error.ok()) return first_error;
    return Merge(std::move(parts), request_id);
  }

  absl::StatusOr<LossResult> ComputeLossWhole(const LossCall& call) {
    grpc::ClientContext ctx;
    Prepare(&ctx, call.deadline);
    v1::LossResponse resp;
    if (absl::Status st = FromGrpc(stub_->ComputeLoss(&ctx, ToRequest(call), &resp)); !st.ok()) {
      return st;
    }
    return FromResponse(resp);
  }

  absl::StatusOr<PredictResult> PredictWhole(const PredictCall& call) {
    grpc::ClientContext ctx;
    Prepare(&ctx, call.deadline);
    v1::PredictResponse resp;
    if (absl::Status st = FromGrpc(stub_->Predict(&ctx, ToRequest(call), &resp)); !st.ok()) {
      return st;
    }
    return FromResponse(resp);
  }

 public:
  void ComputeLossAsync(const LossCall& call,
                        std::function<void(absl::StatusOr<LossResult>)> done) override {
    CallAsync<v1::LossResponse, LossResult>(
        call.deadline, ToRequest(call), std::move(done),
        [this](grpc::ClientContext* ctx, const v1::LossRequest* req, v1::LossResponse* resp,
               std::function<void(grpc::Status)> cb) {
          stub_->async()->ComputeLoss(ctx, req, resp, std::move(cb));
        });
  }

  void PredictAsync(const PredictCall& call,
                    std::function<void(absl::StatusOr<PredictResult>)> done) override {
    CallAsync<v1::PredictResponse, PredictResult>(
        call.deadline, ToRequest(call), std::move(done),
        [this](grpc::ClientContext* ctx, const v1::PredictRequest* req, v1::PredictResponse* resp,
               std::function<void(grpc::Status)> cb) {
          stub_->async()->Predict(ctx, req, resp, std::move(cb));
        });
  }

  std::unique_ptr<LossStream> OpenLossStream(int window) override {
    return std::make_unique<
        WindowedStream<LossCall, LossResult, v1::LossRequest, v1::LossResponse, LossStream>>(
        window, options_.auth_token,
        [this](grpc::ClientContext* ctx) { return stub_->StreamLoss(ctx); });
  }

  std::unique_ptr<PredictStream> OpenPredictStream(int window) override {
    return std::make_unique<WindowedStream<PredictCall, PredictResult, v1::PredictRequest,
                                           v1::PredictResponse, PredictStream>>(
        window, options_.auth_token,
        [this](grpc::ClientContext* ctx) { return stub_->StreamPredict(ctx); });
  }

  absl::StatusOr<ServerInfo> GetServerInfo() override {
    grpc::ClientContext ctx;
    Prepare(&ctx, std::nullopt);
    v1::ServerInfo info;
    if (absl::Status st = FromGrpc(stub_->GetServerInfo(&ctx, v1::ServerInfoRequest(), &info));
        !st.ok()) {
      return st;
    }
    ServerInfo out;
    out.version = info.version();
    out.backend = info.backend();
    out.devices.assign(info.devices().begin(), info.devices().end());
    out.max_batch_rows = info.batcher().max_batch_rows();
    out.max_queue_delay_us = info.batcher().max_queue_delay_us();
    out.max_queue_size = info.batcher().max_queue_size();
    out.max_message_bytes = info.limits().max_message_bytes();
    return out;
  }

  absl::StatusOr<bool> Healthy(const std::string& service) override {
    grpc::ClientContext ctx;
    Prepare(&ctx, std::nullopt);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    if (absl::Status st = FromGrpc(health_->Check(&ctx, req, &resp)); !st.ok()) return st;
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }

  std::shared_ptr<grpc::Channel> channel() override { return channel_; }

 private:
  // One callback-API call whose context, request and response live until it completes.
  template <typename Response, typename Result, typename Request, typename Start>
  void CallAsync(std::optional<std::chrono::milliseconds> deadline, Request request,
                 std::function<void(absl::StatusOr<Result>)> done, const Start& start) {
    struct State {
      grpc::ClientContext ctx;
      Request req;
      Response resp;
    };
    auto* state = new State;
    Prepare(&state->ctx, deadline);
    state->req = std::move(request);
    start(&state->ctx, &state->req, &state->resp,
          [state, done = std::move(done)](const grpc::Status& st) {
            if (st.ok()) {
              done(FromResponse(state->resp));
            } else {
              done(FromGrpc(st));
            }
            delete state;
          });
  }

  void Prepare(grpc::ClientContext* ctx, std::optional<std::chrono::milliseconds> deadline) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      deadline.value_or(options_.default_deadline));
    if (!options_.auth_token.empty()) {
      ctx->AddMetadata("authorization", "Bearer " + options_.auth_token);
    }
  }

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ZlprService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  absl::Mutex limit_mu_;
  int64_t learned_limit_ ABSL_GUARDED_BY(limit_mu_) = 0;
};

}  // namespace

// Retries UNAVAILABLE and CANCELLED: every zlpr.v1 call is idempotent, a call the client
// cancels itself is never retried, and a server shutting down answers calls that reached it
// but no handler yet with CANCELLED (gRPC core behaviour, grpc/grpc#41785), which must not
// fail a request that another replica can serve.
std::string ServiceConfigJson(const ClientOptions& o) {
  return absl::StrFormat(
      R"({"loadBalancingConfig": [{"%s": {}}],
  "methodConfig": [{
    "name": [{"service": "zlpr.v1.ZlprService"}, {"service": "grpc.health.v1.Health"}],
    "retryPolicy": {"maxAttempts": %d, "initialBackoff": "0.05s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]})",
      o.load_balancing, std::clamp(o.max_attempts, 2, 5));
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: empty");
  grpc::ChannelArguments args;
  if (options.max_attempts > 1) {
    args.SetServiceConfigJSON(ServiceConfigJson(options));
  } else {
    args.SetLoadBalancingPolicyName(options.load_balancing);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  }
  if (options.max_message_bytes < 0) {
    return absl::InvalidArgumentError("max_message_bytes: 0 (the server's) or a byte count");
  }
  // Learned from the server: it sends nothing larger than its limit and the client splits its
  // requests under it, so the channel itself needs none.
  const int max_bytes =
      options.max_message_bytes == 0
          ? -1
          : static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX));
  args.SetMaxReceiveMessageSize(max_bytes);
  args.SetMaxSendMessageSize(max_bytes);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_client_cert;
    ssl.pem_private_key = options.tls_client_key;
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  auto channel = grpc::CreateCustomChannel(options.target, creds, args);
  if (channel == nullptr) return absl::InvalidArgumentError("target: " + options.target);
  return std::unique_ptr<Client>(new GrpcClient(options, std::move(channel)));
}

std::future<absl::StatusOr<LossResult>> Client::ComputeLossFuture(const LossCall& call) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<LossResult>>>();
  auto future = promise->get_future();
  ComputeLossAsync(call,
                   [promise](absl::StatusOr<LossResult> r) { promise->set_value(std::move(r)); });
  return future;
}

std::future<absl::StatusOr<PredictResult>> Client::PredictFuture(const PredictCall& call) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<PredictResult>>>();
  auto future = promise->get_future();
  PredictAsync(call,
               [promise](absl::StatusOr<PredictResult> r) { promise->set_value(std::move(r)); });
  return future;
}

}  // namespace zlpr
