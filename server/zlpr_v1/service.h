// zlpr.v1.ZlprService on gRPC's callback API: an adapter of the inference core.
//
// The four compute methods take their messages as raw bytes (server/grpc/reactors.h), so that
// a message is charged to the memory budget before it is parsed and one that does not parse is
// answered with a clear error. A request becomes a typed job once (convert.h: INVALID_ARGUMENT
// naming field, row and column), is queued on the core, and its result becomes the response,
// from the worker. Streams answer every message in order, with per-message errors. Bearer
// tokens are checked by the transport before a call's body is read (server/grpc/credentials.h).
//
//   ZlprV1Service service(&core, {.version = "1.2.0"});
//   builder.RegisterService(&service);
#ifndef ZLPR_SERVER_ZLPR_V1_SERVICE_H_
#define ZLPR_SERVER_ZLPR_V1_SERVICE_H_

#include <memory>
#include <string>

#include "server/core/core.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr::server {

struct ZlprV1Options {
  std::string version;
  // Stream messages read and not yet answered, per stream, before reading pauses.
  int stream_window = 64;
};

// The generated service with the four compute methods raw (grpc::ByteBuffer in and out).
using ZlprServiceBase = v1::ZlprService::WithCallbackMethod_GetServerInfo<
    v1::ZlprService::WithRawCallbackMethod_ComputeLoss<
        v1::ZlprService::WithRawCallbackMethod_Predict<
            v1::ZlprService::WithRawCallbackMethod_StreamLoss<
                v1::ZlprService::WithRawCallbackMethod_StreamPredict<v1::ZlprService::Service>>>>>;

class ZlprV1Service final : public ZlprServiceBase {
 public:
  // Registers its methods with `core`, which must outlive it; before core->Start().
  ZlprV1Service(InferenceCore* core, const ZlprV1Options& options);
  ~ZlprV1Service() override;

  grpc::ServerUnaryReactor* ComputeLoss(grpc::CallbackServerContext* ctx,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamLoss(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamPredict(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const v1::ServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

 private:
  class Protocols;

  InferenceCore* const core_;
  const ZlprV1Options options_;
  std::unique_ptr<Protocols> protocols_;
  const MethodId info_method_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_ZLPR_V1_SERVICE_H_
