// SharedMemoryRegistry: shm_open, mmap, and mappings that survive a truncated object.
#include "server/core/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zlpr::server {
namespace {

// Every region's mapping, for the SIGBUS handler, which may take no lock: a slot is claimed
// (under slots_mu) by storing `end`, then `begin`; released by clearing `begin`.
struct MappingSlot {
  std::atomic<uintptr_t> begin{0}, end{0};
  std::atomic<bool> lost{false};  // a page of it lost its backing and was replaced by zeros
};
constexpr int kMappingSlots = 4096;  // --client_shm_max_regions' ceiling, for every registry
MappingSlot mapping_slots[kMappingSlots];
std::mutex slots_mu;
uintptr_t page_bytes = 4096;
struct sigaction previous_bus_action;

// A SIGBUS inside a region's mapping is the owner shrinking or removing the object under a
// request that reads or writes it (a kernel, a copy, on any thread). The mapping from the
// faulting page to its end is replaced by private zero pages, so the access that faulted and
// every later one succeed, and the mapping is marked lost: the request that used it fails when
// it verifies the region (SharedMemoryRegion::Verify) and so does every later one, since the
// mapping no longer follows the object. Anything else goes where it would have gone without
// this handler. (mmap is a plain system call here; no lock, no allocation.)
void OnBusError(int sig, siginfo_t* info, void* context) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (MappingSlot& slot : mapping_slots) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    const uintptr_t end = slot.end.load(std::memory_order_relaxed);
    if (begin == 0 || address < begin || address >= end) continue;
    const uintptr_t into_page = address & (page_bytes - 1);
    void* page = static_cast<char*>(info->si_addr) - into_page;
    if (mmap(page, end - (address - into_page), PROT_READ | PROT_WRITE,
             MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
      slot.lost.store(true, std::memory_order_release);
      return;  // the faulting access runs again, on zeros
    }
    break;
  }
  if ((previous_bus_action.sa_flags & SA_SIGINFO) != 0 &&
      previous_bus_action.sa_sigaction != nullptr) {
    previous_bus_action.sa_sigaction(sig, info, context);
    return;
  }
  if (previous_bus_action.sa_handler != SIG_DFL && previous_bus_action.sa_handler != SIG_IGN) {
    previous_bus_action.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);  // the default: the process ends, with its core
  raise(SIGBUS);
}

void InstallBusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    page_bytes = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    struct sigaction action {};
    action.sa_sigaction = OnBusError;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGBUS, &action, &previous_bus_action);
  });
}

// A slot for [begin, end), or -1 when every slot is taken.
int ClaimSlot(void* begin, size_t bytes) {
  std::lock_guard<std::mutex> lock(slots_mu);
  for (int i = 0; i < kMappingSlots; ++i) {
    MappingSlot& slot = mapping_slots[i];
    if (slot.begin.load(std::memory_order_relaxed) != 0) continue;
    slot.lost.store(false, std::memory_order_relaxed);
    slot.end.store(reinterpret_cast<uintptr_t>(begin) + bytes, std::memory_order_relaxed);
    slot.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return i;
  }
  return -1;
}

void ReleaseSlot(int i) {
  std::lock_guard<std::mutex> lock(slots_mu);
  mapping_slots[i].begin.store(0, std::memory_order_release);
}

// Names: what a URL path segment and a log line carry without escaping.
bool GoodName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return false;
    }
  }
  return true;
}

// shm_open's names: one component, optionally after a leading '/'.
bool GoodKey(const std::string& key) {
  const std::string bare = key.empty() || key[0] != '/' ? key : key.substr(1);
  return !bare.empty() && bare.size() <= 250 && bare != "." && bare != ".." &&
         bare.find('/') == std::string::npos && bare.find('\0') == std::string::npos;
}

}  // namespace

SharedMemoryRegion::~SharedMemoryRegion() {
  if (slot_ >= 0) ReleaseSlot(slot_);  // no request uses the mapping any more
  if (map_ != nullptr) munmap(map_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

bool SharedMemoryRegion::lost() const {
  return slot_ >= 0 && mapping_slots[slot_].lost.load(std::memory_order_acquire);
}

absl::Status SharedMemoryRegion::Verify(uint64_t offset, uint64_t size) const {
  if (offset > byte_size_ || size > byte_size_ - offset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shared memory region '%s': %d bytes at offset %d, but it has %d bytes",
                        name_, size, offset, byte_size_));
  }
  if (lost()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': its object '%s' shrank while the server had it mapped (its "
        "owner truncated or removed it); unregister the region and register it again",
        name_, key_));
  }
  // The common way to lose the pages, said before they are touched: the owner truncated or
  // replaced the object.
  struct stat st {};
  if (fstat(fd_, &st) != 0 || static_cast<uint64_t>(st.st_size) < offset_ + offset + size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': its object '%s' no longer holds bytes %d to %d (truncated "
        "by its owner?); register it again",
        name_, key_, offset_ + offset, offset_ + offset + size));
  }
  return absl::OkStatus();
}

absl::StatusOr<char*> SharedMemoryRegion::Span(uint64_t offset, uint64_t size) const {
  if (absl::Status st = Verify(offset, size); !st.ok()) return st;
  return base_ + offset;
}

absl::Status SharedMemoryRegion::Read(uint64_t offset, uint64_t size, void* destination) const {
  absl::StatusOr<char*> bytes = Span(offset, size);
  if (!bytes.ok()) return bytes.status();
  std::memcpy(destination, *bytes, size);
  return Verify(offset, size);
}

absl::Status SharedMemoryRegion::Write(uint64_t offset, const void* source, uint64_t size) const {
  absl::StatusOr<char*> bytes = Span(offset, size);
  if (!bytes.ok()) return bytes.status();
  std::memcpy(*bytes, source, size);
  return Verify(offset, size);
}

SharedMemoryRegistry::SharedMemoryRegistry(const SharedMemoryLimits& limits) : limits_(limits) {
  InstallBusHandler();
}

SharedMemoryRegistry::~SharedMemoryRegistry() = default;

absl::Status SharedMemoryRegistry::CanAdd(const std::string& name, uint64_t byte_size) const {
  if (regions_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("shared memory region '", name,
                                                 "' is registered already: unregister it first"));
  }
  if (static_cast<int>(regions_.size()) >= limits_.max_regions ||
      bytes_ + static_cast<int64_t>(byte_size) > limits_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "shared memory: %d regions of %d bytes are registered; the server takes at most %d "
        "regions and %d bytes (--client_shm_max_regions, --client_shm_max_bytes)",
        regions_.size(), bytes_, limits_.max_regions, limits_.max_bytes));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::Register(const std::string& name, const std::string& key,
                                            uint64_t offset, uint64_t byte_size) {
  if (!GoodName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("shared memory region name '", name,
                                                   "': 1 to 128 letters, digits, '_', '-' or '.'"));
  }
  if (!GoodKey(key)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory key '", key,
                     "': the name of a POSIX shared-memory object, e.g. /my_region"));
  }
  if (byte_size == 0 || byte_size > static_cast<uint64_t>(limits_.max_bytes) ||
      offset > static_cast<uint64_t>(INT64_MAX) - byte_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': byte_size %d at offset %d: the size must be 1 to %d bytes",
        name, byte_size, offset, limits_.max_bytes));
  }
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status st = CanAdd(name, byte_size); !st.ok()) return st;
  }
  std::shared_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->name_ = name;
  region->key_ = key;
  region->offset_ = offset;
  region->byte_size_ = byte_size;
  region->fd_ = shm_open(key.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (region->fd_ < 0) {
    const int e = errno;
    const std::string why = absl::StrCat("shared memory key '", key, "': ", std::strerror(e));
    if (e == ENOENT) return absl::NotFoundError(why);
    if (e == EACCES) {
      return absl::PermissionDeniedError(
          absl::StrCat(why,
                       " (the server opens it read-write: run both as the same user, or "
                       "let the server's user write it)"));
    }
    return absl::InvalidArgumentError(why);
  }
  struct stat st {};
  if (fstat(region->fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory key '", key, "': not a shared-memory object"));
  }
  if (static_cast<uint64_t>(st.st_size) < offset + byte_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shared memory region '%s': bytes %d to %d of '%s', which has %d", name,
                        offset, offset + byte_size, key, st.st_size));
  }
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  region->map_bytes_ = static_cast<size_t>(offset + byte_size - start);
  void* map = mmap(nullptr, region->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, region->fd_,
                   static_cast<off_t>(start));
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shared memory region '", name, "': cannot map it: ", std::strerror(errno)));
  }
  region->map_ = map;
  region->base_ = static_cast<char*>(map) + (offset - start);
  region->slot_ = ClaimSlot(map, region->map_bytes_);
  if (region->slot_ < 0) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("shared memory region '%s': this process has %d regions mapped already",
                        name, kMappingSlots));
  }
  absl::MutexLock lock(&mu_);
  // Checked again: another registration may have come in while this one was mapped.
  if (absl::Status added = CanAdd(name, byte_size); !added.ok()) return added;
  bytes_ += static_cast<int64_t>(byte_size);
  regions_.emplace(name, std::move(region));
  return absl::OkStatus();
}

void SharedMemoryRegistry::Unregister(const std::string& name) {
  std::vector<std::shared_ptr<const SharedMemoryRegion>> gone;  // unmapped outside the lock
  absl::MutexLock lock(&mu_);
  for (auto it = regions_.begin(); it != regions_.end();) {
    if (name.empty() || it->first == name) {
      bytes_ -= static_cast<int64_t>(it->second->byte_size());
      gone.push_back(std::move(it->second));
      it = regions_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::vector<SharedMemoryStatus>> SharedMemoryRegistry::Status(
    const std::string& name) const {
  absl::MutexLock lock(&mu_);
  std::vector<SharedMemoryStatus> out;
  for (const auto& [n, r] : regions_) {
    if (name.empty() || n == name) {
      out.push_back(
          {.name = n, .key = r->key(), .offset = r->offset(), .byte_size = r->byte_size()});
    }
  }
  if (!name.empty() && out.empty()) {
    return absl::NotFoundError(absl::StrCat("shared memory region '", name, "' is not registered"));
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const SharedMemoryRegion>> SharedMemoryRegistry::Find(
    const std::string& name) const {
  absl::MutexLock lock(&mu_);
  const auto it = regions_.find(name);
  if (it == regions_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory region '", name, "' is not registered"));
  }
  return it->second;
}

}  // namespace zlpr::server
