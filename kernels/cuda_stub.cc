// The CUDA entry points of a build without the CUDA backend (ZLPR_CUDA=OFF or no nvcc).
#include "kernels/zlpr.h"

namespace zlpr {

bool CudaBuilt() { return false; }
int CudaDeviceCount() { return 0; }
std::string CudaUnavailableReason() {
  return "this build has no CUDA backend (ZLPR_CUDA=OFF or no nvcc)";
}
absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int device, const CudaOptions&) {
  return absl::FailedPreconditionError(
      "cuda:" + std::to_string(device) +
      ": this build has no CUDA backend (ZLPR_CUDA=OFF or no nvcc)");
}

}  // namespace zlpr
