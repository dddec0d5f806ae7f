// Shared memory that callers on the same host register with the server (the Open Inference
// Protocol's system shared-memory extension): a named region of a POSIX shared-memory object
// (shm_open's key, an offset, a size), mapped once at registration, through which a request's
// tensors arrive and its outputs leave without being serialized.
//
// The caller owns the object and may shrink or remove it at any time, also while a request reads
// or writes it in place: touching a page that is no longer backed raises SIGBUS, which would end
// the process. The server's SIGBUS handler replaces such pages of a region's mapping with zeros
// (reads see zeros, writes go nowhere) and marks the region lost, on whichever thread touched
// them (a kernel's, a copy's); the request verifies its regions after using them and fails with
// INVALID_ARGUMENT, and so does every later request on that region, which must be registered
// again. A SIGBUS anywhere else keeps its usual effect.
//
//   SharedMemoryRegistry regions({.max_regions = 64, .max_bytes = 16 << 30});
//   regions.Register("in", "/trainer0", 0, 64 << 20);
//   auto region = regions.Find("in");               // a lease: mapped until released
//   char* p = *(*region)->Span(0, bytes);           // read or written in place ...
//   (*region)->Verify(0, bytes);                    // ... and checked once done
#ifndef ZLPR_SERVER_CORE_SHARED_MEMORY_H_
#define ZLPR_SERVER_CORE_SHARED_MEMORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace zlpr::server {

struct SharedMemoryLimits {
  int max_regions = 64;                   // registered at once
  int64_t max_bytes = int64_t{16} << 30;  // their sizes together (address space, not memory)
};

// One registered region, mapped read-write. Shared: a request that found it keeps it mapped
// until it is done, even if it is unregistered meanwhile.
class SharedMemoryRegion {
 public:
  ~SharedMemoryRegion();
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const { return name_; }
  const std::string& key() const { return key_; }
  uint64_t offset() const { return offset_; }
  uint64_t byte_size() const { return byte_size_; }

  // The region's bytes [offset, offset + size), for a request to read or write in place.
  // INVALID_ARGUMENT as Verify.
  absl::StatusOr<char*> Span(uint64_t offset, uint64_t size) const;
  // OK unless [offset, offset + size) is not inside the region, a page of the region lost its
  // backing since it was mapped (what was read there may have been zeros, what was written is
  // gone), or the object no longer reaches that far: INVALID_ARGUMENT then. A request calls it
  // after using a region's bytes, since the owner may shrink the object at any moment.
  absl::Status Verify(uint64_t offset, uint64_t size) const;
  // Span, a copy, Verify.
  absl::Status Read(uint64_t offset, uint64_t size, void* destination) const;
  absl::Status Write(uint64_t offset, const void* source, uint64_t size) const;

 private:
  friend class SharedMemoryRegistry;
  SharedMemoryRegion() = default;
  bool lost() const;

  std::string name_, key_;
  uint64_t offset_ = 0, byte_size_ = 0;
  int fd_ = -1;
  void* map_ = nullptr;  // page-aligned mapping that contains the region
  size_t map_bytes_ = 0;
  char* base_ = nullptr;  // the region's first byte in it
  int slot_ = -1;         // the SIGBUS handler's record of the mapping
};

struct SharedMemoryStatus {
  std::string name, key;
  uint64_t offset = 0, byte_size = 0;
};

class SharedMemoryRegistry {
 public:
  explicit SharedMemoryRegistry(const SharedMemoryLimits& limits);
  ~SharedMemoryRegistry();

  // Maps [offset, offset + byte_size) of the object `key`. INVALID_ARGUMENT for a bad name, key
  // or range (the object smaller than it), NOT_FOUND when there is no such object,
  // PERMISSION_DENIED when the server may not open it read-write, ALREADY_EXISTS for a name
  // in use, RESOURCE_EXHAUSTED beyond the limits.
  absl::Status Register(const std::string& name, const std::string& key, uint64_t offset,
                        uint64_t byte_size);
  // Forgets `name` (every region when empty); a name that is not registered is no error.
  void Unregister(const std::string& name);
  // The regions (`name` alone when not empty: NOT_FOUND unless registered), sorted by name.
  absl::StatusOr<std::vector<SharedMemoryStatus>> Status(const std::string& name) const;
  // INVALID_ARGUMENT naming the region when it is not registered.
  absl::StatusOr<std::shared_ptr<const SharedMemoryRegion>> Find(const std::string& name) const;

  const SharedMemoryLimits& limits() const { return limits_; }

 private:
  // ALREADY_EXISTS for a name in use, RESOURCE_EXHAUSTED when `byte_size` more would pass the
  // limits.
  absl::Status CanAdd(const std::string& name, uint64_t byte_size) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SharedMemoryLimits limits_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const SharedMemoryRegion>> regions_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_SHARED_MEMORY_H_
