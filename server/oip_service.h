// The Open Inference Protocol (KServe v2; Triton's gRPC API) on the same port and the same
// request path as zlpr.v1: a ModelInfer request becomes the same typed job (LossJob or
// PredictJob) and goes through the same batcher, executor, memory budget and metrics, so
// requests of both protocols batch together. tritonclient and other v2 clients work unchanged.
//
// Two models:
//   zlpr_predict  inputs  scores FP32|FP16|BF16 [-1, -1]; optional label_thresholds FP32 [-1],
//                         mask UINT8 [-1, -1]; parameters threshold, top_k, min_labels
//                 outputs probs FP32 [-1, -1], labels INT32 [-1, -1] (each row's labels in the
//                         labeler's order, padded with -1), label_probs FP32 [-1, -1] (padded
//                         with 0), label_count INT32 [-1]
//   zlpr_loss     inputs  scores, labels FP32|FP16|BF16 [-1, -1]; optional mask UINT8 [-1, -1]
//                 outputs loss FP32 [-1], grad FP32 [-1, -1]; response parameters loss_sum,
//                         loss_mean
// Only the requested outputs are returned (all when none is named); the gradient and the dense
// probabilities are computed only when returned. Outputs are raw (raw_output_contents).
#ifndef ZLPR_SERVER_OIP_SERVICE_H_
#define ZLPR_SERVER_OIP_SERVICE_H_

#include <string>

#include "inference/grpc_service.grpc.pb.h"
#include "server/service.h"

namespace zlpr::server {

class InferenceService final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `zlpr` runs the jobs (and must outlive this); `max_batch_rows` is what ModelConfig reports.
  InferenceService(ZlprServiceImpl* zlpr, int64_t max_batch_rows, std::string version)
      : zlpr_(zlpr), max_batch_rows_(max_batch_rows), version_(std::move(version)) {}

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
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext* ctx) override;

 private:
  ZlprServiceImpl* const zlpr_;
  const int64_t max_batch_rows_;
  const std::string version_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_OIP_SERVICE_H_
