// CUDA labeler (docs/MATH.md, "Decoding") and the dense probabilities σ(2s).
//
// The labels are the `want` largest keys among the entries a predicate admits, where a key
// orders by score descending and then column ascending (distinct for every column). Each row
// is read from memory once, in chunks of kLabelChunk keys that a block holds in shared memory;
// there radix selection (8-bit histogram passes from the top, stopping as soon as the bucket
// at the boundary is taken whole) finds the want-th largest key, and the <= want keys at or
// above it are collected. A row that fits one chunk is labelled by one block, which ranks the
// few winners among themselves (the row is never sorted). A longer row is first reduced, chunk
// by chunk in parallel, to the keys that can still win (each chunk's top_k passing keys and
// min_labels best others: any label of the row is among its chunk's), and those candidates are
// labelled the same way (reduced again while they exceed a chunk).
#include <algorithm>
#include <utility>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_launch.h"

namespace zlpr::cuda {
namespace {

template <typename T>
__global__ void ProbabilitiesKernel(const T* __restrict__ scores, const uint8_t* __restrict__ mask,
                                    int64_t n, float* __restrict__ probs) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = ToFloat(scores[i]);
    const bool kept = s != -INFINITY && (mask == nullptr || mask[i] != 0);
    probs[i] = kept ? Sigmoid2(s) : 0.0f;
  }
}

constexpr int kLabelThreads = 256;  // also the histogram's 256 buckets, one per thread

// --- Keys ------------------------------------------------------------------------------------

// A key orders entries by score descending, then column ascending: the score's bits made
// unsigned-ordered in the high word, the column's complement in the low word. Keys of one row
// are distinct; 0 is no entry's key (it would be a NaN's) and marks an empty slot.
__device__ __forceinline__ uint32_t OrderedBits(float s) {
  const uint32_t u = s == 0.0f ? 0u : __float_as_uint(s);  // -0 and +0 are one score
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t LabelKey(float s, int64_t c) {
  return (static_cast<uint64_t>(OrderedBits(s)) << 32) |
         static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(c));
}

__device__ __forceinline__ int64_t KeyColumn(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

__device__ __forceinline__ float KeyScore(uint64_t key) {
  const uint32_t o = static_cast<uint32_t>(key >> 32);
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

// Where a row's keys come from: its scores (and mask) ...
template <typename T>
struct ScoreSource {
  const T* scores;
  const uint8_t* mask;
  int64_t cols;
  __device__ __forceinline__ int64_t size() const { return cols; }
  __device__ __forceinline__ uint64_t Key(int64_t row, int64_t i) const {
    const int64_t at = row * cols + i;
    const float v = (mask != nullptr && mask[at] == 0) ? -INFINITY : ToFloat(scores[at]);
    return LabelKey(v, i);
  }
};
// ... or the candidates an earlier pass kept (n per row, 0 for an empty slot).
struct KeySource {
  const uint64_t* keys;
  int64_t n;
  __device__ __forceinline__ int64_t size() const { return n; }
  __device__ __forceinline__ uint64_t Key(int64_t row, int64_t i) const {
    return keys[row * n + i];
  }
};

// --- Which entries a selection admits ----------------------------------------------------------

struct Thresholds {
  const float* z;  // per column, or null for z_global
  float z_global;
  __device__ __forceinline__ bool Passes(uint64_t key) const {
    const float v = KeyScore(key);
    return v > (z != nullptr ? z[KeyColumn(key)] : z_global);
  }
};

// The first selection: entries above their threshold.
struct Passing {
  Thresholds th;
  __device__ __forceinline__ bool operator()(uint64_t key) const {
    return key != 0 && th.Passes(key);
  }
};

// The top-up: unexcluded entries the first selection did not take.
struct NotSelected {
  Thresholds th;
  bool first_all;
  uint64_t first_kth;
  __device__ __forceinline__ bool operator()(uint64_t key) const {
    if (key == 0 || KeyScore(key) == -INFINITY) return false;
    return !(th.Passes(key) && (first_all || key >= first_kth));
  }
};

// --- Selection among keys held in shared memory ---------------------------------------------

struct LabelShared {
  uint64_t keys[kLabelChunk];
  uint64_t picked[kMaxGpuLabels];
  unsigned hist[256];
  uint64_t prefix, prefix_mask;
  int remaining, total, npicked;
  bool done;
};

// Loads keys [begin, begin + n) of `row` into sh.keys.
template <typename Source>
__device__ __forceinline__ void LoadKeys(const Source& src, int64_t row, int64_t begin, int n,
                                         LabelShared& sh) {
  for (int i = threadIdx.x; i < n; i += kLabelThreads) sh.keys[i] = src.Key(row, begin + i);
  __syncthreads();
}

// Among sh.keys[0, n) that `pred` admits, the `want` largest: returns how many there are
// (min(want, admitted)); *all when every admitted key is in, else *kth is a bound such that
// the admitted keys >= *kth are exactly the `want` largest. Radix selection, 8 bits a pass
// from the top; the first pass also counts, and the passes stop as soon as the bucket that
// holds the boundary is taken whole.
template <typename Pred>
__device__ int SelectLargest(const Pred& pred, int n, int want, LabelShared& sh, bool* all,
                             uint64_t* kth) {
  __syncthreads();           // the caller's last reads of sh are done
  sh.hist[threadIdx.x] = 0;  // kLabelThreads == 256 bins
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.prefix_mask = 0;
    sh.remaining = want;
    sh.done = false;
  }
  __syncthreads();
  const unsigned lane = threadIdx.x % 32;
  for (int shift = 56; shift >= 0; shift -= 8) {
    const uint64_t prefix = sh.prefix, mask = sh.prefix_mask;
    // Whole warps every round (no lane leaves early): lanes that hit the same bucket add
    // together, one atomic per bucket and warp (a skewed row would serialize them otherwise).
    for (int base = 0; base < n; base += kLabelThreads) {
      const int i = base + static_cast<int>(threadIdx.x);
      const uint64_t key = i < n ? sh.keys[i] : 0;
      const bool hit = key != 0 && (key & mask) == prefix && pred(key);
      const unsigned bucket = hit ? static_cast<unsigned>((key >> shift) & 0xFFu) : 256u;
      const unsigned peers = __match_any_sync(0xFFFFFFFFu, bucket);
      if (hit && lane == static_cast<unsigned>(__ffs(peers) - 1)) {
        atomicAdd(&sh.hist[bucket], static_cast<unsigned>(__popc(peers)));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // The first warp finds the bucket that holds the boundary: lane l holds buckets
      // [8l, 8l + 8); sums over the lanes above give each lane the count above its buckets.
      unsigned h[8], local = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        h[j] = sh.hist[lane * 8 + j];
        local += h[j];
      }
      unsigned suffix = local;  // buckets of this lane and the lanes above
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned v = __shfl_down_sync(0xFFFFFFFFu, suffix, off);
        if (lane + off < 32) suffix += v;
      }
      const unsigned total = __shfl_sync(0xFFFFFFFFu, suffix, 0);
      const bool first = shift == 56;
      if (first && total <= static_cast<unsigned>(want)) {
        if (lane == 0) {
          sh.total = static_cast<int>(total);
          sh.done = true;
        }
      } else {
        if (first && lane == 0) sh.total = static_cast<int>(total);
        const unsigned remaining = static_cast<unsigned>(sh.remaining);
        __syncwarp();  // every lane has read sh.remaining before one lane rewrites it
        unsigned cum = suffix - local;                 // in the buckets above this lane's
        if (cum < remaining && remaining <= suffix) {  // exactly one lane
          for (int j = 7; j >= 0; --j) {
            if (cum + h[j] >= remaining) {
              const uint64_t b = lane * 8 + static_cast<unsigned>(j);
              sh.done = cum + h[j] == remaining;  // the whole bucket is in: no finer pass
              sh.remaining = static_cast<int>(remaining - cum);
              sh.prefix |= b << shift;
              sh.prefix_mask |= 0xFFull << shift;
              break;
            }
            cum += h[j];
          }
        }
      }
    }
    __syncthreads();
    if (sh.done) break;
    sh.hist[threadIdx.x] = 0;
    __syncthreads();
  }
  if (sh.total <= want) {
    *all = true;
    *kth = 0;
    return sh.total;
  }
  *all = false;
  *kth = sh.prefix;  // decided bits, lower bits 0
  return want;
}

// The keys a selection took, in no order, into out[0, n) (which may be shared or global).
template <typename Pred>
__device__ void Collect(const Pred& pred, int nkeys, bool all, uint64_t kth, int n, LabelShared& sh,
                        uint64_t* out) {
  if (threadIdx.x == 0) sh.npicked = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < nkeys; i += kLabelThreads) {
    const uint64_t key = sh.keys[i];
    if (pred(key) && (all || key >= kth)) {
      const int slot = atomicAdd(&sh.npicked, 1);
      if (slot < n) out[slot] = key;  // exactly n qualify; never write past them
    }
  }
  __syncthreads();
}

// Ranks the n picked keys (largest first) and writes their columns and probabilities.
__device__ void WriteRanked(int n, const LabelShared& sh, int32_t* labels, float* probs) {
  for (int i = threadIdx.x; i < n; i += kLabelThreads) {
    const uint64_t key = sh.picked[i];
    int rank = 0;
    for (int j = 0; j < n; ++j) rank += sh.picked[j] > key ? 1 : 0;
    labels[rank] = static_cast<int32_t>(KeyColumn(key));
    probs[rank] = Sigmoid2(KeyScore(key));
  }
}

// --- Kernels ---------------------------------------------------------------------------------

// One block per row whose keys fit shared memory: the labels, ranked.
template <typename Source>
__global__ void __launch_bounds__(kLabelThreads)
    FinalLabelKernel(Source src, Thresholds th, uint32_t top_k, uint32_t min_labels, int cap,
                     int32_t* out_labels, float* out_probs, int32_t* out_count) {
  __shared__ LabelShared sh;
  const int64_t row = blockIdx.x;
  const int n = static_cast<int>(src.size());
  LoadKeys(src, row, 0, n, sh);
  int32_t* labels = out_labels + row * cap;
  float* probs = out_probs + row * cap;
  const Passing passing{th};
  bool all1;
  uint64_t kth1;
  const int n1 = SelectLargest(passing, n, static_cast<int>(top_k), sh, &all1, &kth1);
  Collect(passing, n, all1, kth1, n1, sh, sh.picked);
  WriteRanked(n1, sh, labels, probs);
  int n2 = 0;
  if (static_cast<int>(min_labels) > n1) {
    const NotSelected rest{th, all1, kth1};
    bool all2;
    uint64_t kth2;
    n2 = SelectLargest(rest, n, static_cast<int>(min_labels) - n1, sh, &all2, &kth2);
    Collect(rest, n, all2, kth2, n2, sh, sh.picked);
    WriteRanked(n2, sh, labels + n1, probs + n1);
  }
  if (threadIdx.x == 0) out_count[row] = n1 + n2;
}

// Grid (rows, chunks): each block keeps, of its chunk of a row, the keys that can still be
// labels: the top_k largest passing keys, then the min_labels largest of the rest (a label
// of the whole row is among its chunk's: the chunk's larger keys are labels too). Writes
// top_k + min_labels slots per chunk, unused ones 0.
template <typename Source>
__global__ void __launch_bounds__(kLabelThreads)
    ReduceLabelKernel(Source src, Thresholds th, uint32_t top_k, uint32_t min_labels,
                      uint64_t* out) {
  __shared__ LabelShared sh;
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  const int64_t begin = chunk * kLabelChunk;
  const int64_t left = src.size() - begin;
  const int n = static_cast<int>(left < kLabelChunk ? left : kLabelChunk);
  const int64_t per = top_k + min_labels;
  uint64_t* mine = out + (row * gridDim.y + chunk) * per;
  LoadKeys(src, row, begin, n, sh);
  const Passing passing{th};
  bool all1;
  uint64_t kth1;
  const int n1 = SelectLargest(passing, n, static_cast<int>(top_k), sh, &all1, &kth1);
  Collect(passing, n, all1, kth1, n1, sh, mine);
  int n2 = 0;
  if (min_labels > 0) {
    const NotSelected rest{th, all1, kth1};
    bool all2;
    uint64_t kth2;
    n2 = SelectLargest(rest, n, static_cast<int>(min_labels), sh, &all2, &kth2);
    Collect(rest, n, all2, kth2, n2, sh, mine + top_k);
  }
  for (int64_t i = n1 + threadIdx.x; i < top_k; i += kLabelThreads) mine[i] = 0;
  for (int64_t i = n2 + threadIdx.x; i < min_labels; i += kLabelThreads) mine[top_k + i] = 0;
}

int64_t Chunks(int64_t n) { return (n + kLabelChunk - 1) / kLabelChunk; }

}  // namespace

absl::Status LaunchProbabilities(const void* scores, DType dtype, const uint8_t* mask, int64_t rows,
                                 int64_t cols, float* probs, const DeviceInfo& device,
                                 cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return absl::OkStatus();
  // A grid-stride loop: enough blocks to fill every SM several times over, no more.
  const int64_t max_blocks = static_cast<int64_t>(std::max(device.sm_count, 1)) * 16;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, max_blocks));
  return DispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ProbabilitiesKernel<<<blocks, 256, 0, stream>>>(static_cast<const T*>(scores), mask, n, probs);
    return CudaError(cudaGetLastError(), "probabilities kernel launch");
  });
}

size_t LabelerWorkspaceBytes(int64_t rows, int64_t cols, uint32_t top_k, uint32_t min_labels) {
  if (cols <= kLabelChunk) return 0;
  // Ping: the first reduction's output (n keys a row); pong: the second's, at most
  // ceil(n / chunk) * per <= n / 2 + per keys a row (per <= 2048 < chunk / 2 + 1); later rounds
  // are smaller still and take turns in the two.
  const int64_t per = static_cast<int64_t>(top_k) + min_labels;
  const int64_t n = Chunks(cols) * per;
  return static_cast<size_t>(rows * (n + n / 2 + per)) * sizeof(uint64_t);
}

absl::Status LaunchLabeler(const DeviceLabelArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return absl::OkStatus();
  if (a.top_k == 0 || a.cap < 1 || a.cap > kMaxGpuLabels ||
      a.top_k > static_cast<uint32_t>(a.cap) || a.min_labels > static_cast<uint32_t>(a.cap)) {
    return absl::InvalidArgumentError("GPU labeler: needs 1 <= top_k, min_labels <= cap <= 1024");
  }
  if (a.cols > kLabelChunk && a.workspace == nullptr) {
    return absl::InvalidArgumentError("GPU labeler: rows this long need a workspace");
  }
  if (a.cols > int64_t{65535} * kLabelChunk) {
    return absl::InvalidArgumentError("GPU labeler: more than 65535 chunks of columns");
  }
  const Thresholds th{a.z, a.z_global};
  const unsigned rows = static_cast<unsigned>(a.rows);
  return DispatchDType(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScoreSource<T> scores{static_cast<const T*>(a.scores), a.mask, a.cols};
    if (a.cols <= kLabelChunk) {
      FinalLabelKernel<<<rows, kLabelThreads, 0, stream>>>(scores, th, a.top_k, a.min_labels, a.cap,
                                                           a.labels, a.probs, a.count);
      return CudaError(cudaGetLastError(), "labeler kernel launch");
    }
    // Reduce each row chunk by chunk to its candidates until they fit one block, then label.
    const int64_t per = static_cast<int64_t>(a.top_k) + a.min_labels;
    auto* ping = static_cast<uint64_t*>(a.workspace);
    auto* pong = ping + a.rows * Chunks(a.cols) * per;
    int64_t chunks = Chunks(a.cols);
    ReduceLabelKernel<<<dim3(rows, static_cast<unsigned>(chunks)), kLabelThreads, 0, stream>>>(
        scores, th, a.top_k, a.min_labels, ping);
    int64_t n = chunks * per;
    while (n > kLabelChunk) {  // per <= 2048: each round at least halves n
      chunks = Chunks(n);
      ReduceLabelKernel<<<dim3(rows, static_cast<unsigned>(chunks)), kLabelThreads, 0, stream>>>(
          KeySource{ping, n}, th, a.top_k, a.min_labels, pong);
      std::swap(ping, pong);
      n = chunks * per;
    }
    FinalLabelKernel<<<rows, kLabelThreads, 0, stream>>>(
        KeySource{ping, n}, th, a.top_k, a.min_labels, a.cap, a.labels, a.probs, a.count);
    return CudaError(cudaGetLastError(), "labeler kernel launch");
  });
}

}  // namespace zlpr::cuda
