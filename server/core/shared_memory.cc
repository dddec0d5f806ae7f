// SharedMemoryRegistry: shm_open, mmap, and copies that survive a truncated object.
#include "server/core/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zlpr::server {
namespace {

// The jump of the copy this thread is making, or null: a SIGBUS while it is set ends that copy
// (siglongjmp), any other SIGBUS goes where it would have gone without this handler.
// (volatile: the compiler must not drop the store before the copy as dead, nor move it.)
thread_local sigjmp_buf* volatile armed_copy = nullptr;
struct sigaction previous_bus_action;

void OnBusError(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* jump = armed_copy; jump != nullptr) {
    armed_copy = nullptr;
    siglongjmp(*jump, 1);
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
    struct sigaction action {};
    action.sa_sigaction = OnBusError;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGBUS, &action, &previous_bus_action);
  });
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

bool CopyUnlessBusError(void* destination, const void* source, size_t size) {
  InstallBusHandler();
  sigjmp_buf jump;
  // Saves the signal mask, so that the jump out of the handler restores it.
  if (sigsetjmp(jump, 1) != 0) return false;
  armed_copy = &jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(destination, source, size);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  armed_copy = nullptr;
  return true;
}

SharedMemoryRegion::~SharedMemoryRegion() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

absl::Status SharedMemoryRegion::Check(uint64_t offset, uint64_t size, const char* what) const {
  if (offset > byte_size_ || size > byte_size_ - offset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shared memory region '%s': %s %d bytes at offset %d, but it has %d bytes",
                        name_, what, size, offset, byte_size_));
  }
  // The common way to lose the pages: the owner truncated or replaced the object. Said here;
  // a truncation during the copy is caught by the copy.
  struct stat st {};
  if (fstat(fd_, &st) != 0 || static_cast<uint64_t>(st.st_size) < offset_ + offset + size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': its object '%s' no longer holds bytes %d to %d (truncated "
        "by its owner?); register it again",
        name_, key_, offset_ + offset, offset_ + offset + size));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegion::Read(uint64_t offset, uint64_t size, void* destination) const {
  if (absl::Status st = Check(offset, size, "reading"); !st.ok()) return st;
  if (!CopyUnlessBusError(destination, base_ + offset, size)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': its object '%s' shrank while it was read", name_, key_));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegion::Write(uint64_t offset, const void* source, uint64_t size) const {
  if (absl::Status st = Check(offset, size, "writing"); !st.ok()) return st;
  if (!CopyUnlessBusError(base_ + offset, source, size)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shared memory region '%s': its object '%s' shrank while it was written", name_, key_));
  }
  return absl::OkStatus();
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
  absl::MutexLock lock(&mu_);
  // Checked again: another registration may have come in while this one was mapped.
  if (absl::Status st = CanAdd(name, byte_size); !st.ok()) return st;
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
