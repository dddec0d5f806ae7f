// The transport's ceiling, for benchmarks: zlpr.v1.ZlprService answered without validation,
// batching or compute, each response as large as the real one would be (ComputeLoss returns
// the scores' bytes as the gradient, Predict an empty label list per row). zlpr-server --echo.
// The bearer token is checked by the port's credentials (auth.h), for it as for the real service.
#ifndef ZLPR_SERVER_ZLPR_V1_ECHO_SERVICE_H_
#define ZLPR_SERVER_ZLPR_V1_ECHO_SERVICE_H_

#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr::server {

class EchoService final : public v1::ZlprService::CallbackService {
 public:
  grpc::ServerUnaryReactor* ComputeLoss(grpc::CallbackServerContext* ctx,
                                        const v1::LossRequest* request,
                                        v1::LossResponse* response) override;
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx,
                                    const v1::PredictRequest* request,
                                    v1::PredictResponse* response) override;
  grpc::ServerBidiReactor<v1::LossRequest, v1::LossResponse>* StreamLoss(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* StreamPredict(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const v1::ServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  static void Echo(const v1::LossRequest& request, v1::LossResponse* response);
  static void Echo(const v1::PredictRequest& request, v1::PredictResponse* response);
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_ZLPR_V1_ECHO_SERVICE_H_
