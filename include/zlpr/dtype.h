// Element types of scores, labels and results, and the one fp16/bf16 <-> fp32 conversion of
// the project: the kernels, the server, the C++ client (which installs this header), the tools
// and the tests all use it. Header-only, standard C++ only.
//
//   std::vector<uint16_t> half(n);
//   zlpr::NarrowFromFloat(values.data(), n, zlpr::DType::kFloat16, half.data());  // round to even
//   zlpr::WidenToFloat(half.data(), n, zlpr::DType::kFloat16, back.data());       // exact
#ifndef ZLPR_DTYPE_H_
#define ZLPR_DTYPE_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace zlpr {

// Element types accepted for scores and dense labels, and produced for gradients. fp16 and bf16
// are widened to fp32 on load; all arithmetic is fp32.
enum class DType : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Bytes per element.
constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// "float32", "float16" or "bfloat16".
constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

inline float BFloat16ToFloat(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

// IEEE binary16 to binary32, exact for every input (subnormals, infinities, NaN).
inline float Float16ToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf or NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {        // subnormal: normalise
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

// fp32 to IEEE binary16, round to nearest even; overflow goes to ±inf, NaN stays NaN.
inline uint16_t FloatToFloat16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u)
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow to inf
  if (abs < 0x38800000u) {  // subnormal or zero in fp16
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

// fp32 to bf16, round to nearest even; NaN stays NaN.
inline uint16_t FloatToBFloat16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// The address of element `i` of a buffer of `dtype`.
inline const void* ElementAt(const void* data, DType dtype, int64_t i) {
  return static_cast<const char*>(data) + i * static_cast<int64_t>(DTypeSize(dtype));
}

// Writes the n values of `dtype` at `src` to `dst` as fp32 (exact).
inline void WidenToFloat(const void* src, int64_t n, DType dtype, float* dst) {
  if (n <= 0) return;  // and never memcpy from or to a null pointer
  if (dtype == DType::kFloat32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  // 16-bit values may sit at any address (a hostile .npy file's data can start at an odd
  // offset): read through memcpy, which compiles to a plain load.
  const auto* p = static_cast<const unsigned char*>(src);
  auto half = [p](int64_t i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    return h;
  };
  if (dtype == DType::kFloat16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = Float16ToFloat(half(i));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(half(i));
  }
}

// Element i of a buffer of `dtype`, as fp32.
inline float LoadAsFloat(const void* src, DType dtype, int64_t i) {
  float f;
  WidenToFloat(ElementAt(src, dtype, i), 1, dtype, &f);
  return f;
}

// Writes the n fp32 values at `src` to `dst` as `dtype` (round to nearest even).
inline void NarrowFromFloat(const float* src, int64_t n, DType dtype, void* dst) {
  if (n <= 0) return;
  if (dtype == DType::kFloat32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  auto* out = static_cast<unsigned char*>(dst);  // any address, as in WidenToFloat
  auto put = [out](int64_t i, uint16_t h) { std::memcpy(out + 2 * i, &h, 2); };
  if (dtype == DType::kFloat16) {
    for (int64_t i = 0; i < n; ++i) put(i, FloatToFloat16(src[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) put(i, FloatToBFloat16(src[i]));
  }
}

}  // namespace zlpr

#endif  // ZLPR_DTYPE_H_
