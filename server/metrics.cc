// Metric families and their cached handles.
#include "server/metrics.h"

#include <iterator>

#include "absl/status/status.h"

namespace zlpr::server {
namespace {

const char* const kRejectNames[] = {"queue_full",      "deadline",  "cancelled",
                                    "invalid",         "shutting_down", "unauthenticated",
                                    "too_large",       "memory",    "slow_reader"};
static_assert(std::size(kRejectNames) == static_cast<size_t>(Reject::kCount));

// Latency buckets from 50 µs to 30 s.
prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
          0.05, 0.1,  0.25,   0.5,  1,    2.5,    5,    10,   30};
}

prometheus::Histogram::BucketBoundaries RowBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
}

}  // namespace

const char* MethodName(Method m) {
  static const char* const kNames[] = {"ComputeLoss",   "Predict",       "StreamLoss",
                                       "StreamPredict", "GetServerInfo", "ModelInfer",
                                       "ModelInfer"};
  static_assert(std::size(kNames) == static_cast<size_t>(Method::kCount));
  return kNames[static_cast<int>(m)];
}

const char* ProtocolName(Method m) {
  switch (m) {
    case Method::kModelInfer:
      return "oip_grpc";
    case Method::kModelInferHttp:
      return "oip_http";
    default:
      return "zlpr_v1";
  }
}

Metrics::Metrics(prometheus::Registry& registry, const std::string& version,
                 const std::string& backend, const std::vector<int>& cuda_devices) {
  using namespace prometheus;
  auto& requests = BuildCounter()
                       .Name("zlpr_requests_total")
                       .Help("Requests (stream messages count one each) by method, protocol (zlpr_v1, "
                             "oip_grpc, oip_http) and status code")
                       .Register(registry);
  auto& duration = BuildHistogram()
                       .Name("zlpr_request_duration_seconds")
                       .Help("Time from a request's arrival to its response, by method and protocol")
                       .Register(registry);
  for (int m = 0; m < kMethods; ++m) {
    const char* method = MethodName(static_cast<Method>(m));
    const char* protocol = ProtocolName(static_cast<Method>(m));
    for (int c = 0; c < kCodes; ++c) {
      const std::string code = absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
      requests_[m][c] =
          &requests.Add({{"method", method}, {"protocol", protocol}, {"code", code}});
    }
    duration_[m] = &duration.Add({{"method", method}, {"protocol", protocol}}, SecondsBuckets());
  }
  auto& queue = BuildHistogram()
                    .Name("zlpr_queue_duration_seconds")
                    .Help("Time a request waited in the batcher's queue, by operation")
                    .Register(registry);
  auto& compute = BuildHistogram()
                      .Name("zlpr_compute_duration_seconds")
                      .Help("Kernel time of one executed batch, by operation and backend")
                      .Register(registry);
  auto& batch_rows = BuildHistogram()
                         .Name("zlpr_batch_rows")
                         .Help("Rows in one executed batch, by operation")
                         .Register(registry);
  auto& rows =
      BuildCounter().Name("zlpr_rows_total").Help("Rows computed, by operation").Register(registry);
  auto& depth = BuildGauge()
                    .Name("zlpr_queue_depth")
                    .Help("Requests waiting in the batcher's queue, by operation")
                    .Register(registry);
  auto& capacity =
      BuildGauge()
          .Name("zlpr_queue_capacity")
          .Help("Requests a queue holds before refusing (--max_queue_size), by operation")
          .Register(registry);
  for (int o = 0; o < kOps; ++o) {
    const char* op = JobKindName(static_cast<JobKind>(o));
    capacity_[o] = &capacity.Add({{"op", op}});
    queue_[o] = &queue.Add({{"op", op}}, SecondsBuckets());
    compute_[o] = &compute.Add({{"op", op}, {"backend", backend}}, SecondsBuckets());
    batch_rows_[o] = &batch_rows.Add({{"op", op}}, RowBuckets());
    rows_[o] = &rows.Add({{"op", op}});
    depth_[o] = &depth.Add({{"op", op}});
  }
  inflight_ = &BuildGauge()
                   .Name("zlpr_inflight_requests")
                   .Help("Requests accepted and not yet answered")
                   .Register(registry)
                   .Add({});
  auto& inflight_bytes = BuildGauge()
                             .Name("zlpr_inflight_bytes")
                             .Help("Bytes of the memory budget held by requests in flight, and "
                                   "the budget (--max_inflight_bytes)")
                             .Register(registry);
  inflight_bytes_ = &inflight_bytes.Add({{"kind", "held"}});
  inflight_bytes_limit_ = &inflight_bytes.Add({{"kind", "limit"}});
  http_connections_ = &BuildGauge()
                           .Name("zlpr_http_connections")
                           .Help("Connections open on the HTTP port (--http_max_connections, "
                                 "and the few beyond it kept for health checks)")
                           .Register(registry)
                           .Add({});
  auto& rejected = BuildCounter()
                       .Name("zlpr_rejected_requests_total")
                       .Help("Requests refused, dropped or too large to answer, by reason")
                       .Register(registry);
  for (int r = 0; r < static_cast<int>(Reject::kCount); ++r) {
    rejected_[r] = &rejected.Add({{"reason", kRejectNames[r]}});
  }
  late_results_ = &BuildCounter()
                       .Name("zlpr_late_results_total")
                       .Help("Requests computed whose deadline had passed by the time the result "
                             "was ready (the expiry came after the batch was cut): wasted work")
                       .Register(registry)
                       .Add({});
  request_bytes_ = &BuildCounter()
                        .Name("zlpr_request_bytes_total")
                        .Help("Serialized bytes of requests received")
                        .Register(registry)
                        .Add({});
  response_bytes_ = &BuildCounter()
                         .Name("zlpr_response_bytes_total")
                         .Help("Serialized bytes of responses sent")
                         .Register(registry)
                         .Add({});
  BuildGauge()
      .Name("zlpr_build_info")
      .Help("Always 1; the labels say which build and backend serve")
      .Register(registry)
      .Add({{"version", version}, {"backend", backend}})
      .Set(1);
  if (!cuda_devices.empty()) {
    auto& mem = BuildGauge()
                    .Name("zlpr_device_memory_used_bytes")
                    .Help("Device memory the backend holds for reuse, by device")
                    .Register(registry);
    for (int d : cuda_devices) device_memory_.push_back(&mem.Add({{"device", std::to_string(d)}}));
    auto& healthy = BuildGauge()
                        .Name("zlpr_device_healthy")
                        .Help("1 while the device can compute, 0 once a CUDA error broke its "
                              "context (the process must be restarted)")
                        .Register(registry);
    for (int d : cuda_devices) {
      device_healthy_.push_back(&healthy.Add({{"device", std::to_string(d)}}));
      device_healthy_.back()->Set(1);
    }
  }
}

void Metrics::RequestDone(Method m, grpc::StatusCode code, double seconds) {
  const int c = static_cast<int>(code);
  requests_[static_cast<int>(m)][c >= 0 && c < kCodes ? c : 2]->Increment();
  duration_[static_cast<int>(m)]->Observe(seconds);
}

}  // namespace zlpr::server
