// InferenceService: the Open Inference Protocol's gRPC messages through the core.
#include "server/oip/grpc_service.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "server/grpc/reactors.h"
#include "server/oip/converter.h"
#include "server/oip/inference.h"
#include "server/oip/models.h"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

Parameter ParameterOf(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param();
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      return p.uint64_param();
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kStringParam:
      return p.string_param();
    default:
      return std::string();  // no value: what needs one refuses it
  }
}

void SetParameter(const Parameter& value, inference::InferParameter* p) {
  std::visit(
      [p](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) p->set_bool_param(v);
        if constexpr (std::is_same_v<T, int64_t>) p->set_int64_param(v);
        if constexpr (std::is_same_v<T, uint64_t>) p->set_uint64_param(v);
        if constexpr (std::is_same_v<T, double>) p->set_double_param(v);
        if constexpr (std::is_same_v<T, std::string>) p->set_string_param(v);
      },
      value);
}

template <typename Map>
Parameters ParametersOf(const Map& map) {
  Parameters out;
  for (const auto& [key, value] : map) out.emplace(key, ParameterOf(value));
  return out;
}

}  // namespace

absl::Status ViewOf(const ModelInferRequest& m, Request* r) {
  r->model = m.model_name();
  r->version = m.model_version();
  r->id = m.id();
  r->parameters = ParametersOf(m.parameters());
  // Raw contents come for the inputs that are not in shared memory, in order.
  int in_messages = 0;
  for (const auto& in : m.inputs()) {
    in_messages += in.parameters().count(kShmRegion) == 0 ? 1 : 0;
  }
  const bool raw = m.raw_input_contents_size() > 0;
  if (raw && m.raw_input_contents_size() != in_messages) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "raw_input_contents has %d entries for %d inputs (not counting those in shared memory): "
        "send one per input, in order",
        m.raw_input_contents_size(), in_messages));
  }
  int next_raw = 0;
  for (int i = 0; i < m.inputs_size(); ++i) {
    const auto& in = m.inputs(i);
    Tensor& t = r->inputs.emplace_back();
    t.name = in.name();
    const std::optional<DataType> type = ParseDataType(in.datatype());
    if (!type) {
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': unknown datatype '%s'", in.name(), in.datatype()));
    }
    t.datatype = *type;
    t.shape.assign(in.shape().begin(), in.shape().end());
    t.parameters = ParametersOf(in.parameters());
    if (InSharedMemory(t.parameters)) {
      continue;  // its bytes come from the region (oip::Inference)
    }
    if (raw) {
      t.data = m.raw_input_contents(next_raw++);
    } else if (t.datatype == DataType::kFp32) {
      const auto& v = in.contents().fp32_contents();
      t.data = {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
    } else if (t.datatype == DataType::kUint8) {
      const auto& v = in.contents().uint_contents();
      std::string& bytes = r->owned.emplace_back(v.size(), '\0');
      for (int k = 0; k < v.size(); ++k) {
        if (v[k] > 255) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "input '%s': element %d is %d, over 255 for UINT8", in.name(), k, v[k]));
        }
        bytes[k] = static_cast<char>(v[k]);
      }
      t.data = bytes;
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': %s contents must be sent raw (raw_input_contents)",
                          in.name(), in.datatype()));
    }
  }
  for (const auto& o : m.outputs()) {
    r->outputs.push_back(
        RequestedOutput{.name = o.name(), .parameters = ParametersOf(o.parameters())});
  }
  return absl::OkStatus();
}

void ToMessage(Response response, ModelInferResponse* m) {
  m->set_model_name(std::move(response.model));
  m->set_model_version(std::move(response.version));
  m->set_id(std::move(response.id));
  for (const auto& [key, value] : response.parameters) {
    SetParameter(value, &(*m->mutable_parameters())[key]);
  }
  for (Output& o : response.outputs) {
    auto* out = m->add_outputs();
    out->set_name(std::move(o.name));
    out->set_datatype(DataTypeName(o.datatype));
    for (int64_t d : o.shape) out->add_shape(d);
    for (const auto& [key, value] : o.parameters) {
      SetParameter(value, &(*out->mutable_parameters())[key]);
    }
    // (Empty for an output in shared memory: the entries stay one per output, in order.)
    *m->add_raw_output_contents() = std::move(o.data);
  }
}

namespace {

// ModelInfer's and ModelStreamInfer's messages (server/grpc/reactors.h runs them).
template <typename ResponseT>
class InferProtocol {
 public:
  using Request = ModelInferRequest;
  using Response = ResponseT;
  struct Extra {
    oip::Request view;
    oip::Response out;
  };

  InferProtocol(InferenceCore* core, MethodId method, const SharedMemoryRegistry* shared_memory)
      : core_(core), method_(method), inference_(core, shared_memory) {}

  InferenceCore& core() { return *core_; }
  MethodId method() const { return method_; }

  void Submit(Admission* admission, CallControl control, const Request& request, Response* response,
              Extra* extra, absl::AnyInvocable<void(absl::Status)> done) {
    if (absl::Status st = ViewOf(request, &extra->view); !st.ok()) {
      core_->Rejected(Reject::kInvalid);
      return done(st);
    }
    inference_.Run(admission, std::move(control), &extra->view, &extra->out,
                   [extra, response, done = std::move(done)](absl::Status st) mutable {
                     ToMessage(std::move(extra->out), Infer(response));
                     done(std::move(st));
                   });
  }

  void AnswerError(const absl::Status& status, Response* response) {
    if constexpr (std::is_same_v<Response, inference::ModelStreamInferResponse>) {
      response->set_error_message(std::string(status.message()));
    }
  }

  void AddTrailers(const Extra&, grpc::CallbackServerContext*) {}

 private:
  static ModelInferResponse* Infer(ModelInferResponse* r) { return r; }
  static ModelInferResponse* Infer(inference::ModelStreamInferResponse* r) {
    return r->mutable_infer_response();
  }

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
  InferProtocol<ModelInferResponse> infer;
  InferProtocol<inference::ModelStreamInferResponse> stream;
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
  auto* call =
      NewReactor<UnaryCall<InferProtocol<ModelInferResponse>>>(&protocols_->infer, ctx, response);
  call->Start(request);
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceService::ModelStreamInfer(
    grpc::CallbackServerContext* ctx) {
  auto* stream = NewReactor<OrderedStream<InferProtocol<inference::ModelStreamInferResponse>>>(
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
