// The CUDA backend against the CPU backend on the same inputs. Skips where no device is visible.
#include <cmath>
#include <cstring>
#include <vector>

#if ZLPR_TEST_CUDA_RUNTIME
#include <cuda_runtime_api.h>
#endif

#include "gtest/gtest.h"
#include "kernels/reference.h"
#include "kernels/test_util.h"
#include "kernels/zlpr.h"
#if ZLPR_HAVE_CUDA_BACKEND
#include "kernels/cuda_fault_testing.h"
#endif

namespace zlpr {
namespace {

using testing::Labels;
using testing::MakeProblem;
using testing::Problem;

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) {
      GTEST_SKIP() << (CudaBuilt() ? "no CUDA device visible" : "built without CUDA");
    }
    auto backend = NewCudaBackend(0);
    ASSERT_TRUE(backend.ok()) << backend.status();
    cuda_ = *std::move(backend);
    cpu_ = NewCpuBackend({.threads = 2});
  }
  std::unique_ptr<Backend> cuda_, cpu_;
};

TEST(CudaAvailabilityTest, NewCudaBackendFailsCleanlyWithoutADevice) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a device is visible";
  auto backend = NewCudaBackend(0);
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaBackendTest, LossAndGradientMatchTheCpuAcrossShapes) {
  for (int64_t cols : {1, 7, 31, 32, 33, 1000, 4097, 8193, 131072}) {
    for (Labels kind : {Labels::kHard, Labels::kSoft, Labels::kSparseHard, Labels::kSparseSoft}) {
      for (bool mask : {false, true}) {
        const Problem p = MakeProblem({.rows = cols > 100000 ? 3 : 9,
                                       .cols = cols,
                                       .labels = kind,
                                       .mask = mask,
                                       .neg_inf = mask,
                                       .scale = 5.0f,
                                       .seed = static_cast<uint64_t>(cols)});
        const int64_t rows = p.spec.rows;
        std::vector<float> gl(rows), gg(rows * cols), cl(rows), cg(rows * cols);
        ASSERT_TRUE(cuda_->Loss(p.Input(), {gl.data(), gg.data()}).ok());
        ASSERT_TRUE(cpu_->Loss(p.Input(), {cl.data(), cg.data()}).ok());
        for (int64_t r = 0; r < rows; ++r) {
          ASSERT_NEAR(gl[r], cl[r], 2 * testing::LossTolerance(cl[r]))
              << "C=" << cols << " row " << r;
        }
        for (int64_t i = 0; i < rows * cols; ++i) {
          ASSERT_NEAR(gg[i], cg[i], 2 * testing::GradTolerance(cg[i]))
              << "C=" << cols << " entry " << i;
        }
        std::vector<float> only(rows);
        ASSERT_TRUE(cuda_->Loss(p.Input(), {only.data(), nullptr}).ok());
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_NEAR(only[r], cl[r], 2 * testing::LossTolerance(cl[r]));
      }
    }
  }
}

TEST_F(CudaBackendTest, SparseDenseAndBatchInvarianceHoldToTheBit) {
  for (int64_t cols : {33, 1000, 20000}) {
    const Problem p = MakeProblem(
        {.rows = 21, .cols = cols, .labels = Labels::kSparseSoft, .mask = true, .seed = 4});
    std::vector<float> sl(21), sg(21 * cols), dl(21), dg(21 * cols);
    ASSERT_TRUE(cuda_->Loss(p.Input(true), {sl.data(), sg.data()}).ok());
    ASSERT_TRUE(cuda_->Loss(p.Input(false), {dl.data(), dg.data()}).ok());
    EXPECT_EQ(0, std::memcmp(sl.data(), dl.data(), 4 * 21));
    EXPECT_EQ(0, std::memcmp(sg.data(), dg.data(), 4 * 21 * cols));
    const Problem alone = p.Slice(7, 8);
    float l;
    std::vector<float> g(cols);
    ASSERT_TRUE(cuda_->Loss(alone.Input(), {&l, g.data()}).ok());
    EXPECT_EQ(0, std::memcmp(&l, &sl[7], 4));
    EXPECT_EQ(0, std::memcmp(g.data(), &sg[7 * cols], 4 * cols));
  }
}

TEST_F(CudaBackendTest, ProbabilitiesAndLabelsMatchTheCpu) {
  struct Case {
    float threshold;
    bool per_label;
    uint32_t top_k, min_labels;
  };
  // The last two: candidates that need several rounds of reduction on long rows (top_k +
  // min_labels slots per 4096-column chunk), and every entry passing.
  const Case cases[] = {{0.4f, false, 5, 2},      {0.5f, false, 1, 0}, {0.1f, false, 64, 0},
                        {0.9f, false, 3, 8},      {0.5f, true, 4, 5},  {0.3f, false, 2, 6},
                        {0.2f, true, 1000, 1024}, {1e-6f, false, 7, 0}};
  for (int64_t cols : {1, 7, 33, 1000, 4096, 4097, 9000, 131072}) {
    Problem p = MakeProblem({.rows = cols > 100000 ? 3 : 13,
                             .cols = cols,
                             .mask = true,
                             .neg_inf = true,
                             .scale = 4.0f,
                             .seed = 8});
    for (float& s : p.scores) {
      if (std::isfinite(s)) s = std::round(s * 4.0f) / 4.0f;  // ties: smaller column first
    }
    const int64_t rows = p.spec.rows;
    std::vector<float> thresholds(cols);
    for (int64_t c = 0; c < cols; ++c)
      thresholds[c] = 0.1f + 0.8f * static_cast<float>(c % 9) / 8.0f;
    for (const Case& k : cases) {
      LabelerInput in;
      in.scores = {p.scores.data(), DType::kFloat32, rows, cols};
      in.mask = p.mask.data();
      in.options = {k.threshold, k.per_label ? thresholds.data() : nullptr, k.top_k, k.min_labels};
      LabelSets gpu, cpu;
      std::vector<float> gp(rows * cols), cp(rows * cols);
      ASSERT_TRUE(cuda_->Label(in, &gpu, gp.data()).ok());
      ASSERT_TRUE(cpu_->Label(in, &cpu, cp.data()).ok());
      ASSERT_EQ(gpu.row_offsets, cpu.row_offsets) << "C=" << cols << " top_k=" << k.top_k;
      ASSERT_EQ(gpu.labels, cpu.labels) << "C=" << cols << " top_k=" << k.top_k;
      for (size_t i = 0; i < gpu.probs.size(); ++i)
        ASSERT_NEAR(gpu.probs[i], cpu.probs[i], 1e-7 + 1e-6 * cpu.probs[i]);
      for (size_t i = 0; i < gp.size(); ++i) ASSERT_NEAR(gp[i], cp[i], 1e-7 + 1e-6 * cp[i]);
    }
  }
}

TEST_F(CudaBackendTest, SubnormalLabelsGiveNoNaNOrInfAndMatchTheCpu) {
  // The fuzzer's row (see CpuLossTest.SubnormalLabelsGiveTheExactLossAndGradientNotNaN): a
  // subnormal label sets the positive term's maximum. The CPU evaluates such rows exactly; the
  // GPU folds log t into that one term.
  for (int64_t cols : {7, 300, 5000, 20000}) {
    std::vector<float> s(cols), t(cols, 0.0f);
    for (int64_t c = 0; c < cols; ++c) s[c] = static_cast<float>(c % 5) - 2.0f;
    t[3] = t[4] = t[5] = 1.0f;
    s[cols - 1] = -344064.0f;
    t[cols - 1] = 4.48415509e-44f;
    LossInput in;
    in.scores = {s.data(), DType::kFloat32, 1, cols};
    in.labels = MatrixView{t.data(), DType::kFloat32, 1, cols};
    float gl, cl;
    std::vector<float> gg(cols), cg(cols);
    ASSERT_TRUE(cuda_->Loss(in, {&gl, gg.data()}).ok());
    ASSERT_TRUE(cpu_->Loss(in, {&cl, cg.data()}).ok());
    EXPECT_NEAR(gl, cl, 1e-5 * std::abs(cl)) << "cols " << cols;
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_TRUE(std::isfinite(gg[c])) << "column " << c;
      ASSERT_NEAR(gg[c], cg[c], 1e-4 + 1e-3 * std::abs(cg[c])) << "column " << c;
    }
  }
}

TEST_F(CudaBackendTest, InvalidInputIsRejectedBeforeAnyCopy) {
  std::vector<float> s = {1.0f, std::nanf("")};
  std::vector<float> t = {1.0f, 0.0f};
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 2};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, 2};
  float loss = 3.0f;
  const absl::Status st = cuda_->Loss(in, {&loss, nullptr});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "scores[0, 1] is NaN");
  EXPECT_EQ(loss, 3.0f);
}

// --- Faults: a batch that does not fit, a broken context ---------------------------------

// A 4-row, `cols`-column problem against the CPU's answer to it: the backend still computes.
void ExpectLossMatchesTheCpu(Backend& cuda, Backend& cpu, int64_t cols) {
  const Problem p = MakeProblem({.rows = 4, .cols = cols, .labels = Labels::kSoft, .seed = 11});
  std::vector<float> gl(4), gg(4 * cols), cl(4), cg(4 * cols);
  const absl::Status st = cuda.Loss(p.Input(), {gl.data(), gg.data()});
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(cpu.Loss(p.Input(), {cl.data(), cg.data()}).ok());
  for (int64_t r = 0; r < 4; ++r) ASSERT_NEAR(gl[r], cl[r], 2 * testing::LossTolerance(cl[r]));
  for (int64_t i = 0; i < 4 * cols; ++i) {
    ASSERT_NEAR(gg[i], cg[i], 2 * testing::GradTolerance(cg[i])) << i;
  }
}

TEST_F(CudaBackendTest, FaultABatchOverTheMemoryLimitIsRefusedAndTheNextOneRuns) {
  auto limited = NewCudaBackend(0, {.memory_limit_bytes = 1 << 20});
  ASSERT_TRUE(limited.ok()) << limited.status();
  Backend& cuda = **limited;
  ExpectLossMatchesTheCpu(cuda, *cpu_, 1000);  // grows the buffers a little
  const int64_t rows = 64, cols = 8192;        // 2 MiB of scores alone
  std::vector<float> s(rows * cols, 0.5f), t(rows * cols, 0.0f), loss(rows);
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, rows, cols};
  in.labels = MatrixView{t.data(), DType::kFloat32, rows, cols};
  const absl::Status st = cuda.Loss(in, {loss.data(), nullptr});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("--cuda_memory_limit_bytes"), std::string::npos) << st;
  EXPECT_EQ(cuda.DeviceMemoryBytes(), 0);  // refused batches leave nothing behind
  EXPECT_TRUE(cuda.health().ok());
  ExpectLossMatchesTheCpu(cuda, *cpu_, 1000);
  EXPECT_LE(cuda.DeviceMemoryBytes(), 1 << 20);
}

#if ZLPR_TEST_CUDA_RUNTIME
TEST_F(CudaBackendTest, FaultABatchTheDeviceCannotAllocateIsRefusedAndTheNextOneRuns) {
  // Take all but 256 MiB of the device's free memory, then ask for a batch that needs 768 MiB.
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  void* hog = nullptr;
  for (size_t take = free_bytes - (256 << 20); take > (1u << 30); take -= 256 << 20) {
    if (cudaMalloc(&hog, take) == cudaSuccess) break;
    cudaGetLastError();
    hog = nullptr;
  }
  ASSERT_NE(hog, nullptr) << "could not take the device's memory away";
  const int64_t rows = 1024, cols = 65536;  // 256 MiB each: scores, labels, gradient
  std::vector<float> s(rows * cols, 0.25f), t(rows * cols, 0.0f), loss(rows), grad(rows * cols);
  t[5] = 1.0f;
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, rows, cols};
  in.labels = MatrixView{t.data(), DType::kFloat32, rows, cols};
  const absl::Status st = cuda_->Loss(in, {loss.data(), grad.data()});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("CUDA device memory"), std::string::npos) << st;
  EXPECT_TRUE(cuda_->health().ok());
  ASSERT_EQ(cudaFree(hog), cudaSuccess);
  // The memory is back: the same batch runs, and the error left no trace in later launches.
  const absl::Status again = cuda_->Loss(in, {loss.data(), grad.data()});
  ASSERT_TRUE(again.ok()) << again;
  std::vector<float> cl(rows);
  ASSERT_TRUE(cpu_->Loss(in, {cl.data(), nullptr}).ok());
  EXPECT_NEAR(loss[0], cl[0], 2 * testing::LossTolerance(cl[0]));
  EXPECT_NEAR(loss[rows - 1], cl[rows - 1], 2 * testing::LossTolerance(cl[rows - 1]));
}
#endif

#if ZLPR_HAVE_CUDA_BACKEND  // the fault hook is in the CUDA test library only
TEST_F(CudaBackendTest, FaultALaunchErrorFailsItsBatchAndTheBackendGoesOn) {
  ASSERT_TRUE(InjectCudaFaultForTesting(*cuda_, /*breaks_context=*/false));
  const Problem p = MakeProblem({.rows = 8, .cols = 300, .seed = 2});
  std::vector<float> loss(8);
  const absl::Status st = cuda_->Loss(p.Input(), {loss.data(), nullptr});
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  // The runtime's name for the refusal varies (the H200's driver said cudaErrorInvalidValue).
  EXPECT_NE(st.message().find("CUDA fault-injection launch: cudaError"), std::string::npos) << st;
  EXPECT_TRUE(cuda_->health().ok()) << cuda_->health();
  ExpectLossMatchesTheCpu(*cuda_, *cpu_, 1000);
  ExpectLossMatchesTheCpu(*cuda_, *cpu_, 40000);  // the cluster kernel too
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, 8, 300};
  in.options.top_k = 3;
  LabelSets gpu, cpu;
  ASSERT_TRUE(cuda_->Label(in, &gpu, nullptr).ok());
  ASSERT_TRUE(cpu_->Label(in, &cpu, nullptr).ok());
  EXPECT_EQ(gpu.labels, cpu.labels);
}

// Last of the device tests: after it, this process cannot use the device again.
TEST_F(CudaBackendTest, FaultAKernelThatBreaksTheContextFailsItsBatchThenTheBackendIsUnavailable) {
  ExpectLossMatchesTheCpu(*cuda_, *cpu_, 1000);
  ASSERT_TRUE(InjectCudaFaultForTesting(*cuda_, /*breaks_context=*/true));
  const Problem p = MakeProblem({.rows = 8, .cols = 300, .seed = 2});
  std::vector<float> loss(8);
  const absl::Status st = cuda_->Loss(p.Input(), {loss.data(), nullptr});
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_NE(st.message().find("cudaErrorLaunchFailure"), std::string::npos) << st;
  EXPECT_EQ(cuda_->health().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(cuda_->health().message().find("cuda:0 is unusable after a CUDA error"),
            std::string::npos)
      << cuda_->health();
  const absl::Status next = cuda_->Loss(p.Input(), {loss.data(), nullptr});
  EXPECT_EQ(next, cuda_->health());
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, 8, 300};
  in.options.top_k = 3;
  LabelSets sets;
  EXPECT_EQ(cuda_->Label(in, &sets, nullptr), cuda_->health());
}

TEST(CudaFaultHookTest, OtherBackendsHaveNoFaultHook) {
  auto cpu = NewCpuBackend({.threads = 1});
  EXPECT_FALSE(InjectCudaFaultForTesting(*cpu, /*breaks_context=*/true));
  EXPECT_TRUE(cpu->health().ok());
}
#endif  // ZLPR_HAVE_CUDA_BACKEND

}  // namespace
}  // namespace zlpr
