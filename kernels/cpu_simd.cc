// SIMD inner loops of the CPU backend, compiled once per Highway target and dispatched at run
// time to the best one the CPU supports (SSE4, AVX2, AVX-512, NEON, SVE...).
//
// They work on one chunk of one row, in fp32, with excluded entries (mask 0) already turned
// into -inf scores by the caller. Shape of the math (docs/zlpr-math.md): each log-sum-exp term
// is evaluated in two passes over the chunk while it sits in L1/L2: the maximum of the
// exponents (with the appended 0), then the sum of exponentials shifted by it, so every exp
// argument is <= 0. For hard labels an entry belongs to exactly one of the two terms, so one
// exp per entry serves both, and the loss+gradient path keeps it in the gradient buffer to be
// scaled once the row's totals are known. Soft labels take both exps and recompute them for
// the gradient. Accumulation order is fixed by the chunk and the vector width alone.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu_simd.cc"
#include <limits>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/cpu_simd.h"

HWY_BEFORE_NAMESPACE();
namespace zlpr::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Copies the tail [i, n) into lane-sized buffers padded with neutral values.
struct Tail {
  static constexpr size_t kMaxLanes = HWY_MAX_BYTES / sizeof(float);
  HWY_ALIGN float s[kMaxLanes];
  HWY_ALIGN float t[kMaxLanes];
  HWY_ALIGN float g[kMaxLanes];
  Tail(const float* sp, const float* tp, size_t i, size_t n, size_t lanes) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (size_t k = 0; k < lanes; ++k) {
      const bool in = i + k < n;
      s[k] = in ? sp[i + k] : neg_inf;
      t[k] = in && tp != nullptr ? tp[i + k] : 0.0f;
      g[k] = 0.0f;
    }
  }
};

HWY_INLINE VF NegInf(DF d) { return hn::Set(d, -std::numeric_limits<float>::infinity()); }

bool AllHardImpl(const float* HWY_RESTRICT t, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  auto soft = hn::Lt(zero, zero);  // all false
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const VF v = hn::LoadU(d, t + i);
    soft = hn::Or(soft, hn::And(hn::Gt(v, zero), hn::Lt(v, one)));
  }
  bool any_soft = !hn::AllFalse(d, soft);
  for (; i < n; ++i) any_soft |= t[i] > 0.0f && t[i] < 1.0f;
  return !any_soft;
}

// Per-lane body of the max pass.
HWY_INLINE void MaxStep(DF d, VF s, VF t, VF& mp, VF& mn) {
  const VF zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  const auto pos = hn::And(hn::Gt(t, zero), hn::Gt(s, NegInf(d)));
  mp = hn::Max(mp, hn::IfThenElse(pos, hn::Neg(s), zero));
  mn = hn::Max(mn, hn::IfThenElse(hn::Lt(t, one), s, zero));
}

void ChunkMaxImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                  float* HWY_RESTRICT mp_out, float* HWY_RESTRICT mn_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF mp = hn::Zero(d), mn = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) MaxStep(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn);
  if (i < n) {
    const Tail tail(s, t, i, n, N);
    MaxStep(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn);
  }
  *mp_out = hn::GetLane(hn::MaxOfLanes(d, mp));
  *mn_out = hn::GetLane(hn::MaxOfLanes(d, mn));
}

// Hard labels: one exp per entry, routed to the positive or the negative sum.
HWY_INLINE VF HardStep(DF d, VF s, VF t, VF mp, VF mn, VF& rp, VF& rn) {
  // An excluded (-inf) positive goes to the negative side, where its exp is 0.
  const auto pos = hn::And(hn::Gt(t, hn::Zero(d)), hn::Gt(s, NegInf(d)));
  const VF e = hn::Exp(d, hn::IfThenElse(pos, hn::Sub(hn::Neg(s), mp), hn::Sub(s, mn)));
  rp = hn::Add(rp, hn::IfThenElseZero(pos, e));
  rn = hn::Add(rn, hn::IfThenZeroElse(pos, e));
  return e;
}

void ChunkSumsHardImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                       float mp_s, float mn_s, float* HWY_RESTRICT e_out,
                       float* HWY_RESTRICT rp_out, float* HWY_RESTRICT rn_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF mp = hn::Set(d, mp_s), mn = hn::Set(d, mn_s);
  VF rp = hn::Zero(d), rn = hn::Zero(d);
  size_t i = 0;
  if (e_out != nullptr) {
    for (; i + N <= n; i += N) {
      hn::StoreU(HardStep(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, rp, rn), d,
                 e_out + i);
    }
  } else {
    for (; i + N <= n; i += N) {
      HardStep(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, rp, rn);
    }
  }
  if (i < n) {
    Tail tail(s, t, i, n, N);
    hn::Store(HardStep(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, rp, rn), d, tail.g);
    if (e_out != nullptr) {
      for (size_t k = 0; i + k < n; ++k) e_out[i + k] = tail.g[k];
    }
  }
  *rp_out = hn::GetLane(hn::SumOfLanes(d, rp));
  *rn_out = hn::GetLane(hn::SumOfLanes(d, rn));
}

// Soft labels: t·e^{-s-Mp} and (1-t)·e^{s-Mn}, each only where its weight is non-zero.
HWY_INLINE void SoftTerms(DF d, VF s, VF t, VF mp, VF mn, VF& ea, VF& eb) {
  const VF zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  const auto pos = hn::And(hn::Gt(t, zero), hn::Gt(s, NegInf(d)));
  const auto neg = hn::Lt(t, one);
  ea = hn::IfThenElseZero(pos, hn::Mul(t, hn::Exp(d, hn::Sub(hn::Neg(s), mp))));
  eb = hn::IfThenElseZero(neg, hn::Mul(hn::Sub(one, t), hn::Exp(d, hn::Sub(s, mn))));
}

void ChunkSumsSoftImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                       float mp_s, float mn_s, float* HWY_RESTRICT rp_out,
                       float* HWY_RESTRICT rn_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF mp = hn::Set(d, mp_s), mn = hn::Set(d, mn_s);
  VF rp = hn::Zero(d), rn = hn::Zero(d), ea, eb;
  size_t i = 0;
  for (; i + N <= n; i += N) {
    SoftTerms(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, ea, eb);
    rp = hn::Add(rp, ea);
    rn = hn::Add(rn, eb);
  }
  if (i < n) {
    const Tail tail(s, t, i, n, N);
    SoftTerms(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, ea, eb);
    rp = hn::Add(rp, ea);
    rn = hn::Add(rn, eb);
  }
  *rp_out = hn::GetLane(hn::SumOfLanes(d, rp));
  *rn_out = hn::GetLane(hn::SumOfLanes(d, rn));
}

// g = (1-t)·e^{s-Mn}·sn - t·e^{-s-Mp}·sp, where sp = e^{Mp-P} and sn = e^{Mn-N}.
void ChunkGradHardImpl(const float* HWY_RESTRICT t, size_t n, float sp_s, float sn_s,
                       float* HWY_RESTRICT g) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF sp = hn::Set(d, sp_s), sn = hn::Set(d, sn_s), zero = hn::Zero(d);
  size_t i = 0;
  auto step = [&](VF tv, VF e) {
    const auto pos = hn::Gt(tv, zero);
    return hn::Sub(hn::Mul(hn::IfThenZeroElse(pos, e), sn), hn::Mul(hn::IfThenElseZero(pos, e), sp));
  };
  for (; i + N <= n; i += N) {
    hn::StoreU(step(hn::LoadU(d, t + i), hn::LoadU(d, g + i)), d, g + i);
  }
  for (; i < n; ++i) {
    const float e = g[i];
    g[i] = (t[i] > 0.0f ? 0.0f : e) * sn_s - (t[i] > 0.0f ? e : 0.0f) * sp_s;
  }
}

void ChunkGradSoftImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                       float mp_s, float mn_s, float sp_s, float sn_s, float* HWY_RESTRICT g) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF mp = hn::Set(d, mp_s), mn = hn::Set(d, mn_s);
  const VF sp = hn::Set(d, sp_s), sn = hn::Set(d, sn_s);
  VF ea, eb;
  size_t i = 0;
  for (; i + N <= n; i += N) {
    SoftTerms(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, ea, eb);
    hn::StoreU(hn::Sub(hn::Mul(eb, sn), hn::Mul(ea, sp)), d, g + i);
  }
  if (i < n) {
    Tail tail(s, t, i, n, N);
    SoftTerms(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, ea, eb);
    hn::Store(hn::Sub(hn::Mul(eb, sn), hn::Mul(ea, sp)), d, tail.g);
    for (size_t k = 0; i + k < n; ++k) g[i + k] = tail.g[k];
  }
}

// p = σ(2s) written as e/(1+e) or 1/(1+e) with e = e^{-2|s|} <= 1: no overflow, -inf -> 0.
HWY_INLINE VF Sigmoid2(DF d, VF s) {
  const VF one = hn::Set(d, 1.0f);
  const VF e = hn::Exp(d, hn::Mul(hn::Set(d, -2.0f), hn::Abs(s)));
  const VF inv = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Ge(s, hn::Zero(d)), inv, hn::Mul(e, inv));
}

void ProbsImpl(const float* HWY_RESTRICT s, size_t n, float* HWY_RESTRICT p) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(Sigmoid2(d, hn::LoadU(d, s + i)), d, p + i);
  if (i < n) {
    Tail tail(s, nullptr, i, n, N);
    hn::Store(Sigmoid2(d, hn::Load(d, tail.s)), d, tail.g);
    for (size_t k = 0; i + k < n; ++k) p[i + k] = tail.g[k];
  }
}

// Writes the columns c with s[c] > z[c] (z per label, or z_global when z is null) to `out`.
size_t CandidatesImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT z, float z_global,
                      size_t n, int32_t* HWY_RESTRICT out) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const size_t N = hn::Lanes(d);
  const VF zg = hn::Set(d, z_global);
  auto idx = hn::Iota(di, 0);
  const auto step = hn::Set(di, static_cast<int32_t>(N));
  size_t count = 0, i = 0;
  for (; i + N <= n; i += N) {
    const VF zv = z != nullptr ? hn::LoadU(d, z + i) : zg;
    const auto pass = hn::RebindMask(di, hn::Gt(hn::LoadU(d, s + i), zv));
    count += hn::CompressStore(idx, pass, di, out + count);
    idx = hn::Add(idx, step);
  }
  for (; i < n; ++i) {
    if (s[i] > (z != nullptr ? z[i] : z_global)) out[count++] = static_cast<int32_t>(i);
  }
  return count;
}

}  // namespace zlpr::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace zlpr::internal {

HWY_EXPORT(AllHardImpl);
HWY_EXPORT(ChunkMaxImpl);
HWY_EXPORT(ChunkSumsHardImpl);
HWY_EXPORT(ChunkSumsSoftImpl);
HWY_EXPORT(ChunkGradHardImpl);
HWY_EXPORT(ChunkGradSoftImpl);
HWY_EXPORT(ProbsImpl);
HWY_EXPORT(CandidatesImpl);

bool AllHard(const float* t, size_t n) { return HWY_DYNAMIC_DISPATCH(AllHardImpl)(t, n); }
void ChunkMax(const float* s, const float* t, size_t n, float* mp, float* mn) {
  HWY_DYNAMIC_DISPATCH(ChunkMaxImpl)(s, t, n, mp, mn);
}
void ChunkSumsHard(const float* s, const float* t, size_t n, float mp, float mn, float* e_out,
                   float* rp, float* rn) {
  HWY_DYNAMIC_DISPATCH(ChunkSumsHardImpl)(s, t, n, mp, mn, e_out, rp, rn);
}
void ChunkSumsSoft(const float* s, const float* t, size_t n, float mp, float mn, float* rp,
                   float* rn) {
  HWY_DYNAMIC_DISPATCH(ChunkSumsSoftImpl)(s, t, n, mp, mn, rp, rn);
}
void ChunkGradHard(const float* t, size_t n, float sp, float sn, float* g) {
  HWY_DYNAMIC_DISPATCH(ChunkGradHardImpl)(t, n, sp, sn, g);
}
void ChunkGradSoft(const float* s, const float* t, size_t n, float mp, float mn, float sp,
                   float sn, float* g) {
  HWY_DYNAMIC_DISPATCH(ChunkGradSoftImpl)(s, t, n, mp, mn, sp, sn, g);
}
void Probs(const float* s, size_t n, float* p) { HWY_DYNAMIC_DISPATCH(ProbsImpl)(s, n, p); }
size_t Candidates(const float* s, const float* z, float z_global, size_t n, int32_t* out) {
  return HWY_DYNAMIC_DISPATCH(CandidatesImpl)(s, z, z_global, n, out);
}

}  // namespace zlpr::internal
#endif  // HWY_ONCE
