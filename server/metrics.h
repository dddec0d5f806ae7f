// The server's Prometheus metrics: families built once at start-up in a registry that is
// passed in, every label combination's handle created then and cached, so the hot path only
// touches atomics.
#ifndef ZLPR_SERVER_METRICS_H_
#define ZLPR_SERVER_METRICS_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/core/job.h"

namespace zlpr::server {

enum class Method {
  kComputeLoss,
  kPredict,
  kStreamLoss,
  kStreamPredict,
  kGetServerInfo,
  kModelInfer,      // the Open Inference Protocol on gRPC (oip_service.h)
  kModelInferHttp,  // and on HTTP (oip_http.h)
  kCount
};
enum class Reject {
  kQueueFull,
  kDeadline,
  kCancelled,
  kInvalid,
  kShuttingDown,
  kUnauthenticated,
  kTooLarge,  // the response would exceed the message limit
  kMemory,    // the memory budget for requests in flight could not cover it
  kSlowReader,  // its response was not read within --write_timeout_s: the call was cancelled
  kCount
};

// The "method" and "protocol" labels of a method's request metrics (zlpr_v1, oip_grpc or
// oip_http).
const char* MethodName(Method m);
const char* ProtocolName(Method m);

class Metrics {
 public:
  // `backend` labels the compute histograms and build info ("cpu" or "cuda"); `cuda_devices`
  // the device-memory gauges (empty without CUDA).
  Metrics(prometheus::Registry& registry, const std::string& version, const std::string& backend,
          const std::vector<int>& cuda_devices);

  void RequestDone(Method m, grpc::StatusCode code, double seconds);
  prometheus::Histogram& queue_seconds(JobKind k) { return *queue_[static_cast<int>(k)]; }
  prometheus::Histogram& compute_seconds(JobKind k) { return *compute_[static_cast<int>(k)]; }
  prometheus::Histogram& batch_rows(JobKind k) { return *batch_rows_[static_cast<int>(k)]; }
  prometheus::Counter& rows(JobKind k) { return *rows_[static_cast<int>(k)]; }
  prometheus::Gauge& queue_depth(JobKind k) { return *depth_[static_cast<int>(k)]; }
  prometheus::Gauge& queue_capacity(JobKind k) { return *capacity_[static_cast<int>(k)]; }
  prometheus::Gauge& inflight() { return *inflight_; }
  prometheus::Gauge& inflight_bytes() { return *inflight_bytes_; }
  prometheus::Gauge& inflight_bytes_limit() { return *inflight_bytes_limit_; }
  prometheus::Gauge& http_connections() { return *http_connections_; }
  prometheus::Counter& rejected(Reject r) { return *rejected_[static_cast<int>(r)]; }
  prometheus::Counter& request_bytes() { return *request_bytes_; }
  // Requests computed although their deadline passed before the result was ready.
  prometheus::Counter& late_results() { return *late_results_; }
  prometheus::Counter& response_bytes() { return *response_bytes_; }
  // The gauge of the i-th device in `cuda_devices`.
  prometheus::Gauge& device_memory(size_t i) { return *device_memory_[i]; }
  bool has_devices() const { return !device_memory_.empty(); }
  prometheus::Gauge& device_healthy(size_t i) { return *device_healthy_[i]; }

 private:
  static constexpr int kCodes = 17;
  static constexpr int kMethods = static_cast<int>(Method::kCount);
  static constexpr int kOps = kJobKinds;
  std::array<std::array<prometheus::Counter*, kCodes>, kMethods> requests_{};
  std::array<prometheus::Histogram*, kMethods> duration_{};
  std::array<prometheus::Histogram*, kOps> queue_{}, compute_{}, batch_rows_{};
  std::array<prometheus::Counter*, kOps> rows_{};
  std::array<prometheus::Gauge*, kOps> depth_{}, capacity_{};
  std::array<prometheus::Counter*, static_cast<int>(Reject::kCount)> rejected_{};
  prometheus::Gauge* inflight_ = nullptr;
  prometheus::Gauge* inflight_bytes_ = nullptr;
  prometheus::Gauge* inflight_bytes_limit_ = nullptr;
  prometheus::Gauge* http_connections_ = nullptr;
  prometheus::Counter* request_bytes_ = nullptr;
  prometheus::Counter* late_results_ = nullptr;
  prometheus::Counter* response_bytes_ = nullptr;
  std::vector<prometheus::Gauge*> device_memory_, device_healthy_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_METRICS_H_
