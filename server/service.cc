// ZlprServiceImpl: request handlers, stream reactors, and the workers that run batches.
#include "server/service.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/convert.h"

namespace zlpr::server {
namespace {

constexpr int kOpLoss = static_cast<int>(Op::kLoss);
constexpr int kOpPredict = static_cast<int>(Op::kPredict);

double Seconds(SteadyTime a, SteadyTime b) { return std::chrono::duration<double>(b - a).count(); }

SteadyTime SteadyDeadline(const grpc::CallbackServerContext* ctx, const Clock& clock) {
  const auto deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return SteadyTime::max();
  const auto left = deadline - std::chrono::system_clock::now();
  return clock.Now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

Reject RejectReason(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return Reject::kQueueFull;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Reject::kDeadline;
    case grpc::StatusCode::CANCELLED:
      return Reject::kCancelled;
    case grpc::StatusCode::UNAVAILABLE:
      return Reject::kShuttingDown;
    case grpc::StatusCode::UNAUTHENTICATED:
      return Reject::kUnauthenticated;
    default:
      return Reject::kInvalid;
  }
}

// A request waiting in the batcher.
template <typename Request, typename Response, typename Input>
class Item final : public Work {
 public:
  Item(grpc::CallbackServerContext* call, const Request* req, Response* resp, Input in,
       SteadyTime deadline, Metrics* metrics, ZlprServiceImpl::Done done)
      : ctx(call),
        request(req),
        response(resp),
        input(std::move(in)),
        deadline_(deadline),
        metrics_(metrics),
        done_(std::move(done)) {}

  int64_t rows() const override { return Rows(input); }
  bool Cancelled() const override { return ctx->IsCancelled(); }
  SteadyTime deadline() const override { return deadline_; }
  void Drop(absl::Status why) override {
    const grpc::Status st = ToGrpc(why);
    metrics_->rejected(RejectReason(st.error_code())).Increment();
    Complete({st});
  }
  void Complete(const ZlprServiceImpl::Outcome& outcome) { done_(outcome); }

  grpc::CallbackServerContext* const ctx;
  const Request* const request;
  Response* const response;
  const Input input;

 private:
  static int64_t Rows(const LossInput& in) { return in.scores.rows; }
  static int64_t Rows(const PredictInput& in) { return in.labeler.scores.rows; }
  const SteadyTime deadline_;
  Metrics* const metrics_;
  ZlprServiceImpl::Done done_;
};

using LossItem = Item<v1::LossRequest, v1::LossResponse, LossInput>;
using PredictItem = Item<v1::PredictRequest, v1::PredictResponse, PredictInput>;

// Requests of one batch that can share a kernel call: same shape and options.
int LabelsKind(const LossInput& in) {
  if (const auto* d = std::get_if<MatrixView>(&in.labels)) return static_cast<int>(d->dtype);
  return std::get<SparseLabelsView>(in.labels).values.empty() ? 10 : 11;
}
using LossKey = std::tuple<int64_t, int, int, bool, bool>;
LossKey KeyOf(const LossItem& it) {
  return {it.input.scores.cols, static_cast<int>(it.input.scores.dtype), LabelsKind(it.input),
          it.input.mask != nullptr, it.request->want_grad()};
}
using PredictKey = std::tuple<int64_t, int, bool, uint32_t, std::string, uint32_t, uint32_t, bool>;
PredictKey KeyOf(const PredictItem& it) {
  const LabelerInput& in = it.input.labeler;
  uint32_t threshold_bits;
  std::memcpy(&threshold_bits, &in.options.threshold, 4);
  std::string per_label;
  if (in.options.label_thresholds != nullptr) {
    per_label.assign(reinterpret_cast<const char*>(in.options.label_thresholds),
                     static_cast<size_t>(in.scores.cols) * 4);
  }
  return {in.scores.cols,        static_cast<int>(in.scores.dtype),
          in.mask != nullptr,    threshold_bits,
          std::move(per_label),  in.options.top_k,
          in.options.min_labels, it.input.want_probs};
}

// Groups a batch's items by key, keeping arrival order inside each group.
template <typename ItemT>
std::vector<std::vector<ItemT*>> Group(Batch& batch) {
  std::map<decltype(KeyOf(std::declval<ItemT&>())), size_t> index;
  std::vector<std::vector<ItemT*>> groups;
  for (auto& w : batch) {
    auto* item = static_cast<ItemT*>(w.get());
    auto [it, inserted] = index.try_emplace(KeyOf(*item), groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(item);
  }
  return groups;
}

void AppendBytes(std::vector<char>& dst, const void* src, size_t n) {
  const size_t old = dst.size();
  dst.resize(old + n);
  std::memcpy(dst.data() + old, src, n);
}

// Appends each item's scores (and mask, when the group has masks) to the worker's buffers;
// the merged views of `rows` rows. `view` maps an item to its (scores, mask).
template <typename ItemT, typename View>
std::pair<MatrixView, const uint8_t*> Concatenate(const std::vector<ItemT*>& group,
                                                  const View& view, int64_t rows,
                                                  std::vector<char>& scores,
                                                  std::vector<char>& mask) {
  const auto [first, first_mask] = view(*group.front());
  scores.clear();
  mask.clear();
  for (const ItemT* it : group) {
    const auto [s, m] = view(*it);
    AppendBytes(scores, s.data, s.rows * s.cols * DTypeSize(s.dtype));
    if (first_mask != nullptr) AppendBytes(mask, m, s.rows * s.cols);
  }
  return {MatrixView{scores.data(), first.dtype, rows, first.cols},
          first_mask != nullptr ? reinterpret_cast<const uint8_t*>(mask.data()) : nullptr};
}

void SetTiming(v1::Timing* timing, double queue, double compute, int64_t rows) {
  timing->set_queue_seconds(queue);
  timing->set_compute_seconds(compute);
  timing->set_batch_rows(static_cast<uint32_t>(rows));
}

BatcherOptions WithDepthGauge(BatcherOptions o, Metrics* metrics) {
  o.on_depth = [metrics](int op, int64_t depth) {
    metrics->queue_depth(static_cast<Op>(op)).Set(static_cast<double>(depth));
  };
  return o;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// --- Streams -------------------------------------------------------------------------------

// Every open stream, so that shutdown can end them once their accepted messages are answered.
class StreamRegistry {
 public:
  class Member {
   public:
    virtual ~Member() = default;
    virtual void Drain() = 0;
  };
  void Add(Member* m) {
    std::lock_guard<std::mutex> lock(mu_);
    members_.insert(m);
  }
  void Remove(Member* m) {
    std::lock_guard<std::mutex> lock(mu_);
    members_.erase(m);
  }
  void DrainAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (Member* m : members_) m->Drain();
  }

 private:
  std::mutex mu_;
  std::set<Member*> members_;
};

// One bidirectional stream: reads a message at a time, submits each, and writes responses
// strictly in arrival order with one write in flight. At most `stream_window` messages are
// outstanding (read, not yet written); beyond that reading pauses until a write completes.
template <typename Request, typename Response>
class StreamReactor final : public grpc::ServerBidiReactor<Request, Response>,
                            public StreamRegistry::Member {
 public:
  using Submit = void (ZlprServiceImpl::*)(grpc::CallbackServerContext*, const Request*, Response*,
                                           ZlprServiceImpl::Done);

  StreamReactor(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, Method method,
                Submit submit)
      : service_(service), ctx_(ctx), method_(method), submit_(submit) {
    service_->streams().Add(this);
    if (service_->shutting_down()) {
      draining_ = true;
      finished_ = true;
      this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return;
    }
    if (absl::Status st = service_->Authenticate(ctx); !st.ok()) {
      service_->metrics().rejected(Reject::kUnauthenticated).Increment();
      finished_ = true;
      this->Finish(ToGrpc(st));
      return;
    }
    StartNextRead();
  }

  void OnReadDone(bool ok) override {
    std::unique_ptr<Request> request = std::move(reading_);
    if (!ok) {
      std::lock_guard<std::mutex> lock(mu_);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    uint64_t seq;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seq = next_seq_++;
      ++outstanding_;
      if (outstanding_ < service_->stream_window() && !draining_) {
        StartNextRead();
      } else {
        read_paused_ = true;
      }
    }
    service_->metrics().inflight().Increment();
    const SteadyTime start = service_->clock().Now();
    auto response = std::make_unique<Response>();
    Response* raw = response.get();
    const Request* req = request.get();
    // The request and response live in the completion until it runs.
    auto owned = std::make_shared<std::pair<std::unique_ptr<Request>, std::unique_ptr<Response>>>(
        std::move(request), std::move(response));
    (service_->*submit_)(ctx_, req, raw,
                         [this, seq, owned, start](const ZlprServiceImpl::Outcome& outcome) {
                           Response* resp = owned->second.get();
                           if (!outcome.status.ok()) {
                             resp->mutable_error()->set_code(outcome.status.error_code());
                             resp->mutable_error()->set_message(outcome.status.error_message());
                           }
                           service_->metrics().RequestDone(method_, outcome.status.error_code(),
                                                           Seconds(start, service_->clock().Now()));
                           Completed(seq, std::move(owned->second));
                         });
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    writing_response_.reset();
    ++next_write_seq_;
    --outstanding_;
    service_->metrics().inflight().Decrement();
    if (!ok) broken_ = true;  // the client is gone: answer nothing more
    if (read_paused_ && !draining_ && !broken_ && outstanding_ < service_->stream_window()) {
      read_paused_ = false;
      StartNextRead();
    }
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void OnDone() override {
    service_->streams().Remove(this);
    delete this;
  }

  void Drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  void StartNextRead() {
    reading_ = std::make_unique<Request>();
    this->StartRead(reading_.get());
  }

  void Completed(uint64_t seq, std::unique_ptr<Response> response) {
    std::lock_guard<std::mutex> lock(mu_);
    service_->metrics().response_bytes().Increment(static_cast<double>(response->ByteSizeLong()));
    ready_.emplace(seq, std::move(response));
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void WriteNextLocked() {
    while (!writing_) {
      auto it = ready_.find(next_write_seq_);
      if (it == ready_.end()) return;
      if (broken_ || finished_) {  // nobody to write to: count it answered
        ready_.erase(it);
        ++next_write_seq_;
        --outstanding_;
        service_->metrics().inflight().Decrement();
        continue;
      }
      writing_ = true;
      writing_response_ = std::move(it->second);
      ready_.erase(it);
      this->StartWrite(writing_response_.get());
    }
  }

  void MaybeFinishLocked() {
    if (finished_ || writing_ || outstanding_ > 0) return;
    if (reads_done_) {
      finished_ = true;
      this->Finish(grpc::Status::OK);
    } else if (draining_ || broken_) {
      finished_ = true;
      this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
  }

  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  const Method method_;
  const Submit submit_;
  std::unique_ptr<Request> reading_;  // only touched by the read path, one read at a time

  std::mutex mu_;
  uint64_t next_seq_ = 0;        // sequence number of the next message read
  uint64_t next_write_seq_ = 0;  // the response that must be written next
  int outstanding_ = 0;          // read and not yet written
  std::map<uint64_t, std::unique_ptr<Response>> ready_;
  std::unique_ptr<Response> writing_response_;
  bool writing_ = false;
  bool read_paused_ = false;
  bool reads_done_ = false;
  bool draining_ = false;
  bool broken_ = false;
  bool finished_ = false;
};

// --- The service ---------------------------------------------------------------------------

struct ZlprServiceImpl::WorkerBuffers {
  std::vector<char> scores, labels, mask, thresholds;
  std::vector<int64_t> splits;
  std::vector<int32_t> indices;
  std::vector<float> values, loss, grad, probs;
  LabelSets label_sets;
};

ZlprServiceImpl::ZlprServiceImpl(const ServiceOptions& options,
                                 std::vector<std::unique_ptr<Backend>> backends, Metrics* metrics,
                                 Clock* clock)
    : options_(options),
      backends_(std::move(backends)),
      metrics_(metrics),
      clock_(clock),
      batcher_(WithDepthGauge(options.batcher, metrics), clock),
      streams_(std::make_unique<StreamRegistry>()) {
  for (Op op : {Op::kLoss, Op::kPredict}) {
    metrics_->queue_capacity(op).Set(static_cast<double>(options.batcher.max_queue_size));
  }
}

ZlprServiceImpl::~ZlprServiceImpl() { Stop(); }

void ZlprServiceImpl::Start() {
  for (size_t i = 0; i < backends_.size(); ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

void ZlprServiceImpl::BeginShutdown() {
  shutting_down_.store(true);
  batcher_.Shutdown();  // queued requests run now, without waiting to fill a batch
  streams_->DrainAll();
}

void ZlprServiceImpl::Stop() {
  batcher_.Shutdown();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ZlprServiceImpl::WorkerLoop(size_t worker) {
  Backend& backend = *backends_[worker];
  WorkerBuffers buffers;
  int op;
  Batch batch;
  while (batcher_.NextBatch(&op, &batch)) {
    if (op == kOpLoss) {
      RunLossBatch(backend, batch, buffers);
    } else {
      RunPredictBatch(backend, batch, buffers);
    }
    batch.clear();
    if (backend.kind() == BackendKind::kCuda) {
      metrics_->device_memory(worker).Set(static_cast<double>(backend.DeviceMemoryBytes()));
    }
  }
}

void ZlprServiceImpl::RecordBatch(Op op, int64_t rows, double compute_seconds, bool ok) {
  metrics_->compute_seconds(op).Observe(compute_seconds);
  metrics_->batch_rows(op).Observe(static_cast<double>(rows));
  if (ok) metrics_->rows(op).Increment(static_cast<double>(rows));
}

void ZlprServiceImpl::RunLossBatch(Backend& backend, Batch& batch, WorkerBuffers& buf) {
  const SteadyTime start = clock_->Now();
  for (const std::vector<LossItem*>& group : Group<LossItem>(batch)) {
    int64_t rows = 0;
    for (const LossItem* it : group) rows += it->input.scores.rows;
    const LossInput& first = group.front()->input;
    const int64_t cols = first.scores.cols;
    LossInput in = first;
    if (group.size() > 1) {
      // Concatenate the group's rows into one input; the kernels are batch-invariant, so each
      // row's bits are those it would get alone.
      std::tie(in.scores, in.mask) = Concatenate(
          group, [](const LossItem& it) { return std::make_pair(it.input.scores, it.input.mask); },
          rows, buf.scores, buf.mask);
      if (const auto* dense = std::get_if<MatrixView>(&first.labels)) {
        buf.labels.clear();
        for (const LossItem* it : group) {
          const auto& d = std::get<MatrixView>(it->input.labels);
          AppendBytes(buf.labels, d.data, d.rows * cols * DTypeSize(d.dtype));
        }
        in.labels = MatrixView{buf.labels.data(), dense->dtype, rows, cols};
      } else {
        buf.splits.assign(1, 0);
        buf.indices.clear();
        buf.values.clear();
        for (const LossItem* it : group) {
          const auto& sp = std::get<SparseLabelsView>(it->input.labels);
          const int64_t base = buf.splits.back();
          for (size_t r = 1; r < sp.row_splits.size(); ++r)
            buf.splits.push_back(base + sp.row_splits[r]);
          buf.indices.insert(buf.indices.end(), sp.indices.begin(), sp.indices.end());
          buf.values.insert(buf.values.end(), sp.values.begin(), sp.values.end());
        }
        in.labels = SparseLabelsView{buf.splits, buf.indices, buf.values};
      }
    }
    const bool want_grad = group.front()->request->want_grad();
    buf.loss.resize(static_cast<size_t>(rows));
    // A lone fp32 gradient is written straight into its response: no copy of rows x cols.
    float* grad = nullptr;
    bool grad_in_place = false;
    if (want_grad) {
      LossItem& only = *group.front();
      grad_in_place = group.size() == 1 &&
                      GradDType(*only.request).value_or(DType::kFloat32) == DType::kFloat32;
      if (grad_in_place) {
        v1::Tensor* t = only.response->mutable_grad();
        t->add_shape(rows);
        t->add_shape(cols);
        t->set_dtype(v1::FLOAT32);
        t->mutable_data()->resize(static_cast<size_t>(rows * cols) * 4);
        grad = reinterpret_cast<float*>(t->mutable_data()->data());
      } else {
        buf.grad.resize(static_cast<size_t>(rows * cols));
        grad = buf.grad.data();
      }
    }
    const SteadyTime t0 = clock_->Now();
    const absl::Status st = backend.Loss(in, {buf.loss.data(), grad});
    const SteadyTime t1 = clock_->Now();
    const double compute = Seconds(t0, t1);
    RecordBatch(Op::kLoss, rows, compute, st.ok());
    int64_t row0 = 0;
    for (LossItem* it : group) {
      const int64_t n = it->input.scores.rows;
      const double queue = Seconds(it->enqueued_at, start);
      metrics_->queue_seconds(Op::kLoss).Observe(queue);
      if (!st.ok() && grad_in_place) it->response->clear_grad();
      if (st.ok()) {
        v1::LossResponse* resp = it->response;
        resp->set_request_id(it->request->request_id());
        resp->mutable_loss()->Assign(buf.loss.begin() + row0, buf.loss.begin() + row0 + n);
        double sum = 0;
        for (int64_t r = 0; r < n; ++r) sum += buf.loss[row0 + r];
        resp->set_loss_sum(sum);
        resp->set_loss_mean(sum / static_cast<double>(n));
        if (want_grad && !grad_in_place) {
          const DType grad_dtype = GradDType(*it->request).value_or(DType::kFloat32);
          FillTensor({buf.grad.data() + row0 * cols, static_cast<size_t>(n * cols)}, n, cols,
                     grad_dtype, resp->mutable_grad());
        }
        SetTiming(resp->mutable_timing(), queue, compute, rows);
      }
      it->Complete({ToGrpc(st), queue, compute});
      row0 += n;
    }
  }
}

void ZlprServiceImpl::RunPredictBatch(Backend& backend, Batch& batch, WorkerBuffers& buf) {
  const SteadyTime start = clock_->Now();
  for (const std::vector<PredictItem*>& group : Group<PredictItem>(batch)) {
    int64_t rows = 0;
    for (const PredictItem* it : group) rows += it->input.labeler.scores.rows;
    const LabelerInput& first = group.front()->input.labeler;
    const int64_t cols = first.scores.cols;
    LabelerInput in = first;
    if (group.size() > 1) {
      std::tie(in.scores, in.mask) = Concatenate(
          group,
          [](const PredictItem& it) {
            return std::make_pair(it.input.labeler.scores, it.input.labeler.mask);
          },
          rows, buf.scores, buf.mask);
    }
    const bool want_probs = group.front()->input.want_probs;
    if (want_probs) buf.probs.resize(static_cast<size_t>(rows * cols));
    const SteadyTime t0 = clock_->Now();
    const absl::Status st =
        backend.Label(in, &buf.label_sets, want_probs ? buf.probs.data() : nullptr);
    const double compute = Seconds(t0, clock_->Now());
    RecordBatch(Op::kPredict, rows, compute, st.ok());
    const LabelSets& ls = buf.label_sets;
    int64_t row0 = 0;
    for (PredictItem* it : group) {
      const int64_t n = it->input.labeler.scores.rows;
      const double queue = Seconds(it->enqueued_at, start);
      metrics_->queue_seconds(Op::kPredict).Observe(queue);
      if (st.ok()) {
        v1::PredictResponse* resp = it->response;
        resp->set_request_id(it->request->request_id());
        for (int64_t r = row0; r < row0 + n; ++r) {
          v1::RowLabels* row = resp->add_rows();
          const int64_t b = ls.row_offsets[r], e = ls.row_offsets[r + 1];
          row->mutable_labels()->Assign(ls.labels.begin() + b, ls.labels.begin() + e);
          row->mutable_probs()->Assign(ls.probs.begin() + b, ls.probs.begin() + e);
        }
        if (want_probs) {
          FillTensor({buf.probs.data() + row0 * cols, static_cast<size_t>(n * cols)}, n, cols,
                     DType::kFloat32, resp->mutable_probs());
        }
        SetTiming(resp->mutable_timing(), queue, compute, rows);
      }
      it->Complete({ToGrpc(st), queue, compute});
      row0 += n;
    }
  }
}

template <typename ItemT, typename Request, typename Response, typename Parse>
void ZlprServiceImpl::Submit(int op, const Parse& parse, grpc::CallbackServerContext* ctx,
                             const Request* request, Response* response, Done done) {
  metrics_->request_bytes().Increment(static_cast<double>(request->ByteSizeLong()));
  auto reject = [&](const absl::Status& st) {
    const grpc::Status gs = ToGrpc(st);
    metrics_->rejected(RejectReason(gs.error_code())).Increment();
    response->set_request_id(request->request_id());
    done({gs});
  };
  if (shutting_down()) return reject(absl::UnavailableError("the server is shutting down"));
  if (absl::Status st = Authenticate(ctx); !st.ok()) return reject(st);
  auto in = parse(*request);
  if (!in.ok()) return reject(in.status());
  auto item = std::make_unique<ItemT>(ctx, request, response, *std::move(in),
                                      SteadyDeadline(ctx, *clock_), metrics_, done);
  if (absl::Status st = batcher_.Enqueue(op, std::move(item)); !st.ok()) return reject(st);
}

void ZlprServiceImpl::SubmitLoss(grpc::CallbackServerContext* ctx, const v1::LossRequest* request,
                                 v1::LossResponse* response, Done done) {
  Submit<LossItem>(kOpLoss, LossInputFromRequest, ctx, request, response, std::move(done));
}

void ZlprServiceImpl::SubmitPredict(grpc::CallbackServerContext* ctx,
                                    const v1::PredictRequest* request,
                                    v1::PredictResponse* response, Done done) {
  Submit<PredictItem>(kOpPredict, PredictInputFromRequest, ctx, request, response, std::move(done));
}

namespace {

// Finishes a unary call: timing in trailing metadata, metrics, then the status.
template <typename Response>
ZlprServiceImpl::Done UnaryDone(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx,
                                grpc::ServerUnaryReactor* reactor, Response* response,
                                Method method) {
  const SteadyTime start = service->clock().Now();
  service->metrics().inflight().Increment();
  return [=](const ZlprServiceImpl::Outcome& outcome) {
    if (outcome.status.ok()) {
      ctx->AddTrailingMetadata("zlpr-queue-seconds",
                               absl::StrFormat("%.9f", outcome.queue_seconds));
      ctx->AddTrailingMetadata("zlpr-compute-seconds",
                               absl::StrFormat("%.9f", outcome.compute_seconds));
      service->metrics().response_bytes().Increment(static_cast<double>(response->ByteSizeLong()));
    }
    service->metrics().RequestDone(method, outcome.status.error_code(),
                                   Seconds(start, service->clock().Now()));
    service->metrics().inflight().Decrement();
    reactor->Finish(outcome.status);
  };
}

}  // namespace

grpc::ServerUnaryReactor* ZlprServiceImpl::ComputeLoss(grpc::CallbackServerContext* ctx,
                                                       const v1::LossRequest* request,
                                                       v1::LossResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  SubmitLoss(ctx, request, response, UnaryDone(this, ctx, reactor, response, Method::kComputeLoss));
  return reactor;
}

grpc::ServerUnaryReactor* ZlprServiceImpl::Predict(grpc::CallbackServerContext* ctx,
                                                   const v1::PredictRequest* request,
                                                   v1::PredictResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  SubmitPredict(ctx, request, response, UnaryDone(this, ctx, reactor, response, Method::kPredict));
  return reactor;
}

grpc::ServerBidiReactor<v1::LossRequest, v1::LossResponse>* ZlprServiceImpl::StreamLoss(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor<v1::LossRequest, v1::LossResponse>(this, ctx, Method::kStreamLoss,
                                                              &ZlprServiceImpl::SubmitLoss);
}

grpc::ServerBidiReactor<v1::PredictRequest, v1::PredictResponse>* ZlprServiceImpl::StreamPredict(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor<v1::PredictRequest, v1::PredictResponse>(
      this, ctx, Method::kStreamPredict, &ZlprServiceImpl::SubmitPredict);
}

absl::Status ZlprServiceImpl::Authenticate(const grpc::CallbackServerContext* ctx) const {
  const std::string& want = options_.auth_token;
  if (want.empty()) return absl::OkStatus();
  const auto& md = ctx->client_metadata();
  const auto it = md.find("authorization");
  std::string_view got =
      it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  const bool bearer = got.substr(0, kBearer.size()) == kBearer;
  if (bearer) got.remove_prefix(kBearer.size());
  // Constant time in the token's contents: every byte of the expected token is compared.
  unsigned diff = bearer && got.size() == want.size() ? 0u : 1u;
  for (size_t i = 0; i < want.size(); ++i) {
    diff |= static_cast<unsigned char>(want[i]) ^
            static_cast<unsigned char>(i < got.size() ? got[i] : 0);
  }
  if (diff != 0) {
    return absl::UnauthenticatedError(
        "missing or invalid credentials: send \"authorization: Bearer <token>\"");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ZlprServiceImpl::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                         const v1::ServerInfoRequest*,
                                                         v1::ServerInfo* info) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const SteadyTime start = clock_->Now();
  if (absl::Status st = Authenticate(ctx); !st.ok()) {
    metrics_->rejected(Reject::kUnauthenticated).Increment();
    metrics_->RequestDone(Method::kGetServerInfo, grpc::StatusCode::UNAUTHENTICATED,
                          Seconds(start, clock_->Now()));
    reactor->Finish(ToGrpc(st));
    return reactor;
  }
  info->set_version(options_.version);
  info->set_backend(BackendKindName(backends_.front()->kind()));
  for (const auto& b : backends_) info->add_devices(b->Describe());
  info->mutable_batcher()->set_max_batch_rows(options_.batcher.max_batch_rows);
  info->mutable_batcher()->set_max_queue_delay_us(options_.batcher.max_queue_delay.count());
  info->mutable_batcher()->set_max_queue_size(options_.batcher.max_queue_size);
  info->mutable_batcher()->set_adaptive_delay(options_.batcher.adaptive_delay);
  info->mutable_limits()->set_max_message_bytes(options_.max_message_bytes);
  info->mutable_limits()->set_max_cols(std::numeric_limits<int32_t>::max());
  metrics_->RequestDone(Method::kGetServerInfo, grpc::StatusCode::OK,
                        Seconds(start, clock_->Now()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace zlpr::server
