// EchoService: responses of the real size, nothing computed.
#include "server/zlpr_v1/echo_service.h"

#include <memory>

namespace zlpr::server {
namespace {

int64_t Rows(const v1::Tensor& t) { return t.shape_size() > 0 ? t.shape(0) : 0; }

// Reads a message, writes its echo, reads the next: one message in flight, in order.
template <typename Request, typename Response>
class EchoStream final : public grpc::ServerBidiReactor<Request, Response> {
 public:
  EchoStream() { this->StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status::OK);
      return;
    }
    response_.Clear();
    EchoService::Echo(request_, &response_);
    this->StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status::OK);
      return;
    }
    this->StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  Request request_;
  Response response_;
};

// Answers a unary call after `fill`ing its response.
template <typename Fill>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const Fill& fill) {
  auto* reactor = ctx->DefaultReactor();
  fill();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace

void EchoService::Echo(const v1::LossRequest& request, v1::LossResponse* response) {
  response->set_request_id(request.request_id());
  response->mutable_loss()->Resize(static_cast<int>(Rows(request.scores())), 0.0f);
  if (request.want_grad()) *response->mutable_grad() = request.scores();
}

void EchoService::Echo(const v1::PredictRequest& request, v1::PredictResponse* response) {
  response->set_request_id(request.request_id());
  for (int64_t r = 0; r < Rows(request.scores()); ++r) response->add_rows();
  if (request.want_probs()) *response->mutable_probs() = request.scores();
}

grpc::ServerUnaryReactor* EchoService::ComputeLoss(grpc::CallbackServerContext* ctx,
                                                   const v1::LossRequest* request,
                                                   v1::LossResponse* response) {
  return Answer(ctx, [&] { Echo(*request, response); });
}

grpc::ServerUnaryReactor* EchoService::Predict(grpc::CallbackServerContext* ctx,
                                               const v1::PredictRequest* request,
                                               v1::PredictResponse* response) {
  return Answer(ctx, [&] { Echo(*request, response); });
}

grpc::ServerBidiReactor<v1::LossRequest, v1::LossResponse>* EchoService::StreamLoss(
    grpc::CallbackServerContext*) {
  return new EchoStream<v1::LossRequest, v1::LossResponse>();
}

grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* EchoService::StreamPredict(
    grpc::CallbackServerContext*) {
  return new EchoStream<v1::PredictRequest, v1::PredictResponse>();
}

grpc::ServerUnaryReactor* EchoService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                     const v1::ServerInfoRequest*,
                                                     v1::ServerInfo* info) {
  return Answer(ctx, [&] { info->set_backend("echo"); });
}

}  // namespace zlpr::server
