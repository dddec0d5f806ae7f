// ZlprServiceImpl: the unary reactors, submission of jobs, and the metrics the path reports.
#include "server/service.h"

#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "server/convert.h"
#include "server/stream_reactor.h"

namespace zlpr::server {
namespace {

double Seconds(SteadyTime a, SteadyTime b) { return std::chrono::duration<double>(b - a).count(); }

SteadyTime SteadyDeadline(const grpc::CallbackServerContext* ctx, const Clock& clock) {
  const auto deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return SteadyTime::max();
  const auto left = deadline - std::chrono::system_clock::now();
  return clock.Now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

Reject RejectReason(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
      return Reject::kQueueFull;
    case absl::StatusCode::kDeadlineExceeded:
      return Reject::kDeadline;
    case absl::StatusCode::kCancelled:
      return Reject::kCancelled;
    case absl::StatusCode::kUnavailable:
      return Reject::kShuttingDown;
    case absl::StatusCode::kUnauthenticated:
      return Reject::kUnauthenticated;
    case absl::StatusCode::kOutOfRange:
      return Reject::kTooLarge;
    default:
      return Reject::kInvalid;
  }
}

// OUT_OF_RANGE: the request is fine but its answer would not fit the message limit. Not
// RESOURCE_EXHAUSTED (a full queue, worth retrying), and no client retries it unchanged.
absl::Status ResponseTooLarge(int64_t bytes, int64_t limit, const char* qualifier) {
  return absl::OutOfRangeError(absl::StrFormat(
      "the response would be %s%d bytes, over the message limit of %d bytes "
      "(--max_message_bytes): send fewer rows per request or ask for a narrower gradient",
      qualifier, bytes, limit));
}

BatcherOptions WithMetrics(BatcherOptions o, Metrics* metrics) {
  o.on_depth = [metrics](JobKind kind, int64_t depth) {
    metrics->queue_depth(kind).Set(static_cast<double>(depth));
  };
  o.on_not_computed = [metrics](JobKind, const absl::Status& why) {
    metrics->rejected(RejectReason(why.code())).Increment();
  };
  return o;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// What the executors report, as Prometheus metrics.
class ZlprServiceImpl::MetricsListener final : public ExecutionListener {
 public:
  explicit MetricsListener(Metrics* metrics) : metrics_(metrics) {}
  void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) override {
    metrics_->compute_seconds(kind).Observe(seconds);
    metrics_->batch_rows(kind).Observe(static_cast<double>(rows));
    if (ok) metrics_->rows(kind).Increment(static_cast<double>(rows));
  }
  void OnQueued(JobKind kind, double seconds) override {
    metrics_->queue_seconds(kind).Observe(seconds);
  }
  void OnBatchDone(size_t worker, const Backend& backend) override {
    if (backend.kind() == BackendKind::kCuda) {
      metrics_->device_memory(worker).Set(static_cast<double>(backend.DeviceMemoryBytes()));
    }
  }

 private:
  Metrics* const metrics_;
};

ZlprServiceImpl::ZlprServiceImpl(const ServiceOptions& options,
                                 std::vector<std::unique_ptr<Backend>> backends, Metrics* metrics,
                                 Clock* clock)
    : options_(options),
      auth_(options.auth_token),
      metrics_(metrics),
      clock_(clock),
      batcher_(WithMetrics(options.batcher, metrics), clock),
      listener_(std::make_unique<MetricsListener>(metrics)),
      workers_(&batcher_, std::move(backends), clock, listener_.get()),
      streams_(std::make_unique<StreamRegistry>()) {
  for (JobKind kind : {JobKind::kLoss, JobKind::kPredict}) {
    metrics_->queue_capacity(kind).Set(static_cast<double>(options.batcher.max_queue_size));
  }
}

ZlprServiceImpl::~ZlprServiceImpl() { Stop(); }

void ZlprServiceImpl::Start() { workers_.Start(); }

void ZlprServiceImpl::BeginShutdown() {
  {
    absl::MutexLock lock(&calls_mu_);
    shutting_down_.store(true);
  }
  batcher_.Shutdown();  // queued requests run now, without waiting to fill a batch
  streams_->DrainAll();
}

bool ZlprServiceImpl::CallBegins() {
  absl::MutexLock lock(&calls_mu_);
  if (shutting_down_.load()) return false;
  ++accepted_calls_;
  return true;
}

void ZlprServiceImpl::CallEnds(bool accepted) {
  if (!accepted) return;
  absl::MutexLock lock(&calls_mu_);
  --accepted_calls_;
}

bool ZlprServiceImpl::WaitForAcceptedCalls(absl::Time deadline) {
  absl::MutexLock lock(&calls_mu_);
  return calls_mu_.AwaitWithDeadline(absl::Condition(
                                         +[](int64_t* n) { return *n == 0; }, &accepted_calls_),
                                     deadline);
}

void ZlprServiceImpl::Stop() {
  batcher_.Shutdown();
  workers_.Join();
}

template <typename Job, typename Request, typename Response, typename Convert>
void ZlprServiceImpl::Submit(const Convert& convert, grpc::CallbackServerContext* ctx,
                             const Request* request, Response* response, Done done) {
  metrics_->request_bytes().Increment(static_cast<double>(request->ByteSizeLong()));
  response->set_request_id(request->request_id());
  auto reject = [&](const absl::Status& st) {
    metrics_->rejected(RejectReason(st.code())).Increment();
    done({ToGrpc(st)});
  };
  if (shutting_down()) return reject(absl::UnavailableError("the server is shutting down"));
  if (absl::Status st = auth_.Check(*ctx); !st.ok()) return reject(st);
  absl::StatusOr<Job> job = convert(*request);
  if (!job.ok()) return reject(job.status());
  const int64_t limit = options_.max_message_bytes;
  const int64_t dense = DenseResponseBytes(*job, request->request_id().size());
  if (dense > limit) return reject(ResponseTooLarge(dense, limit, "at least "));
  Task<Job> task{.job = *std::move(job),
                 .deadline = SteadyDeadline(ctx, *clock_),
                 .cancelled = [ctx] { return ctx->IsCancelled(); },
                 .done =
                     [this, request, response, limit,
                      done = std::move(done)](absl::StatusOr<typename Job::Result> result) {
                       if (!result.ok()) return done({ToGrpc(result.status())});
                       const Timing timing = result->timing;
                       FillResponse(*std::move(result), response);
                       // Label lists depend on the scores: only now is the whole size known. Answer
                       // with a clear error rather than let gRPC fail the send.
                       const auto bytes = static_cast<int64_t>(response->ByteSizeLong());
                       if (bytes > limit) {
                         response->Clear();
                         response->set_request_id(request->request_id());
                         metrics_->rejected(Reject::kTooLarge).Increment();
                         return done({ToGrpc(ResponseTooLarge(bytes, limit, ""))});
                       }
                       done({grpc::Status::OK, timing});
                     }};
  // A refusal (queue full, shutting down) is answered through the task's `done`.
  batcher_.Enqueue(std::move(task)).IgnoreError();
}

void ZlprServiceImpl::SubmitLoss(grpc::CallbackServerContext* ctx, const v1::LossRequest* request,
                                 v1::LossResponse* response, Done done) {
  Submit<LossJob>(LossJobFromRequest, ctx, request, response, std::move(done));
}

void ZlprServiceImpl::SubmitPredict(grpc::CallbackServerContext* ctx,
                                    const v1::PredictRequest* request,
                                    v1::PredictResponse* response, Done done) {
  Submit<PredictJob>(PredictJobFromRequest, ctx, request, response, std::move(done));
}

namespace {

// The reactor of every unary call: like gRPC's default one, and counted by the service from
// creation to OnDone, so that shutdown can wait for the calls it accepted.
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  // Made by NewReactor (stream_reactor.h); `accepted`: the service's CallBegins() for it.
  UnaryReactor(ZlprServiceImpl* service, bool accepted) : service_(service), accepted_(accepted) {}
  void OnDone() override {
    service_->CallEnds(accepted_);
    delete this;
  }

 private:
  ZlprServiceImpl* const service_;
  const bool accepted_;
};

// Finishes a unary call: timing in trailing metadata, metrics, then the status.
template <typename Response>
ZlprServiceImpl::Done UnaryDone(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx,
                                grpc::ServerUnaryReactor* reactor, Response* response,
                                Method method) {
  const SteadyTime start = service->clock().Now();
  service->metrics().inflight().Increment();
  return [=](const ZlprServiceImpl::Outcome& outcome) {
    if (outcome.status.ok()) {
      ctx->AddTrailingMetadata("zlpr-queue-seconds",
                               absl::StrFormat("%.9f", outcome.timing.queue_seconds));
      ctx->AddTrailingMetadata("zlpr-compute-seconds",
                               absl::StrFormat("%.9f", outcome.timing.compute_seconds));
      service->metrics().response_bytes().Increment(static_cast<double>(response->ByteSizeLong()));
    }
    service->metrics().RequestDone(method, outcome.status.error_code(),
                                   Seconds(start, service->clock().Now()));
    service->metrics().inflight().Decrement();
    reactor->Finish(outcome.status);
  };
}

}  // namespace

grpc::ServerUnaryReactor* ZlprServiceImpl::ComputeLoss(grpc::CallbackServerContext* ctx,
                                                       const v1::LossRequest* request,
                                                       v1::LossResponse* response) {
  grpc::ServerUnaryReactor* reactor = NewReactor<UnaryReactor>(this, CallBegins());
  SubmitLoss(ctx, request, response, UnaryDone(this, ctx, reactor, response, Method::kComputeLoss));
  return reactor;
}

grpc::ServerUnaryReactor* ZlprServiceImpl::Predict(grpc::CallbackServerContext* ctx,
                                                   const v1::PredictRequest* request,
                                                   v1::PredictResponse* response) {
  grpc::ServerUnaryReactor* reactor = NewReactor<UnaryReactor>(this, CallBegins());
  SubmitPredict(ctx, request, response, UnaryDone(this, ctx, reactor, response, Method::kPredict));
  return reactor;
}

grpc::ServerBidiReactor<v1::LossRequest, v1::LossResponse>* ZlprServiceImpl::StreamLoss(
    grpc::CallbackServerContext* ctx) {
  auto* reactor = NewReactor<StreamReactor<v1::LossRequest, v1::LossResponse>>(
      this, ctx, Method::kStreamLoss, &ZlprServiceImpl::SubmitLoss, CallBegins());
  reactor->Start();
  return reactor;
}

grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* ZlprServiceImpl::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  auto* reactor = NewReactor<StreamReactor<v1::PredictRequest, v1::PredictResponse>>(
      this, ctx, Method::kStreamPredict, &ZlprServiceImpl::SubmitPredict, CallBegins());
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* ZlprServiceImpl::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                         const v1::ServerInfoRequest*,
                                                         v1::ServerInfo* info) {
  grpc::ServerUnaryReactor* reactor = NewReactor<UnaryReactor>(this, CallBegins());
  const SteadyTime start = clock_->Now();
  if (absl::Status st = auth_.Check(*ctx); !st.ok()) {
    metrics_->rejected(Reject::kUnauthenticated).Increment();
    metrics_->RequestDone(Method::kGetServerInfo, grpc::StatusCode::UNAUTHENTICATED,
                          Seconds(start, clock_->Now()));
    reactor->Finish(ToGrpc(st));
    return reactor;
  }
  const auto& backends = workers_.backends();
  info->set_version(options_.version);
  info->set_backend(BackendKindName(backends.front()->kind()));
  for (const auto& b : backends) info->add_devices(b->Describe());
  info->mutable_batcher()->set_max_batch_rows(options_.batcher.max_batch_rows);
  info->mutable_batcher()->set_max_queue_delay_us(options_.batcher.max_queue_delay.count());
  info->mutable_batcher()->set_max_queue_size(options_.batcher.max_queue_size);
  info->mutable_batcher()->set_adaptive_delay(options_.batcher.adaptive_delay);
  info->mutable_limits()->set_max_message_bytes(options_.max_message_bytes);
  info->mutable_limits()->set_max_cols(std::numeric_limits<int32_t>::max());
  metrics_->RequestDone(Method::kGetServerInfo, grpc::StatusCode::OK,
                        Seconds(start, clock_->Now()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace zlpr::server
