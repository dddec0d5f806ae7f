// Executor: group, concatenate, compute, slice. Workers: a thread per backend.
#include "server/executor.h"

#include <cstring>
#include <utility>

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

// Bytes of n fp32 values, narrowed to `dtype`.
std::string Narrowed(const float* values, int64_t n, DType dtype) {
  std::string out(static_cast<size_t>(n) * DTypeSize(dtype), '\0');
  NarrowFromFloat(values, n, dtype, out.data());
  return out;
}

}  // namespace

Executor::Executor(Backend* backend, Clock* clock, ExecutionListener* listener)
    : backend_(backend), clock_(clock), listener_(listener) {}

double Executor::SecondsSince(SteadyTime t0) const {
  return std::chrono::duration<double>(clock_->Now() - t0).count();
}

std::vector<absl::StatusOr<LossResult>> Executor::Run(std::span<const LossJob* const> jobs) {
  std::vector<absl::StatusOr<LossResult>> out(jobs.size());
  const auto same = [](const LossJob& a, const LossJob& b) {
    return a.want_grad == b.want_grad && Concatenable(a.input, b.input);
  };
  for (const std::vector<size_t>& group : Group(jobs, same)) {
    std::vector<const ValidatedLossInput*> parts;
    for (size_t i : group) parts.push_back(&jobs[i]->input);
    const absl::StatusOr<ValidatedLossInput> in = ConcatenateLossInputs(parts, &concat_);
    if (!in.ok()) {
      for (size_t i : group) out[i] = in.status();
      continue;
    }
    const LossJob& first = *jobs[group.front()];
    const int64_t rows = in->rows(), cols = in->cols();
    loss_.resize(static_cast<size_t>(rows));
    // A lone fp32 gradient is written straight into its result, which the front end moves
    // into its response: no copy of rows x cols.
    const bool grad_in_place =
        first.want_grad && group.size() == 1 && first.grad_dtype == DType::kFloat32;
    std::string whole_grad;
    float* grad = nullptr;
    if (grad_in_place) {
      whole_grad.resize(static_cast<size_t>(rows * cols) * sizeof(float));
      grad = reinterpret_cast<float*>(whole_grad.data());
    } else if (first.want_grad) {
      grad_.resize(static_cast<size_t>(rows * cols));
      grad = grad_.data();
    }
    const SteadyTime t0 = clock_->Now();
    const absl::Status st = backend_->Loss(*in, {loss_.data(), grad});
    const double compute = SecondsSince(t0);
    if (listener_ != nullptr) listener_->OnKernelCall(JobKind::kLoss, rows, compute, st.ok());
    int64_t row0 = 0;
    for (size_t i : group) {
      const LossJob& job = *jobs[i];
      const int64_t n = job.rows();
      if (!st.ok()) {
        out[i] = st;
        continue;
      }
      LossResult r;
      r.loss.assign(loss_.begin() + row0, loss_.begin() + row0 + n);
      for (float l : r.loss) r.loss_sum += l;
      r.loss_mean = r.loss_sum / static_cast<double>(n);
      r.cols = cols;
      r.grad_dtype = job.grad_dtype;
      if (grad_in_place) {
        r.grad = std::move(whole_grad);
      } else if (job.want_grad) {
        r.grad = Narrowed(grad_.data() + row0 * cols, n * cols, job.grad_dtype);
      }
      r.timing.compute_seconds = compute;
      r.timing.batch_rows = rows;
      out[i] = std::move(r);
      row0 += n;
    }
  }
  return out;
}

std::vector<absl::StatusOr<PredictResult>> Executor::Run(std::span<const PredictJob* const> jobs) {
  std::vector<absl::StatusOr<PredictResult>> out(jobs.size());
  const auto same = [](const PredictJob& a, const PredictJob& b) {
    return a.want_probs == b.want_probs && Concatenable(a.input, b.input);
  };
  for (const std::vector<size_t>& group : Group(jobs, same)) {
    std::vector<const ValidatedLabelerInput*> parts;
    for (size_t i : group) parts.push_back(&jobs[i]->input);
    const absl::StatusOr<ValidatedLabelerInput> in = ConcatenateLabelerInputs(parts, &concat_);
    if (!in.ok()) {
      for (size_t i : group) out[i] = in.status();
      continue;
    }
    const bool want_probs = jobs[group.front()]->want_probs;
    const int64_t rows = in->rows(), cols = in->cols();
    const bool probs_in_place = want_probs && group.size() == 1;
    std::string whole_probs;
    float* probs = nullptr;
    if (probs_in_place) {
      whole_probs.resize(static_cast<size_t>(rows * cols) * sizeof(float));
      probs = reinterpret_cast<float*>(whole_probs.data());
    } else if (want_probs) {
      probs_.resize(static_cast<size_t>(rows * cols));
      probs = probs_.data();
    }
    const SteadyTime t0 = clock_->Now();
    const absl::Status st = backend_->Label(*in, &label_sets_, probs);
    const double compute = SecondsSince(t0);
    if (listener_ != nullptr) listener_->OnKernelCall(JobKind::kPredict, rows, compute, st.ok());
    const LabelSets& all = label_sets_;
    int64_t row0 = 0;
    for (size_t i : group) {
      const int64_t n = jobs[i]->rows();
      if (!st.ok()) {
        out[i] = st;
        continue;
      }
      PredictResult r;
      const int64_t first = all.row_offsets[row0], last = all.row_offsets[row0 + n];
      r.labels.row_offsets.reserve(static_cast<size_t>(n) + 1);
      for (int64_t k = row0; k <= row0 + n; ++k)
        r.labels.row_offsets.push_back(all.row_offsets[k] - first);
      r.labels.labels.assign(all.labels.begin() + first, all.labels.begin() + last);
      r.labels.probs.assign(all.probs.begin() + first, all.probs.begin() + last);
      r.cols = cols;
      if (probs_in_place) {
        r.probs = std::move(whole_probs);
      } else if (want_probs) {
        r.probs.assign(reinterpret_cast<const char*>(probs_.data() + row0 * cols),
                       static_cast<size_t>(n * cols) * sizeof(float));
      }
      r.timing.compute_seconds = compute;
      r.timing.batch_rows = rows;
      out[i] = std::move(r);
      row0 += n;
    }
  }
  return out;
}

Workers::Workers(JobBatcher* batcher, std::vector<std::unique_ptr<Backend>> backends, Clock* clock,
                 ExecutionListener* listener)
    : batcher_(batcher), backends_(std::move(backends)), clock_(clock), listener_(listener) {}

Workers::~Workers() { Join(); }

void Workers::Start() {
  for (size_t w = 0; w < backends_.size(); ++w) {
    threads_.emplace_back([this, w] {
      Backend& backend = *backends_[w];
      Executor executor(&backend, clock_, listener_);
      while (std::optional<JobBatcher::AnyBatch> batch = batcher_->NextBatch()) {
        std::visit([&](auto& b) { executor.Execute(b); }, *batch);
        if (listener_ != nullptr) listener_->OnBatchDone(w, backend);
      }
    });
  }
}

void Workers::Join() {
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

}  // namespace zlpr::server
