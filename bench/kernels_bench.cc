// CPU kernel benchmarks: every op at the shapes (elements per second).
//   build/bench/zlpr_kernels_bench [--benchmark_filter=...]   (ZLPR_BENCH_THREADS, default 1)
// bench/cpu_vs_torch.py runs this next to the PyTorch baseline and prints both side by side.
#include <cstdlib>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/cpu_simd.h"
#include "kernels/test_util.h"
#include "kernels/zlpr.h"

namespace zlpr {
namespace {

using testing::Labels;

int Threads() {
  const char* env = std::getenv("ZLPR_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : 1;
}

Backend& Cpu() {
  static std::unique_ptr<Backend> backend = NewCpuBackend({.threads = Threads()});
  return *backend;
}

// items_per_second counts elements (rows x cols); bench/cpu_vs_torch.py turns it into ns/element.
void SetCounters(benchmark::State& state, int64_t elements) {
  state.SetItemsProcessed(state.iterations() * elements);
}

void BM_Loss(benchmark::State& state, Labels labels, bool grad) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const testing::Problem p =
      testing::MakeProblem({.rows = rows, .cols = cols, .labels = labels, .seed = 7});
  std::vector<float> loss(rows), g(grad ? rows * cols : 0);
  const LossInput in = p.Input();
  for (auto _ : state) {
    const absl::Status st = Cpu().Loss(in, {loss.data(), grad ? g.data() : nullptr});
    if (!st.ok()) state.SkipWithError(st.ToString().c_str());
    benchmark::DoNotOptimize(loss.data());
    benchmark::ClobberMemory();
  }
  SetCounters(state, rows * cols);
}

// The dense probabilities as a Predict with want_probs gets them: the input validated, then
// the SIMD σ(2s) loop the labeler runs over each row.
void BM_Probabilities(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const testing::Problem p = testing::MakeProblem({.rows = rows, .cols = cols, .seed = 7});
  std::vector<float> probs(rows * cols);
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, rows, cols};
  for (auto _ : state) {
    const absl::StatusOr<ValidatedLabelerInput> valid = ValidateLabelerInput(in);
    if (!valid.ok()) state.SkipWithError(valid.status().ToString().c_str());
    for (int64_t r = 0; r < rows; ++r) {
      internal::Probs(p.scores.data() + r * cols, static_cast<size_t>(cols),
                      probs.data() + r * cols);
    }
    benchmark::ClobberMemory();
  }
  SetCounters(state, rows * cols);
}

// Threshold 0.5 plus top-5: the labeler's common online configuration.
void BM_LabelTop5(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const testing::Problem p = testing::MakeProblem({.rows = rows, .cols = cols, .seed = 7});
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, rows, cols};
  in.options.top_k = 5;
  LabelSets out;
  for (auto _ : state) {
    benchmark::DoNotOptimize(Cpu().Label(in, &out, nullptr));
    benchmark::ClobberMemory();
  }
  SetCounters(state, rows * cols);
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->Args({32, 1000})->Args({2048, 1024})->Args({16, 131072})->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_Loss, hard, Labels::kHard, false)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Loss, hard_grad, Labels::kHard, true)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Loss, soft, Labels::kSoft, false)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Loss, soft_grad, Labels::kSoft, true)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Loss, sparse_hard_grad, Labels::kSparseHard, true)->Apply(Shapes);
// A trainer's step (bench/shm_loss.py sets a call through shared memory beside it).
BENCHMARK_CAPTURE(BM_Loss, trainer_soft_grad, Labels::kSoft, true)
    ->Args({256, 16384})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Probabilities)->Apply(Shapes);
BENCHMARK(BM_LabelTop5)->Apply(Shapes);

}  // namespace
}  // namespace zlpr

BENCHMARK_MAIN();
