// What both bindings report about the server and its two models (converter.h): server and
// model metadata, Triton's model configuration, and statistics from the core's counters.
#ifndef ZLPR_SERVER_OIP_MODELS_H_
#define ZLPR_SERVER_OIP_MODELS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/core/core.h"

namespace zlpr::server::oip {

inference::ServerMetadataResponse ServerMetadataOf(const std::string& version);
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
