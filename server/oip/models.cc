// Metadata, configuration and statistics of the two models.
#include "server/oip/models.h"

#include <algorithm>
#include <limits>
#include <string_view>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "server/oip/converter.h"

namespace zlpr::server::oip {
namespace {

inference::DataType ConfigType(DataType type) {
  switch (type) {
    case DataType::kBool:
      return inference::TYPE_BOOL;
    case DataType::kUint8:
      return inference::TYPE_UINT8;
    case DataType::kUint16:
      return inference::TYPE_UINT16;
    case DataType::kUint32:
      return inference::TYPE_UINT32;
    case DataType::kUint64:
      return inference::TYPE_UINT64;
    case DataType::kInt8:
      return inference::TYPE_INT8;
    case DataType::kInt16:
      return inference::TYPE_INT16;
    case DataType::kInt32:
      return inference::TYPE_INT32;
    case DataType::kInt64:
      return inference::TYPE_INT64;
    case DataType::kFp16:
      return inference::TYPE_FP16;
    case DataType::kBf16:
      return inference::TYPE_BF16;
    case DataType::kFp32:
      return inference::TYPE_FP32;
    case DataType::kFp64:
      return inference::TYPE_FP64;
    case DataType::kBytes:
      return inference::TYPE_STRING;
  }
  return inference::TYPE_INVALID;
}

void SetDuration(const JobStatistics::Duration& d, inference::StatisticDuration* out) {
  out->set_count(d.count.load(std::memory_order_relaxed));
  out->set_ns(d.ns.load(std::memory_order_relaxed));
}

}  // namespace

inference::ServerMetadataResponse ServerMetadataOf(const std::string& version, bool shared_memory) {
  inference::ServerMetadataResponse response;
  response.set_name("zlpr-server");
  response.set_version(version);
  response.add_extensions("model_configuration");
  response.add_extensions("statistics");
  response.add_extensions("classification");
  response.add_extensions("binary_tensor_data");
  if (shared_memory) response.add_extensions("system_shared_memory");
  return response;
}

inference::SystemSharedMemoryStatusResponse SystemSharedMemoryStatusOf(
    const std::vector<SharedMemoryStatus>& regions) {
  inference::SystemSharedMemoryStatusResponse response;
  for (const SharedMemoryStatus& r : regions) {
    auto& status = (*response.mutable_regions())[r.name];
    status.set_name(r.name);
    status.set_key(r.key);
    status.set_offset(r.offset);
    status.set_byte_size(r.byte_size);
  }
  return response;
}

absl::Status SharedMemoryOff() {
  return absl::FailedPreconditionError(
      "shared memory is off on this server: start it with --allow_client_shm (callers on the "
      "same host only)");
}

absl::Status CudaSharedMemoryStatusOf(const std::string& name) {
  if (name.empty()) return absl::OkStatus();
  return absl::NotFoundError(
      absl::StrFormat("CUDA shared memory region '%s' is not registered", name));
}

absl::Status CudaSharedMemoryRefusal(bool cuda_backend) {
  if (!cuda_backend) {
    return absl::FailedPreconditionError(
        "CUDA shared memory: this server computes on the CPU (no CUDA device); register system "
        "shared memory instead (--allow_client_shm)");
  }
  return absl::UnimplementedError(
      "CUDA shared memory is not served yet: register system shared memory instead "
      "(--allow_client_shm)");
}

absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(const std::string& name,
                                                                 const std::string& version) {
  ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelMetadataResponse response;
  response.set_name(name);
  response.add_versions("1");
  response.set_platform(kPlatform);
  for (const TensorSpec& s : InputSpecs(name)) {
    auto* t = response.add_inputs();
    t->set_name(s.name);
    t->set_datatype(DataTypeName(s.datatype));
    for (int64_t d : s.shape) t->add_shape(d);
  }
  for (const TensorSpec& s : OutputSpecs(name)) {
    auto* t = response.add_outputs();
    t->set_name(s.name);
    t->set_datatype(DataTypeName(s.datatype));
    for (int64_t d : s.shape) t->add_shape(d);
  }
  return response;
}

absl::StatusOr<inference::ModelConfig> ModelConfigOf(const std::string& name,
                                                     const std::string& version,
                                                     const BatcherOptions& batcher) {
  ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelConfig c;
  c.set_name(name);
  c.set_platform(kPlatform);
  c.set_backend(kPlatform);
  // Rows are the batch dimension: dims below leave it out, as Triton's configurations do.
  c.set_max_batch_size(static_cast<int32_t>(
      std::min<int64_t>(batcher.max_batch_rows, std::numeric_limits<int32_t>::max())));
  auto* batching = c.mutable_dynamic_batching();
  batching->set_max_queue_delay_microseconds(
      static_cast<uint64_t>(batcher.max_queue_delay.count()));
  batching->set_priority_levels(kPriorityLevels);
  batching->set_default_priority_level(static_cast<uint64_t>(DefaultPriorityLevel(name)));
  for (const TensorSpec& s : InputSpecs(name)) {
    auto* in = c.add_input();
    in->set_name(s.name);
    in->set_data_type(ConfigType(s.datatype));
    in->set_optional(s.optional);
    for (size_t d = 1; d < s.shape.size(); ++d) in->add_dims(s.shape[d]);
  }
  for (const TensorSpec& s : OutputSpecs(name)) {
    auto* out = c.add_output();
    out->set_name(s.name);
    out->set_data_type(ConfigType(s.datatype));
    for (size_t d = 1; d < s.shape.size(); ++d) out->add_dims(s.shape[d]);
    if (s.shape.size() == 1) out->add_dims(1);  // a per-row value: [rows] is [rows, 1] to Triton
  }
  return c;
}

absl::StatusOr<inference::ModelStatisticsResponse> StatisticsOf(const InferenceCore& core,
                                                                const std::string& name,
                                                                const std::string& version) {
  if (!name.empty()) ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelStatisticsResponse response;
  // From the executor, for every protocol's requests: rows are inferences, kernel calls
  // (batches) executions.
  for (const char* model : {kPredictModel, kLossModel}) {
    if (!name.empty() && name != model) continue;
    const JobStatistics& s =
        core.statistics(std::string_view(model) == kLossModel ? JobKind::kLoss : JobKind::kPredict);
    inference::ModelStatistics* m = response.add_model_stats();
    m->set_name(model);
    m->set_version("1");
    m->set_last_inference(s.last_inference_ms.load(std::memory_order_relaxed));
    m->set_inference_count(s.inference_count.load(std::memory_order_relaxed));
    m->set_execution_count(s.execution_count.load(std::memory_order_relaxed));
    inference::InferStatistics* i = m->mutable_inference_stats();
    SetDuration(s.success, i->mutable_success());
    SetDuration(s.fail, i->mutable_fail());
    SetDuration(s.queue, i->mutable_queue());
    SetDuration(s.compute, i->mutable_compute_infer());
    // The kernel time includes reading the inputs and writing the outputs: those phases have
    // the kernel calls' count and no time of their own (clients such as perf_analyzer expect
    // the three counts to agree).
    i->mutable_compute_input()->set_count(i->compute_infer().count());
    i->mutable_compute_output()->set_count(i->compute_infer().count());
  }
  return response;
}

}  // namespace zlpr::server::oip
