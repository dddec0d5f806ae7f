// ZlprV1Service: zlpr.v1's messages through the core.
#include "server/zlpr_v1/service.h"

#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "server/grpc/reactors.h"
#include "server/zlpr_v1/convert.h"

namespace zlpr::server {
namespace {

// One zlpr.v1 compute method's messages: a Request becomes a `Job` through `convert`, its
// result the Response (server/grpc/reactors.h runs it).
template <typename Job, typename RequestT, typename ResponseT>
class V1Protocol {
 public:
  using Request = RequestT;
  using Response = ResponseT;
  struct Extra {
    Timing timing;
  };
  using Convert = absl::StatusOr<Job> (*)(const Request&);

  V1Protocol(InferenceCore* core, MethodId method, Convert convert)
      : core_(core), method_(method), convert_(convert) {}

  InferenceCore& core() { return *core_; }
  MethodId method() const { return method_; }

  void Submit(Admission* admission, CallControl control, const Request& request, Response* response,
              Extra* extra, absl::AnyInvocable<void(absl::Status)> done) {
    response->set_request_id(request.request_id());
    absl::StatusOr<std::optional<Priority>> priority = PriorityOf(request.priority());
    absl::StatusOr<Job> job = priority.ok() ? convert_(request) : priority.status();
    if (!job.ok()) {
      core_->Rejected(Reject::kInvalid);
      return done(job.status());
    }
    control.priority = *priority;
    const int64_t dense = DenseResponseBytes(*job, request.request_id().size());
    core_->Enqueue(admission, std::move(control), *std::move(job), dense,
                   [this, response, extra,
                    done = std::move(done)](absl::StatusOr<typename Job::Result> result) mutable {
                     if (!result.ok()) return done(result.status());
                     extra->timing = result->timing;
                     FillResponse(*std::move(result), response);
                     // Label lists depend on the scores: only now is the whole size known.
                     // Answer with a clear error rather than let gRPC fail the send.
                     const auto bytes = static_cast<int64_t>(response->ByteSizeLong());
                     if (absl::Status st = core_->CheckResponseSize(bytes); !st.ok()) {
                       std::string id = std::move(*response->mutable_request_id());
                       response->Clear();
                       response->set_request_id(std::move(id));
                       return done(st);
                     }
                     done(absl::OkStatus());
                   });
  }

  void AnswerError(const absl::Status& status, Response* response) {
    response->mutable_error()->set_code(static_cast<int32_t>(status.code()));
    response->mutable_error()->set_message(std::string(status.message()));
  }

  void AddTrailers(const Extra& extra, grpc::CallbackServerContext* ctx) {
    ctx->AddTrailingMetadata("zlpr-queue-seconds",
                             absl::StrFormat("%.9f", extra.timing.queue_seconds));
    ctx->AddTrailingMetadata("zlpr-compute-seconds",
                             absl::StrFormat("%.9f", extra.timing.compute_seconds));
  }

 private:
  InferenceCore* const core_;
  const MethodId method_;
  const Convert convert_;
};

using LossProtocol = V1Protocol<LossJob, v1::LossRequest, v1::LossResponse>;
using PredictProtocol = V1Protocol<PredictJob, v1::PredictRequest, v1::PredictResponse>;

}  // namespace

class ZlprV1Service::Protocols {
 public:
  explicit Protocols(InferenceCore* core)
      : compute_loss(core, core->RegisterMethod("ComputeLoss", "zlpr_v1"), LossJobFromRequest),
        predict(core, core->RegisterMethod("Predict", "zlpr_v1"), PredictJobFromRequest),
        stream_loss(core, core->RegisterMethod("StreamLoss", "zlpr_v1"), LossJobFromRequest),
        stream_predict(core, core->RegisterMethod("StreamPredict", "zlpr_v1"),
                       PredictJobFromRequest) {}
  LossProtocol compute_loss;
  PredictProtocol predict;
  LossProtocol stream_loss;
  PredictProtocol stream_predict;
};

ZlprV1Service::ZlprV1Service(InferenceCore* core, const ZlprV1Options& options)
    : core_(core),
      options_(options),
      protocols_(std::make_unique<Protocols>(core)),
      info_method_(core->RegisterMethod("GetServerInfo", "zlpr_v1")) {}

ZlprV1Service::~ZlprV1Service() = default;

grpc::ServerUnaryReactor* ZlprV1Service::ComputeLoss(grpc::CallbackServerContext* ctx,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  auto* call = NewReactor<UnaryCall<LossProtocol>>(&protocols_->compute_loss, ctx, response);
  call->Start(request);
  return call;
}

grpc::ServerUnaryReactor* ZlprV1Service::Predict(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  auto* call = NewReactor<UnaryCall<PredictProtocol>>(&protocols_->predict, ctx, response);
  call->Start(request);
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ZlprV1Service::StreamLoss(
    grpc::CallbackServerContext* ctx) {
  auto* stream = NewReactor<OrderedStream<LossProtocol>>(&protocols_->stream_loss, ctx,
                                                         options_.stream_window);
  stream->Start();
  return stream;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ZlprV1Service::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  auto* stream = NewReactor<OrderedStream<PredictProtocol>>(&protocols_->stream_predict, ctx,
                                                            options_.stream_window);
  stream->Start();
  return stream;
}

grpc::ServerUnaryReactor* ZlprV1Service::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                       const v1::ServerInfoRequest*,
                                                       v1::ServerInfo* info) {
  const CallScope call = core_->BeginCall();
  Admission admission = core_->Admit(info_method_, call);
  const CoreOptions& o = core_->options();
  const auto& backends = core_->backends();
  info->set_version(options_.version);
  info->set_backend(BackendKindName(backends.front()->kind()));
  for (const auto& b : backends) info->add_devices(b->Describe());
  info->mutable_batcher()->set_max_batch_rows(o.batcher.max_batch_rows);
  info->mutable_batcher()->set_max_queue_delay_us(o.batcher.max_queue_delay.count());
  info->mutable_batcher()->set_max_queue_size(o.batcher.max_queue_size);
  info->mutable_batcher()->set_adaptive_delay(o.batcher.adaptive_delay);
  info->mutable_batcher()->set_bulk_chunk_us(o.chunks.bulk_chunk.count());
  info->mutable_batcher()->set_bulk_threads(BackgroundPolicyName(o.background_policy));
  info->mutable_limits()->set_max_message_bytes(o.max_message_bytes);
  info->mutable_limits()->set_max_cols(std::numeric_limits<int32_t>::max());
  info->mutable_limits()->set_max_inflight_bytes(o.max_inflight_bytes);
  admission.Finish(absl::StatusCode::kOk);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  HandToGrpc([&] { reactor->Finish(grpc::Status::OK); });
  return reactor;
}

}  // namespace zlpr::server
