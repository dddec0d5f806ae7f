// Tensors that travel through client-registered shared memory (core/shared_memory.h), for both
// bindings: an input or requested output whose parameters name a region,
//   shared_memory_region     the region's name (as registered)
//   shared_memory_byte_size  the tensor's bytes in it
//   shared_memory_offset     where in the region they start (0 when absent)
// (the parameters of Triton's system shared-memory extension). Floating-point inputs are read in
// place: the kernels read the region. Other inputs (masks) are copied out first, since the
// server checks their values once and the caller may change the region at any moment. The fp32
// gradient and probabilities are written in place by the kernels, other outputs copied in once
// computed; the response then carries those outputs' shapes and these parameters instead of
// their bytes. Every region a request used is verified once it is done (the owner may have
// shrunk it meanwhile: the request then fails).
#ifndef ZLPR_SERVER_OIP_SHARED_TENSORS_H_
#define ZLPR_SERVER_OIP_SHARED_TENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/core.h"
#include "server/core/shared_memory.h"
#include "server/oip/converter.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

inline constexpr char kShmRegion[] = "shared_memory_region";
inline constexpr char kShmByteSize[] = "shared_memory_byte_size";
inline constexpr char kShmOffset[] = "shared_memory_offset";

// Whether `parameters` name a region (the bindings then expect no bytes of that tensor).
bool InSharedMemory(const Parameters& parameters);

// A tensor's bytes in a region.
struct SharedPlace {
  std::shared_ptr<const SharedMemoryRegion> region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

struct SharedOutput {
  std::string name;
  SharedPlace place;
};

// What a request has in shared memory: kept (the regions stay mapped) until it is answered.
struct SharedTensors {
  std::vector<SharedPlace> inputs;
  std::vector<SharedOutput> outputs;
};

// Points each input that names a region at its bytes there (floating-point inputs) or at a copy
// of them in `request->buffers`, and takes the shared-memory parameters off the inputs and
// requested outputs. `registry` null: shared memory is off, and a tensor that names a region is
// INVALID_ARGUMENT. INVALID_ARGUMENT names the tensor and the region (not registered, out of
// its range, parameters of the wrong type, bytes given as well, the object truncated);
// RESOURCE_EXHAUSTED when the memory budget cannot take what the server allocates for them.
absl::StatusOr<SharedTensors> TakeSharedTensors(const SharedMemoryRegistry* registry,
                                                Admission* admission, Request* request);

// Points the job's fp32 gradient or probabilities at their region when the request asked for
// them there (the kernels then write them in place). INVALID_ARGUMENT before anything is
// computed when the region's range is too small for them.
absl::Status PlaceSharedOutputs(const SharedTensors& shared, Plan* plan);

// Once the job is done: writes the outputs of `response` that `shared` names and the kernels did
// not write in place into their regions, leaves each with its shape, no bytes, and the
// parameters that say where it is, and verifies every region the request used
// (INVALID_ARGUMENT when one lost pages meanwhile).
absl::Status FinishSharedTensors(const SharedTensors& shared, Response* response);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_SHARED_TENSORS_H_
