// GPU kernel benchmark: in one run, the device-to-device copy ceiling, then every op at the
// issue's shapes, as GB/s and as a fraction of that ceiling.
//   build/bench/zlpr_cuda_bench [iterations [shape indices, e.g. 2,3; 4: the round trip]]
// Bytes counted: loss 8 B/element read (fp32 scores + labels); loss+gradient 8 read + 4
// written; probabilities 4 read + 4 written; labeler 4 read (bench/torch_gpu.py times
// torch.topk on the same card). The copy ceiling is (read + written) / time of a cudaMemcpy
// device-to-device of the op's counted bytes.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda_launch.h"
#include "kernels/test_util.h"
#include "kernels/zlpr.h"

namespace zlpr {
namespace {

#define CHECK_CUDA(expr)                                                 \
  do {                                                                   \
    cudaError_t err_ = (expr);                                           \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

// Median milliseconds of `iters` runs of fn on the stream.
double TimeMs(const std::function<void()>& fn, int iters) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    fn();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

struct Row {
  std::string shape, op;
  double us, gbs, ceiling_gbs;
};

}  // namespace
}  // namespace zlpr

int main(int argc, char** argv) {
  using namespace zlpr;
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device visible: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs), median of %d runs\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount, iters);
  const cuda::DeviceInfo device{.sm_count = prop.multiProcessorCount, .major = prop.major};

  const int64_t shapes[][2] = {{32, 1000}, {8192, 1024}, {256, 131072}, {160, 65536}};
  // Only the listed shapes (a profiler run wants one shape's kernels), else all.
  const std::string only = argc > 2 ? argv[2] : "";
  std::vector<Row> rows_out;
  for (size_t si = 0; si < std::size(shapes); ++si) {
    if (!only.empty() && only.find(std::to_string(si)) == std::string::npos) continue;
    const auto& shape = shapes[si];
    const int64_t rows = shape[0], cols = shape[1], n = rows * cols;
    const testing::Problem p = testing::MakeProblem({.rows = rows, .cols = cols, .seed = 3});
    float *d_s, *d_t, *d_loss, *d_grad, *d_copy_src, *d_copy_dst;
    void* d_ws = nullptr;
    CHECK_CUDA(cudaMalloc(&d_s, n * 4));
    CHECK_CUDA(cudaMalloc(&d_t, n * 4));
    CHECK_CUDA(cudaMalloc(&d_loss, rows * 4));
    CHECK_CUDA(cudaMalloc(&d_grad, n * 4));
    CHECK_CUDA(cudaMalloc(&d_copy_src, n * 12));
    CHECK_CUDA(cudaMalloc(&d_copy_dst, n * 12));
    const size_t ws = cuda::LossWorkspaceBytes(rows, cols);
    if (ws > 0) CHECK_CUDA(cudaMalloc(&d_ws, ws));
    CHECK_CUDA(cudaMemcpy(d_s, p.scores.data(), n * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_t, p.dense.data(), n * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemset(d_copy_src, 0, n * 12));

    const std::string shape_name = std::to_string(rows) + "x" + std::to_string(cols);
    // The ceiling for `bytes` of traffic: a copy that reads bytes/2 and writes bytes/2.
    auto ceiling = [&](size_t bytes) {
      const double ms = TimeMs(
          [&] {
            CHECK_CUDA(
                cudaMemcpyAsync(d_copy_dst, d_copy_src, bytes / 2, cudaMemcpyDeviceToDevice));
          },
          iters);
      return static_cast<double>(bytes) / (ms * 1e6);
    };
    auto record = [&](const char* op, size_t bytes, const std::function<void()>& fn) {
      const double ms = TimeMs(fn, iters);
      rows_out.push_back({shape_name, op, ms * 1e3, bytes / (ms * 1e6), ceiling(bytes)});
    };
    cuda::DeviceLossArgs args;
    args.scores = d_s;
    args.labels = d_t;
    args.rows = rows;
    args.cols = cols;
    args.loss = d_loss;
    auto launch = [&](bool grad, bool clusters,
                      int segment_threads = cuda::kDefaultSegmentThreads) {
      cuda::DeviceLossArgs a = args;
      a.grad = grad ? d_grad : nullptr;
      a.segment_threads = segment_threads;
      const absl::Status st = cuda::LaunchLoss(a, d_ws, device, clusters, nullptr);
      if (!st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        std::exit(1);
      }
    };
    record("loss", n * 8, [&] { launch(false, true); });
    record("loss+grad", n * 12, [&] { launch(true, true); });
    if (cols > cuda::kSegmentColumns) {
      record("loss+grad (no clusters)", n * 12, [&] { launch(true, false); });
    }
    if (cols > 4096) {  // the other block shape over a row segment
      const int other = cuda::kDefaultSegmentThreads == 512 ? 1024 : 512;
      const std::string tag = " (" + std::to_string(other) + "-thread segments)";
      record(("loss" + tag).c_str(), n * 8, [&] { launch(false, true, other); });
      record(("loss+grad" + tag).c_str(), n * 12, [&] { launch(true, true, other); });
    }
    record("probabilities", n * 8, [&] {
      const absl::Status st = cuda::LaunchProbabilities(d_s, DType::kFloat32, nullptr, rows, cols,
                                                        d_grad, device, nullptr);
      if (!st.ok()) std::exit(1);
    });
    for (int k : {5, 64}) {
      int32_t* d_labels;
      float* d_probs;
      int32_t* d_count;
      CHECK_CUDA(cudaMalloc(&d_labels, rows * k * 4));
      CHECK_CUDA(cudaMalloc(&d_probs, rows * k * 4));
      CHECK_CUDA(cudaMalloc(&d_count, rows * 4));
      void* d_label_ws = nullptr;
      const size_t label_ws = cuda::LabelerWorkspaceBytes(rows, cols, k, 0);
      if (label_ws > 0) CHECK_CUDA(cudaMalloc(&d_label_ws, label_ws));
      cuda::DeviceLabelArgs la;
      la.scores = d_s;
      la.rows = rows;
      la.cols = cols;
      la.z_global = 0.0f;  // θ = 0.5
      la.top_k = static_cast<uint32_t>(k);
      la.cap = k;
      la.labels = d_labels;
      la.probs = d_probs;
      la.count = d_count;
      la.workspace = d_label_ws;
      record(k == 5 ? "labeler θ=0.5 top-5" : "labeler θ=0.5 top-64", n * 4, [&] {
        if (!cuda::LaunchLabeler(la, nullptr).ok()) std::exit(1);
      });
      cudaFree(d_labels);
      cudaFree(d_probs);
      cudaFree(d_count);
      if (d_label_ws != nullptr) cudaFree(d_label_ws);
    }
    for (void* ptr : {static_cast<void*>(d_s), static_cast<void*>(d_t), static_cast<void*>(d_loss),
                      static_cast<void*>(d_grad), static_cast<void*>(d_copy_src),
                      static_cast<void*>(d_copy_dst), d_ws}) {
      if (ptr != nullptr) cudaFree(ptr);
    }
  }
  // Host to host through the CUDA backend, beside its kernel alone: what the copies and the
  // staging through page-locked memory cost a server's batch (ComputeLoss with gradient).
  std::string round_trip;
  if (only.empty() || only.find('4') != std::string::npos) {
    const int64_t rows = 256, cols = 16384, n = rows * cols;
    const testing::Problem p = testing::MakeProblem({.rows = rows, .cols = cols, .seed = 5});
    auto backend = NewCudaBackend(0);
    auto valid = ValidateLossInput(p.Input());
    if (!backend.ok() || !valid.ok()) {
      std::fprintf(stderr, "round trip: %s %s\n", backend.status().ToString().c_str(),
                   valid.status().ToString().c_str());
      return 1;
    }
    std::vector<float> loss(rows), grad(n);
    std::vector<double> us;
    for (int i = 0; i < iters + 3; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      if (!(*backend)->Loss(*valid, {loss.data(), grad.data()}).ok()) return 1;
      const auto t1 = std::chrono::steady_clock::now();
      if (i >= 3) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());
    float *d_s, *d_t, *d_loss, *d_grad;
    CHECK_CUDA(cudaMalloc(&d_s, n * 4));
    CHECK_CUDA(cudaMalloc(&d_t, n * 4));
    CHECK_CUDA(cudaMalloc(&d_loss, rows * 4));
    CHECK_CUDA(cudaMalloc(&d_grad, n * 4));
    CHECK_CUDA(cudaMemcpy(d_s, p.scores.data(), n * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_t, p.dense.data(), n * 4, cudaMemcpyHostToDevice));
    cuda::DeviceLossArgs a;
    a.scores = d_s;
    a.labels = d_t;
    a.rows = rows;
    a.cols = cols;
    a.loss = d_loss;
    a.grad = d_grad;
    const double kernel_us =
        1e3 * TimeMs([&] { (void)cuda::LaunchLoss(a, nullptr, device, true, nullptr); }, iters);
    const double total_us = us[us.size() / 2];
    char line[512];
    std::snprintf(line, sizeof(line),
                  "backend round trip, 256x16384 loss+grad fp32: %.1f us host to host (median), "
                  "kernel alone %.1f us (%.0f%%); copies and staging %.0f%% (%.1f MB in, %.1f MB "
                  "out)\n",
                  total_us, kernel_us, 100.0 * kernel_us / total_us,
                  100.0 * (1.0 - kernel_us / total_us), n * 8 / 1e6, (n + rows) * 4 / 1e6);
    round_trip = line;
    for (float* ptr : {d_s, d_t, d_loss, d_grad}) cudaFree(ptr);
  }
  std::printf("\n%s", round_trip.c_str());
  std::printf("\n| shape | op | time (us) | GB/s | copy ceiling GB/s | fraction |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  for (const Row& r : rows_out) {
    std::printf("| %s | %s | %.1f | %.0f | %.0f | %.0f%% |\n", r.shape.c_str(), r.op.c_str(), r.us,
                r.gbs, r.ceiling_gbs, 100.0 * r.gbs / r.ceiling_gbs);
  }
  return 0;
}
