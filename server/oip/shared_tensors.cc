// TakeSharedTensors, WriteSharedOutputs.
#include "server/oip/shared_tensors.h"

#include <memory>
#include <string_view>
#include <variant>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace zlpr::server::oip {
namespace {

// A whole number of bytes (the protocol sends int64; uint64 is taken too).
absl::StatusOr<uint64_t> Bytes(const std::string& tensor, const char* key, const Parameter& p) {
  if (const auto* i = std::get_if<int64_t>(&p); i != nullptr && *i >= 0) {
    return static_cast<uint64_t>(*i);
  }
  if (const auto* u = std::get_if<uint64_t>(&p)) return *u;
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: parameter '%s' must be a whole number of bytes, 0 or more", tensor, key));
}

// The region a tensor's parameters name, with the range they give, checked against it; the
// parameters are taken off.
absl::StatusOr<SharedPlace> PlaceOf(const SharedMemoryRegistry* registry, const std::string& tensor,
                                    Parameters* parameters) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: names a shared memory region, but shared memory is off on this server (start it "
        "with --allow_client_shm)",
        tensor));
  }
  const auto name = std::get_if<std::string>(&parameters->at(kShmRegion));
  if (name == nullptr || name->empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: parameter '%s' must be a region's name", tensor, kShmRegion));
  }
  const auto size = parameters->find(kShmByteSize);
  if (size == parameters->end()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: parameter '%s' is needed with '%s'",
                                                      tensor, kShmByteSize, kShmRegion));
  }
  SharedPlace place;
  ZLPR_ASSIGN_OR_RETURN(place.byte_size, Bytes(tensor, kShmByteSize, size->second));
  if (const auto offset = parameters->find(kShmOffset); offset != parameters->end()) {
    ZLPR_ASSIGN_OR_RETURN(place.offset, Bytes(tensor, kShmOffset, offset->second));
  }
  absl::StatusOr<std::shared_ptr<const SharedMemoryRegion>> region = registry->Find(*name);
  if (!region.ok()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", tensor, region.status().message()));
  }
  place.region = *std::move(region);
  const uint64_t have = place.region->byte_size();
  if (place.offset > have || place.byte_size > have - place.offset) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d bytes at offset %d of shared memory region '%s', which has %d bytes", tensor,
        place.byte_size, place.offset, *name, have));
  }
  parameters->erase(kShmRegion);
  parameters->erase(kShmByteSize);
  parameters->erase(kShmOffset);
  return place;
}

bool ReadInPlace(DataType type) {
  return type == DataType::kFp32 || type == DataType::kFp16 || type == DataType::kBf16;
}

// The region's bytes for a rows x cols fp32 output, for the kernels to write in place; null when
// they do not fall on a float boundary (the output is then copied in once computed).
absl::StatusOr<float*> FloatsInPlace(const SharedOutput& o, int64_t rows, int64_t cols) {
  const uint64_t need = static_cast<uint64_t>(rows * cols) * sizeof(float);
  if (need > o.place.byte_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output '%s': %d bytes (shape %s), but shared_memory_byte_size gives it %d",
                        o.name, need, ShapeString(Shape{rows, cols}), o.place.byte_size));
  }
  absl::StatusOr<char*> bytes = o.place.region->Span(o.place.offset, need);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output '%s': %s", o.name, bytes.status().message()));
  }
  if (reinterpret_cast<uintptr_t>(*bytes) % alignof(float) != 0) return nullptr;
  return reinterpret_cast<float*>(*bytes);
}

}  // namespace

bool InSharedMemory(const Parameters& parameters) { return parameters.count(kShmRegion) > 0; }

absl::StatusOr<SharedTensors> TakeSharedTensors(const SharedMemoryRegistry* registry,
                                                Admission* admission, Request* request) {
  SharedTensors shared;
  for (Tensor& t : request->inputs) {
    if (!InSharedMemory(t.parameters)) continue;
    const std::string tensor = absl::StrFormat("input '%s'", t.name);
    if (!t.data.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: give its bytes or a shared memory region, not both", tensor));
    }
    ZLPR_ASSIGN_OR_RETURN(SharedPlace place, PlaceOf(registry, tensor, &t.parameters));
    const bool in_place = ReadInPlace(t.datatype);
    // What the server allocates for it: the batch's copy (when it joins others in one kernel
    // call), and the copy out of the region when it is not read in place.
    const int64_t bytes = static_cast<int64_t>(place.byte_size) * (in_place ? 1 : 2);
    if (!admission->Grow(bytes)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: the memory for requests in flight cannot take its %d bytes now (retry later)",
          tensor, place.byte_size));
    }
    if (in_place) {
      absl::StatusOr<char*> span = place.region->Span(place.offset, place.byte_size);
      if (!span.ok()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: %s", tensor, span.status().message()));
      }
      t.data = std::string_view(*span, place.byte_size);
    } else {
      // Uninitialized: the copy writes every byte (zero-filling first costs as much again).
      char* copy =
          request->buffers.emplace_back(std::make_unique_for_overwrite<char[]>(place.byte_size))
              .get();
      if (absl::Status st = place.region->Read(place.offset, place.byte_size, copy); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: %s", tensor, st.message()));
      }
      t.data = std::string_view(copy, place.byte_size);
    }
    shared.inputs.push_back(std::move(place));
  }
  for (RequestedOutput& o : request->outputs) {
    if (!InSharedMemory(o.parameters)) continue;
    const std::string tensor = absl::StrFormat("output '%s'", o.name);
    ZLPR_ASSIGN_OR_RETURN(SharedPlace place, PlaceOf(registry, tensor, &o.parameters));
    shared.outputs.push_back(SharedOutput{.name = o.name, .place = std::move(place)});
  }
  return shared;
}

absl::Status PlaceSharedOutputs(const SharedTensors& shared, Plan* plan) {
  for (const SharedOutput& o : shared.outputs) {
    if (auto* loss = std::get_if<LossJob>(&plan->job); loss != nullptr && o.name == "grad") {
      ZLPR_ASSIGN_OR_RETURN(loss->grad_out, FloatsInPlace(o, loss->rows(), loss->input.cols()));
    }
    if (auto* predict = std::get_if<PredictJob>(&plan->job);
        predict != nullptr && o.name == "probs" && plan->classification == 0) {
      ZLPR_ASSIGN_OR_RETURN(predict->probs_out,
                            FloatsInPlace(o, predict->rows(), predict->input.cols()));
    }
  }
  return absl::OkStatus();
}

absl::Status FinishSharedTensors(const SharedTensors& shared, Response* response) {
  for (const SharedOutput& s : shared.outputs) {
    for (Output& o : response->outputs) {
      if (o.name != s.name) continue;
      // Written in place by the kernels: its bytes are its shape's.
      uint64_t bytes = o.data.size();
      if (o.in_shared_memory) {
        bytes = static_cast<uint64_t>(ElementSize(o.datatype));
        for (int64_t d : o.shape) bytes *= static_cast<uint64_t>(d);
      }
      if (bytes > s.place.byte_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output '%s': %d bytes (shape %s), but shared_memory_byte_size gives it %d", o.name,
            bytes, ShapeString(o.shape), s.place.byte_size));
      }
      absl::Status st = o.in_shared_memory
                            ? s.place.region->Verify(s.place.offset, bytes)
                            : s.place.region->Write(s.place.offset, o.data.data(), bytes);
      if (!st.ok()) {
        return absl::InvalidArgumentError(absl::StrFormat("output '%s': %s", o.name, st.message()));
      }
      o.parameters[kShmRegion] = s.place.region->name();
      o.parameters[kShmByteSize] = static_cast<int64_t>(bytes);
      if (s.place.offset != 0) o.parameters[kShmOffset] = static_cast<int64_t>(s.place.offset);
      o.data.clear();
      o.data.shrink_to_fit();
      o.in_shared_memory = true;
    }
  }
  for (const SharedPlace& in : shared.inputs) {
    // What the kernels read may have been zeros if the object shrank meanwhile.
    if (absl::Status st = in.region->Verify(in.offset, in.byte_size); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace zlpr::server::oip
