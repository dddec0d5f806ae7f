// InferenceService: the Open Inference Protocol's gRPC messages through the core.
#include "server/oip/grpc_service.h"

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "server/grpc/reactors.h"
#include "server/oip/converter.h"
#include "server/oip/inference.h"
#include "server/oip/models.h"
#include "server/oip/shared_tensors.h"
#include "server/oip/wire.h"

namespace zlpr::server::oip {
// Large outputs go to the transport as they are; smaller ones are copied into the head, where a
// slice of their own would cost more than the copy.
constexpr size_t kLargeOutputBytes = 64 << 10;

absl::Status ParseMessage(grpc::ByteBuffer* raw, InferMessage* message) {
  const size_t bytes = raw->Length();
  absl::StatusOr<bool> views;
  if (bytes > static_cast<size_t>(std::numeric_limits<int>::max())) {
    views = absl::InvalidArgumentError(
        absl::StrFormat("the message (%d bytes) is too large to read", bytes));
  } else if (grpc::Slice slice; raw->TrySingleSlice(&slice).ok()) {
    // One slice (a small message, usually): the tensors can be views into it.
    google::protobuf::io::CodedInputStream in(slice.begin(), static_cast<int>(slice.size()));
    views = DecodeInferRequest(&in, static_cast<int64_t>(bytes), /*in_place=*/true, &message->view,
                               &message->invalid);
    if (views.ok() && *views) message->bytes = std::move(slice);
  } else if (grpc::ProtoBufferReader reader(raw); reader.status().ok()) {
    google::protobuf::io::CodedInputStream in(&reader);
    views = DecodeInferRequest(&in, static_cast<int64_t>(bytes), /*in_place=*/false, &message->view,
                               &message->invalid);
  } else {
    views = absl::InvalidArgumentError(absl::StrFormat(
        "the message (%d bytes) could not be read: %s", bytes, reader.status().error_message()));
  }
  raw->Clear();
  return views.status();
}

namespace {

grpc::Status Serialize(const ResponseWire& wire, Response* response, grpc::ByteBuffer* raw) {
  if (wire.total_bytes() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "the response is too large to serialize");
  }
  grpc::Slice head(wire.head_bytes());
  const std::vector<ResponseWire::Gap> gaps =
      wire.Write(reinterpret_cast<char*>(const_cast<uint8_t*>(head.begin())));
  if (gaps.empty()) {
    grpc::ByteBuffer whole(&head, 1);
    raw->Swap(&whole);
    return grpc::Status::OK;
  }
  std::vector<grpc::Slice> slices;
  slices.reserve(2 * gaps.size() + 1);
  size_t at = 0;
  for (const ResponseWire::Gap& gap : gaps) {
    if (gap.offset > at) slices.push_back(head.sub(at, gap.offset));
    at = gap.offset;
    // The output's own bytes, freed by the transport once written.
    auto* bytes = new std::string(std::move(response->outputs[gap.output].data));
    slices.emplace_back(
        bytes->data(), bytes->size(), [](void* p) { delete static_cast<std::string*>(p); }, bytes);
  }
  if (at < head.size()) slices.push_back(head.sub(at, head.size()));
  grpc::ByteBuffer pieces(slices.data(), slices.size());
  raw->Swap(&pieces);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status SerializeMessage(InferAnswer& answer, grpc::ByteBuffer* raw) {
  return Serialize(ResponseWire::Infer(answer.response, kLargeOutputBytes), &answer.response, raw);
}

grpc::Status SerializeMessage(StreamInferAnswer& answer, grpc::ByteBuffer* raw) {
  return Serialize(ResponseWire::Stream(answer.answered ? &answer.response : nullptr,
                                        answer.error_message, kLargeOutputBytes),
                   &answer.response, raw);
}

namespace {

// ModelInfer's and ModelStreamInfer's messages (server/grpc/reactors.h runs them).
template <typename Answer>
class InferProtocol {
 public:
  using Request = InferMessage;
  using Response = Answer;
  struct Extra {};

  InferProtocol(InferenceCore* core, MethodId method, const SharedMemoryRegistry* shared_memory)
      : core_(core), method_(method), inference_(core, shared_memory) {}

  InferenceCore& core() { return *core_; }
  MethodId method() const { return method_; }

  void Submit(Admission* admission, CallControl control, Request& request, Response* response,
              Extra*, absl::AnyInvocable<void(absl::Status)> done) {
    if constexpr (std::is_same_v<Answer, StreamInferAnswer>) {
      // A stream's answer carries the request's id, also beside an error.
      response->answered = true;
      response->response.model = request.view.model;
      response->response.id = request.view.id;
    }
    if (!request.invalid.ok()) {
      core_->Rejected(Reject::kInvalid);
      return done(request.invalid);
    }
    inference_.Run(admission, std::move(control), &request.view, &response->response,
                   [response, done = std::move(done)](absl::Status st) mutable {
                     if (!st.ok()) response->response.outputs.clear();
                     done(std::move(st));
                   });
  }

  void AnswerError(const absl::Status& status, Response* response) {
    if constexpr (std::is_same_v<Answer, StreamInferAnswer>) {
      response->error_message = std::string(status.message());
    }
  }

  void AddTrailers(const Extra&, grpc::CallbackServerContext*) {}

 private:
  InferenceCore* const core_;
  const MethodId method_;
  Inference inference_;
};

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& st) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  HandToGrpc([&] { reactor->Finish(ToGrpc(st)); });
  return reactor;
}

}  // namespace

class InferenceService::Protocols {
 public:
  Protocols(InferenceCore* core, const SharedMemoryRegistry* shared_memory)
      : infer(core, core->RegisterMethod("ModelInfer", "oip_grpc"), shared_memory),
        stream(core, core->RegisterMethod("ModelStreamInfer", "oip_grpc"), shared_memory) {}
  InferProtocol<InferAnswer> infer;
  InferProtocol<StreamInferAnswer> stream;
};

InferenceService::InferenceService(InferenceCore* core, const GrpcOptions& options)
    : core_(core),
      options_(options),
      protocols_(std::make_unique<Protocols>(core, options.shared_memory)) {}

InferenceService::~InferenceService() = default;

grpc::ServerUnaryReactor* InferenceService::ServerLive(grpc::CallbackServerContext* ctx,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(grpc::CallbackServerContext* ctx,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* response) {
  response->set_ready(core_->ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(grpc::CallbackServerContext* ctx,
                                                       const inference::ModelReadyRequest* request,
                                                       inference::ModelReadyResponse* response) {
  // An unknown model is simply not ready (clients ask before they infer).
  response->set_ready(CheckModel(request->name(), request->version()).ok() && core_->ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  *response = ServerMetadataOf(options_.version, options_.shared_memory != nullptr);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto r = ModelMetadataOf(request->name(), request->version());
  const absl::Status status = r.status();
  if (r.ok()) *response = *std::move(r);
  return Answer(ctx, status);
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(
    grpc::CallbackServerContext* ctx, const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  auto r = ModelConfigOf(request->name(), request->version(), core_->options().batcher);
  const absl::Status status = r.status();
  if (r.ok()) *response->mutable_config() = *std::move(r);
  return Answer(ctx, status);
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  auto r = StatisticsOf(*core_, request->name(), request->version());
  const absl::Status status = r.status();
  if (r.ok()) *response = *std::move(r);
  return Answer(ctx, status);
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  auto* call = NewReactor<UnaryCall<InferProtocol<InferAnswer>>>(&protocols_->infer, ctx, response);
  call->Start(request);
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceService::ModelStreamInfer(
    grpc::CallbackServerContext* ctx) {
  auto* stream = NewReactor<OrderedStream<InferProtocol<StreamInferAnswer>>>(
      &protocols_->stream, ctx, options_.stream_window);
  stream->Start();
  return stream;
}

grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryStatusRequest* request,
    inference::SystemSharedMemoryStatusResponse* response) {
  if (options_.shared_memory == nullptr) return Answer(ctx, SharedMemoryOff());
  auto regions = options_.shared_memory->Status(request->name());
  if (regions.ok()) *response = SystemSharedMemoryStatusOf(*regions);
  return Answer(ctx, regions.status());
}

grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryRegister(
    grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryRegisterRequest* request,
    inference::SystemSharedMemoryRegisterResponse*) {
  if (options_.shared_memory == nullptr) return Answer(ctx, SharedMemoryOff());
  return Answer(ctx, options_.shared_memory->Register(request->name(), request->key(),
                                                      request->offset(), request->byte_size()));
}

grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryUnregister(
    grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryUnregisterRequest* request,
    inference::SystemSharedMemoryUnregisterResponse*) {
  if (options_.shared_memory == nullptr) return Answer(ctx, SharedMemoryOff());
  options_.shared_memory->Unregister(request->name());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryStatusRequest* request,
    inference::CudaSharedMemoryStatusResponse*) {
  return Answer(ctx, CudaSharedMemoryStatusOf(request->name()));
}

grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryRegister(
    grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryRegisterRequest*,
    inference::CudaSharedMemoryRegisterResponse*) {
  return Answer(ctx, CudaSharedMemoryRefusal(options_.cuda_backend));
}

grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryUnregister(
    grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryUnregisterRequest*,
    inference::CudaSharedMemoryUnregisterResponse*) {
  return Answer(ctx, absl::OkStatus());  // nothing is registered; unregistering is idempotent
}

}  // namespace zlpr::server::oip
