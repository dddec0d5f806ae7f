// The CUDA backend's fault injection, for its tests only: linked into
// zlpr_kernels_fault_testing (with the backend compiled with ZLPR_CUDA_FAULT_INJECTION), never
// into zlpr_kernels.
#include "kernels/cuda_launch.h"

namespace zlpr::cuda {
namespace {

__global__ void TrapKernel() { __trap(); }

}  // namespace

absl::Status LaunchFaultForTesting(cudaStream_t stream, bool trap) {
  if (trap) {
    TrapKernel<<<1, 1, 0, stream>>>();
  } else {
    TrapKernel<<<1, 4096, 0, stream>>>();  // more threads than a block may have: refused
  }
  return CudaError(cudaGetLastError(), trap ? "trap kernel launch" : "fault-injection launch");
}

}  // namespace zlpr::cuda
