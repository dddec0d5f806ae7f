// What both bindings report about the server and its two models (converter.h): server and
// model metadata, Triton's model configuration, and statistics from the core's counters.
#ifndef ZLPR_SERVER_OIP_MODELS_H_
#define ZLPR_SERVER_OIP_MODELS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/core/core.h"
#include "server/core/shared_memory.h"

namespace zlpr::server::oip {

// Lists system_shared_memory among the extensions when `shared_memory` is on.
inference::ServerMetadataResponse ServerMetadataOf(const std::string& version,
                                                   bool shared_memory = false);

// The shared-memory extensions' answers, for both bindings: the registered regions; the
// refusal of the calls when shared memory is off (--allow_client_shm); and of a CUDA region,
// which this server does not map (the reason depends on whether it computes on a GPU).
inference::SystemSharedMemoryStatusResponse SystemSharedMemoryStatusOf(
    const std::vector<SharedMemoryStatus>& regions);
absl::Status SharedMemoryOff();
absl::Status CudaSharedMemoryRefusal(bool cuda_backend);
// A CUDA region's status: none is ever registered, so every name is NOT_FOUND (and "" lists none).
absl::Status CudaSharedMemoryStatusOf(const std::string& name);
// NOT_FOUND for an unknown model or version.
absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(const std::string& name,
                                                                 const std::string& version);
// The batcher's max_batch_rows is reported as max_batch_size (dims leave out the batch
// dimension), its delay and the request classes as dynamic_batching (priority levels 1
// interactive and 2 bulk, the default the model's job type's).
absl::StatusOr<inference::ModelConfig> ModelConfigOf(const std::string& name,
                                                     const std::string& version,
                                                     const BatcherOptions& batcher);
// Both models' statistics when `name` is empty.
absl::StatusOr<inference::ModelStatisticsResponse> StatisticsOf(const InferenceCore& core,
                                                                const std::string& name,
                                                                const std::string& version);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_MODELS_H_
