// zlpr.v1.ZlprService on gRPC's callback API: the front end of the request path.
//
// The four compute methods take their messages as raw bytes, so that the service decides what a
// message may cost before it is parsed and answers one that does not parse with a clear error.
// A request is charged to the memory budget (memory_budget.h: RESOURCE_EXHAUSTED when it cannot
// be covered), parsed (INVALID_ARGUMENT when it does not parse) and converted (convert.h:
// INVALID_ARGUMENT naming field, row and column) on arrival, in the gRPC thread that received
// it, into a typed job; the job is queued in the batcher, cut into a batch with others, run by a
// worker's executor (executor.h), and its result is turned into the response, from the worker.
// Nothing blocks inside a reaction. Streams (stream_reactor.h) answer every message in order,
// with per-message errors. Bearer tokens are checked by the transport before a call's body is
// read (credentials.h), not here.
//
//   ZlprServiceImpl service(options, std::move(backends), &metrics);
//   builder.RegisterService(&service);
//   service.Start();                 // worker threads
//   ... service.BeginShutdown();     // on SIGTERM: refuse new work, drain streams and queues
//   server->Shutdown(deadline); service.Stop();
#ifndef ZLPR_SERVER_SERVICE_H_
#define ZLPR_SERVER_SERVICE_H_

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/byte_buffer.h"
#include "kernels/zlpr.h"
#include "server/core/batcher.h"
#include "server/core/executor.h"
#include "server/core/memory_budget.h"
#include "server/metrics.h"
#include "server/core/watchdog.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr::server {

struct ServiceOptions {
  BatcherOptions batcher;
  int64_t max_message_bytes = 64 << 20;
  std::string version;
  // Stream messages read and not yet answered, per stream, before reading pauses.
  int stream_window = 64;
  // Bytes that requests in flight may hold in all (see MemoryBudget).
  int64_t max_inflight_bytes = int64_t{1} << 30;
  // A response not written (read by the client) after write_timeout plus its size at
  // min_transfer_rate (bytes per second) cancels its call: what the call held is returned.
  std::chrono::milliseconds write_timeout{20000};
  int64_t min_transfer_rate = 1 << 20;
};

// The generated service with the four compute methods raw (grpc::ByteBuffer in and out).
using ZlprServiceBase = v1::ZlprService::WithCallbackMethod_GetServerInfo<
    v1::ZlprService::WithRawCallbackMethod_ComputeLoss<
        v1::ZlprService::WithRawCallbackMethod_Predict<
            v1::ZlprService::WithRawCallbackMethod_StreamLoss<
                v1::ZlprService::WithRawCallbackMethod_StreamPredict<v1::ZlprService::Service>>>>>;

class StreamRegistry;

// What a queued job needs to know of the call it came from: when nobody wants its result any
// more. The batcher drops a job whose deadline passed or whose call was cancelled.
struct CallControl {
  SteadyTime deadline = SteadyTime::max();
  std::function<bool()> cancelled;  // empty: the call cannot be cancelled
};

// A gRPC call's deadline (on `clock`) and cancellation.
CallControl ControlOf(grpc::CallbackServerContext* ctx, const Clock& clock);

// What each job type's requests cost, for the Open Inference Protocol's ModelStatistics: counts
// and total durations (atomics; read without a lock, each value consistent on its own).
struct JobStatistics {
  struct Duration {
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> ns{0};
    void Add(double seconds) {
      count.fetch_add(1, std::memory_order_relaxed);
      ns.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
    }
  };
  std::atomic<uint64_t> inference_count{0};    // rows computed
  std::atomic<uint64_t> execution_count{0};    // kernel calls
  std::atomic<uint64_t> last_inference_ms{0};  // wall clock of the last kernel call
  Duration success, fail, queue, compute;
};

class ZlprServiceImpl final : public ZlprServiceBase {
 public:
  // `backends` must not be empty and all be of one kind; each gets a worker thread.
  ZlprServiceImpl(const ServiceOptions& options, std::vector<std::unique_ptr<Backend>> backends,
                  Metrics* metrics, Clock* clock = SystemClock());
  ~ZlprServiceImpl() override;

  // `f` runs (on a worker thread) when the last backend that could compute stops being able
  // to (Backend::health()): the process can no longer serve. Set before Start().
  void OnUnusable(std::function<void(const absl::Status&)> f) { on_unusable_ = std::move(f); }
  void Start();
  // New calls and stream messages get UNAVAILABLE; open streams end (UNAVAILABLE) once every
  // message they already sent is answered; queued requests are still computed.
  void BeginShutdown();
  // Waits until every call accepted before BeginShutdown() is done (its reactor's OnDone ran),
  // or `deadline`; false at the deadline.
  bool WaitForAcceptedCalls(absl::Time deadline);
  // Waits for the queues to drain and joins the workers. Call after the gRPC server shut down.
  void Stop();

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

  // What a request's completion is told: the status and where the time went.
  struct Outcome {
    grpc::Status status;
    Timing timing;
  };
  using Done = std::function<void(const Outcome&)>;

  // Admits a received message: charges the memory budget for it (twice its size: the parsed
  // message and the batch's copy of its tensors) into `lease`, then parses `raw` into `request`
  // and releases `raw`'s bytes. RESOURCE_EXHAUSTED when the budget cannot cover it,
  // INVALID_ARGUMENT when it does not parse; counted in the metrics either way.
  absl::Status Receive(grpc::ByteBuffer* raw, google::protobuf::Message* request,
                       MemoryBudget::Lease* lease);

  // Charges the memory budget twice `message_bytes` (the parsed message and the batch's copy
  // of its tensors) into `lease`; RESOURCE_EXHAUSTED, counted, when it cannot cover that.
  absl::Status Charge(int64_t message_bytes, MemoryBudget::Lease* lease);

  // OUT_OF_RANGE, counted, when a filled response of `bytes` exceeds the message limit.
  absl::Status CheckResponseSize(int64_t bytes);

  // Converts and queues one received request, growing `lease` by what its response will hold;
  // `done` runs exactly once, from this thread (rejected) or a worker (computed or dropped),
  // after `response` is filled. `request`, `response` and `lease` must stay alive until then.
  void SubmitLoss(grpc::CallbackServerContext* ctx, const v1::LossRequest* request,
                  v1::LossResponse* response, MemoryBudget::Lease* lease, Done done);
  void SubmitPredict(grpc::CallbackServerContext* ctx, const v1::PredictRequest* request,
                     v1::PredictResponse* response, MemoryBudget::Lease* lease, Done done);

  // For every front end: queues a converted job for the batcher, after checking that its
  // response (`response_bytes`, its dense size) fits the message limit (OUT_OF_RANGE) and growing
  // `lease` by twice it (RESOURCE_EXHAUSTED); refused while shutting down (UNAVAILABLE). `done`
  // runs exactly once, from this thread (refused) or a worker, with the result or why there is
  // none; `lease` and whatever the job's views point into must stay alive until then.
  void EnqueueLoss(CallControl control, LossJob job, MemoryBudget::Lease* lease,
                   int64_t response_bytes,
                   absl::AnyInvocable<void(absl::StatusOr<LossResult>)> done);
  void EnqueuePredict(CallControl control, PredictJob job, MemoryBudget::Lease* lease,
                      int64_t response_bytes,
                      absl::AnyInvocable<void(absl::StatusOr<PredictResult>)> done);

  // Cancels `ctx`'s call unless its response of `bytes` is written in time (write_timeout plus
  // bytes at min_transfer_rate): arm before handing the response to gRPC, Disarm when the write
  // completes (OnWriteDone, OnDone). A cancelled call counts as reason="slow_reader".
  Watchdog::Id WatchWrite(grpc::CallbackServerContext* ctx, int64_t bytes);
  Watchdog& watchdog() { return watchdog_; }

  // A call begins (a reactor is made) and ends (its OnDone). Begin returns whether the call was
  // accepted before shutdown began, which End must be told.
  bool CallBegins();
  void CallEnds(bool accepted);

  Metrics& metrics() { return *metrics_; }
  Clock& clock() { return *clock_; }
  bool shutting_down() const { return shutting_down_.load(); }
  // Ready for traffic: not shutting down, and a backend can compute.
  bool ready() const { return !shutting_down() && workers_.healthy() > 0; }
  int stream_window() const { return options_.stream_window; }
  StreamRegistry& streams() { return *streams_; }
  MemoryBudget& budget() { return budget_; }
  const JobStatistics& statistics(JobKind kind) const { return stats_[static_cast<int>(kind)]; }

 private:
  class MetricsListener;
  template <typename Job>
  void EnqueueJob(CallControl control, Job job, MemoryBudget::Lease* lease,
                  int64_t response_bytes,
                  absl::AnyInvocable<void(absl::StatusOr<typename Job::Result>)> done);
  template <typename Job, typename Request, typename Response, typename Convert>
  void Submit(const Convert& convert, grpc::CallbackServerContext* ctx, const Request* request,
              Response* response, MemoryBudget::Lease* lease, Done done);

  const ServiceOptions options_;
  Metrics* const metrics_;
  MemoryBudget budget_;
  std::array<JobStatistics, kJobKinds> stats_;
  Clock* const clock_;
  JobBatcher batcher_;
  std::function<void(const absl::Status&)> on_unusable_;
  std::unique_ptr<MetricsListener> listener_;
  Workers workers_;
  Watchdog watchdog_;
  std::unique_ptr<StreamRegistry> streams_;
  std::atomic<bool> shutting_down_{false};
  absl::Mutex calls_mu_;
  int64_t accepted_calls_ ABSL_GUARDED_BY(calls_mu_) = 0;  // begun before shutdown, not done
};

// grpc::Status from absl::Status (the codes are the same numbers).
grpc::Status ToGrpc(const absl::Status& status);

// Serializes a response message into `raw` (gRPC's own serializer, as a typed method would).
template <typename Response>
grpc::Status Serialize(const Response& response, grpc::ByteBuffer* raw) {
  bool own_buffer = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, Response>(response, raw, &own_buffer);
}

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_SERVICE_H_
