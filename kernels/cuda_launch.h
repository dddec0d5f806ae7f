// Device-level entry points of the CUDA kernels: device pointers in, the caller's stream.
// Host-only (no __global__ here); used by the CUDA backend and the GPU benchmark.
#ifndef ZLPR_KERNELS_CUDA_LAUNCH_H_
#define ZLPR_KERNELS_CUDA_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/zlpr.h"

namespace zlpr::cuda {

// What the launchers need to know of the device; the backend reads it once
// (cudaGetDeviceProperties) and passes it to every launch.
struct DeviceInfo {
  int sm_count = 1;
  int major = 0;  // compute capability major version
};

// Threads of a block over one row segment (see DeviceLossArgs::segment_threads).
inline constexpr int kDefaultSegmentThreads = 512;

// All pointers are device memory. Inputs must be valid (the backend validates on the host).
struct DeviceLossArgs {
  const void* scores = nullptr;  // rows x cols of `dtype`
  DType dtype = DType::kFloat32;
  const float* labels = nullptr;  // rows x cols, dense
  const uint8_t* mask = nullptr;  // optional rows x cols
  int64_t rows = 0;
  int64_t cols = 0;
  float* loss = nullptr;  // rows
  float* grad = nullptr;  // optional rows x cols
  // Threads of a block over a row's segment of up to kSegmentColumns (rows over 4096 columns):
  // 512 (32 entries each) or 1024 (16 each). A row's bits depend on it: one server keeps one.
  int segment_threads = kDefaultSegmentThreads;
};

// Rows longer than this are cut into segments of this many columns, one thread block each.
inline constexpr int64_t kSegmentColumns = 16384;

// Device workspace the loss needs for `rows` x `cols` (0 when rows fit one block).
size_t LossWorkspaceBytes(int64_t rows, int64_t cols);

// Enqueues the loss (and the gradient when args.grad is set) on `stream`. `workspace` holds
// LossWorkspaceBytes(rows, cols) bytes. On Hopper (device.major >= 9), rows of up to 8
// segments are finished by a thread-block cluster in one pass (allow_clusters); the result is
// bit-identical either way.
absl::Status LaunchLoss(const DeviceLossArgs& args, void* workspace, const DeviceInfo& device,
                        bool allow_clusters, cudaStream_t stream);

// Scatters sparse labels (device CSR, rows [0, rows)) into dense `labels`, which it zeroes.
// Indices outside [0, cols) are skipped, never written through.
absl::Status LaunchDensifyLabels(const int64_t* row_splits, const int32_t* indices,
                                 const float* values, int64_t rows, int64_t cols, float* labels,
                                 cudaStream_t stream);

// p = σ(2s), 0 where excluded.
absl::Status LaunchProbabilities(const void* scores, DType dtype, const uint8_t* mask, int64_t rows,
                                 int64_t cols, float* probs, const DeviceInfo& device,
                                 cudaStream_t stream);

// The labeler on the GPU for top_k in [1, kMaxGpuLabels] and min_labels <= kMaxGpuLabels:
// per row, the labels the math doc selects (threshold, then the top_k best by score then
// index, then the min_labels top-up), found by radix selection on (score, index) keys in
// shared memory: the row is read once and never sorted, only the <= cap winners are ranked. Row r
// writes count[r] labels to labels[r * cap ...] with their probabilities. `z` holds per-column
// score-space thresholds, or is null for `z_global`.
inline constexpr int kMaxGpuLabels = 1024;
// Keys a labeler block holds in shared memory: a row of up to this many columns is labelled by
// one block; longer rows are first reduced chunk by chunk into a workspace.
inline constexpr int kLabelChunk = 4096;
// Device workspace the labeler needs (0 when rows fit one chunk).
size_t LabelerWorkspaceBytes(int64_t rows, int64_t cols, uint32_t top_k, uint32_t min_labels);
struct DeviceLabelArgs {
  const void* scores = nullptr;
  DType dtype = DType::kFloat32;
  const uint8_t* mask = nullptr;
  const float* z = nullptr;
  float z_global = 0;
  int64_t rows = 0, cols = 0;
  uint32_t top_k = 0, min_labels = 0;
  int cap = 0;  // max(top_k, min_labels)
  int32_t* labels = nullptr;
  float* probs = nullptr;
  int32_t* count = nullptr;
  void* workspace = nullptr;  // LabelerWorkspaceBytes(rows, cols, top_k, min_labels)
};
absl::Status LaunchLabeler(const DeviceLabelArgs& args, cudaStream_t stream);

#ifdef ZLPR_CUDA_FAULT_INJECTION
// For the backend's fault-injection hook (kernels/cuda_fault_testing.h; test builds only): with
// `trap`, a kernel that traps (the context is broken once it runs, as by a real device fault);
// without, a launch the runtime refuses at once (an error that leaves the context intact).
absl::Status LaunchFaultForTesting(cudaStream_t stream, bool trap);
#endif

// A CUDA error as a Status naming what failed.
absl::Status CudaError(cudaError_t err, const char* what);

}  // namespace zlpr::cuda

#endif  // ZLPR_KERNELS_CUDA_LAUNCH_H_
