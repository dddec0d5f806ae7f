// The CUDA backend: validates on the host, stages inputs through pinned buffers, and pipelines
// row chunks over two streams so that copies overlap the kernels of the neighbouring chunk.
// Device and pinned buffers grow to the largest batch seen and are then reused: no allocation
// on the steady-state path.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kernels/cuda_launch.h"
#ifdef ZLPR_CUDA_FAULT_INJECTION
#include "kernels/cuda_fault_testing.h"
#endif
#include "kernels/thread_pool.h"
#include "kernels/validate.h"
#include "kernels/zlpr.h"

namespace zlpr {
namespace {

using cuda::CudaError;

// Bytes of input per pipelined chunk: big enough to keep the kernels efficient, small enough
// that the first copy and the last kernel are a small share of a large batch.
constexpr int64_t kChunkBytes = 8 << 20;
constexpr int kStreams = 2;

// What the device buffers of one backend hold together, against its limit (0: none).
struct DeviceAccount {
  int64_t limit = 0;
  int64_t held = 0;
};

// Memory that only grows, by at least half its size each time, so a run of slowly growing
// batches does not reallocate on every call. Device memory and page-locked host memory differ
// only in their allocator; device memory is counted in a DeviceAccount.
template <cudaError_t (*Alloc)(void**, size_t), cudaError_t (*Free)(void*)>
class GrowBuffer {
 public:
  GrowBuffer() = default;
  GrowBuffer(const GrowBuffer&) = delete;
  GrowBuffer& operator=(const GrowBuffer&) = delete;
  ~GrowBuffer() { Release(nullptr); }

  // At least `bytes`; RESOURCE_EXHAUSTED when they do not fit the account's limit or the
  // allocator refuses them (the buffer is then empty). `what` names the buffer in errors.
  absl::Status Reserve(size_t bytes, DeviceAccount* account, const char* what) {
    if (bytes <= capacity_) return absl::OkStatus();
    size_t want = std::max(bytes, capacity_ + capacity_ / 2);
    if (account != nullptr && account->limit > 0) {
      const int64_t others = account->held - static_cast<int64_t>(capacity_);
      if (others + static_cast<int64_t>(want) > account->limit) want = bytes;  // no slack
      if (others + static_cast<int64_t>(want) > account->limit) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "CUDA device memory: %s needs %d bytes, and with the %d bytes the other buffers "
            "hold that is over this server's limit of %d bytes (--cuda_memory_limit_bytes)",
            what, bytes, others, account->limit));
      }
    }
    Release(account);
    const cudaError_t err = Alloc(&ptr_, want);
    if (err != cudaSuccess) {
      ptr_ = nullptr;
      // Any other error (a broken context fails allocations too) is the device's: INTERNAL.
      if (err != cudaErrorMemoryAllocation) return CudaError(err, what);
      cudaGetLastError();  // not sticky: clear it, or the next launch check would report it
      size_t free_bytes = 0, total_bytes = 0;
      if (account != nullptr) cudaMemGetInfo(&free_bytes, &total_bytes);
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          account != nullptr
              ? absl::StrFormat("CUDA device memory: %s needs %d bytes; the device has %d of "
                                "%d bytes free (%s)",
                                what, want, free_bytes, total_bytes, cudaGetErrorString(err))
              : absl::StrFormat("page-locked host memory: %s needs %d bytes (%s)", what, want,
                                cudaGetErrorString(err)));
    }
    capacity_ = want;
    if (account != nullptr) account->held += static_cast<int64_t>(want);
    return absl::OkStatus();
  }
  // Frees the memory now.
  void Release(DeviceAccount* account) {
    if (ptr_ != nullptr) Free(ptr_);
    if (account != nullptr) account->held -= static_cast<int64_t>(capacity_);
    ptr_ = nullptr;
    capacity_ = 0;
  }
  template <typename T = char>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t capacity() const { return capacity_; }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

cudaError_t DeviceAlloc(void** p, size_t n) { return cudaMalloc(p, n); }
cudaError_t HostAlloc(void** p, size_t n) { return cudaMallocHost(p, n); }
using DeviceBuffer = GrowBuffer<DeviceAlloc, cudaFree>;
using PinnedBuffer = GrowBuffer<HostAlloc, cudaFreeHost>;

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, std::string name, int major, int minor, int sms,
              const CudaOptions& options)
      : device_(device),
        name_(std::move(name)),
        minor_(minor),
        info_{.sm_count = sms, .major = major},
        pool_(HostThreads()),
        cpu_(NewCpuBackend({.threads = HostThreads()})) {
    account_.limit = options.memory_limit_bytes;
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    ReleaseBuffers();
    for (cudaStream_t s : streams_) {
      if (s != nullptr) cudaStreamDestroy(s);
    }
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  absl::Status Init() {
    ZLPR_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    for (cudaStream_t& s : streams_) {
      ZLPR_RETURN_IF_ERROR(
          CudaError(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
    }
    return absl::OkStatus();
  }

  BackendKind kind() const override { return BackendKind::kCuda; }
  std::string Describe() const override {
    return absl::StrFormat("cuda:%d (%s, sm_%d%d, %d SMs)", device_, name_, info_.major, minor_,
                           info_.sm_count);
  }
  int64_t DeviceMemoryBytes() const override { return account_.held; }
  absl::Status health() const override { return broken_; }

  using Backend::Label;
  using Backend::Loss;
  absl::Status Loss(const ValidatedLossInput& valid, const LossOutput& out) override {
    return Guarded([&] { return LossOnDevice(valid, out); });
  }
  absl::Status Label(const ValidatedLabelerInput& valid, LabelSets* out, float* probs) override {
    return Guarded([&] { return LabelOnDevice(valid, out, probs); });
  }

#ifdef ZLPR_CUDA_FAULT_INJECTION
  void InjectFault(bool breaks_context) {
    inject_.store(breaks_context ? Fault::kTrap : Fault::kLaunch);
  }
#endif

 protected:
  internal::ThreadPool* validation_pool() override { return &pool_; }

 private:
  absl::Status LossOnDevice(const ValidatedLossInput& valid, const LossOutput& out);
  absl::Status LabelOnDevice(const ValidatedLabelerInput& valid, LabelSets* out, float* probs);

  // Runs one batch's device work and handles what failed: a batch that did not fit is tried
  // once more from empty buffers (stale ones from larger batches may be what is in the way),
  // then refused; after any other error the device is checked (Recover).
  template <typename F>
  absl::Status Guarded(const F& work) {
    if (!broken_.ok()) return broken_;
    absl::Status st = CudaError(cudaSetDevice(device_), "cudaSetDevice");
#ifdef ZLPR_CUDA_FAULT_INJECTION
    switch (inject_.exchange(Fault::kNone)) {
      case Fault::kNone:
        break;
      case Fault::kTrap:  // fails the work below, when it next waits on the device
        if (st.ok()) st = cuda::LaunchFaultForTesting(streams_[0], /*trap=*/true);
        break;
      case Fault::kLaunch:  // a launch the runtime refuses: this call fails at once
        if (st.ok()) st = cuda::LaunchFaultForTesting(streams_[0], /*trap=*/false);
        if (st.ok()) st = absl::InternalError("the injected launch was not refused");
        break;
    }
#endif
    if (st.ok()) st = work();
    if (st.code() == absl::StatusCode::kResourceExhausted && account_.held > 0) {
      ReleaseBuffers();
      st = work();
    }
    if (st.code() == absl::StatusCode::kResourceExhausted) {
      ReleaseBuffers();
    } else if (st.code() == absl::StatusCode::kInternal) {
      Recover(st);
    }
    return st;
  }

  // After a CUDA error: a device that still synchronizes cleanly was hit by a one-off error
  // (a launch refused, say), and the backend goes on. One whose context is broken (an illegal
  // address, a trap: every later CUDA call fails) cannot be used by this process again: CUDA
  // documents that such a process must end, and a device reset followed by cudaSetDevice was
  // refused on the H200 we tried it on (cudaErrorDevicesUnavailable). The backend then answers
  // UNAVAILABLE for good, and the server reports NOT_SERVING so that it is restarted.
  void Recover(const absl::Status& cause) {
    const cudaError_t sync = cudaDeviceSynchronize();
    const cudaError_t last = cudaGetLastError();
    if (sync == cudaSuccess && last == cudaSuccess) return;
    broken_ = absl::UnavailableError(absl::StrFormat(
        "cuda:%d is unusable after a CUDA error (%s); the process must be restarted to use it "
        "again",
        device_, cause.message()));
    std::fprintf(stderr, "zlpr-server: %s\n", std::string(broken_.message()).c_str());
  }

  std::array<DeviceBuffer*, 15> DeviceBuffers() {
    return {&scores_,    &labels_,     &mask_,      &loss_,      &grad_,
            &workspace_, &splits_,     &indices_,   &values_,    &probs_,
            &z_,         &out_labels_, &out_probs_, &out_count_, &label_ws_};
  }
  void ReleaseBuffers() {
    for (DeviceBuffer* b : DeviceBuffers()) b->Release(&account_);
    pinned_in_.Release(nullptr);
    pinned_out_.Release(nullptr);
  }

  // Host copies into and out of page-locked memory, spread over the host threads: on one
  // thread they were the bottleneck (on the H200, a 256x16384 loss+gradient took 6952 us host
  // to host against 34 us of kernel; 1941 us spread over 8 threads: bench/RESULTS.md).
  static constexpr size_t kCopyPiece = 1 << 20;
  void Copy(void* dst, const void* src, size_t bytes) {
    if (bytes <= kCopyPiece) {
      std::memcpy(dst, src, bytes);
      return;
    }
    pool_.ParallelFor(static_cast<int64_t>((bytes + kCopyPiece - 1) / kCopyPiece), [&](int64_t i) {
      const size_t at = static_cast<size_t>(i) * kCopyPiece;
      std::memcpy(static_cast<char*>(dst) + at, static_cast<const char*>(src) + at,
                  std::min(kCopyPiece, bytes - at));
    });
  }
  // Elements [off, off + n) of `data` (of `dtype`) widened to float into `out`, likewise.
  void Widen(const void* data, DType dtype, int64_t off, int64_t n, float* out) {
    constexpr int64_t kPiece = kCopyPiece / 4;
    pool_.ParallelFor((n + kPiece - 1) / kPiece, [&](int64_t i) {
      const int64_t at = i * kPiece;
      WidenToFloat(ElementAt(data, dtype, off + at), std::min(kPiece, n - at), dtype, out + at);
    });
  }

  static int HostThreads() { return std::clamp(internal::UsableCpus(), 1, 8); }
  absl::Status EventAt(size_t k, cudaEvent_t* event) {
    while (events_.size() <= k) {
      cudaEvent_t e;
      ZLPR_RETURN_IF_ERROR(
          CudaError(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
      events_.push_back(e);
    }
    *event = events_[k];
    return absl::OkStatus();
  }

  const int device_;
  const std::string name_;
  const int minor_;
  const cuda::DeviceInfo info_;  // read once from the device's properties
  internal::ThreadPool pool_;
  std::unique_ptr<Backend> cpu_;
  cudaStream_t streams_[kStreams] = {};
  std::vector<cudaEvent_t> events_;
  DeviceBuffer scores_, labels_, mask_, loss_, grad_, workspace_, splits_, indices_, values_,
      probs_, z_, out_labels_, out_probs_, out_count_, label_ws_;
  PinnedBuffer pinned_in_, pinned_out_;
  DeviceAccount account_;
  absl::Status broken_;  // OK, or why the device is unusable for good
#ifdef ZLPR_CUDA_FAULT_INJECTION
  enum class Fault { kNone, kTrap, kLaunch };
  std::atomic<Fault> inject_{Fault::kNone};  // the fault-injection hook (test builds only)
#endif
};

absl::Status CudaBackend::LossOnDevice(const ValidatedLossInput& valid, const LossOutput& out) {
  const LossInput& in = valid.get();
  ZLPR_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
  const int64_t rows = in.scores.rows, cols = in.scores.cols, n = rows * cols;
  const size_t es = DTypeSize(in.scores.dtype);
  const auto* sparse = std::get_if<SparseLabelsView>(&in.labels);
  const auto* dense = std::get_if<MatrixView>(&in.labels);
  const bool want_grad = out.grad != nullptr;

  // Pinned input layout: [sparse arrays][scores][labels][mask]; output: [loss][grad].
  size_t sparse_bytes = 0, nnz = 0;
  if (sparse != nullptr) {
    nnz = sparse->indices.size();
    sparse_bytes = (rows + 1) * 8 + nnz * 4 + sparse->values.size() * 4;
  }
  const size_t scores_bytes = n * es, labels_bytes = dense != nullptr ? n * 4 : 0;
  const size_t mask_bytes = in.mask != nullptr ? n : 0;
  ZLPR_RETURN_IF_ERROR(pinned_in_.Reserve(sparse_bytes + scores_bytes + labels_bytes + mask_bytes,
                                          nullptr, "the staged input"));
  ZLPR_RETURN_IF_ERROR(
      pinned_out_.Reserve(rows * 4 + (want_grad ? n * 4 : 0), nullptr, "the staged output"));
  ZLPR_RETURN_IF_ERROR(scores_.Reserve(scores_bytes, &account_, "the scores"));
  ZLPR_RETURN_IF_ERROR(labels_.Reserve(n * 4, &account_, "the labels"));
  ZLPR_RETURN_IF_ERROR(mask_.Reserve(mask_bytes, &account_, "the mask"));
  ZLPR_RETURN_IF_ERROR(loss_.Reserve(rows * 4, &account_, "the losses"));
  if (want_grad) ZLPR_RETURN_IF_ERROR(grad_.Reserve(n * 4, &account_, "the gradient"));
  ZLPR_RETURN_IF_ERROR(
      workspace_.Reserve(cuda::LossWorkspaceBytes(rows, cols), &account_, "the loss workspace"));

  char* pin = pinned_in_.get();
  if (sparse != nullptr) {
    ZLPR_RETURN_IF_ERROR(splits_.Reserve((rows + 1) * 8, &account_, "the sparse row splits"));
    ZLPR_RETURN_IF_ERROR(
        indices_.Reserve(std::max<size_t>(nnz, 1) * 4, &account_, "the sparse indices"));
    ZLPR_RETURN_IF_ERROR(values_.Reserve(std::max<size_t>(sparse->values.size(), 1) * 4, &account_,
                                         "the sparse values"));
    std::memcpy(pin, sparse->row_splits.data(), (rows + 1) * 8);
    std::memcpy(pin + (rows + 1) * 8, sparse->indices.data(), nnz * 4);
    if (!sparse->values.empty()) {
      std::memcpy(pin + (rows + 1) * 8 + nnz * 4, sparse->values.data(), nnz * 4);
    }
    cudaStream_t s0 = streams_[0];
    ZLPR_RETURN_IF_ERROR(CudaError(
        cudaMemcpyAsync(splits_.get(), pin, (rows + 1) * 8, cudaMemcpyHostToDevice, s0), "H2D"));
    ZLPR_RETURN_IF_ERROR(CudaError(
        cudaMemcpyAsync(indices_.get(), pin + (rows + 1) * 8, nnz * 4, cudaMemcpyHostToDevice, s0),
        "H2D"));
    if (!sparse->values.empty()) {
      ZLPR_RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(values_.get(), pin + (rows + 1) * 8 + nnz * 4,
                                                     nnz * 4, cudaMemcpyHostToDevice, s0),
                                     "H2D"));
    }
    cudaEvent_t uploaded;
    ZLPR_RETURN_IF_ERROR(EventAt(0, &uploaded));
    ZLPR_RETURN_IF_ERROR(CudaError(cudaEventRecord(uploaded, s0), "cudaEventRecord"));
    for (int k = 1; k < kStreams; ++k) {
      ZLPR_RETURN_IF_ERROR(CudaError(cudaStreamWaitEvent(streams_[k], uploaded, 0), "wait"));
    }
    pin += sparse_bytes;
  }
  char* pin_scores = pin;
  float* pin_labels = reinterpret_cast<float*>(pin_scores + scores_bytes);
  uint8_t* pin_mask = reinterpret_cast<uint8_t*>(pin_scores + scores_bytes + labels_bytes);
  float* pin_loss = reinterpret_cast<float*>(pinned_out_.get());
  float* pin_grad = pin_loss + rows;

  const int64_t bytes_per_row = cols * (static_cast<int64_t>(es) + 4 + (in.mask ? 1 : 0));
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkBytes / bytes_per_row);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t r0 = k * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
    const int64_t cn = (r1 - r0) * cols, off = r0 * cols;
    cudaStream_t s = streams_[k % kStreams];
    Copy(pin_scores + off * es, static_cast<const char*>(in.scores.data) + off * es, cn * es);
    ZLPR_RETURN_IF_ERROR(
        CudaError(cudaMemcpyAsync(scores_.get<char>() + off * es, pin_scores + off * es, cn * es,
                                  cudaMemcpyHostToDevice, s),
                  "H2D scores"));
    float* d_labels = labels_.get<float>() + off;
    if (dense != nullptr) {
      Widen(dense->data, dense->dtype, off, cn, pin_labels + off);
      ZLPR_RETURN_IF_ERROR(
          CudaError(cudaMemcpyAsync(d_labels, pin_labels + off, cn * 4, cudaMemcpyHostToDevice, s),
                    "H2D labels"));
    } else {
      ZLPR_RETURN_IF_ERROR(cuda::LaunchDensifyLabels(
          splits_.get<int64_t>() + r0, indices_.get<int32_t>(),
          sparse->values.empty() ? nullptr : values_.get<float>(), r1 - r0, cols, d_labels, s));
    }
    const uint8_t* d_mask = nullptr;
    if (in.mask != nullptr) {
      Copy(pin_mask + off, in.mask + off, cn);
      ZLPR_RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(mask_.get<uint8_t>() + off, pin_mask + off, cn,
                                                     cudaMemcpyHostToDevice, s),
                                     "H2D mask"));
      d_mask = mask_.get<uint8_t>() + off;
    }
    cuda::DeviceLossArgs args;
    args.scores = scores_.get<char>() + off * es;
    args.dtype = in.scores.dtype;
    args.labels = d_labels;
    args.mask = d_mask;
    args.rows = r1 - r0;
    args.cols = cols;
    args.loss = loss_.get<float>() + r0;
    args.grad = want_grad ? grad_.get<float>() + off : nullptr;
    char* ws = workspace_.get<char>() + cuda::LossWorkspaceBytes(r0, cols);
    ZLPR_RETURN_IF_ERROR(cuda::LaunchLoss(args, ws, info_, /*allow_clusters=*/true, s));
    ZLPR_RETURN_IF_ERROR(CudaError(
        cudaMemcpyAsync(pin_loss + r0, args.loss, (r1 - r0) * 4, cudaMemcpyDeviceToHost, s),
        "D2H loss"));
    if (want_grad) {
      ZLPR_RETURN_IF_ERROR(
          CudaError(cudaMemcpyAsync(pin_grad + off, args.grad, cn * 4, cudaMemcpyDeviceToHost, s),
                    "D2H grad"));
    }
    cudaEvent_t done;
    ZLPR_RETURN_IF_ERROR(EventAt(static_cast<size_t>(k) + 1, &done));
    ZLPR_RETURN_IF_ERROR(CudaError(cudaEventRecord(done, s), "cudaEventRecord"));
  }
  // Copy each chunk out as soon as it lands, while later chunks are still running.
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t r0 = k * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
    ZLPR_RETURN_IF_ERROR(CudaError(cudaEventSynchronize(events_[k + 1]), "loss kernels"));
    std::memcpy(out.loss + r0, pin_loss + r0, (r1 - r0) * 4);
    if (want_grad) Copy(out.grad + r0 * cols, pin_grad + r0 * cols, (r1 - r0) * cols * 4);
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::LabelOnDevice(const ValidatedLabelerInput& valid, LabelSets* out,
                                        float* probs) {
  const LabelerInput& in = valid.get();
  const LabelerOptions& opt = in.options;
  // Validation caps top_k and min_labels at the column count (< 2^31), so the cap fits an int.
  const int64_t cap = std::max(opt.top_k, opt.min_labels);
  // Without a cap every selected label is returned in order, which is a sort of the selected
  // entries: the CPU labeler does that; the GPU one handles the capped (top-k) labeler.
  if (opt.top_k == 0 || cap > cuda::kMaxGpuLabels) return cpu_->Label(valid, out, probs);
  ZLPR_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
  const int64_t rows = in.scores.rows, cols = in.scores.cols, n = rows * cols;
  const size_t sb = n * DTypeSize(in.scores.dtype), mb = in.mask != nullptr ? n : 0;
  const size_t zb = opt.label_thresholds != nullptr ? cols * 4 : 0;
  const size_t ob = static_cast<size_t>(rows) * cap * 4;
  ZLPR_RETURN_IF_ERROR(pinned_in_.Reserve(sb + mb + zb, nullptr, "the staged input"));
  ZLPR_RETURN_IF_ERROR(pinned_out_.Reserve(2 * ob + rows * 4 + (probs != nullptr ? n * 4 : 0),
                                           nullptr, "the staged output"));
  ZLPR_RETURN_IF_ERROR(scores_.Reserve(sb, &account_, "the scores"));
  ZLPR_RETURN_IF_ERROR(mask_.Reserve(mb, &account_, "the mask"));
  ZLPR_RETURN_IF_ERROR(z_.Reserve(zb, &account_, "the per-label thresholds"));
  ZLPR_RETURN_IF_ERROR(out_labels_.Reserve(ob, &account_, "the label lists"));
  ZLPR_RETURN_IF_ERROR(out_probs_.Reserve(ob, &account_, "the label probabilities"));
  ZLPR_RETURN_IF_ERROR(out_count_.Reserve(rows * 4, &account_, "the label counts"));
  if (probs != nullptr) ZLPR_RETURN_IF_ERROR(probs_.Reserve(n * 4, &account_, "the probabilities"));
  ZLPR_RETURN_IF_ERROR(
      label_ws_.Reserve(cuda::LabelerWorkspaceBytes(rows, cols, opt.top_k, opt.min_labels),
                        &account_, "the labeler workspace"));
  cudaStream_t s = streams_[0];
  char* pin = pinned_in_.get();
  Copy(pin, in.scores.data, sb);
  if (in.mask != nullptr) Copy(pin + sb, in.mask, mb);
  if (zb > 0) {
    auto* z = reinterpret_cast<float*>(pin + sb + mb);
    for (int64_t c = 0; c < cols; ++c) z[c] = internal::ScoreThreshold(opt.label_thresholds[c]);
  }
  ZLPR_RETURN_IF_ERROR(
      CudaError(cudaMemcpyAsync(scores_.get(), pin, sb, cudaMemcpyHostToDevice, s), "H2D"));
  if (mb > 0) {
    ZLPR_RETURN_IF_ERROR(
        CudaError(cudaMemcpyAsync(mask_.get(), pin + sb, mb, cudaMemcpyHostToDevice, s), "H2D"));
  }
  if (zb > 0) {
    ZLPR_RETURN_IF_ERROR(
        CudaError(cudaMemcpyAsync(z_.get(), pin + sb + mb, zb, cudaMemcpyHostToDevice, s), "H2D"));
  }
  const uint8_t* d_mask = mb > 0 ? mask_.get<uint8_t>() : nullptr;
  cuda::DeviceLabelArgs args;
  args.scores = scores_.get();
  args.dtype = in.scores.dtype;
  args.mask = d_mask;
  args.z = zb > 0 ? z_.get<float>() : nullptr;
  args.z_global = internal::ScoreThreshold(opt.threshold);
  args.rows = rows;
  args.cols = cols;
  args.top_k = opt.top_k;
  args.min_labels = opt.min_labels;
  args.cap = static_cast<int>(cap);
  args.labels = out_labels_.get<int32_t>();
  args.probs = out_probs_.get<float>();
  args.count = out_count_.get<int32_t>();
  args.workspace = label_ws_.get();
  ZLPR_RETURN_IF_ERROR(cuda::LaunchLabeler(args, s));
  char* pout = pinned_out_.get();
  auto* h_labels = reinterpret_cast<int32_t*>(pout);
  auto* h_probs = reinterpret_cast<float*>(pout + ob);
  auto* h_count = reinterpret_cast<int32_t*>(pout + 2 * ob);
  auto* h_dense = reinterpret_cast<float*>(pout + 2 * ob + rows * 4);
  ZLPR_RETURN_IF_ERROR(
      CudaError(cudaMemcpyAsync(h_labels, args.labels, ob, cudaMemcpyDeviceToHost, s), "D2H"));
  ZLPR_RETURN_IF_ERROR(
      CudaError(cudaMemcpyAsync(h_probs, args.probs, ob, cudaMemcpyDeviceToHost, s), "D2H"));
  ZLPR_RETURN_IF_ERROR(
      CudaError(cudaMemcpyAsync(h_count, args.count, rows * 4, cudaMemcpyDeviceToHost, s), "D2H"));
  if (probs != nullptr) {
    ZLPR_RETURN_IF_ERROR(cuda::LaunchProbabilities(scores_.get(), in.scores.dtype, d_mask, rows,
                                                   cols, probs_.get<float>(), info_, s));
    ZLPR_RETURN_IF_ERROR(
        CudaError(cudaMemcpyAsync(h_dense, probs_.get(), n * 4, cudaMemcpyDeviceToHost, s), "D2H"));
  }
  ZLPR_RETURN_IF_ERROR(CudaError(cudaStreamSynchronize(s), "labeler kernels"));
  out->row_offsets.resize(static_cast<size_t>(rows) + 1);
  out->row_offsets[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    // The counts come from the device: check them before they size or index anything here.
    if (h_count[r] < 0 || h_count[r] > cap) {
      return absl::InternalError(absl::StrFormat(
          "GPU labeler: row %d reported %d labels, outside [0, %d]", r, h_count[r], cap));
    }
    out->row_offsets[r + 1] = out->row_offsets[r] + h_count[r];
  }
  out->labels.resize(static_cast<size_t>(out->row_offsets[rows]));
  out->probs.resize(out->labels.size());
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(h_labels + r * cap, h_count[r], out->labels.begin() + out->row_offsets[r]);
    std::copy_n(h_probs + r * cap, h_count[r], out->probs.begin() + out->row_offsets[r]);
  }
  if (probs != nullptr) Copy(probs, h_dense, n * 4);
  return absl::OkStatus();
}

}  // namespace

bool CudaBuilt() { return true; }

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error
    return 0;
  }
  return count;
}

std::string CudaUnavailableReason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    // The runtime says "driver version is insufficient" also when there is no driver at all.
    if (e == cudaErrorInsufficientDriver) {
      if (void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL); driver != nullptr) {
        dlclose(driver);
      } else {
        return "no NVIDIA driver: libcuda.so.1 is not found (in a container, run it with "
               "--gpus all or the NVIDIA device plugin)";
      }
    }
    return absl::StrFormat("%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return count > 0 ? "" : "no CUDA device is visible";
}

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int device, const CudaOptions& options) {
  const int count = CudaDeviceCount();
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cuda:%d: not visible (%d CUDA device%s visible)", device, count, count == 1 ? "" : "s"));
  }
  cudaDeviceProp prop;
  ZLPR_RETURN_IF_ERROR(
      CudaError(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  if (options.memory_limit_bytes < 0) {
    return absl::InvalidArgumentError("CUDA memory limit: must be >= 0 (0: no limit)");
  }
  auto backend = std::make_unique<CudaBackend>(device, prop.name, prop.major, prop.minor,
                                               prop.multiProcessorCount, options);
  ZLPR_RETURN_IF_ERROR(backend->Init());
  return backend;
}

#ifdef ZLPR_CUDA_FAULT_INJECTION
bool InjectCudaFaultForTesting(Backend& backend, bool breaks_context) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (cuda == nullptr) return false;
  cuda->InjectFault(breaks_context);
  return true;
}
#endif

}  // namespace zlpr
