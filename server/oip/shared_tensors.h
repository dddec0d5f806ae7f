// Tensors that travel through client-registered shared memory (core/shared_memory.h), for both
// bindings: an input or requested output whose parameters name a region,
//   shared_memory_region     the region's name (as registered)
//   shared_memory_byte_size  the tensor's bytes in it
//   shared_memory_offset     where in the region they start (0 when absent)
// (the parameters of Triton's system shared-memory extension). An input's bytes are copied out
// of the region before the request is converted (the copy is charged to the request's memory
// budget), an output's into it once computed; the response then carries that output's shape
// and these parameters instead of its bytes.
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
#include "server/oip/request.h"

namespace zlpr::server::oip {

inline constexpr char kShmRegion[] = "shared_memory_region";
inline constexpr char kShmByteSize[] = "shared_memory_byte_size";
inline constexpr char kShmOffset[] = "shared_memory_offset";

// Whether `parameters` name a region (the bindings then expect no bytes of that tensor).
bool InSharedMemory(const Parameters& parameters);

// Where an output goes.
struct SharedOutput {
  std::string name;
  std::shared_ptr<const SharedMemoryRegion> region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// Copies each input that names a region into `request->owned` (its view then points there) and
// takes the shared-memory parameters off the inputs and requested outputs, returning where the
// outputs go. `registry` null: shared memory is off, and a tensor that names a region is
// INVALID_ARGUMENT. INVALID_ARGUMENT names the tensor and the region (not registered, out of
// its range, parameters of the wrong type, bytes given as well, the object truncated);
// RESOURCE_EXHAUSTED when the memory budget cannot take the copies.
absl::StatusOr<std::vector<SharedOutput>> TakeSharedTensors(const SharedMemoryRegistry* registry,
                                                            Admission* admission, Request* request);

// Writes the outputs of `response` that `outputs` name into their regions, leaving each with its
// shape, no bytes, and the parameters that say where it is.
absl::Status WriteSharedOutputs(const std::vector<SharedOutput>& outputs, Response* response);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_SHARED_TENSORS_H_
