// ZlprServiceImpl: the unary reactors, submission of jobs, and the metrics the path reports.
#include "server/service.h"

#include <cstdio>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "server/convert.h"
#include "server/stream_reactor.h"

namespace zlpr::server {

CallControl ControlOf(grpc::CallbackServerContext* ctx, const Clock& clock) {
  CallControl control{.cancelled = [ctx] { return ctx->IsCancelled(); }};
  const auto deadline = ctx->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = deadline - std::chrono::system_clock::now();
    control.deadline =
        clock.Now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
  }
  return control;
}

namespace {

double Seconds(SteadyTime a, SteadyTime b) { return std::chrono::duration<double>(b - a).count(); }

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

absl::Status OverBudget(int64_t bytes, const MemoryBudget& budget) {
  return absl::ResourceExhaustedError(absl::StrFormat(
      "the server's memory for requests in flight is in use (this request needs %d bytes of the "
      "%d-byte budget, --max_inflight_bytes): retry later, or send fewer rows per request",
      bytes, budget.limit()));
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
  MetricsListener(Metrics* metrics, std::array<JobStatistics, kJobKinds>* stats,
                  const std::function<void(const absl::Status&)>* on_unusable)
      : metrics_(metrics), stats_(stats), on_unusable_(on_unusable) {}
  void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) override {
    metrics_->compute_seconds(kind).Observe(seconds);
    metrics_->batch_rows(kind).Observe(static_cast<double>(rows));
    JobStatistics& s = (*stats_)[static_cast<int>(kind)];
    s.compute.Add(seconds);
    s.execution_count.fetch_add(1, std::memory_order_relaxed);
    s.last_inference_ms.store(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())),
                              std::memory_order_relaxed);
    if (ok) {
      metrics_->rows(kind).Increment(static_cast<double>(rows));
      s.inference_count.fetch_add(static_cast<uint64_t>(rows), std::memory_order_relaxed);
    }
  }
  void OnQueued(JobKind kind, double seconds) override {
    metrics_->queue_seconds(kind).Observe(seconds);
    (*stats_)[static_cast<int>(kind)].queue.Add(seconds);
  }
  void OnBatchDone(size_t worker, const Backend& backend) override {
    if (backend.kind() == BackendKind::kCuda) {
      metrics_->device_memory(worker).Set(static_cast<double>(backend.DeviceMemoryBytes()));
    }
  }
  void OnBackendUnhealthy(size_t worker, const absl::Status& why, int healthy_left) override {
    std::fprintf(stderr, "zlpr-server: worker %zu's backend cannot compute: %s (%d left)\n",
                 worker, std::string(why.message()).c_str(), healthy_left);
    if (metrics_->has_devices()) metrics_->device_healthy(worker).Set(0);
    if (healthy_left == 0 && *on_unusable_) (*on_unusable_)(why);
  }

 private:
  Metrics* const metrics_;
  std::array<JobStatistics, kJobKinds>* const stats_;
  const std::function<void(const absl::Status&)>* const on_unusable_;
};

ZlprServiceImpl::ZlprServiceImpl(const ServiceOptions& options,
                                 std::vector<std::unique_ptr<Backend>> backends, Metrics* metrics,
                                 Clock* clock)
    : options_(options),
      metrics_(metrics),
      budget_(options.max_inflight_bytes,
              [metrics](int64_t held) { metrics->inflight_bytes().Set(static_cast<double>(held)); }),
      clock_(clock),
      batcher_(WithMetrics(options.batcher, metrics), clock),
      listener_(std::make_unique<MetricsListener>(metrics, &stats_, &on_unusable_)),
      workers_(&batcher_, std::move(backends), clock, listener_.get()),
      streams_(std::make_unique<StreamRegistry>()) {
  for (JobKind kind : {JobKind::kLoss, JobKind::kPredict}) {
    metrics_->queue_capacity(kind).Set(static_cast<double>(options.batcher.max_queue_size));
  }
  metrics_->inflight_bytes_limit().Set(static_cast<double>(options.max_inflight_bytes));
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

Watchdog::Id ZlprServiceImpl::WatchWrite(grpc::CallbackServerContext* ctx, int64_t bytes) {
  const auto transfer = std::chrono::milliseconds(
      static_cast<int64_t>(1000.0 * static_cast<double>(bytes) /
                           static_cast<double>(std::max<int64_t>(1, options_.min_transfer_rate))));
  return watchdog_.Arm(Watchdog::Clock::now() + options_.write_timeout + transfer,
                       [this, ctx] {
                         metrics_->rejected(Reject::kSlowReader).Increment();
                         ctx->TryCancel();
                       });
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

absl::Status ZlprServiceImpl::Charge(int64_t message_bytes, MemoryBudget::Lease* lease) {
  std::optional<MemoryBudget::Lease> charged = budget_.TryAcquire(2 * message_bytes);
  if (!charged) {
    metrics_->rejected(Reject::kMemory).Increment();
    return OverBudget(2 * message_bytes, budget_);
  }
  *lease = *std::move(charged);
  return absl::OkStatus();
}

absl::Status ZlprServiceImpl::CheckResponseSize(int64_t bytes) {
  if (bytes <= options_.max_message_bytes) return absl::OkStatus();
  metrics_->rejected(Reject::kTooLarge).Increment();
  return ResponseTooLarge(bytes, options_.max_message_bytes, "");
}

absl::Status ZlprServiceImpl::Receive(grpc::ByteBuffer* raw, google::protobuf::Message* request,
                                      MemoryBudget::Lease* lease) {
  const int64_t bytes = static_cast<int64_t>(raw->Length());
  metrics_->request_bytes().Increment(static_cast<double>(bytes));
  if (absl::Status st = Charge(bytes, lease); !st.ok()) {
    raw->Clear();
    return st;
  }
  // Parses and releases the raw bytes (also on failure).
  if (!grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(raw, request)
           .ok()) {
    metrics_->rejected(Reject::kInvalid).Increment();
    return absl::InvalidArgumentError(absl::StrFormat(
        "the message (%d bytes) is not a valid %s: it does not parse (truncated or not protobuf, "
        "or a string field such as request_id that is not UTF-8)",
        bytes, request->GetDescriptor()->full_name()));
  }
  return absl::OkStatus();
}

template <typename Job>
void ZlprServiceImpl::EnqueueJob(CallControl control, Job job,
                                 MemoryBudget::Lease* lease, int64_t response_bytes,
                                 absl::AnyInvocable<void(absl::StatusOr<typename Job::Result>)> done) {
  JobStatistics& stats = stats_[static_cast<int>(Job::kKind)];
  auto reject = [&](const absl::Status& st, Reject reason) {
    metrics_->rejected(reason).Increment();
    stats.fail.Add(0);
    done(st);
  };
  if (shutting_down()) {
    return reject(absl::UnavailableError("the server is shutting down"), Reject::kShuttingDown);
  }
  const int64_t limit = options_.max_message_bytes;
  if (response_bytes > limit) {
    return reject(ResponseTooLarge(response_bytes, limit, "at least "), Reject::kTooLarge);
  }
  // The result and its serialized copy are both held until the response is sent.
  if (!lease->TryGrow(2 * response_bytes)) {
    return reject(OverBudget(lease->bytes() + 2 * response_bytes, budget_), Reject::kMemory);
  }
  const SteadyTime deadline = control.deadline;
  Task<Job> task{.job = std::move(job),
                 .deadline = deadline,
                 .cancelled = std::move(control.cancelled),
                 .done = [this, deadline, &stats, queued = clock_->Now(),
                          done = std::move(done)](
                             absl::StatusOr<typename Job::Result> result) mutable {
                   const SteadyTime now = clock_->Now();
                   if (result.ok() && now > deadline) metrics_->late_results().Increment();
                   (result.ok() ? stats.success : stats.fail).Add(Seconds(queued, now));
                   done(std::move(result));
                 }};
  // A refusal (queue full, shutting down) is answered through the task's `done`.
  batcher_.Enqueue(std::move(task)).IgnoreError();
}

void ZlprServiceImpl::EnqueueLoss(CallControl control, LossJob job, MemoryBudget::Lease* lease,
                                  int64_t response_bytes,
                                  absl::AnyInvocable<void(absl::StatusOr<LossResult>)> done) {
  EnqueueJob(std::move(control), std::move(job), lease, response_bytes, std::move(done));
}

void ZlprServiceImpl::EnqueuePredict(CallControl control, PredictJob job,
                                     MemoryBudget::Lease* lease, int64_t response_bytes,
                                     absl::AnyInvocable<void(absl::StatusOr<PredictResult>)> done) {
  EnqueueJob(std::move(control), std::move(job), lease, response_bytes, std::move(done));
}

template <typename Job, typename Request, typename Response, typename Convert>
void ZlprServiceImpl::Submit(const Convert& convert, grpc::CallbackServerContext* ctx,
                             const Request* request, Response* response,
                             MemoryBudget::Lease* lease, Done done) {
  response->set_request_id(request->request_id());
  absl::StatusOr<Job> job = convert(*request);
  if (!job.ok()) {
    metrics_->rejected(Reject::kInvalid).Increment();
    return done({ToGrpc(job.status())});
  }
  const int64_t dense = DenseResponseBytes(*job, request->request_id().size());
  EnqueueJob<Job>(
      ControlOf(ctx, *clock_), *std::move(job), lease, dense,
      [this, request, response,
       done = std::move(done)](absl::StatusOr<typename Job::Result> result) {
        if (!result.ok()) return done({ToGrpc(result.status())});
        const Timing timing = result->timing;
        FillResponse(*std::move(result), response);
        // Label lists depend on the scores: only now is the whole size known. Answer with a
        // clear error rather than let gRPC fail the send.
        if (absl::Status st = CheckResponseSize(static_cast<int64_t>(response->ByteSizeLong()));
            !st.ok()) {
          response->Clear();
          response->set_request_id(request->request_id());
          return done({ToGrpc(st)});
        }
        done({grpc::Status::OK, timing});
      });
}

void ZlprServiceImpl::SubmitLoss(grpc::CallbackServerContext* ctx, const v1::LossRequest* request,
                                 v1::LossResponse* response, MemoryBudget::Lease* lease,
                                 Done done) {
  Submit<LossJob>(LossJobFromRequest, ctx, request, response, lease, std::move(done));
}

void ZlprServiceImpl::SubmitPredict(grpc::CallbackServerContext* ctx,
                                    const v1::PredictRequest* request,
                                    v1::PredictResponse* response, MemoryBudget::Lease* lease,
                                    Done done) {
  Submit<PredictJob>(PredictJobFromRequest, ctx, request, response, lease, std::move(done));
}

namespace {

// The reactor of a unary compute call. It owns the parsed request, the response and the call's
// memory lease; it is counted by the service from creation to OnDone, so that shutdown can wait
// for the calls it accepted. The messages are freed as soon as they are no longer needed, the
// lease when gRPC is done with the response.
template <typename Request, typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  using Submit = void (ZlprServiceImpl::*)(grpc::CallbackServerContext*, const Request*, Response*,
                                           MemoryBudget::Lease*, ZlprServiceImpl::Done);

  // Stores its arguments only (made by NewReactor, stream_reactor.h); Start() runs the call.
  UnaryCall(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* raw_out,
            Method method, bool accepted)
      : service_(service), ctx_(ctx), raw_out_(raw_out), method_(method), accepted_(accepted) {}

  void Start(grpc::ByteBuffer* raw_in, Submit submit) {
    start_ = service_->clock().Now();
    service_->metrics().inflight().Increment();
    request_ = std::make_unique<Request>();
    response_ = std::make_unique<Response>();
    if (service_->shutting_down()) {
      raw_in->Clear();
      service_->metrics().rejected(Reject::kShuttingDown).Increment();
      return Done({grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down")});
    }
    if (absl::Status st = service_->Receive(raw_in, request_.get(), &lease_); !st.ok()) {
      return Done({ToGrpc(st)});
    }
    (service_->*submit)(ctx_, request_.get(), response_.get(), &lease_,
                        [this](const ZlprServiceImpl::Outcome& outcome) { Done(outcome); });
  }

  void OnDone() override {
    service_->watchdog().Disarm(write_watch_);
    lease_.Reset();
    service_->CallEnds(accepted_);
    delete this;
  }

 private:
  // Timing in trailing metadata, the response serialized, metrics, then the status.
  void Done(const ZlprServiceImpl::Outcome& outcome) {
    request_.reset();
    grpc::Status status = outcome.status;
    if (status.ok()) {
      ctx_->AddTrailingMetadata("zlpr-queue-seconds",
                                absl::StrFormat("%.9f", outcome.timing.queue_seconds));
      ctx_->AddTrailingMetadata("zlpr-compute-seconds",
                                absl::StrFormat("%.9f", outcome.timing.compute_seconds));
      status = Serialize(*response_, raw_out_);
      service_->metrics().response_bytes().Increment(static_cast<double>(raw_out_->Length()));
    }
    response_.reset();
    // From here on the call holds only its serialized response.
    lease_.ShrinkTo(static_cast<int64_t>(raw_out_->Length()));
    service_->metrics().RequestDone(
        method_, status.error_code(),
        std::chrono::duration<double>(service_->clock().Now() - start_).count());
    service_->metrics().inflight().Decrement();
    write_watch_ = service_->WatchWrite(ctx_, static_cast<int64_t>(raw_out_->Length()));
    HandToGrpc([&] { Finish(status); });
  }

  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const raw_out_;
  const Method method_;
  const bool accepted_;
  SteadyTime start_{};
  std::unique_ptr<Request> request_;
  std::unique_ptr<Response> response_;
  MemoryBudget::Lease lease_;
  Watchdog::Id write_watch_ = 0;
};

// The reactor of GetServerInfo: like gRPC's default one, and counted like every call.
class InfoReactor final : public grpc::ServerUnaryReactor {
 public:
  InfoReactor(ZlprServiceImpl* service, bool accepted) : service_(service), accepted_(accepted) {}
  void OnDone() override {
    service_->CallEnds(accepted_);
    delete this;
  }

 private:
  ZlprServiceImpl* const service_;
  const bool accepted_;
};

// gRPC hands the raw request as const, but it is the call's own buffer: Receive() releases its
// bytes once parsed, so that a request is not held twice.
grpc::ByteBuffer* Owned(const grpc::ByteBuffer* raw) { return const_cast<grpc::ByteBuffer*>(raw); }

}  // namespace

grpc::ServerUnaryReactor* ZlprServiceImpl::ComputeLoss(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  auto* call = NewReactor<UnaryCall<v1::LossRequest, v1::LossResponse>>(
      this, ctx, response, Method::kComputeLoss, CallBegins());
  call->Start(Owned(request), &ZlprServiceImpl::SubmitLoss);
  return call;
}

grpc::ServerUnaryReactor* ZlprServiceImpl::Predict(grpc::CallbackServerContext* ctx,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  auto* call = NewReactor<UnaryCall<v1::PredictRequest, v1::PredictResponse>>(
      this, ctx, response, Method::kPredict, CallBegins());
  call->Start(Owned(request), &ZlprServiceImpl::SubmitPredict);
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ZlprServiceImpl::StreamLoss(
    grpc::CallbackServerContext* ctx) {
  auto* reactor = NewReactor<StreamReactor<v1::LossRequest, v1::LossResponse>>(
      this, ctx, Method::kStreamLoss, &ZlprServiceImpl::SubmitLoss, CallBegins());
  reactor->Start();
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ZlprServiceImpl::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  auto* reactor = NewReactor<StreamReactor<v1::PredictRequest, v1::PredictResponse>>(
      this, ctx, Method::kStreamPredict, &ZlprServiceImpl::SubmitPredict, CallBegins());
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* ZlprServiceImpl::GetServerInfo(grpc::CallbackServerContext*,
                                                         const v1::ServerInfoRequest*,
                                                         v1::ServerInfo* info) {
  grpc::ServerUnaryReactor* reactor = NewReactor<InfoReactor>(this, CallBegins());
  const SteadyTime start = clock_->Now();
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
  info->mutable_limits()->set_max_inflight_bytes(options_.max_inflight_bytes);
  metrics_->RequestDone(Method::kGetServerInfo, grpc::StatusCode::OK,
                        Seconds(start, clock_->Now()));
  HandToGrpc([&] { reactor->Finish(grpc::Status::OK); });
  return reactor;
}

}  // namespace zlpr::server
