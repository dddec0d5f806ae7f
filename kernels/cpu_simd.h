// Run-time dispatched SIMD loops of the CPU backend (see cpu_simd.cc for their shape).
// All work on fp32 chunks where excluded entries already have score -inf.
#ifndef ZLPR_KERNELS_CPU_SIMD_H_
#define ZLPR_KERNELS_CPU_SIMD_H_

#include <cstddef>
#include <cstdint>

namespace zlpr::internal {

// True when no score is NaN or +inf.
bool ScoresOk(const float* s, size_t n);
// True when every label is in [0, 1] (and none is NaN).
bool LabelsOk(const float* t, size_t n);
// mp = max(0, max over t>0, s>-inf of -s); mn = max(0, max over t<1 of s). Returns true when
// every label is exactly 0 or 1 (hard).
bool ChunkMax(const float* s, const float* t, size_t n, float* mp, float* mn);
// rp = Σ_{t=1} e^{-s-mp}, rn = Σ_{t=0} e^{s-mn} for hard labels; each entry's exp goes to
// e_out[i] when e_out is not null.
void ChunkSumsHard(const float* s, const float* t, size_t n, float mp, float mn, float* e_out,
                   float* rp, float* rn);
// rp = Σ t·e^{-s-mp}, rn = Σ (1-t)·e^{s-mn}.
void ChunkSumsSoft(const float* s, const float* t, size_t n, float mp, float mn, float* rp,
                   float* rn);
// In place: g holds the exps from ChunkSumsHard; becomes (1-t)·e·sn - t·e·sp.
void ChunkGradHard(const float* t, size_t n, float sp, float sn, float* g);
// g = (1-t)·e^{s-mn}·sn - t·e^{-s-mp}·sp.
void ChunkGradSoft(const float* s, const float* t, size_t n, float mp, float mn, float sp, float sn,
                   float* g);
// p = σ(2s).
void Probs(const float* s, size_t n, float* p);
// Columns with s[c] > z[c] (or z_global), ascending. `out` must have room for n plus one
// vector (64 entries): the compressing store may write past the count.
size_t Candidates(const float* s, const float* z, float z_global, size_t n, int32_t* out);

// The k best columns with s[c] > z[c] (or z_global), by score descending then index
// ascending: indices to out_idx and scores to out_s (k entries each). Returns how many.
size_t TopK(const float* s, const float* z, float z_global, size_t n, size_t k, int32_t* out_idx,
            float* out_s);

// Entries of slack `out` needs beyond n for Candidates.
inline constexpr size_t kCandidatesSlack = 64;

}  // namespace zlpr::internal

#endif  // ZLPR_KERNELS_CPU_SIMD_H_
