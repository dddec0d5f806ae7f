// CUDA kernels of the ZLPR loss, its gradient and the probabilities σ(2s).
//
// Why they look like this: the loss is bandwidth-bound (8 bytes read per entry, 4 more written
// for the gradient, a handful of flops), so every kernel reads each entry once from HBM with
// 16-byte loads where the row length allows, keeps the row in registers, and evaluates both
// log-sum-exp terms online in that single pass (docs/zlpr-math.md, "Stable evaluation"). The
// gradient needs the row's final P and N, so it is written by the same kernel from the values
// still in registers:
//   - rows of up to 1024 columns: one warp per row (cub::WarpReduce);
//   - up to 16384 columns: one block per row (cub::BlockReduce);
//   - longer rows: fixed 16384-column segments, one block each. On Hopper, a row of up to 8
//     segments is one thread-block cluster whose blocks swap their partial states through
//     distributed shared memory and write the gradient from registers (still one pass); else
//     the partial states go to global memory, are merged in segment order, and the gradient
//     kernel re-reads the row.
// The kernel shape and every reduction order depend on the column count alone, so a row's bits
// never depend on the batch it came in (batch invariance), and partial states merge in a fixed
// order (determinism).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <string>

#include "kernels/cuda_launch.h"

namespace zlpr::cuda {
namespace {

namespace cg = cooperative_groups;

// --- Online log-sum-exp ------------------------------------------------------------------

// Σ w·e^{v - m} over the values seen, with m = max(0, values): every exponent is <= 0.
struct Lse {
  float m;
  float r;
};
struct RowState {
  Lse p, n;
};

__device__ __forceinline__ void Accumulate(Lse& st, float v, float w) {
  if (v > st.m) {
    st.r = st.r * expf(st.m - v) + w;
    st.m = v;
  } else {
    st.r += w * expf(v - st.m);
  }
}

// Symmetric in its arguments to the bit (float + and * commute), so any reduction tree that
// is fixed for a given size gives fixed bits.
__device__ __forceinline__ Lse Merge(const Lse& a, const Lse& b) {
  const float m = fmaxf(a.m, b.m);
  return {m, a.r * expf(a.m - m) + b.r * expf(b.m - m)};
}

struct RowStateMerge {
  __device__ __forceinline__ RowState operator()(const RowState& a, const RowState& b) const {
    return {Merge(a.p, b.p), Merge(a.n, b.n)};
  }
};

// Adds entry (s, t) to both terms; s = -inf marks an excluded entry.
__device__ __forceinline__ void AddEntry(RowState& st, float s, float t) {
  if (s == -INFINITY) return;
  if (t > 0.0f) Accumulate(st.p, -s, t);
  if (t < 1.0f) Accumulate(st.n, s, 1.0f - t);
}

// What the gradient needs from a finished row: m and 1 / (e^{-m} + r) per term.
struct RowTotals {
  float mp, inv_dp, mn, inv_dn, loss;
};

__device__ __forceinline__ float LseValue(const Lse& l) {
  return l.m == 0.0f ? log1pf(l.r) : l.m + logf(expf(-l.m) + l.r);
}

__device__ __forceinline__ RowTotals Finish(const RowState& st) {
  RowTotals t;
  t.mp = st.p.m;
  t.mn = st.n.m;
  t.inv_dp = 1.0f / (expf(-st.p.m) + st.p.r);
  t.inv_dn = 1.0f / (expf(-st.n.m) + st.n.r);
  t.loss = LseValue(st.p) + LseValue(st.n);
  return t;
}

// ∂L/∂s = (1-t)·e^{s-N} - t·e^{-s-P}, each term only where its weight is non-zero.
__device__ __forceinline__ float Grad(const RowTotals& tot, float s, float t) {
  if (s == -INFINITY) return 0.0f;
  float g = 0.0f;
  if (t < 1.0f) g += (1.0f - t) * expf(s - tot.mn) * tot.inv_dn;
  if (t > 0.0f) g -= t * expf(-s - tot.mp) * tot.inv_dp;
  return g;
}

// --- Loads and stores --------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToFloat(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// A register type of exactly `Bytes` bytes, so a vector load is one instruction.
template <int Bytes>
struct Raw;
template <>
struct Raw<1> {
  using type = uint8_t;
};
template <>
struct Raw<2> {
  using type = uint16_t;
};
template <>
struct Raw<4> {
  using type = uint32_t;
};
template <>
struct Raw<8> {
  using type = uint2;
};
template <>
struct Raw<16> {
  using type = uint4;
};

// Loads V consecutive elements at p (aligned to V elements) widened to float.
template <int V, typename T>
__device__ __forceinline__ void LoadVec(const T* __restrict__ p, float* out) {
  using R = typename Raw<V * sizeof(T)>::type;
  const R raw = __ldg(reinterpret_cast<const R*>(p));
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = ToFloat(e[k]);
}
template <int V>
__device__ __forceinline__ void LoadMask(const uint8_t* __restrict__ p, uint8_t* out) {
  using R = typename Raw<V>::type;
  const R raw = *reinterpret_cast<const R*>(p);
  const uint8_t* e = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = e[k];
}
template <int V>
__device__ __forceinline__ void StoreVec(float* __restrict__ p, const float* v) {
  using R = typename Raw<V * 4>::type;
  R raw;
  float* e = reinterpret_cast<float*>(&raw);
#pragma unroll
  for (int k = 0; k < V; ++k) e[k] = v[k];
  *reinterpret_cast<R*>(p) = raw;
}

template <typename T>
struct Args {
  const T* scores;
  const float* labels;
  const uint8_t* mask;
  int64_t rows, cols;
  float* loss;
  float* grad;
};

// One row's span [begin, end) held in registers by a group of G threads: thread `lane` owns
// the V-wide vectors at (i * G + lane) * V, i < E / V.
template <typename T, int G, int E, int V>
struct Tile {
  float s[E];
  float t[E];

  __device__ __forceinline__ void Load(const Args<T>& a, int64_t row, int64_t begin, int64_t end,
                                       int lane) {
    const int64_t base = row * a.cols;
#pragma unroll
    for (int i = 0; i < E / V; ++i) {
      const int64_t c = begin + (static_cast<int64_t>(i) * G + lane) * V;
      if (c < end) {
        LoadVec<V>(a.scores + base + c, &s[i * V]);
        LoadVec<V>(a.labels + base + c, &t[i * V]);
        if (a.mask != nullptr) {
          uint8_t m[V];
          LoadMask<V>(a.mask + base + c, m);
#pragma unroll
          for (int k = 0; k < V; ++k) s[i * V + k] = m[k] ? s[i * V + k] : -INFINITY;
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          s[i * V + k] = -INFINITY;
          t[i * V + k] = 0.0f;
        }
      }
    }
  }

  __device__ __forceinline__ RowState Reduce() const {
    RowState st{{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
    for (int k = 0; k < E; ++k) AddEntry(st, s[k], t[k]);
    return st;
  }

  __device__ __forceinline__ void StoreGrad(const Args<T>& a, const RowTotals& tot, int64_t row,
                                            int64_t begin, int64_t end, int lane) const {
#pragma unroll
    for (int i = 0; i < E / V; ++i) {
      const int64_t c = begin + (static_cast<int64_t>(i) * G + lane) * V;
      if (c < end) {
        float g[V];
#pragma unroll
        for (int k = 0; k < V; ++k) g[k] = Grad(tot, s[i * V + k], t[i * V + k]);
        StoreVec<V>(a.grad + row * a.cols + c, g);
      }
    }
  }
};

// Block-wide reduction of a RowState, result in every thread.
template <int G>
__device__ __forceinline__ RowState BlockAllReduce(const RowState& st) {
  using BlockReduce = cub::BlockReduce<RowState, G>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ RowState total;
  const RowState r = BlockReduce(temp).Reduce(st, RowStateMerge());
  if (threadIdx.x == 0) total = r;
  __syncthreads();
  return total;
}

// --- Whole rows on chip ------------------------------------------------------------------

// One warp per row; kRowsPerBlock rows per block.
template <typename T, int E, int V>
__global__ void __launch_bounds__(128) WarpRowKernel(Args<T> a) {
  constexpr int kWarps = 4;
  using WarpReduce = cub::WarpReduce<RowState>;
  __shared__ typename WarpReduce::TempStorage temp[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.rows) return;
  Tile<T, 32, E, V> tile;
  tile.Load(a, row, 0, a.cols, lane);
  RowState st = WarpReduce(temp[warp]).Reduce(tile.Reduce(), RowStateMerge());
  st.p.m = __shfl_sync(0xffffffffu, st.p.m, 0);
  st.p.r = __shfl_sync(0xffffffffu, st.p.r, 0);
  st.n.m = __shfl_sync(0xffffffffu, st.n.m, 0);
  st.n.r = __shfl_sync(0xffffffffu, st.n.r, 0);
  const RowTotals tot = Finish(st);
  if (lane == 0) a.loss[row] = tot.loss;
  if (a.grad != nullptr) tile.StoreGrad(a, tot, row, 0, a.cols, lane);
}

// One block of G threads per row.
template <typename T, int G, int E, int V>
__global__ void __launch_bounds__(G) BlockRowKernel(Args<T> a) {
  const int64_t row = blockIdx.x;
  Tile<T, G, E, V> tile;
  tile.Load(a, row, 0, a.cols, threadIdx.x);
  const RowTotals tot = Finish(BlockAllReduce<G>(tile.Reduce()));
  if (threadIdx.x == 0) a.loss[row] = tot.loss;
  if (a.grad != nullptr) tile.StoreGrad(a, tot, row, 0, a.cols, threadIdx.x);
}

// --- Long rows: fixed segments -----------------------------------------------------------

constexpr int kSegThreads = 512;
constexpr int kSegItems = static_cast<int>(kSegmentColumns / kSegThreads);  // 32
constexpr int kMaxClusterSegments = 8;  // the portable cluster size

__device__ __forceinline__ RowState MergeInOrder(const RowState* states, int n) {
  RowState st{{0.0f, 0.0f}, {0.0f, 0.0f}};
  for (int k = 0; k < n; ++k) st = RowStateMerge()(st, states[k]);
  return st;
}

// Grid (segments, rows): each block reduces its segment to states[row * segments + segment].
template <typename T, int V>
__global__ void __launch_bounds__(kSegThreads) SegmentStateKernel(Args<T> a, RowState* states) {
  const int64_t row = blockIdx.y, seg = blockIdx.x;
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  Tile<T, kSegThreads, kSegItems, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  const RowState st = BlockAllReduce<kSegThreads>(tile.Reduce());
  if (threadIdx.x == 0) states[row * gridDim.x + seg] = st;
}

// One thread per row: merges the segment states in order and writes the loss.
__global__ void SegmentLossKernel(const RowState* states, int segments, int64_t rows, float* loss) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < rows) loss[row] = Finish(MergeInOrder(states + row * segments, segments)).loss;
}

// Grid (segments, rows): re-reads the segment and writes its gradient (and block 0 the loss).
template <typename T, int V>
__global__ void __launch_bounds__(kSegThreads)
    SegmentGradKernel(Args<T> a, const RowState* states) {
  const int64_t row = blockIdx.y, seg = blockIdx.x;
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  __shared__ RowTotals shared_tot;
  if (threadIdx.x == 0) {
    shared_tot = Finish(MergeInOrder(states + row * gridDim.x, static_cast<int>(gridDim.x)));
    if (seg == 0) a.loss[row] = shared_tot.loss;
  }
  Tile<T, kSegThreads, kSegItems, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  __syncthreads();
  tile.StoreGrad(a, shared_tot, row, begin, end, threadIdx.x);
}

// Hopper: grid (segments, rows) in clusters of (segments, 1, 1). One pass: the blocks of a
// row exchange their segment states through distributed shared memory.
template <typename T, int V>
__global__ void __launch_bounds__(kSegThreads) ClusterRowKernel(Args<T> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ RowState mine;
  __shared__ RowTotals shared_tot;
  const int64_t row = blockIdx.y;
  const int seg = static_cast<int>(cluster.block_rank());
  const int segments = static_cast<int>(cluster.num_blocks());
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  Tile<T, kSegThreads, kSegItems, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  const RowState st = BlockAllReduce<kSegThreads>(tile.Reduce());
  if (threadIdx.x == 0) mine = st;
  cluster.sync();
  if (threadIdx.x == 0) {
    RowState all[kMaxClusterSegments];
    for (int k = 0; k < segments; ++k) all[k] = *cluster.map_shared_rank(&mine, k);
    shared_tot = Finish(MergeInOrder(all, segments));
    if (seg == 0) a.loss[row] = shared_tot.loss;
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
  tile.StoreGrad(a, shared_tot, row, begin, end, threadIdx.x);
#else
  __trap();  // launched only on devices of compute capability 9.0 and up
#endif
}

// --- Probabilities and densified labels --------------------------------------------------

template <typename T>
__global__ void ProbabilitiesKernel(const T* __restrict__ scores, const uint8_t* __restrict__ mask,
                                    int64_t n, float* __restrict__ probs) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = ToFloat(scores[i]);
    float p = 0.0f;
    if (s != -INFINITY && (mask == nullptr || mask[i] != 0)) {
      const float e = expf(-2.0f * fabsf(s));
      const float inv = 1.0f / (1.0f + e);
      p = s >= 0.0f ? inv : e * inv;
    }
    probs[i] = p;
  }
}

__global__ void DensifyKernel(const int64_t* __restrict__ row_splits,
                              const int32_t* __restrict__ indices, const float* __restrict__ values,
                              int64_t cols, float* __restrict__ labels) {
  const int64_t row = blockIdx.x;
  for (int64_t k = row_splits[row] + threadIdx.x; k < row_splits[row + 1]; k += blockDim.x) {
    labels[row * cols + indices[k]] = values != nullptr ? values[k] : 1.0f;
  }
}

// --- Labeler ------------------------------------------------------------------------------
//
// One block per row. The labels are the `want` largest keys among the entries a predicate
// admits, where a key orders by score descending and then column ascending (distinct for every
// column). They are found by radix selection: one counting pass, then up to eight 8-bit
// histogram passes over the row fix the want-th largest key exactly; the <= want entries at or
// above it are collected and ranked among themselves. The row is never sorted.

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

__device__ __forceinline__ float Sigmoid2(float s) {
  const float e = expf(-2.0f * fabsf(s));
  const float inv = 1.0f / (1.0f + e);
  return s >= 0.0f ? inv : e * inv;
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
    if (pred(v, c, key) && (all || key >= kth)) sh.keys[atomicAdd(&sh.nkeys, 1)] = key;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += kLabelThreads) {
    const uint64_t key = sh.keys[i];
    int rank = 0;
    for (int j = 0; j < n; ++j) rank += sh.keys[j] > key ? 1 : 0;
    const int64_t c = KeyColumn(key);
    out_labels[rank] = static_cast<int32_t>(c);
    out_probs[rank] = Sigmoid2(row.Score(c));
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

// --- Launchers ---------------------------------------------------------------------------

int64_t Segments(int64_t cols) { return (cols + kSegmentColumns - 1) / kSegmentColumns; }

int DeviceMajor() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return 0;
  }
  return major;
}

template <typename T, int V>
absl::Status LaunchLossTyped(const Args<T>& a, void* workspace, bool allow_clusters,
                             cudaStream_t stream) {
  const int64_t cols = a.cols;
  const unsigned rows = static_cast<unsigned>(a.rows);
  if (cols <= 256) {
    WarpRowKernel<T, 8, V><<<(rows + 3) / 4, 128, 0, stream>>>(a);
  } else if (cols <= 1024) {
    WarpRowKernel<T, 32, V><<<(rows + 3) / 4, 128, 0, stream>>>(a);
  } else if (cols <= 4096) {
    BlockRowKernel<T, 128, 32, V><<<rows, 128, 0, stream>>>(a);
  } else if (cols <= kSegmentColumns) {
    BlockRowKernel<T, kSegThreads, kSegItems, V><<<rows, kSegThreads, 0, stream>>>(a);
  } else {
    const int64_t segments = Segments(cols);
    const dim3 grid(static_cast<unsigned>(segments), rows);
    if (allow_clusters && a.grad != nullptr && segments <= kMaxClusterSegments &&
        DeviceMajor() >= 9) {
      cudaLaunchConfig_t config = {};
      config.gridDim = grid;
      config.blockDim = dim3(kSegThreads);
      config.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = static_cast<unsigned>(segments);
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      config.attrs = attr;
      config.numAttrs = 1;
      const cudaError_t err = cudaLaunchKernelEx(&config, ClusterRowKernel<T, V>, a);
      if (err != cudaSuccess) return CudaError(err, "cluster loss kernel launch");
    } else {
      auto* states = static_cast<RowState*>(workspace);
      SegmentStateKernel<T, V><<<grid, kSegThreads, 0, stream>>>(a, states);
      if (a.grad != nullptr) {
        SegmentGradKernel<T, V><<<grid, kSegThreads, 0, stream>>>(a, states);
      } else {
        SegmentLossKernel<<<(rows + 127) / 128, 128, 0, stream>>>(
            states, static_cast<int>(segments), a.rows, a.loss);
      }
    }
  }
  return CudaError(cudaGetLastError(), "loss kernel launch");
}

template <typename T>
absl::Status LaunchLossForType(const DeviceLossArgs& d, void* workspace, bool allow_clusters,
                               cudaStream_t stream) {
  const Args<T> a{
      static_cast<const T*>(d.scores), d.labels, d.mask, d.rows, d.cols, d.loss, d.grad};
  // 16-byte label and gradient loads need rows that start on 4-float boundaries.
  if (d.cols % 4 == 0) return LaunchLossTyped<T, 4>(a, workspace, allow_clusters, stream);
  return LaunchLossTyped<T, 1>(a, workspace, allow_clusters, stream);
}

}  // namespace

absl::Status CudaError(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string("CUDA ") + what + ": " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

size_t LossWorkspaceBytes(int64_t rows, int64_t cols) {
  return cols > kSegmentColumns ? static_cast<size_t>(rows * Segments(cols)) * sizeof(RowState) : 0;
}

absl::Status LaunchLoss(const DeviceLossArgs& args, void* workspace, bool allow_clusters,
                        cudaStream_t stream) {
  if (args.rows == 0) return absl::OkStatus();
  if (args.rows > 65535 && args.cols > kSegmentColumns) {
    return absl::InvalidArgumentError("more than 65535 rows of over 16384 columns in one launch");
  }
  switch (args.dtype) {
    case DType::kFloat32:
      return LaunchLossForType<float>(args, workspace, allow_clusters, stream);
    case DType::kFloat16:
      return LaunchLossForType<__half>(args, workspace, allow_clusters, stream);
    case DType::kBFloat16:
      return LaunchLossForType<__nv_bfloat16>(args, workspace, allow_clusters, stream);
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::Status LaunchDensifyLabels(const int64_t* row_splits, const int32_t* indices,
                                 const float* values, int64_t rows, int64_t cols, float* labels,
                                 cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  absl::Status st = CudaError(
      cudaMemsetAsync(labels, 0, static_cast<size_t>(rows * cols) * sizeof(float), stream),
      "memset labels");
  if (!st.ok()) return st;
  DensifyKernel<<<static_cast<unsigned>(rows), 128, 0, stream>>>(row_splits, indices, values, cols,
                                                                 labels);
  return CudaError(cudaGetLastError(), "densify kernel launch");
}

absl::Status LaunchProbabilities(const void* scores, DType dtype, const uint8_t* mask, int64_t rows,
                                 int64_t cols, float* probs, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return absl::OkStatus();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16));
  switch (dtype) {
    case DType::kFloat32:
      ProbabilitiesKernel<<<blocks, 256, 0, stream>>>(static_cast<const float*>(scores), mask, n,
                                                      probs);
      break;
    case DType::kFloat16:
      ProbabilitiesKernel<<<blocks, 256, 0, stream>>>(static_cast<const __half*>(scores), mask, n,
                                                      probs);
      break;
    case DType::kBFloat16:
      ProbabilitiesKernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(scores),
                                                      mask, n, probs);
      break;
  }
  return CudaError(cudaGetLastError(), "probabilities kernel launch");
}

absl::Status LaunchLabeler(const DeviceLabelArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return absl::OkStatus();
  if (args.top_k == 0 || args.cap < 1 || args.cap > kMaxGpuLabels ||
      static_cast<int>(args.top_k) > args.cap || static_cast<int>(args.min_labels) > args.cap) {
    return absl::InvalidArgumentError("GPU labeler: needs 1 <= top_k, min_labels <= cap <= 1024");
  }
  const unsigned blocks = static_cast<unsigned>(args.rows);
  switch (args.dtype) {
    case DType::kFloat32:
      LabelKernel<float><<<blocks, kLabelThreads, 0, stream>>>(args);
      break;
    case DType::kFloat16:
      LabelKernel<__half><<<blocks, kLabelThreads, 0, stream>>>(args);
      break;
    case DType::kBFloat16:
      LabelKernel<__nv_bfloat16><<<blocks, kLabelThreads, 0, stream>>>(args);
      break;
  }
  return CudaError(cudaGetLastError(), "labeler kernel launch");
}

}  // namespace zlpr::cuda
