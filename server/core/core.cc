// InferenceCore: admission, submission, shutdown and what the executors report.
#include "server/core/core.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kernels/thread_pool.h"

namespace zlpr::server {

const char* RejectName(Reject reason) {
  static const char* const kNames[] = {"queue_full", "deadline",      "cancelled",
                                       "invalid",    "shutting_down", "unauthenticated",
                                       "too_large",  "memory",        "slow_reader"};
  static_assert(std::size(kNames) == static_cast<size_t>(Reject::kCount));
  return kNames[static_cast<int>(reason)];
}

namespace {

double Seconds(SteadyTime a, SteadyTime b) { return std::chrono::duration<double>(b - a).count(); }

// The listener of a core given none: it ignores everything.
class NoListener final : public CoreListener {
 public:
  void OnKernelCall(JobKind, int64_t, double, bool) override {}
  void OnQueued(JobKind, Priority, double) override {}
  void OnBatchDone(size_t, const Backend&) override {}

  static CoreListener* Get() {
    static NoListener none;
    return &none;
  }
};

Reject RejectReason(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
      return Reject::kQueueFull;
    case absl::StatusCode::kDeadlineExceeded:
      return Reject::kDeadline;
    case absl::StatusCode::kCancelled:
      return Reject::kCancelled;
    case absl::StatusCode::kUnavailable:
      return Reject::kShuttingDown;
    case absl::StatusCode::kOutOfRange:
      return Reject::kTooLarge;
    default:
      return Reject::kInvalid;
  }
}

// OUT_OF_RANGE: the request is fine but its answer would not fit the message limit. Not
// RESOURCE_EXHAUSTED (worth retrying), and no client retries it unchanged.
absl::Status ResponseTooLarge(int64_t bytes, int64_t limit, const char* qualifier) {
  return absl::OutOfRangeError(absl::StrFormat(
      "the response would be %s%d bytes, over the message limit of %d bytes "
      "(--max_message_bytes): send fewer rows per request or ask for a narrower gradient",
      qualifier, bytes, limit));
}

absl::Status OverBudget(int64_t bytes, const MemoryBudget& budget) {
  return absl::ResourceExhaustedError(absl::StrFormat(
      "the server's memory for requests in flight is in use (this request needs %d bytes of the "
      "%d-byte budget, --max_inflight_bytes): retry later, or send fewer rows per request",
      bytes, budget.limit()));
}

BatcherOptions Reporting(BatcherOptions o, CoreListener* listener) {
  const int64_t capacity = o.max_queue_size;
  o.on_depth = [listener, capacity](JobKind kind, Priority priority, int64_t depth) {
    listener->OnQueueDepth(kind, priority, depth, capacity);
  };
  o.on_not_computed = [listener](JobKind, const absl::Status& why) {
    listener->OnRejected(RejectReason(why.code()));
  };
  return o;
}

}  // namespace

// What the executors report: the statistics the Open Inference Protocol serves, then the
// listener; a backend that can no longer compute is logged and, when it was the last, reported
// through OnUnusable.
class InferenceCore::Reporter final : public ExecutionListener {
 public:
  explicit Reporter(InferenceCore* core) : core_(core) {}
  void OnKernelCall(JobKind kind, int64_t rows, double seconds, bool ok) override {
    JobStatistics& s = core_->stats_[static_cast<int>(kind)];
    s.compute.Add(seconds);
    s.execution_count.fetch_add(1, std::memory_order_relaxed);
    s.last_inference_ms.store(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())),
                              std::memory_order_relaxed);
    if (ok) s.inference_count.fetch_add(static_cast<uint64_t>(rows), std::memory_order_relaxed);
    core_->listener_->OnKernelCall(kind, rows, seconds, ok);
  }
  void OnQueued(JobKind kind, Priority priority, double seconds) override {
    core_->stats_[static_cast<int>(kind)].queue.Add(seconds);
    core_->listener_->OnQueued(kind, priority, seconds);
  }
  void OnBatchDone(size_t worker, const Backend& backend) override {
    core_->listener_->OnBatchDone(worker, backend);
  }
  void OnStandIn(JobKind kind) override { core_->listener_->OnStandIn(kind); }
  void OnBackendUnhealthy(size_t worker, const absl::Status& why, int healthy_left) override {
    std::fprintf(stderr, "zlpr-server: worker %zu's backend cannot compute: %s (%d left)\n", worker,
                 std::string(why.message()).c_str(), healthy_left);
    core_->listener_->OnBackendUnhealthy(worker, why, healthy_left);
    if (healthy_left == 0 && core_->on_unusable_) core_->on_unusable_(why);
  }

 private:
  InferenceCore* const core_;
};

InferenceCore::InferenceCore(const CoreOptions& options,
                             std::vector<std::unique_ptr<Backend>> backends, CoreListener* listener,
                             Clock* clock)
    : options_(options),
      listener_(listener != nullptr ? listener : NoListener::Get()),
      clock_(clock),
      budget_(options.max_inflight_bytes,
              [this](int64_t held) { listener_->OnBudget(held, options_.max_inflight_bytes); }),
      reporter_(std::make_unique<Reporter>(this)),
      batcher_(Reporting(options.batcher, listener_), clock),
      workers_(&batcher_, std::move(backends), clock, reporter_.get(), options.chunks,
               options.background_policy),
      background_(
          options.background_threads > 0 ? options.background_threads : internal::UsableCpus(),
          options.background_policy) {
  listener_->OnBudget(0, options.max_inflight_bytes);
  for (JobKind kind : {JobKind::kLoss, JobKind::kPredict}) {
    for (Priority priority : {Priority::kInteractive, Priority::kBulk}) {
      listener_->OnQueueDepth(kind, priority, 0, options.batcher.max_queue_size);
    }
  }
}

InferenceCore::~InferenceCore() { Stop(); }

MethodId InferenceCore::RegisterMethod(std::string_view method, std::string_view protocol) {
  const MethodId id = methods_++;
  listener_->OnMethodRegistered(id, method, protocol);
  return id;
}

void InferenceCore::Start() { workers_.Start(); }

void InferenceCore::BeginShutdown() {
  {
    absl::MutexLock lock(&calls_mu_);
    shutting_down_.store(true);
  }
  batcher_.Drain();  // queued requests run now, without waiting to fill a batch
  streams_.DrainAll();
}

bool InferenceCore::WaitForAcceptedCalls(absl::Time deadline) {
  absl::MutexLock lock(&calls_mu_);
  return calls_mu_.AwaitWithDeadline(absl::Condition(
                                         +[](int64_t* n) { return *n == 0; }, &accepted_calls_),
                                     deadline);
}

void InferenceCore::Stop() {
  batcher_.Shutdown();
  workers_.Join();
  background_.Stop();  // the answers the workers handed it
}

CallScope InferenceCore::BeginCall() {
  absl::MutexLock lock(&calls_mu_);
  if (shutting_down_.load()) return CallScope(this, false);
  ++accepted_calls_;
  return CallScope(this, true);
}

void InferenceCore::CallEnds(bool accepted) {
  if (!accepted) return;
  absl::MutexLock lock(&calls_mu_);
  --accepted_calls_;
}

Admission InferenceCore::Admit(MethodId method, const CallScope& call) {
  listener_->OnInflight(1);
  return Admission(this, method, call.accepted(), clock_->Now());
}

void InferenceCore::Rejected(Reject reason) { listener_->OnRejected(reason); }

absl::Status InferenceCore::CheckResponseSize(int64_t bytes) {
  if (bytes <= options_.max_message_bytes) return absl::OkStatus();
  listener_->OnRejected(Reject::kTooLarge);
  return ResponseTooLarge(bytes, options_.max_message_bytes, "");
}

template <typename Job>
void InferenceCore::EnqueueJob(
    Admission* admission, CallControl control, Job job, int64_t response_bytes,
    absl::AnyInvocable<void(absl::StatusOr<typename Job::Result>)> done) {
  JobStatistics& stats = stats_[static_cast<int>(Job::kKind)];
  auto reject = [&](const absl::Status& st, Reject reason) {
    listener_->OnRejected(reason);
    stats.fail.Add(0);
    done(st);
  };
  if (admission->Late()) {
    return reject(absl::UnavailableError("the server is shutting down"), Reject::kShuttingDown);
  }
  const int64_t limit = options_.max_message_bytes;
  if (response_bytes > limit) {
    return reject(ResponseTooLarge(response_bytes, limit, "at least "), Reject::kTooLarge);
  }
  // The result and its serialized copy are both held until the response is sent.
  if (!admission->Grow(2 * response_bytes)) {
    return reject(OverBudget(admission->bytes() + 2 * response_bytes, budget_), Reject::kMemory);
  }
  const SteadyTime deadline = control.deadline;
  const Priority priority = control.priority.value_or(Job::kDefaultPriority);
  admission->priority_ = priority;
  Task<Job> task{.job = std::move(job),
                 .deadline = deadline,
                 .cancelled = std::move(control.cancelled),
                 .done =
                     [this, deadline, &stats, queued = clock_->Now(),
                      done = std::move(done)](absl::StatusOr<typename Job::Result> result) mutable {
                       const SteadyTime now = clock_->Now();
                       if (result.ok() && now > deadline) listener_->OnLateResult();
                       (result.ok() ? stats.success : stats.fail).Add(Seconds(queued, now));
                       done(std::move(result));
                     },
                 .priority = priority,
                 .caller = control.caller};
  // A refusal (queue full, shutting down) is answered through the task's `done`.
  batcher_.Enqueue(std::move(task)).IgnoreError();
}

void InferenceCore::Enqueue(Admission* admission, CallControl control, LossJob job,
                            int64_t response_bytes,
                            absl::AnyInvocable<void(absl::StatusOr<LossResult>)> done) {
  EnqueueJob(admission, std::move(control), job, response_bytes, std::move(done));
}

void InferenceCore::Enqueue(Admission* admission, CallControl control, PredictJob job,
                            int64_t response_bytes,
                            absl::AnyInvocable<void(absl::StatusOr<PredictResult>)> done) {
  EnqueueJob(admission, std::move(control), job, response_bytes, std::move(done));
}

// --- CallScope ------------------------------------------------------------------------------

CallScope::CallScope(CallScope&& other) noexcept
    : core_(std::exchange(other.core_, nullptr)),
      accepted_(std::exchange(other.accepted_, false)) {}

CallScope& CallScope::operator=(CallScope&& other) noexcept {
  if (this != &other) {
    End();
    core_ = std::exchange(other.core_, nullptr);
    accepted_ = std::exchange(other.accepted_, false);
  }
  return *this;
}

void CallScope::End() {
  if (core_ != nullptr) core_->CallEnds(accepted_);
  core_ = nullptr;
  accepted_ = false;
}

// --- Admission ------------------------------------------------------------------------------

Admission::Admission(Admission&& other) noexcept
    : core_(std::exchange(other.core_, nullptr)),
      method_(other.method_),
      accepted_(other.accepted_),
      start_(other.start_),
      finished_(std::exchange(other.finished_, true)),
      lease_(std::move(other.lease_)),
      headroom_(std::exchange(other.headroom_, 0)),
      watch_(std::exchange(other.watch_, 0)),
      priority_(other.priority_) {}

Admission& Admission::operator=(Admission&& other) noexcept {
  if (this != &other) {
    End();
    core_ = std::exchange(other.core_, nullptr);
    method_ = other.method_;
    accepted_ = other.accepted_;
    start_ = other.start_;
    finished_ = std::exchange(other.finished_, true);
    lease_ = std::move(other.lease_);
    headroom_ = std::exchange(other.headroom_, 0);
    watch_ = std::exchange(other.watch_, 0);
    priority_ = other.priority_;
  }
  return *this;
}

bool Admission::Late() const { return !accepted_ && core_->shutting_down(); }

absl::Status Admission::Charge(int64_t message_bytes) {
  InferenceCore& core = *core_;
  core.listener_->OnRequestBytes(message_bytes);
  if (Late()) {
    core.listener_->OnRejected(Reject::kShuttingDown);
    return absl::UnavailableError("the server is shutting down");
  }
  std::optional<MemoryBudget::Lease> charged = core.budget_.TryAcquire(2 * message_bytes);
  if (!charged) {
    core.listener_->OnRejected(Reject::kMemory);
    return OverBudget(2 * message_bytes, core.budget_);
  }
  lease_ = *std::move(charged);
  return absl::OkStatus();
}

absl::Status Admission::Adopt(MemoryBudget::Lease lease, int64_t headroom) {
  lease_ = std::move(lease);
  headroom_ = std::clamp<int64_t>(headroom, 0, lease_.bytes());
  if (!Late()) return absl::OkStatus();
  core_->listener_->OnRejected(Reject::kShuttingDown);
  return absl::UnavailableError("the server is shutting down");
}

bool Admission::Grow(int64_t bytes) {
  const int64_t from_headroom = std::min(bytes, headroom_);
  if (bytes > from_headroom && !lease_.TryGrow(bytes - from_headroom)) return false;
  headroom_ -= from_headroom;
  return true;
}

void Admission::Finish(absl::StatusCode code, int64_t response_bytes) {
  if (finished_ || core_ == nullptr) return;
  finished_ = true;
  if (response_bytes > 0) core_->listener_->OnResponseBytes(response_bytes);
  core_->listener_->OnRequestDone(method_, code, Seconds(start_, core_->clock_->Now()), priority_);
  core_->listener_->OnInflight(-1);
}

void Admission::WatchWrite(int64_t bytes, absl::AnyInvocable<void()> cancel) {
  DisarmWrite();
  const CoreOptions& o = core_->options_;
  const auto transfer = std::chrono::milliseconds(
      static_cast<int64_t>(1000.0 * static_cast<double>(bytes) /
                           static_cast<double>(std::max<int64_t>(1, o.min_transfer_rate))));
  CoreListener* listener = core_->listener_;
  watch_ = core_->watchdog_.Arm(Watchdog::Clock::now() + o.write_timeout + transfer,
                                [listener, cancel = std::move(cancel)]() mutable {
                                  listener->OnRejected(Reject::kSlowReader);
                                  cancel();
                                });
}

void Admission::DisarmWrite() {
  if (core_ != nullptr && watch_ != 0) core_->watchdog_.Disarm(std::exchange(watch_, 0));
}

void Admission::End() {
  if (core_ == nullptr) return;
  DisarmWrite();
  Finish(absl::StatusCode::kCancelled);
  lease_.Reset();
  core_ = nullptr;
}

// --- DrainRegistry --------------------------------------------------------------------------

void DrainRegistry::Add(Member* m) {
  absl::MutexLock lock(&mu_);
  members_.insert(m);
}

void DrainRegistry::Remove(Member* m) {
  absl::MutexLock lock(&mu_);
  members_.erase(m);
}

void DrainRegistry::DrainAll() {
  absl::MutexLock lock(&mu_);
  for (Member* m : members_) m->Drain();
}

}  // namespace zlpr::server
