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
};

// Rows longer than this are cut into segments of this many columns, one thread block each.
inline constexpr int64_t kSegmentColumns = 16384;

// Device workspace the loss needs for `rows` x `cols` (0 when rows fit one block).
size_t LossWorkspaceBytes(int64_t rows, int64_t cols);

// Enqueues the loss (and the gradient when args.grad is set) on `stream`. `workspace` holds
// LossWorkspaceBytes(rows, cols) bytes. On Hopper, rows of up to 8 segments are finished by a
// thread-block cluster in one pass (allow_clusters); the result is bit-identical either way.
absl::Status LaunchLoss(const DeviceLossArgs& args, void* workspace, bool allow_clusters,
                        cudaStream_t stream);

// Scatters sparse labels (device CSR, rows [0, rows)) into dense `labels`, which it zeroes.
absl::Status LaunchDensifyLabels(const int64_t* row_splits, const int32_t* indices,
                                 const float* values, int64_t rows, int64_t cols,
                                 float* labels, cudaStream_t stream);

// p = σ(2s), 0 where excluded.
absl::Status LaunchProbabilities(const void* scores, DType dtype, const uint8_t* mask,
                                 int64_t rows, int64_t cols, float* probs, cudaStream_t stream);

// A CUDA error as a Status naming what failed.
absl::Status CudaError(cudaError_t err, const char* what);

}  // namespace zlpr::cuda

#endif  // ZLPR_KERNELS_CUDA_LAUNCH_H_
