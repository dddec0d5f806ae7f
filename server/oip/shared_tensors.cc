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

struct Place {
  std::shared_ptr<const SharedMemoryRegion> region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// The region a tensor's parameters name, with the range they give, checked against it; the
// parameters are taken off.
absl::StatusOr<Place> PlaceOf(const SharedMemoryRegistry* registry, const std::string& tensor,
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
  Place place;
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

}  // namespace

bool InSharedMemory(const Parameters& parameters) { return parameters.count(kShmRegion) > 0; }

absl::StatusOr<std::vector<SharedOutput>> TakeSharedTensors(const SharedMemoryRegistry* registry,
                                                            Admission* admission,
                                                            Request* request) {
  for (Tensor& t : request->inputs) {
    if (!InSharedMemory(t.parameters)) continue;
    const std::string tensor = absl::StrFormat("input '%s'", t.name);
    if (!t.data.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: give its bytes or a shared memory region, not both", tensor));
    }
    ZLPR_ASSIGN_OR_RETURN(const Place place, PlaceOf(registry, tensor, &t.parameters));
    // The copy, and the batch's copy of it, as for a message's tensors.
    if (!admission->Grow(2 * static_cast<int64_t>(place.byte_size))) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: the memory for requests in flight cannot take its %d bytes now (retry later)",
          tensor, place.byte_size));
    }
    // Uninitialized: the copy writes every byte (zero-filling 16 MB first costs as much again).
    char* bytes =
        request->buffers.emplace_back(std::make_unique_for_overwrite<char[]>(place.byte_size))
            .get();
    if (absl::Status st = place.region->Read(place.offset, place.byte_size, bytes); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: %s", tensor, st.message()));
    }
    t.data = std::string_view(bytes, place.byte_size);
  }
  std::vector<SharedOutput> outputs;
  for (RequestedOutput& o : request->outputs) {
    if (!InSharedMemory(o.parameters)) continue;
    const std::string tensor = absl::StrFormat("output '%s'", o.name);
    ZLPR_ASSIGN_OR_RETURN(Place place, PlaceOf(registry, tensor, &o.parameters));
    outputs.push_back(SharedOutput{.name = o.name,
                                   .region = std::move(place.region),
                                   .offset = place.offset,
                                   .byte_size = place.byte_size});
  }
  return outputs;
}

absl::Status WriteSharedOutputs(const std::vector<SharedOutput>& outputs, Response* response) {
  for (const SharedOutput& s : outputs) {
    for (Output& o : response->outputs) {
      if (o.name != s.name) continue;
      if (o.data.size() > s.byte_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output '%s': %d bytes (shape %s), but shared_memory_byte_size gives it %d", o.name,
            o.data.size(), ShapeString(o.shape), s.byte_size));
      }
      if (absl::Status st = s.region->Write(s.offset, o.data.data(), o.data.size()); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrFormat("output '%s': %s", o.name, st.message()));
      }
      o.parameters[kShmRegion] = s.region->name();
      o.parameters[kShmByteSize] = static_cast<int64_t>(o.data.size());
      if (s.offset != 0) o.parameters[kShmOffset] = static_cast<int64_t>(s.offset);
      o.data.clear();
      o.data.shrink_to_fit();
      o.in_shared_memory = true;
    }
  }
  return absl::OkStatus();
}

}  // namespace zlpr::server::oip
