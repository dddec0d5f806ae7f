// CUDA kernels of the ZLPR loss and its gradient, and the sparse-label scatter they read from.
//
// Why they look like this: the loss is bandwidth-bound (8 bytes read per entry, 4 more written
// for the gradient, a handful of flops), so every kernel reads each entry once from HBM with
// 16-byte loads where the row length allows, keeps the row in registers, and evaluates both
// log-sum-exp terms in that single pass (docs/MATH.md, "Stable evaluation"): each thread takes
// its entries' maxima, then sums their exponentials (independent of each other, so they
// pipeline; a running rescaled sum would chain every exponential on the one before), and the
// threads' (max, sum) states merge up a fixed tree. The
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

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_launch.h"

namespace zlpr::cuda {
namespace {

namespace cg = cooperative_groups;

// --- Log-sum-exp states ------------------------------------------------------------------

// Σ w·e^{v - m} over the values seen, with m = max(0, values): every exponent is <= 0.
struct Lse {
  float m;
  float r;
};
struct RowState {
  Lse p, n;
};

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

// What the gradient needs from a finished row: m and 1 / (e^{-m} + r) per term.
struct RowTotals {
  float mp, dp, inv_dp, mn, inv_dn, loss;
};

__device__ __forceinline__ float LseValue(const Lse& l) {
  return l.m == 0.0f ? log1pf(l.r) : l.m + logf(expf(-l.m) + l.r);
}

__device__ __forceinline__ RowTotals Finish(const RowState& st) {
  RowTotals t;
  t.mp = st.p.m;
  t.mn = st.n.m;
  t.dp = expf(-st.p.m) + st.p.r;
  t.inv_dp = 1.0f / t.dp;
  t.inv_dn = 1.0f / (expf(-st.n.m) + st.n.r);
  t.loss = LseValue(st.p) + LseValue(st.n);
  return t;
}

// The gradient of a row whose positive total is subnormal (see below): both terms, the
// positive one with log t folded into its exponent, in double.
__device__ __noinline__ float GradSubnormalP(const RowTotals& tot, float s, float t) {
  if (s == -INFINITY) return 0.0f;
  float g = (1.0f - t) * expf(fminf(s - tot.mn, 0.0f)) * tot.inv_dn;
  if (t > 0.0f) {
    const double p = static_cast<double>(tot.mp) + log(static_cast<double>(tot.dp));
    g -= static_cast<float>(exp(log(static_cast<double>(t)) - static_cast<double>(s) - p));
  }
  return g;
}

// ∂L/∂s = (1-t)·e^{s-N} - t·e^{-s-P}, each term only where its weight is non-zero. The negative
// total is at least 2^-24 (1 - t >= 2^-24 for t < 1), but the positive one is subnormal when a
// subnormal label sets its maximum: 1/total is then inf, and that rare term is evaluated with
// log t folded into the exponent, in double.
__device__ __forceinline__ float Grad(const RowTotals& tot, float s, float t) {
  if (!isfinite(tot.inv_dp)) return GradSubnormalP(tot, s, t);  // the same for the whole row
  // One exponential for a hard label, as in Tile::Reduce; a soft label's second term apart.
  const bool pos = t > 0.0f;
  const float e = ExpNonPositive(fminf(pos ? -s - tot.mp : s - tot.mn, 0.0f));
  float g = pos ? -t * e * tot.inv_dp : (1.0f - t) * e * tot.inv_dn;
  if (pos && t < 1.0f) g += (1.0f - t) * ExpNonPositive(fminf(s - tot.mn, 0.0f)) * tot.inv_dn;
  return s == -INFINITY ? 0.0f : g;
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

  // The thread's own entries in two passes: the maxima first (no exponentials), then the
  // E sums' terms, all independent (no chain of dependent exponentials). An entry with t = 1
  // or t = 0 (a hard label) has one term: one exponential, its argument chosen without a
  // branch; a soft label's second term is a branch that neighbouring soft labels take
  // together. Exponents are clamped to <= 0, so that a zero weight never meets an infinity.
  __device__ __forceinline__ RowState Reduce() const {
    float mp = 0.0f, mn = 0.0f;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      if (s[k] != -INFINITY) {
        if (t[k] > 0.0f) mp = fmaxf(mp, -s[k]);
        if (t[k] < 1.0f) mn = fmaxf(mn, s[k]);
      }
    }
    float rp = 0.0f, rn = 0.0f;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      const bool kept = s[k] != -INFINITY, pos = t[k] > 0.0f;
      const float w = kept ? (pos ? t[k] : 1.0f - t[k]) : 0.0f;
      const float e = w * ExpNonPositive(fminf(pos ? -s[k] - mp : s[k] - mn, 0.0f));
      rp += pos ? e : 0.0f;
      rn += pos ? 0.0f : e;
      if (kept && pos && t[k] < 1.0f) {
        rn += (1.0f - t[k]) * ExpNonPositive(fminf(s[k] - mn, 0.0f));
      }
    }
    return {{mp, rp}, {mn, rn}};
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

// A segment's block: G threads of kSegmentColumns / G entries each (512 x 32 or 1024 x 16; the
// launch chooses, DeviceLossArgs::segment_threads). Either way one block fills an SM's
// registers; 1024 threads give it twice the warps to hide latency with.
template <int G>
inline constexpr int kSegItems = static_cast<int>(kSegmentColumns / G);
constexpr int kMaxClusterSegments = 8;  // the portable cluster size

__device__ __forceinline__ RowState MergeInOrder(const RowState* states, int n) {
  RowState st{{0.0f, 0.0f}, {0.0f, 0.0f}};
  for (int k = 0; k < n; ++k) st = RowStateMerge()(st, states[k]);
  return st;
}

// Grid (segments, rows): each block reduces its segment to states[row * segments + segment].
template <typename T, int V, int G>
__global__ void __launch_bounds__(G) SegmentStateKernel(Args<T> a, RowState* states) {
  const int64_t row = blockIdx.y, seg = blockIdx.x;
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  Tile<T, G, kSegItems<G>, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  const RowState st = BlockAllReduce<G>(tile.Reduce());
  if (threadIdx.x == 0) states[row * gridDim.x + seg] = st;
}

// One thread per row: merges the segment states in order and writes the loss.
__global__ void SegmentLossKernel(const RowState* states, int segments, int64_t rows, float* loss) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < rows) loss[row] = Finish(MergeInOrder(states + row * segments, segments)).loss;
}

// Grid (segments, rows): re-reads the segment and writes its gradient (and block 0 the loss).
template <typename T, int V, int G>
__global__ void __launch_bounds__(G) SegmentGradKernel(Args<T> a, const RowState* states) {
  const int64_t row = blockIdx.y, seg = blockIdx.x;
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  __shared__ RowTotals shared_tot;
  if (threadIdx.x == 0) {
    shared_tot = Finish(MergeInOrder(states + row * gridDim.x, static_cast<int>(gridDim.x)));
    if (seg == 0) a.loss[row] = shared_tot.loss;
  }
  Tile<T, G, kSegItems<G>, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  __syncthreads();
  tile.StoreGrad(a, shared_tot, row, begin, end, threadIdx.x);
}

// Hopper: grid (segments, rows) in clusters of (segments, 1, 1). One pass: the blocks of a
// row exchange their segment states through distributed shared memory.
template <typename T, int V, int G>
__global__ void __launch_bounds__(G) ClusterRowKernel(Args<T> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ RowState mine;
  __shared__ RowTotals shared_tot;
  const int64_t row = blockIdx.y;
  const int seg = static_cast<int>(cluster.block_rank());
  const int segments = static_cast<int>(cluster.num_blocks());
  const int64_t begin = seg * kSegmentColumns;
  const int64_t end = min(a.cols, begin + kSegmentColumns);
  Tile<T, G, kSegItems<G>, V> tile;
  tile.Load(a, row, begin, end, threadIdx.x);
  const RowState st = BlockAllReduce<G>(tile.Reduce());
  __shared__ RowState all[kMaxClusterSegments];
  if (threadIdx.x == 0) mine = st;
  cluster.sync();
  // The blocks' states fetched side by side (one remote read per thread), merged in order.
  if (threadIdx.x < segments) all[threadIdx.x] = *cluster.map_shared_rank(&mine, threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    shared_tot = Finish(MergeInOrder(all, segments));
    if (seg == 0) a.loss[row] = shared_tot.loss;
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
  tile.StoreGrad(a, shared_tot, row, begin, end, threadIdx.x);
#else
  __trap();  // launched only on devices of compute capability 9.0 and up
#endif
}

// --- Sparse labels ------------------------------------------------------------------------

__global__ void DensifyKernel(const int64_t* __restrict__ row_splits,
                              const int32_t* __restrict__ indices, const float* __restrict__ values,
                              int64_t cols, float* __restrict__ labels) {
  const int64_t row = blockIdx.x;
  for (int64_t k = row_splits[row] + threadIdx.x; k < row_splits[row + 1]; k += blockDim.x) {
    const int64_t c = indices[k];
    if (c >= 0 && c < cols) labels[row * cols + c] = values != nullptr ? values[k] : 1.0f;
  }
}

// --- Launchers ---------------------------------------------------------------------------

int64_t Segments(int64_t cols) { return (cols + kSegmentColumns - 1) / kSegmentColumns; }

// Rows of more than 4096 columns: one block per row up to kSegmentColumns, else segments.
template <typename T, int V, int G>
void LaunchSegmented(const Args<T>& a, void* workspace, const DeviceInfo& device,
                     bool allow_clusters, cudaStream_t stream, cudaError_t* launch_error) {
  const unsigned rows = static_cast<unsigned>(a.rows);
  if (a.cols <= kSegmentColumns) {
    BlockRowKernel<T, G, kSegItems<G>, V><<<rows, G, 0, stream>>>(a);
    return;
  }
  const int64_t segments = Segments(a.cols);
  const dim3 grid(static_cast<unsigned>(segments), rows);
  if (allow_clusters && a.grad != nullptr && segments <= kMaxClusterSegments && device.major >= 9) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(G);
    config.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(segments);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    *launch_error = cudaLaunchKernelEx(&config, ClusterRowKernel<T, V, G>, a);
    return;
  }
  auto* states = static_cast<RowState*>(workspace);
  SegmentStateKernel<T, V, G><<<grid, G, 0, stream>>>(a, states);
  if (a.grad != nullptr) {
    SegmentGradKernel<T, V, G><<<grid, G, 0, stream>>>(a, states);
  } else {
    SegmentLossKernel<<<(rows + 127) / 128, 128, 0, stream>>>(states, static_cast<int>(segments),
                                                              a.rows, a.loss);
  }
}

template <typename T, int V>
absl::Status LaunchLossTyped(const Args<T>& a, int segment_threads, void* workspace,
                             const DeviceInfo& device, bool allow_clusters, cudaStream_t stream) {
  const int64_t cols = a.cols;
  const unsigned rows = static_cast<unsigned>(a.rows);
  cudaError_t launch_error = cudaSuccess;
  if (cols <= 256) {
    WarpRowKernel<T, 8, V><<<(rows + 3) / 4, 128, 0, stream>>>(a);
  } else if (cols <= 1024) {
    WarpRowKernel<T, 32, V><<<(rows + 3) / 4, 128, 0, stream>>>(a);
  } else if (cols <= 4096) {
    BlockRowKernel<T, 128, 32, V><<<rows, 128, 0, stream>>>(a);
  } else if (segment_threads == 1024) {
    LaunchSegmented<T, V, 1024>(a, workspace, device, allow_clusters, stream, &launch_error);
  } else {
    LaunchSegmented<T, V, 512>(a, workspace, device, allow_clusters, stream, &launch_error);
  }
  if (launch_error != cudaSuccess) return CudaError(launch_error, "cluster loss kernel launch");
  return CudaError(cudaGetLastError(), "loss kernel launch");
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

absl::Status LaunchLoss(const DeviceLossArgs& d, void* workspace, const DeviceInfo& device,
                        bool allow_clusters, cudaStream_t stream) {
  if (d.rows == 0) return absl::OkStatus();
  if (d.rows > 65535 && d.cols > kSegmentColumns) {
    return absl::InvalidArgumentError("more than 65535 rows of over 16384 columns in one launch");
  }
  return DispatchDType(d.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Args<T> a{
        static_cast<const T*>(d.scores), d.labels, d.mask, d.rows, d.cols, d.loss, d.grad};
    // 16-byte label and gradient loads need rows that start on 4-float boundaries.
    if (d.segment_threads != 512 && d.segment_threads != 1024) {
      return absl::InvalidArgumentError("segment_threads: 512 or 1024");
    }
    if (d.cols % 4 == 0) {
      return LaunchLossTyped<T, 4>(a, d.segment_threads, workspace, device, allow_clusters, stream);
    }
    return LaunchLossTyped<T, 1>(a, d.segment_threads, workspace, device, allow_clusters, stream);
  });
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

}  // namespace zlpr::cuda
