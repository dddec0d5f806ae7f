// The server's Prometheus metrics: a listener of the inference core (the only place Prometheus
// appears). Families are built at start-up in a registry that is passed in, every label
// combination's handle created then (a method's when its front end registers it) and cached,
// so the request path only touches atomics.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   Metrics metrics(*registry, version, "cpu", /*cuda_devices=*/{});
//   InferenceCore core(options, std::move(backends), &metrics);
#ifndef ZLPR_SERVER_METRICS_METRICS_H_
#define ZLPR_SERVER_METRICS_METRICS_H_

#include <array>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/core/core.h"

namespace zlpr::server {

class Metrics final : public CoreListener {
 public:
  // `backend` labels the compute histograms and build info ("cpu" or "cuda"); `cuda_devices`
  // the device gauges (empty without CUDA).
  Metrics(prometheus::Registry& registry, const std::string& version, const std::string& backend,
          const std::vector<int>& cuda_devices);

  void OnMethodRegistered(MethodId id, std::string_view method, std::string_view protocol) override;
  void OnRequestDone(MethodId id, absl::StatusCode code, double seconds,
                     std::optional<Priority> priority) override;
  void OnRejected(Reject reason) override;
  void OnInflight(int delta) override;
  void OnRequestBytes(int64_t bytes) override;
  void OnResponseBytes(int64_t bytes) override;
  void OnBudget(int64_t held, int64_t limit) override;
  void OnQueueDepth(JobKind kind, Priority priority, int64_t depth, int64_t capacity) override;
  void OnLateResult() override;
  void OnConnections(std::string_view protocol, int delta) override;

  void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) override;
  void OnQueued(JobKind kind, Priority priority, double seconds) override;
  void OnBatchDone(size_t worker, const Backend& backend) override;
  void OnBackendUnhealthy(size_t worker, const absl::Status& why, int healthy_left) override;
  void OnStandIn(JobKind kind) override;

 private:
  static constexpr int kCodes = 17;
  static constexpr int kOps = kJobKinds;
  struct MethodHandles {
    std::array<prometheus::Counter*, kCodes> requests{};
    prometheus::Histogram* duration = nullptr;
  };
  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  prometheus::Family<prometheus::Histogram>* duration_family_ = nullptr;
  std::vector<MethodHandles> methods_;  // by MethodId, filled before the server starts
  // Indexed by op * kPriorities + class.
  static int Queue(JobKind kind, Priority priority) {
    return static_cast<int>(kind) * kPriorities + static_cast<int>(priority);
  }
  std::array<prometheus::Histogram*, kOps * kPriorities> queue_{};
  std::array<prometheus::Gauge*, kOps * kPriorities> depth_{}, capacity_{};
  std::array<prometheus::Histogram*, kPriorities> class_duration_{};
  std::array<prometheus::Histogram*, kOps> compute_{}, batch_rows_{};
  std::array<prometheus::Counter*, kOps> rows_{};
  std::array<prometheus::Counter*, static_cast<int>(Reject::kCount)> rejected_{};
  prometheus::Gauge* inflight_ = nullptr;
  prometheus::Gauge* inflight_bytes_ = nullptr;
  prometheus::Gauge* inflight_bytes_limit_ = nullptr;
  prometheus::Counter* request_bytes_ = nullptr;
  prometheus::Counter* late_results_ = nullptr;
  std::array<prometheus::Counter*, kJobKinds> stand_ins_{};
  prometheus::Counter* response_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* connections_family_ = nullptr;
  absl::Mutex connections_mu_;
  std::map<std::string, prometheus::Gauge*, std::less<>> connections_
      ABSL_GUARDED_BY(connections_mu_);
  std::vector<prometheus::Gauge*> device_memory_, device_healthy_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_METRICS_METRICS_H_
