// Executor: group, concatenate, compute, slice. Workers: a thread per backend.
#include "server/core/executor.h"

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common/status_macros.h"

namespace zlpr::server {
namespace {

// Indices of `jobs` grouped by `same` (compared with each group's first job), groups in order of
// their first job and jobs in arrival order within a group.
template <typename Job, typename Same>
std::vector<std::vector<size_t>> Group(std::span<const Job* const> jobs, const Same& same) {
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < jobs.size(); ++i) {
    bool placed = false;
    for (std::vector<size_t>& g : groups) {
      if (same(*jobs[g.front()], *jobs[i])) {
        g.push_back(i);
        placed = true;
        break;
      }
    }
    if (!placed) groups.push_back({i});
  }
  return groups;
}

// Runs `jobs` group by group: the jobs that `same` lets share a kernel call have their inputs
// concatenated by `concat`, and `compute(group, input)` runs that call and returns one result
// per job of the group; each result lands in its job's place.
template <typename Job, typename Same, typename Concat, typename Compute>
std::vector<absl::StatusOr<typename Job::Result>> RunGroups(std::span<const Job* const> jobs,
                                                            const Same& same, const Concat& concat,
                                                            const Compute& compute) {
  using Input = std::remove_cvref_t<decltype(jobs[0]->input)>;
  std::vector<absl::StatusOr<typename Job::Result>> out(jobs.size());
  for (const std::vector<size_t>& group : Group(jobs, same)) {
    std::vector<const Job*> members;
    std::vector<const Input*> parts;
    for (size_t i : group) {
      members.push_back(jobs[i]);
      parts.push_back(&jobs[i]->input);
    }
    const absl::StatusOr<Input> in = concat(std::span<const Input* const>(parts));
    if (!in.ok()) {
      for (size_t i : group) out[i] = in.status();
      continue;
    }
    std::vector<absl::StatusOr<typename Job::Result>> results =
        compute(std::span<const Job* const>(members), *in);
    if (members.size() > 1 && !results[0].ok() &&
        results[0].status().code() == absl::StatusCode::kResourceExhausted) {
      // The batch did not fit the device (its memory): each job on its own, so that only a job
      // too large by itself is refused.
      for (size_t k = 0; k < members.size(); ++k) {
        results[k] =
            std::move(compute(std::span<const Job* const>(&members[k], 1), members[k]->input)[0]);
      }
    }
    for (size_t k = 0; k < group.size(); ++k) out[group[k]] = std::move(results[k]);
  }
  return out;
}

// Bytes of n fp32 values, narrowed to `dtype`.
std::string Narrowed(const float* values, int64_t n, DType dtype) {
  std::string out(static_cast<size_t>(n) * DTypeSize(dtype), '\0');
  NarrowFromFloat(values, n, dtype, out.data());
  return out;
}

}  // namespace

Executor::Executor(Backend* backend, Clock* clock, ExecutionListener* listener,
                   const ChunkOptions& chunks)
    : backend_(backend), clock_(clock), listener_(listener), chunks_(chunks) {
  ns_per_element_.fill(chunks.initial_ns_per_element);
}

Executor::KernelCall Executor::TimedKernelCall(JobKind kind, int64_t rows, int64_t cols,
                                               const std::function<absl::Status()>& call) {
  const SteadyTime t0 = clock_->Now();
  const absl::Status status = call();
  const double seconds = std::chrono::duration<double>(clock_->Now() - t0).count();
  if (listener_ != nullptr) listener_->OnKernelCall(kind, rows, seconds, status.ok());
  const double elements = static_cast<double>(rows) * static_cast<double>(cols);
  if (status.ok() && elements > 0 && seconds > 0) {
    // A moving average over about the last four calls: it follows a change of load or
    // device within a few chunks, and one preempted call moves it by a quarter only.
    double& avg = ns_per_element_[static_cast<int>(kind)];
    avg = 0.75 * avg + 0.25 * (seconds * 1e9 / elements);
  }
  return {status, seconds};
}

int64_t Executor::ChunkRows(JobKind kind, int64_t cols) const {
  const double ns = static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(chunks_.bulk_chunk).count());
  const double per_row = ns_per_element_[static_cast<int>(kind)] * static_cast<double>(cols);
  const double rows = per_row > 0 ? ns / per_row : 1.0;
  return rows < 1.0 ? 1 : rows > 1e12 ? int64_t{1} << 40 : static_cast<int64_t>(rows);
}

template <typename Input, typename Call>
Executor::KernelCall Executor::RunRows(JobKind kind, const Input& in, bool chunked,
                                       const Call& call) {
  const int64_t rows = in.rows(), cols = in.cols();
  if (!chunked) return TimedKernelCall(kind, rows, cols, [&] { return call(0, rows); });
  KernelCall total;
  for (int64_t begin = 0; begin < rows;) {
    const int64_t end = std::min(rows, begin + ChunkRows(kind, cols));
    const KernelCall part =
        TimedKernelCall(kind, end - begin, cols, [&] { return call(begin, end); });
    total.seconds += part.seconds;
    if (!part.status.ok()) return {part.status, total.seconds};
    begin = end;
    if (begin < rows && between_chunks_) between_chunks_();
  }
  return total;
}

std::vector<absl::StatusOr<LossResult>> Executor::Run(std::span<const LossJob* const> jobs,
                                                      bool chunked) {
  return RunGroups(
      jobs,
      [](const LossJob& a, const LossJob& b) {
        return a.want_grad == b.want_grad && Concatenable(a.input, b.input);
      },
      [&](std::span<const ValidatedLossInput* const> parts) {
        return ConcatenateLossInputs(parts, &concat_);
      },
      [&](std::span<const LossJob* const> group, const ValidatedLossInput& in) {
        return RunLossGroup(group, in, chunked);
      });
}

std::vector<absl::StatusOr<PredictResult>> Executor::Run(std::span<const PredictJob* const> jobs,
                                                         bool chunked) {
  return RunGroups(
      jobs,
      [](const PredictJob& a, const PredictJob& b) {
        return a.want_probs == b.want_probs && Concatenable(a.input, b.input);
      },
      [&](std::span<const ValidatedLabelerInput* const> parts) {
        return ConcatenateLabelerInputs(parts, &concat_);
      },
      [&](std::span<const PredictJob* const> group, const ValidatedLabelerInput& in) {
        return RunPredictGroup(group, in, chunked);
      });
}

std::vector<absl::StatusOr<LossResult>> Executor::RunLossGroup(
    std::span<const LossJob* const> group, const ValidatedLossInput& in, bool chunked) {
  const LossJob& first = *group.front();
  const int64_t rows = in.rows(), cols = in.cols();
  loss_.resize(static_cast<size_t>(rows));
  // A lone fp32 gradient is written straight into its destination (the job's grad_out) or its
  // result, which the front end moves into its response: no copy of rows x cols.
  const bool grad_in_place =
      first.want_grad && group.size() == 1 && first.grad_dtype == DType::kFloat32;
  std::string whole_grad;
  float* grad = nullptr;
  if (grad_in_place && first.grad_out != nullptr) {
    grad = first.grad_out;
  } else if (grad_in_place) {
    whole_grad.resize(static_cast<size_t>(rows * cols) * sizeof(float));
    grad = reinterpret_cast<float*>(whole_grad.data());
  } else if (first.want_grad) {
    grad_.resize(static_cast<size_t>(rows * cols));
    grad = grad_.data();
  }
  const KernelCall call = RunRows(JobKind::kLoss, in, chunked, [&](int64_t begin, int64_t end) {
    if (begin == 0 && end == rows) return backend_->Loss(in, {loss_.data(), grad});
    return backend_->Loss(SliceRows(in, begin, end, &slice_),
                          {loss_.data() + begin, grad == nullptr ? nullptr : grad + begin * cols});
  });
  if (!call.status.ok()) return {group.size(), call.status};
  std::vector<absl::StatusOr<LossResult>> out;
  int64_t row0 = 0;
  for (const LossJob* job : group) {
    const int64_t n = job->rows();
    LossResult r;
    r.loss.assign(loss_.begin() + row0, loss_.begin() + row0 + n);
    for (float l : r.loss) r.loss_sum += l;
    r.loss_mean = r.loss_sum / static_cast<double>(n);
    r.cols = cols;
    r.grad_dtype = job->grad_dtype;
    if (job->want_grad && job->grad_out != nullptr) {
      if (!grad_in_place) {
        std::memcpy(job->grad_out, grad_.data() + row0 * cols,
                    static_cast<size_t>(n * cols) * sizeof(float));
      }
      r.grad_written = true;
    } else if (grad_in_place) {
      r.grad = std::exchange(whole_grad, {});  // a lone job: the kernel wrote its bytes
    } else if (job->want_grad) {
      r.grad = Narrowed(grad_.data() + row0 * cols, n * cols, job->grad_dtype);
    }
    r.timing = {.compute_seconds = call.seconds, .batch_rows = rows};
    out.emplace_back(std::move(r));
    row0 += n;
  }
  return out;
}

std::vector<absl::StatusOr<PredictResult>> Executor::RunPredictGroup(
    std::span<const PredictJob* const> group, const ValidatedLabelerInput& in, bool chunked) {
  const bool want_probs = group.front()->want_probs;
  const int64_t rows = in.rows(), cols = in.cols();
  const bool probs_in_place = want_probs && group.size() == 1;
  std::string whole_probs;
  float* probs = nullptr;
  if (probs_in_place && group.front()->probs_out != nullptr) {
    probs = group.front()->probs_out;
  } else if (probs_in_place) {
    whole_probs.resize(static_cast<size_t>(rows * cols) * sizeof(float));
    probs = reinterpret_cast<float*>(whole_probs.data());
  } else if (want_probs) {
    probs_.resize(static_cast<size_t>(rows * cols));
    probs = probs_.data();
  }
  const KernelCall call =
      RunRows(JobKind::kPredict, in, chunked, [&](int64_t begin, int64_t end) -> absl::Status {
        if (begin == 0 && end == rows) return backend_->Label(in, &label_sets_, probs);
        // A chunk's label sets are appended to the group's, their offsets moved past it.
        ZLPR_RETURN_IF_ERROR(backend_->Label(SliceRows(in, begin, end), &chunk_sets_,
                                             probs == nullptr ? nullptr : probs + begin * cols));
        if (begin == 0) {
          label_sets_.row_offsets.assign(1, 0);
          label_sets_.labels.clear();
          label_sets_.probs.clear();
        }
        const int64_t base = label_sets_.row_offsets.back();
        for (size_t k = 1; k < chunk_sets_.row_offsets.size(); ++k) {
          label_sets_.row_offsets.push_back(base + chunk_sets_.row_offsets[k]);
        }
        label_sets_.labels.insert(label_sets_.labels.end(), chunk_sets_.labels.begin(),
                                  chunk_sets_.labels.end());
        label_sets_.probs.insert(label_sets_.probs.end(), chunk_sets_.probs.begin(),
                                 chunk_sets_.probs.end());
        return absl::OkStatus();
      });
  if (!call.status.ok()) return {group.size(), call.status};
  const LabelSets& all = label_sets_;
  std::vector<absl::StatusOr<PredictResult>> out;
  int64_t row0 = 0;
  for (const PredictJob* job : group) {
    const int64_t n = job->rows();
    PredictResult r;
    const int64_t first = all.row_offsets[row0], last = all.row_offsets[row0 + n];
    r.labels.row_offsets.reserve(static_cast<size_t>(n) + 1);
    for (int64_t k = row0; k <= row0 + n; ++k) {
      r.labels.row_offsets.push_back(all.row_offsets[k] - first);
    }
    r.labels.labels.assign(all.labels.begin() + first, all.labels.begin() + last);
    r.labels.probs.assign(all.probs.begin() + first, all.probs.begin() + last);
    r.cols = cols;
    if (want_probs && job->probs_out != nullptr) {
      if (!probs_in_place) {
        std::memcpy(job->probs_out, probs_.data() + row0 * cols,
                    static_cast<size_t>(n * cols) * sizeof(float));
      }
      r.probs_written = true;
    } else if (probs_in_place) {
      r.probs = std::exchange(whole_probs, {});  // a lone job: the kernel wrote its bytes
    } else if (want_probs) {
      r.probs.assign(reinterpret_cast<const char*>(probs_.data() + row0 * cols),
                     static_cast<size_t>(n * cols) * sizeof(float));
    }
    r.timing = {.compute_seconds = call.seconds, .batch_rows = rows};
    out.emplace_back(std::move(r));
    row0 += n;
  }
  return out;
}

Workers::Workers(JobBatcher* batcher, std::vector<std::unique_ptr<Backend>> backends, Clock* clock,
                 ExecutionListener* listener, const ChunkOptions& chunks,
                 BackgroundPolicy bulk_policy)
    : batcher_(batcher),
      backends_(std::move(backends)),
      clock_(clock),
      listener_(listener),
      chunks_(chunks),
      bulk_policy_(bulk_policy),
      healthy_(static_cast<int>(backends_.size())) {}

Workers::~Workers() { Join(); }

std::function<void()> Workers::InteractiveBetweenChunks(size_t w, const Backend& backend,
                                                        Executor* interactive) {
  return [this, w, &backend, interactive] {
    while (batcher_->Waiting(Priority::kInteractive)) {
      std::vector<JobBatcher::Drop> drops;
      std::optional<JobBatcher::AnyBatch> batch =
          batcher_->TryCutNow(Priority::kInteractive, &drops);
      for (JobBatcher::Drop& d : drops) d();
      if (!batch.has_value()) break;  // waiting, but not due yet (its batching delay)
      std::visit([&](auto& b) { interactive->Execute(b); }, *batch);
      if (listener_ != nullptr) listener_->OnBatchDone(w, backend);
    }
  };
}

void Workers::Start() {
  for (size_t w = 0; w < backends_.size(); ++w) {
    // Made on a thread lowered as the bulk worker will be, so that the lane's own threads (the
    // CPU backend's pool) start lowered too: a thread inherits its creator's priority.
    std::unique_ptr<Backend> lane;
    std::thread([&] {
      LowerThisThread(bulk_policy_);
      lane = backends_[w]->NewLane();
    }).join();
    if (lane == nullptr) {
      StartSharedWorker(w);
    } else {
      StartClassWorkers(w, lanes_.emplace_back(std::move(lane)).get());
    }
  }
}

void Workers::StartClassWorkers(size_t w, Backend* lane) {
  // Bulk batches, whole, on the lane, at the lowered priority: the OS preempts them for the
  // server's other threads at once (a SCHED_IDLE thread is preempted on any wakeup, whereas a
  // thread of any nice value may keep the CPU for the rest of its time slice: milliseconds).
  // No health checks here: a backend with a lane computes on the CPU, which does not break as
  // a device does.
  threads_.emplace_back([this, w, lane] {
    pthread_setname_np(pthread_self(), "zlpr-worker");  // as top -H and /proc show it
    LowerThisThread(bulk_policy_);
    Executor bulk(lane, clock_, listener_, {.bulk_chunk = std::chrono::microseconds(0)});
    while (std::optional<JobBatcher::AnyBatch> batch =
               batcher_->NextBatch({.only = Priority::kBulk})) {
      std::visit([&](auto& b) { bulk.Execute(b); }, *batch);
      if (listener_ != nullptr) listener_->OnBatchDone(w, *backends_[w]);
    }
  });
  // Interactive batches, at the server's priority; and a bulk batch the lowered worker has left
  // waiting for chunks_.stand_in_after (it has had no CPU), in chunks with the interactive work
  // that comes meanwhile in between: bulk work yields, but is never starved.
  threads_.emplace_back([this, w] {
    pthread_setname_np(pthread_self(), "zlpr-interact");
    Backend& backend = *backends_[w];
    Executor interactive(&backend, clock_, listener_, chunks_);
    Executor stand_in(&backend, clock_, listener_, chunks_);
    stand_in.SetBetweenChunks(InteractiveBetweenChunks(w, backend, &interactive));
    const JobBatcher::Takes takes{.only = Priority::kInteractive,
                                  .stand_in_after = chunks_.stand_in_after};
    while (std::optional<JobBatcher::AnyBatch> batch = batcher_->NextBatch(takes)) {
      std::visit(
          [&](auto& b) {
            using Job = std::decay_t<decltype(b.front().job)>;
            if (b.front().priority == Priority::kInteractive) {
              interactive.Execute(b);
              return;
            }
            if (listener_ != nullptr) listener_->OnStandIn(Job::kKind);
            stand_in.Execute(b);
          },
          *batch);
      if (listener_ != nullptr) listener_->OnBatchDone(w, backend);
    }
  });
}

void Workers::StartSharedWorker(size_t w) {
  threads_.emplace_back([this, w] {
    pthread_setname_np(pthread_self(), "zlpr-worker");  // as top -H and /proc show it
    Backend& backend = *backends_[w];
    // Two executors on one backend (driven by this one thread): their buffers are apart, so
    // interactive work can run between the chunks of a bulk batch whose inputs the bulk
    // executor's buffers still hold.
    Executor bulk(&backend, clock_, listener_, chunks_);
    Executor interactive(&backend, clock_, listener_, chunks_);
    bulk.SetBetweenChunks(InteractiveBetweenChunks(w, backend, &interactive));
    bool healthy = true;
    // True when this worker should leave: its backend cannot compute and another can. The
    // last one stays, and its backend answers every batch with its status (UNAVAILABLE), so
    // nothing waits forever.
    auto leave = [&] {
      if (!healthy || backend.health().ok()) return false;
      healthy = false;
      const int left = healthy_.fetch_sub(1) - 1;
      if (listener_ != nullptr) listener_->OnBackendUnhealthy(w, backend.health(), left);
      return left > 0;
    };
    if (leave()) return;
    while (std::optional<JobBatcher::AnyBatch> batch = batcher_->NextBatch()) {
      std::visit(
          [&](auto& b) {
            (b.front().priority == Priority::kInteractive ? interactive : bulk).Execute(b);
          },
          *batch);
      if (listener_ != nullptr) listener_->OnBatchDone(w, backend);
      if (leave()) break;
    }
  });
}

void Workers::Join() {
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

}  // namespace zlpr::server
