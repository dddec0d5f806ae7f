// The Open Inference Protocol's gRPC binding (KServe v2; Triton's GRPCInferenceService) on the
// same port as zlpr.v1: ModelInfer and ModelStreamInfer take their messages raw, charged to
// the memory budget before they are read (server/grpc/reactors.h), read straight into the
// binding-free Request (wire.h) and run through oip::Inference; the rest answers from models.h.
// tritonclient and other v2 clients work unchanged.
#ifndef ZLPR_SERVER_OIP_GRPC_SERVICE_H_
#define ZLPR_SERVER_OIP_GRPC_SERVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "inference/grpc_service.grpc.pb.h"
#include "server/core/core.h"
#include "server/core/shared_memory.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

// ModelInfer's request as the binding reads it (wire.h): the Request, the message's bytes when
// its tensors view them, and why it cannot be run when it reads but is not a valid request (a
// stream answers that in place).
struct InferMessage {
  grpc::Slice bytes;
  Request view;
  absl::Status invalid;
};
// ModelInfer's and ModelStreamInfer's responses before their wire form.
struct InferAnswer {
  Response response;
};
struct StreamInferAnswer {
  Response response;
  bool answered = false;  // infer_response is sent (with the request's id) once it was read
  std::string error_message;
};

// The raw reactors' codecs for these (server/grpc/reactors.h, found by argument-dependent
// lookup): the message read straight into `message`, and the answer written straight into
// `raw` (large outputs moved out of it, not copied). `raw`'s bytes are freed.
absl::Status ParseMessage(grpc::ByteBuffer* raw, InferMessage* message);
grpc::Status SerializeMessage(InferAnswer& answer, grpc::ByteBuffer* raw);
grpc::Status SerializeMessage(StreamInferAnswer& answer, grpc::ByteBuffer* raw);

// Every method is a callback method (a single sync one would make gRPC start a sync thread pool).
using InferenceServiceBase = inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<
    inference::GRPCInferenceService::WithRawCallbackMethod_ModelStreamInfer<
        inference::GRPCInferenceService::WithCallbackMethod_ServerLive<
            inference::GRPCInferenceService::WithCallbackMethod_ServerReady<
                inference::GRPCInferenceService::WithCallbackMethod_ModelReady<
                    inference::GRPCInferenceService::WithCallbackMethod_ServerMetadata<
                        inference::GRPCInferenceService::WithCallbackMethod_ModelMetadata<
                            inference::GRPCInferenceService::WithCallbackMethod_ModelConfig<
                                inference::GRPCInferenceService::WithCallbackMethod_ModelStatistics<
                                    inference::GRPCInferenceService::WithCallbackMethod_SystemSharedMemoryStatus<
                                        inference::GRPCInferenceService::WithCallbackMethod_SystemSharedMemoryRegister<
                                            inference::GRPCInferenceService::
                                                WithCallbackMethod_SystemSharedMemoryUnregister<
                                                    inference::GRPCInferenceService::
                                                        WithCallbackMethod_CudaSharedMemoryStatus<
                                                            inference::GRPCInferenceService::
                                                                WithCallbackMethod_CudaSharedMemoryRegister<
                                                                    inference::GRPCInferenceService::
                                                                        WithCallbackMethod_CudaSharedMemoryUnregister<
                                                                            inference::GRPCInferenceService::
                                                                                Service>>>>>>>>>>>>>>>;

struct GrpcOptions {
  std::string version;
  int stream_window = 64;  // ModelStreamInfer requests read and not yet answered
  // Regions clients registered (--allow_client_shm); null: the extension's calls and tensors
  // that name a region are refused.
  SharedMemoryRegistry* shared_memory = nullptr;
  bool cuda_backend = false;  // for CudaSharedMemoryRegister's refusal
};

class InferenceService final : public InferenceServiceBase {
 public:
  // Registers its methods with `core`, which must outlive it; before core->Start().
  InferenceService(InferenceCore* core, const GrpcOptions& options);
  ~InferenceService() override;

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* ctx,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* ctx,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ModelStreamInfer(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(
      grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryStatusRequest* request,
      inference::SystemSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(
      grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryRegisterRequest* request,
      inference::SystemSharedMemoryRegisterResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(
      grpc::CallbackServerContext* ctx,
      const inference::SystemSharedMemoryUnregisterRequest* request,
      inference::SystemSharedMemoryUnregisterResponse* response) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryStatus(
      grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryStatusRequest* request,
      inference::CudaSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryRegister(
      grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryRegisterRequest* request,
      inference::CudaSharedMemoryRegisterResponse* response) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryUnregister(
      grpc::CallbackServerContext* ctx, const inference::CudaSharedMemoryUnregisterRequest* request,
      inference::CudaSharedMemoryUnregisterResponse* response) override;

 private:
  class Protocols;

  InferenceCore* const core_;
  const GrpcOptions options_;
  std::unique_ptr<Protocols> protocols_;
};

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_GRPC_SERVICE_H_
