// Fault injection into the CUDA backend, for its tests: only the test-only library
// zlpr_kernels_fault_testing has it (the backend compiled with ZLPR_CUDA_FAULT_INJECTION); the
// production library carries no hook and no check for one.
#ifndef ZLPR_KERNELS_CUDA_FAULT_TESTING_H_
#define ZLPR_KERNELS_CUDA_FAULT_TESTING_H_

#include "kernels/zlpr.h"

namespace zlpr {

// The next Loss or Label call of `backend` (a CUDA backend; false for any other) fails as a
// device fault would. With `breaks_context`, a kernel that traps runs before the call's own
// work (the context is broken, as by an illegal address); without, a launch the runtime refuses
// (the context stays usable).
bool InjectCudaFaultForTesting(Backend& backend, bool breaks_context);

}  // namespace zlpr

#endif  // ZLPR_KERNELS_CUDA_FAULT_TESTING_H_
