// CUDA labeler (docs/MATH.md, "Decoding") and the dense probabilities σ(2s).
//
// One block per row. The labels are the `want` largest keys among the entries a predicate
// admits, where a key orders by score descending and then column ascending (distinct for every
// column). They are found by radix selection: one counting pass, then up to eight 8-bit
// histogram passes over the row fix the want-th largest key exactly; the <= want entries at or
// above it are collected and ranked among themselves. The row is never sorted: a top-k of a
// 10^5-column row touches the row a few times and ranks only k keys.
#include <algorithm>
#include <cub/block/block_reduce.cuh>

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

constexpr int kLabelThreads = 256;

__device__ __forceinline__ uint32_t OrderedBits(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t LabelKey(float s, int64_t c) {
  return (static_cast<uint64_t>(OrderedBits(s)) << 32) |
         static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(c));
}

__device__ __forceinline__ int64_t KeyColumn(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

template <typename T>
struct LabelRow {
  const T* s;
  const uint8_t* m;
  const float* z;
  float z_global;
  int64_t cols;
  __device__ __forceinline__ float Score(int64_t c) const {
    const float v = ToFloat(s[c]);
    return (m != nullptr && m[c] == 0) ? -INFINITY : v;
  }
  __device__ __forceinline__ bool Passes(float v, int64_t c) const {
    return v > (z != nullptr ? z[c] : z_global);
  }
};

// The first selection: entries above their threshold.
template <typename T>
struct Passing {
  const LabelRow<T>* row;
  __device__ __forceinline__ bool operator()(float v, int64_t c, uint64_t) const {
    return row->Passes(v, c);
  }
};

// The top-up: unexcluded entries the first selection did not take.
template <typename T>
struct NotSelected {
  const LabelRow<T>* row;
  bool first_all;
  uint64_t first_kth;
  __device__ __forceinline__ bool operator()(float v, int64_t c, uint64_t key) const {
    if (v == -INFINITY) return false;
    return !(row->Passes(v, c) && (first_all || key >= first_kth));
  }
};

struct LabelShared {
  unsigned hist[256];
  uint64_t keys[kMaxGpuLabels];
  int nkeys;
  uint64_t prefix, prefix_mask;
  int remaining;
  int total;
};

// Among the entries `pred` admits, the `want` largest keys: returns how many there are
// (min(want, admitted)); *all when every admitted entry is in, else *kth is the smallest key in.
template <typename T, typename Pred>
__device__ int SelectLargest(const LabelRow<T>& row, const Pred& pred, int want, LabelShared& sh,
                             bool* all, uint64_t* kth) {
  using BlockReduce = cub::BlockReduce<int, kLabelThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  int local = 0;
  for (int64_t c = threadIdx.x; c < row.cols; c += kLabelThreads) {
    const float v = row.Score(c);
    local += pred(v, c, LabelKey(v, c)) ? 1 : 0;
  }
  const int total = BlockReduce(temp).Sum(local);
  if (threadIdx.x == 0) sh.total = total;
  __syncthreads();
  if (sh.total <= want) {
    *all = true;
    *kth = 0;
    return sh.total;
  }
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.prefix_mask = 0;
    sh.remaining = want;
  }
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kLabelThreads) sh.hist[b] = 0;
    __syncthreads();
    const uint64_t prefix = sh.prefix, mask = sh.prefix_mask;
    for (int64_t c = threadIdx.x; c < row.cols; c += kLabelThreads) {
      const float v = row.Score(c);
      const uint64_t key = LabelKey(v, c);
      if ((key & mask) == prefix && pred(v, c, key)) {
        atomicAdd(&sh.hist[(key >> shift) & 0xFFu], 1u);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int cum = 0;
      for (int b = 255; b >= 0; --b) {
        const int h = static_cast<int>(sh.hist[b]);
        if (cum + h >= sh.remaining) {
          sh.remaining -= cum;
          sh.prefix |= static_cast<uint64_t>(b) << shift;
          sh.prefix_mask |= 0xFFull << shift;
          break;
        }
        cum += h;
      }
    }
    __syncthreads();
  }
  *all = false;
  *kth = sh.prefix;  // keys are distinct: the full prefix is the want-th largest key
  return want;
}

// Collects the selected entries' keys, ranks them (largest first) and writes columns and
// probabilities to out_labels/out_probs[0, n).
template <typename T, typename Pred>
__device__ void WriteSelected(const LabelRow<T>& row, const Pred& pred, bool all, uint64_t kth,
                              int n, LabelShared& sh, int32_t* out_labels, float* out_probs) {
  if (threadIdx.x == 0) sh.nkeys = 0;
  __syncthreads();
  for (int64_t c = threadIdx.x; c < row.cols; c += kLabelThreads) {
    const float v = row.Score(c);
    const uint64_t key = LabelKey(v, c);
    if (pred(v, c, key) && (all || key >= kth)) {
      const int slot = atomicAdd(&sh.nkeys, 1);
      if (slot < n) sh.keys[slot] = key;  // exactly n qualify; never write past them
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += kLabelThreads) {
    const uint64_t key = sh.keys[i];
    int rank = 0;
    for (int j = 0; j < n; ++j) rank += sh.keys[j] > key ? 1 : 0;
    const int64_t c = KeyColumn(key);
    if (rank < n) {
      out_labels[rank] = static_cast<int32_t>(c);
      out_probs[rank] = Sigmoid2(row.Score(c));
    }
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kLabelThreads) LabelKernel(DeviceLabelArgs a) {
  __shared__ LabelShared sh;
  const int64_t r = blockIdx.x;
  LabelRow<T> row{static_cast<const T*>(a.scores) + r * a.cols,
                  a.mask != nullptr ? a.mask + r * a.cols : nullptr, a.z, a.z_global, a.cols};
  int32_t* labels = a.labels + r * a.cap;
  float* probs = a.probs + r * a.cap;
  bool all1;
  uint64_t kth1;
  const Passing<T> passing{&row};
  const int n1 = SelectLargest(row, passing, static_cast<int>(a.top_k), sh, &all1, &kth1);
  WriteSelected(row, passing, all1, kth1, n1, sh, labels, probs);
  int n2 = 0;
  if (static_cast<int>(a.min_labels) > n1) {
    const NotSelected<T> rest{&row, all1, kth1};
    bool all2;
    uint64_t kth2;
    n2 = SelectLargest(row, rest, static_cast<int>(a.min_labels) - n1, sh, &all2, &kth2);
    WriteSelected(row, rest, all2, kth2, n2, sh, labels + n1, probs + n1);
  }
  if (threadIdx.x == 0) a.count[r] = n1 + n2;
}

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

absl::Status LaunchLabeler(const DeviceLabelArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return absl::OkStatus();
  if (args.top_k == 0 || args.cap < 1 || args.cap > kMaxGpuLabels ||
      args.top_k > static_cast<uint32_t>(args.cap) ||
      args.min_labels > static_cast<uint32_t>(args.cap)) {
    return absl::InvalidArgumentError("GPU labeler: needs 1 <= top_k, min_labels <= cap <= 1024");
  }
  return DispatchDType(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    LabelKernel<T><<<static_cast<unsigned>(args.rows), kLabelThreads, 0, stream>>>(args);
    return CudaError(cudaGetLastError(), "labeler kernel launch");
  });
}

}  // namespace zlpr::cuda
