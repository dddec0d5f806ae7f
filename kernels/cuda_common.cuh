// Device helpers shared by the CUDA kernels (cuda_loss.cu, cuda_labeler.cu): typed loads widened
// to fp32, 16-byte vector loads and stores, σ(2s), and the one dispatch from DType to the
// element type a kernel is instantiated for.
#ifndef ZLPR_KERNELS_CUDA_COMMON_CUH_
#define ZLPR_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/zlpr.h"

namespace zlpr::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the device element type of `dtype` (float, __half or
// __nv_bfloat16) and returns what it returns.
template <typename F>
absl::Status DispatchDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kFloat16:
      return f(TypeTag<__half>{});
    case DType::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return absl::InvalidArgumentError("unknown element type");
}

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

// e^x for x <= 0 in two instructions (a multiply and the hardware's 2^x, within 2 ulp), where
// the library's expf takes about eight. Relative error about |x| * 2^-23.5 from rounding
// x * log2(e): at most 1.2e-6 where e^x >= 1e-6, and where e^x is smaller the absolute error
// is far below the accuracy the loss promises (docs/MATH.md). Results below 2^-126 are 0.
__device__ __forceinline__ float ExpNonPositive(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}

// σ(2s) without overflow for any finite s.
__device__ __forceinline__ float Sigmoid2(float s) {
  const float e = expf(-2.0f * fabsf(s));
  const float inv = 1.0f / (1.0f + e);
  return s >= 0.0f ? inv : e * inv;
}

}  // namespace zlpr::cuda

#endif  // ZLPR_KERNELS_CUDA_COMMON_CUH_
