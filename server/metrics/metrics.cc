// Metric families and their cached handles.
#include "server/metrics/metrics.h"

#include <iterator>
#include <map>
#include <string>

#include "absl/status/status.h"

namespace zlpr::server {
namespace {

// Latency buckets from 50 µs to 30 s.
prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
          0.05, 0.1,  0.25,   0.5,  1,    2.5,    5,    10,   30};
}

prometheus::Histogram::BucketBoundaries RowBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
}

}  // namespace

Metrics::Metrics(prometheus::Registry& registry, const std::string& version,
                 const std::string& backend, const std::vector<int>& cuda_devices) {
  using namespace prometheus;
  requests_family_ = &BuildCounter()
                          .Name("zlpr_requests_total")
                          .Help(
                              "Requests (stream messages count one each) by method, protocol "
                              "(zlpr_v1, oip_grpc, oip_http) and status code")
                          .Register(registry);
  duration_family_ = &BuildHistogram()
                          .Name("zlpr_request_duration_seconds")
                          .Help(
                              "Time from a request's arrival to its response, by method and "
                              "protocol")
                          .Register(registry);
  auto& queue = BuildHistogram()
                    .Name("zlpr_queue_duration_seconds")
                    .Help(
                        "Time a request waited in the batcher's queue, by operation and class "
                        "(interactive, bulk)")
                    .Register(registry);
  auto& compute = BuildHistogram()
                      .Name("zlpr_compute_duration_seconds")
                      .Help(
                          "Kernel time of one kernel call (a batch, or a chunk of a bulk batch), "
                          "by operation and backend")
                      .Register(registry);
  auto& batch_rows =
      BuildHistogram()
          .Name("zlpr_batch_rows")
          .Help("Rows in one kernel call (a batch, or a chunk of a bulk batch), by operation")
          .Register(registry);
  auto& rows =
      BuildCounter().Name("zlpr_rows_total").Help("Rows computed, by operation").Register(registry);
  auto& depth = BuildGauge()
                    .Name("zlpr_queue_depth")
                    .Help("Requests waiting in the batcher's queue, by operation and class")
                    .Register(registry);
  auto& capacity =
      BuildGauge()
          .Name("zlpr_queue_capacity")
          .Help(
              "Requests a queue holds before refusing (--max_queue_size), by operation and "
              "class")
          .Register(registry);
  auto& class_duration =
      BuildHistogram()
          .Name("zlpr_class_request_duration_seconds")
          .Help(
              "Time from a queued request's arrival to its response, by class (interactive, "
              "bulk): what the scheduling of classes is for")
          .Register(registry);
  for (int o = 0; o < kOps; ++o) {
    const auto kind = static_cast<JobKind>(o);
    const char* op = JobKindName(kind);
    compute_[o] = &compute.Add({{"op", op}, {"backend", backend}}, SecondsBuckets());
    batch_rows_[o] = &batch_rows.Add({{"op", op}}, RowBuckets());
    rows_[o] = &rows.Add({{"op", op}});
    for (int c = 0; c < kPriorities; ++c) {
      const auto priority = static_cast<Priority>(c);
      const std::map<std::string, std::string> labels = {{"op", op},
                                                         {"class", PriorityName(priority)}};
      capacity_[Queue(kind, priority)] = &capacity.Add(labels);
      queue_[Queue(kind, priority)] = &queue.Add(labels, SecondsBuckets());
      depth_[Queue(kind, priority)] = &depth.Add(labels);
    }
  }
  for (int c = 0; c < kPriorities; ++c) {
    class_duration_[c] =
        &class_duration.Add({{"class", PriorityName(static_cast<Priority>(c))}}, SecondsBuckets());
  }
  inflight_ = &BuildGauge()
                   .Name("zlpr_inflight_requests")
                   .Help("Requests accepted and not yet answered")
                   .Register(registry)
                   .Add({});
  auto& inflight_bytes = BuildGauge()
                             .Name("zlpr_inflight_bytes")
                             .Help(
                                 "Bytes of the memory budget held by requests in flight, and "
                                 "the budget (--max_inflight_bytes)")
                             .Register(registry);
  inflight_bytes_ = &inflight_bytes.Add({{"kind", "held"}});
  inflight_bytes_limit_ = &inflight_bytes.Add({{"kind", "limit"}});
  connections_family_ = &BuildGauge()
                             .Name("zlpr_open_connections")
                             .Help(
                                 "Connections a front end holds open, by protocol (oip_http: "
                                 "--http_max_connections and the few beyond it kept for "
                                 "health checks)")
                             .Register(registry);
  auto& rejected = BuildCounter()
                       .Name("zlpr_rejected_requests_total")
                       .Help("Requests refused, dropped or too large to answer, by reason")
                       .Register(registry);
  for (int r = 0; r < static_cast<int>(Reject::kCount); ++r) {
    rejected_[r] = &rejected.Add({{"reason", RejectName(static_cast<Reject>(r))}});
  }
  auto& stand_ins =
      BuildCounter()
          .Name("zlpr_bulk_stand_ins_total")
          .Help(
              "Bulk batches computed by the interactive worker (in chunks, at the server's "
              "priority) because the lowered bulk worker had taken none for 500 ms: bulk work "
              "that got no CPU, by operation")
          .Register(registry);
  for (int k = 0; k < kJobKinds; ++k) {
    stand_ins_[k] = &stand_ins.Add({{"op", JobKindName(static_cast<JobKind>(k))}});
  }
  late_results_ = &BuildCounter()
                       .Name("zlpr_late_results_total")
                       .Help(
                           "Requests computed whose deadline had passed by the time the result "
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
                        .Help(
                            "1 while the device can compute, 0 once a CUDA error broke its "
                            "context (the process must be restarted)")
                        .Register(registry);
    for (int d : cuda_devices) {
      device_healthy_.push_back(&healthy.Add({{"device", std::to_string(d)}}));
      device_healthy_.back()->Set(1);
    }
  }
}

void Metrics::OnMethodRegistered(MethodId id, std::string_view method, std::string_view protocol) {
  if (static_cast<size_t>(id) >= methods_.size()) methods_.resize(id + 1);
  MethodHandles& h = methods_[id];
  const std::string m(method), p(protocol);
  for (int c = 0; c < kCodes; ++c) {
    const std::string code = absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
    h.requests[c] = &requests_family_->Add({{"method", m}, {"protocol", p}, {"code", code}});
  }
  h.duration = &duration_family_->Add({{"method", m}, {"protocol", p}}, SecondsBuckets());
}

void Metrics::OnRequestDone(MethodId id, absl::StatusCode code, double seconds,
                            std::optional<Priority> priority) {
  const int c = static_cast<int>(code);
  MethodHandles& h = methods_[id];
  h.requests[c >= 0 && c < kCodes ? c : static_cast<int>(absl::StatusCode::kUnknown)]->Increment();
  h.duration->Observe(seconds);
  if (priority.has_value()) class_duration_[static_cast<int>(*priority)]->Observe(seconds);
}

void Metrics::OnRejected(Reject reason) { rejected_[static_cast<int>(reason)]->Increment(); }

void Metrics::OnInflight(int delta) { inflight_->Increment(delta); }

void Metrics::OnRequestBytes(int64_t bytes) {
  request_bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::OnResponseBytes(int64_t bytes) {
  response_bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::OnBudget(int64_t held, int64_t limit) {
  inflight_bytes_->Set(static_cast<double>(held));
  inflight_bytes_limit_->Set(static_cast<double>(limit));
}

void Metrics::OnQueueDepth(JobKind kind, Priority priority, int64_t depth, int64_t capacity) {
  depth_[Queue(kind, priority)]->Set(static_cast<double>(depth));
  capacity_[Queue(kind, priority)]->Set(static_cast<double>(capacity));
}

void Metrics::OnLateResult() { late_results_->Increment(); }

void Metrics::OnConnections(std::string_view protocol, int delta) {
  absl::MutexLock lock(&connections_mu_);
  auto it = connections_.find(protocol);
  if (it == connections_.end()) {
    it = connections_
             .emplace(std::string(protocol),
                      &connections_family_->Add({{"protocol", std::string(protocol)}}))
             .first;
  }
  it->second->Increment(delta);
}

void Metrics::OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) {
  compute_[static_cast<int>(kind)]->Observe(seconds);
  batch_rows_[static_cast<int>(kind)]->Observe(static_cast<double>(rows));
  if (ok) rows_[static_cast<int>(kind)]->Increment(static_cast<double>(rows));
}

void Metrics::OnQueued(JobKind kind, Priority priority, double seconds) {
  queue_[Queue(kind, priority)]->Observe(seconds);
}

void Metrics::OnBatchDone(size_t worker, const Backend& backend) {
  if (backend.kind() == BackendKind::kCuda && worker < device_memory_.size()) {
    device_memory_[worker]->Set(static_cast<double>(backend.DeviceMemoryBytes()));
  }
}

void Metrics::OnStandIn(JobKind kind) { stand_ins_[static_cast<int>(kind)]->Increment(); }

void Metrics::OnBackendUnhealthy(size_t worker, const absl::Status&, int) {
  if (worker < device_healthy_.size()) device_healthy_[worker]->Set(0);
}

}  // namespace zlpr::server
