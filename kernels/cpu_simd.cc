// SIMD inner loops of the CPU backend, compiled once per Highway target and dispatched at run
// time to the best one the CPU supports (SSE4, AVX2, AVX-512, NEON, SVE...).
//
// They work on one chunk of one row, in fp32, with excluded entries (mask 0) already turned
// into -inf scores by the caller. Shape of the math (docs/MATH.md): each log-sum-exp term
// is evaluated in two passes over the chunk while it sits in L1/L2: the maximum of the
// exponents (with the appended 0), then the sum of exponentials shifted by it, so every exp
// argument is <= 0. For hard labels an entry belongs to exactly one of the two terms, so one
// exp per entry serves both, and the loss+gradient path keeps it in the gradient buffer to be
// scaled once the row's totals are known. Soft labels take both exps and recompute them for
// the gradient. Accumulation order is fixed by the chunk and the vector width alone.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu_simd.cc"
#include <cmath>
#include <cstring>
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

// e^x for the ranges the kernels use: exact 0 below -86 (where e^x < 2.3e-38, and -inf),
// e^88 above 88, else within ~2 ulp. Cheaper than a general exp: Cody-Waite reduction to
// |r| <= ln2/2, a degree-6 polynomial, and one exponent-field add (the clamps keep the result
// a normal float, so no second scaling is needed).
HWY_INLINE VF FastExp(DF d, VF x) {
  const hn::RebindToSigned<DF> di;
  const VF xc = hn::Min(hn::Max(x, hn::Set(d, -86.0f)), hn::Set(d, 88.0f));
  const auto n = hn::NearestInt(hn::Mul(xc, hn::Set(d, 1.44269504088896341f)));
  const VF nf = hn::ConvertTo(d, n);
  VF r = hn::NegMulAdd(nf, hn::Set(d, 0.693359375f), xc);
  r = hn::NegMulAdd(nf, hn::Set(d, -2.12194440e-4f), r);
  VF p = hn::Set(d, 1.9875691500e-4f);
  p = hn::MulAdd(p, r, hn::Set(d, 1.3981999507e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 8.3334519073e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 4.1665795894e-2f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.6666665459e-1f));
  p = hn::MulAdd(p, r, hn::Set(d, 5.0000001201e-1f));
  const VF y = hn::Add(hn::MulAdd(p, hn::Mul(r, r), r), hn::Set(d, 1.0f));
  const VF scaled = hn::BitCast(d, hn::Add(hn::BitCast(di, y), hn::ShiftLeft<23>(n)));
  return hn::IfThenZeroElse(hn::Lt(x, hn::Set(d, -86.0f)), scaled);
}

// True when no lane of [0, n) fails `ok`: Or-accumulated failures, one test at the end.
template <class Ok>
HWY_INLINE bool AllOk(const float* HWY_RESTRICT p, size_t n, const Ok& ok) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF zero = hn::Zero(d);
  auto bad = hn::Lt(zero, zero);  // all false
  size_t i = 0;
  for (; i + N <= n; i += N) bad = hn::Or(bad, hn::Not(ok(d, hn::LoadU(d, p + i))));
  bool any_bad = !hn::AllFalse(d, bad);
  for (; i < n; ++i) any_bad |= hn::AllFalse(d, ok(d, hn::Set(d, p[i])));
  return !any_bad;
}

bool ScoresOkImpl(const float* HWY_RESTRICT s, size_t n) {
  // s < +inf is false for NaN and +inf alone.
  return AllOk(s, n, [](DF d, VF v) {
    return hn::Lt(v, hn::Set(d, std::numeric_limits<float>::infinity()));
  });
}

bool LabelsOkImpl(const float* HWY_RESTRICT t, size_t n) {
  return AllOk(t, n, [](DF d, VF v) {
    return hn::And(hn::Ge(v, hn::Zero(d)), hn::Le(v, hn::Set(d, 1.0f)));  // false for NaN
  });
}

// Per-lane body of the max pass; also notes labels strictly between 0 and 1.
HWY_INLINE void MaxStep(DF d, VF s, VF t, VF& mp, VF& mn, hn::Mask<DF>& soft) {
  const VF zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  const auto pos = hn::And(hn::Gt(t, zero), hn::Gt(s, NegInf(d)));
  const auto below_one = hn::Lt(t, one);
  mp = hn::Max(mp, hn::IfThenElse(pos, hn::Neg(s), zero));
  mn = hn::Max(mn, hn::IfThenElse(below_one, s, zero));
  soft = hn::Or(soft, hn::And(hn::Gt(t, zero), below_one));
}

bool ChunkMaxImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                  float* HWY_RESTRICT mp_out, float* HWY_RESTRICT mn_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF mp = hn::Zero(d), mn = hn::Zero(d);
  auto soft = hn::Lt(mp, mp);  // all false
  size_t i = 0;
  for (; i + N <= n; i += N) MaxStep(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, soft);
  if (i < n) {
    const Tail tail(s, t, i, n, N);
    MaxStep(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, soft);
  }
  *mp_out = hn::GetLane(hn::MaxOfLanes(d, mp));
  *mn_out = hn::GetLane(hn::MaxOfLanes(d, mn));
  return hn::AllFalse(d, soft);
}

// Hard labels: one exp per entry, routed to the positive or the negative sum.
HWY_INLINE VF HardStep(DF d, VF s, VF t, VF mp, VF mn, VF& rp, VF& rn) {
  // An excluded (-inf) positive goes to the negative side, where its exp is 0.
  const auto pos = hn::And(hn::Gt(t, hn::Zero(d)), hn::Gt(s, NegInf(d)));
  const VF e = FastExp(d, hn::IfThenElse(pos, hn::Sub(hn::Neg(s), mp), hn::Sub(s, mn)));
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
// Both exponentials come from one: e^{-s-Mp} = k / e^{s-Mn} with k = e^{-Mp-Mn} (passed in,
// 0 when out of range), used when every positive lane has |s - Mn| < 80, so neither side
// leaves fp32's normal range; other vectors take the second exp. The choice depends on the
// row's values alone, so it is as deterministic and batch-invariant as the rest.
HWY_INLINE void SoftTerms(DF d, VF s, VF t, VF mp, VF mn, VF k, VF& ea, VF& eb) {
  const VF zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  const auto pos = hn::And(hn::Gt(t, zero), hn::Gt(s, NegInf(d)));
  const auto neg = hn::Lt(t, one);
  const VF sn = hn::Sub(s, mn);
  const VF e_n = FastExp(d, sn);
  VF e_p;
  const auto in_range = hn::Or(hn::Not(pos), hn::Lt(hn::Abs(sn), hn::Set(d, 80.0f)));
  if (HWY_LIKELY(hn::GetLane(k) > 0.0f && hn::AllTrue(d, in_range))) {
    VF r = hn::ApproximateReciprocal(e_n);
    r = hn::Mul(r, hn::NegMulAdd(e_n, r, hn::Set(d, 2.0f)));  // one Newton step: full precision
    e_p = hn::Mul(k, r);
  } else {
    e_p = FastExp(d, hn::Sub(hn::Neg(s), mp));
  }
  ea = hn::IfThenElseZero(pos, hn::Mul(t, e_p));
  eb = hn::IfThenElseZero(neg, hn::Mul(hn::Sub(one, t), e_n));
}

// k of SoftTerms: e^{-Mp-Mn} when that stays a normal float, else 0 (always two exps).
HWY_INLINE VF SoftK(DF d, float mp, float mn) {
  const float sum = mp + mn;
  return hn::Set(d, sum < 80.0f ? std::exp(-sum) : 0.0f);
}

void ChunkSumsSoftImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT t, size_t n,
                       float mp_s, float mn_s, float* HWY_RESTRICT rp_out,
                       float* HWY_RESTRICT rn_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF mp = hn::Set(d, mp_s), mn = hn::Set(d, mn_s), k = SoftK(d, mp_s, mn_s);
  VF rp = hn::Zero(d), rn = hn::Zero(d), ea, eb;
  size_t i = 0;
  for (; i + N <= n; i += N) {
    SoftTerms(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, k, ea, eb);
    rp = hn::Add(rp, ea);
    rn = hn::Add(rn, eb);
  }
  if (i < n) {
    const Tail tail(s, t, i, n, N);
    SoftTerms(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, k, ea, eb);
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
    return hn::Sub(hn::Mul(hn::IfThenZeroElse(pos, e), sn),
                   hn::Mul(hn::IfThenElseZero(pos, e), sp));
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
  const VF mp = hn::Set(d, mp_s), mn = hn::Set(d, mn_s), k = SoftK(d, mp_s, mn_s);
  const VF sp = hn::Set(d, sp_s), sn = hn::Set(d, sn_s);
  VF ea, eb;
  size_t i = 0;
  for (; i + N <= n; i += N) {
    SoftTerms(d, hn::LoadU(d, s + i), hn::LoadU(d, t + i), mp, mn, k, ea, eb);
    hn::StoreU(hn::Sub(hn::Mul(eb, sn), hn::Mul(ea, sp)), d, g + i);
  }
  if (i < n) {
    Tail tail(s, t, i, n, N);
    SoftTerms(d, hn::Load(d, tail.s), hn::Load(d, tail.t), mp, mn, k, ea, eb);
    hn::Store(hn::Sub(hn::Mul(eb, sn), hn::Mul(ea, sp)), d, tail.g);
    for (size_t lane = 0; i + lane < n; ++lane) g[i + lane] = tail.g[lane];
  }
}

// p = σ(2s) written as e/(1+e) or 1/(1+e) with e = e^{-2|s|} <= 1: no overflow, -inf -> 0.
HWY_INLINE VF Sigmoid2(DF d, VF s) {
  const VF one = hn::Set(d, 1.0f);
  const VF e = FastExp(d, hn::Mul(hn::Set(d, -2.0f), hn::Abs(s)));
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

// The k best columns with s[c] > z[c] (or z_global), by score descending and then index
// ascending, in that order. One SIMD filter pass: a vector is looked at lane by lane only
// when a lane beats both its threshold and the current k-th best score, which after the first
// few vectors is rare, so the row is never sorted.
size_t TopKImpl(const float* HWY_RESTRICT s, const float* HWY_RESTRICT z, float z_global, size_t n,
                size_t k, int32_t* HWY_RESTRICT out_idx, float* HWY_RESTRICT out_s) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF zg = hn::Set(d, z_global);
  size_t m = 0;  // out_s[0..m) sorted descending; ties keep the smaller (earlier) index first
  VF kth = NegInf(d);
  auto insert = [&](size_t c) {
    const float v = s[c];
    if (!(v > (z != nullptr ? z[c] : z_global))) return;
    if (m == k && !(v > out_s[k - 1])) return;  // a later equal score loses the tie
    size_t pos = m < k ? m++ : k - 1;
    while (pos > 0 && out_s[pos - 1] < v) {
      out_s[pos] = out_s[pos - 1];
      out_idx[pos] = out_idx[pos - 1];
      --pos;
    }
    out_s[pos] = v;
    out_idx[pos] = static_cast<int32_t>(c);
  };
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const VF v = hn::LoadU(d, s + i);
    const VF zv = z != nullptr ? hn::LoadU(d, z + i) : zg;
    const auto hit = hn::And(hn::Gt(v, zv), hn::Gt(v, kth));
    if (HWY_LIKELY(hn::AllFalse(d, hit))) continue;
    uint8_t bytes[8] = {};  // up to 64 lanes
    hn::StoreMaskBits(d, hit, bytes);
    uint64_t bits;
    std::memcpy(&bits, bytes, sizeof(bits));
    for (; bits != 0; bits &= bits - 1) insert(i + static_cast<size_t>(__builtin_ctzll(bits)));
    if (m == k) kth = hn::Set(d, out_s[k - 1]);
  }
  for (; i < n; ++i) insert(i);
  return m;
}

}  // namespace zlpr::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace zlpr::internal {

HWY_EXPORT(ScoresOkImpl);
HWY_EXPORT(LabelsOkImpl);
HWY_EXPORT(ChunkMaxImpl);
HWY_EXPORT(ChunkSumsHardImpl);
HWY_EXPORT(ChunkSumsSoftImpl);
HWY_EXPORT(ChunkGradHardImpl);
HWY_EXPORT(ChunkGradSoftImpl);
HWY_EXPORT(ProbsImpl);
HWY_EXPORT(CandidatesImpl);
HWY_EXPORT(TopKImpl);

bool ScoresOk(const float* s, size_t n) { return HWY_DYNAMIC_DISPATCH(ScoresOkImpl)(s, n); }
bool LabelsOk(const float* t, size_t n) { return HWY_DYNAMIC_DISPATCH(LabelsOkImpl)(t, n); }
bool ChunkMax(const float* s, const float* t, size_t n, float* mp, float* mn) {
  return HWY_DYNAMIC_DISPATCH(ChunkMaxImpl)(s, t, n, mp, mn);
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
void ChunkGradSoft(const float* s, const float* t, size_t n, float mp, float mn, float sp, float sn,
                   float* g) {
  HWY_DYNAMIC_DISPATCH(ChunkGradSoftImpl)(s, t, n, mp, mn, sp, sn, g);
}
void Probs(const float* s, size_t n, float* p) { HWY_DYNAMIC_DISPATCH(ProbsImpl)(s, n, p); }
size_t Candidates(const float* s, const float* z, float z_global, size_t n, int32_t* out) {
  return HWY_DYNAMIC_DISPATCH(CandidatesImpl)(s, z, z_global, n, out);
}
size_t TopK(const float* s, const float* z, float z_global, size_t n, size_t k, int32_t* out_idx,
            float* out_s) {
  return k == 0 ? 0 : HWY_DYNAMIC_DISPATCH(TopKImpl)(s, z, z_global, n, k, out_idx, out_s);
}

}  // namespace zlpr::internal
#endif  // HWY_ONCE
