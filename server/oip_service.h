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
// Parameter "timeout" (Triton's, microseconds) bounds a request's time like a deadline.
// Only the requested outputs are returned (all when none is named); the gradient and the dense
// probabilities are computed only when returned. Outputs are raw (raw_output_contents).
#ifndef ZLPR_SERVER_OIP_SERVICE_H_
#define ZLPR_SERVER_OIP_SERVICE_H_

#include <set>
#include <string>
#include <vector>

#include "inference/grpc_service.grpc.pb.h"
#include "server/service.h"

namespace zlpr::server {

// One ModelInferRequest through the zlpr request path, for either binding (gRPC or HTTP):
// admitted (shutdown, memory budget), converted, queued, and its response filled (raw outputs);
// then `done` with the status, once, from this thread or a worker. The request and response
// must outlive it; so must this object, which holds the memory lease and the buffers the job
// views. Reusable (a stream runs one request after another through it).
class OipInference {
 public:
  using Done = absl::AnyInvocable<void(absl::Status)>;

  // `method` labels the request in the metrics (its protocol).
  OipInference(ZlprServiceImpl* service, Method method) : service_(service), method_(method) {}

  // `control`'s deadline is shortened by the request's "timeout" parameter (microseconds).
  void Run(CallControl control, const inference::ModelInferRequest* request,
           inference::ModelInferResponse* response, Done done);

  // Charges `bytes` more to the request's memory lease (what the binding holds besides the
  // response, e.g. its text); false when the budget cannot cover them.
  bool GrowLease(int64_t bytes) { return lease_.TryGrow(bytes); }

  // Returns the memory the request held (once its response has been sent).
  void Release() { lease_.Reset(); }

 private:
  absl::Status Submit(CallControl control);
  // The response-size check, metrics, then `done`.
  void Finish(absl::Status status);

  ZlprServiceImpl* const service_;
  const Method method_;
  const inference::ModelInferRequest* request_ = nullptr;
  inference::ModelInferResponse* response_ = nullptr;
  Done done_;
  SteadyTime start_{};
  std::vector<std::string> owned_;  // inputs narrowed from typed contents
  std::set<std::string> want_;
  int64_t classification_ = 0;
  MemoryBudget::Lease lease_;
};

// What both bindings report. NOT_FOUND unless `name` is one of the two models and `version` is
// empty or "1".
absl::Status CheckModel(const std::string& name, const std::string& version);
inference::ServerMetadataResponse ServerMetadataOf(const std::string& version);
absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(const std::string& name,
                                                                 const std::string& version);
// `max_batch_rows` is reported as max_batch_size; dims leave out the batch dimension.
absl::StatusOr<inference::ModelConfig> ModelConfigOf(const std::string& name,
                                                     const std::string& version,
                                                     int64_t max_batch_rows);
// Both models' statistics when `name` is empty.
absl::StatusOr<inference::ModelStatisticsResponse> StatisticsOf(const ZlprServiceImpl& service,
                                                                const std::string& name,
                                                                const std::string& version);

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
