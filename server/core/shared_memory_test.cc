// SharedMemoryRegistry against real POSIX shared-memory objects: registration and its refusals,
// copies in and out, and an object its owner truncates (before a request and while it uses it).
#include "server/core/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace zlpr::server {
namespace {

using ::testing::HasSubstr;

// A shared-memory object of `bytes`, removed with the test.
class Object {
 public:
  explicit Object(size_t bytes) : key_(absl::StrCat("/zlpr_shm_test_", getpid(), "_", counter_++)) {
    fd_ = shm_open(key_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0);
  }
  ~Object() {
    close(fd_);
    shm_unlink(key_.c_str());
  }
  const std::string& key() const { return key_; }
  void Truncate(size_t bytes) { ASSERT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0); }
  void Fill(size_t offset, const std::string& bytes) {
    ASSERT_EQ(pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes.size()));
  }
  std::string Bytes(size_t offset, size_t n) {
    std::string out(n, '\0');
    EXPECT_EQ(pread(fd_, out.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
    return out;
  }

 private:
  static inline int counter_ = 0;
  std::string key_;
  int fd_ = -1;
};

TEST(SharedMemoryTest, ARegionIsReadAndWrittenAtItsOffset) {
  Object object(3 * 4096);
  SharedMemoryRegistry registry({});
  // An offset that is not page-aligned: the mapping starts at the page before it.
  ASSERT_TRUE(registry.Register("r", object.key(), 5000, 3000).ok());
  object.Fill(5000 + 10, "hello");
  auto region = registry.Find("r");
  ASSERT_TRUE(region.ok());
  std::string got(5, '\0');
  ASSERT_TRUE((*region)->Read(10, 5, got.data()).ok());
  EXPECT_EQ(got, "hello");
  ASSERT_FALSE((*region)->Write(2995, "world-", 6).ok());  // 2995 + 6 > 3000
  ASSERT_TRUE((*region)->Write(2994, "world-", 6).ok());
  EXPECT_EQ(object.Bytes(5000 + 2994, 6), "world-");
  auto status = registry.Status("");
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->size(), 1u);
  EXPECT_EQ((*status)[0].key, object.key());
  EXPECT_EQ((*status)[0].offset, 5000u);
  EXPECT_EQ((*status)[0].byte_size, 3000u);
}

TEST(SharedMemoryTest, RangesAreCheckedWithoutOverflow) {
  Object object(4096);
  SharedMemoryRegistry registry({});
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4096).ok());
  auto region = *registry.Find("r");
  char byte;
  for (auto [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {4096, 1}, {0, 4097}, {UINT64_MAX, 2}, {1, UINT64_MAX}, {UINT64_MAX, UINT64_MAX}}) {
    const absl::Status st = region->Read(offset, size, &byte);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << offset << " " << size;
    EXPECT_THAT(std::string(st.message()), HasSubstr("but it has 4096 bytes"));
  }
  EXPECT_TRUE(region->Read(4095, 1, &byte).ok());
  EXPECT_TRUE(region->Read(4096, 0, &byte).ok());
}

TEST(SharedMemoryTest, RegistrationsThatCannotWorkAreRefusedWithTheirReason) {
  Object object(8192);
  SharedMemoryRegistry registry({.max_regions = 2, .max_bytes = 10000});
  auto code = [&](const std::string& name, const std::string& key, uint64_t offset, uint64_t size) {
    return registry.Register(name, key, offset, size).code();
  };
  EXPECT_EQ(code("", object.key(), 0, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("a/b", object.key(), 0, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("r", "/a/../../etc/passwd", 0, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("r", "", 0, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("r", "/zlpr_no_such_object_here", 0, 10), absl::StatusCode::kNotFound);
  EXPECT_EQ(code("r", object.key(), 0, 0), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("r", object.key(), 8000, 1000),
            absl::StatusCode::kInvalidArgument);  // past its end
  EXPECT_EQ(code("r", object.key(), UINT64_MAX - 5, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("r", object.key(), 0, 20000), absl::StatusCode::kInvalidArgument);  // > max_bytes
  ASSERT_EQ(code("r", object.key(), 0, 6000), absl::StatusCode::kOk);
  EXPECT_EQ(code("r", object.key(), 0, 100), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code("s", object.key(), 0, 5000), absl::StatusCode::kResourceExhausted);  // bytes
  ASSERT_EQ(code("s", object.key(), 0, 4000), absl::StatusCode::kOk);
  EXPECT_EQ(code("t", object.key(), 0, 1), absl::StatusCode::kResourceExhausted);  // regions
  EXPECT_EQ(registry.Status("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Find("nope").status().code(), absl::StatusCode::kInvalidArgument);
  registry.Unregister("nope");  // no error
  registry.Unregister("r");
  EXPECT_EQ(code("t", object.key(), 0, 1), absl::StatusCode::kOk);
  registry.Unregister("");
  EXPECT_TRUE(registry.Status("")->empty());
}

TEST(SharedMemoryTest, ARegionInUseStaysMappedAfterItIsUnregistered) {
  Object object(4096);
  object.Fill(0, "kept");
  SharedMemoryRegistry registry({});
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4096).ok());
  auto region = *registry.Find("r");
  registry.Unregister("r");
  std::string got(4, '\0');
  ASSERT_TRUE(region->Read(0, 4, got.data()).ok());
  EXPECT_EQ(got, "kept");
}

TEST(SharedMemoryTest, AnObjectItsOwnerTruncatedGivesAnErrorNotACrash) {
  Object object(4 * 4096);
  SharedMemoryRegistry registry({});
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4 * 4096).ok());
  auto region = *registry.Find("r");
  object.Truncate(4096);
  std::vector<char> buffer(4 * 4096);
  absl::Status st = region->Read(0, buffer.size(), buffer.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("no longer holds bytes 0 to 16384"));
  st = region->Write(0, buffer.data(), buffer.size());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(region->Read(0, 4096, buffer.data()).ok());  // what is left still reads
}

// The race the size check cannot see: the pages go after the check, while a request reads and
// writes the region in place (as a kernel does, on any thread). The accesses see zeros instead
// of ending the process; the region is lost from then on, even once the object grows back, since
// its mapping no longer follows the object; a region beside it is untouched.
TEST(SharedMemoryTest, PagesThatGoWhileARequestUsesThemReadAsZerosAndTheRegionIsLost) {
  Object object(4 * 4096), other(4096);
  object.Fill(0, "head");
  object.Fill(3 * 4096, "tail");
  other.Fill(0, "kept");
  SharedMemoryRegistry registry({});
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4 * 4096).ok());
  ASSERT_TRUE(registry.Register("o", other.key(), 0, 4096).ok());
  auto region = *registry.Find("r");
  absl::StatusOr<char*> bytes = region->Span(0, 4 * 4096);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  char* p = *bytes;
  ASSERT_TRUE(region->Verify(0, 4 * 4096).ok());
  object.Truncate(4096);
  std::thread([p] {
    volatile char* v = p;
    EXPECT_EQ(v[3 * 4096], 0);  // was 't'
    v[2 * 4096] = 'x';          // goes nowhere
    EXPECT_EQ(v[2 * 4096], 'x');
  }).join();
  EXPECT_EQ(std::string(p, 4), "head");  // the page still backed is still the object's
  absl::Status st = region->Verify(0, 4096);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("shrank while the server had it mapped"));
  object.Truncate(4 * 4096);
  EXPECT_EQ(region->Verify(0, 4096).code(), absl::StatusCode::kInvalidArgument);
  std::string got(4, '\0');
  EXPECT_EQ(region->Read(0, 4, got.data()).code(), absl::StatusCode::kInvalidArgument);
  auto beside = *registry.Find("o");
  ASSERT_TRUE(beside->Read(0, 4, got.data()).ok());
  EXPECT_EQ(got, "kept");
  // Registered again, the region follows the object once more.
  registry.Unregister("r");
  region.reset();
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4 * 4096).ok());
  EXPECT_TRUE((*registry.Find("r"))->Read(0, 4, got.data()).ok());
  EXPECT_EQ(got, "head");
}

// A SIGBUS outside every region keeps its usual effect: the process ends.
TEST(SharedMemoryDeathTest, ABusErrorOutsideTheRegionsStillEndsTheProcess) {
  Object object(2 * 4096);
  SharedMemoryRegistry registry({});  // installs the handler
  ASSERT_TRUE(registry.Register("r", object.key(), 0, 4096).ok());
  EXPECT_DEATH(
      {
        const int fd = shm_open(object.key().c_str(), O_RDWR, 0);
        auto* map = static_cast<volatile char*>(
            mmap(nullptr, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        object.Truncate(0);
        map[4096] = 1;
      },
      "");
}

}  // namespace
}  // namespace zlpr::server
