// Seeded random ZLPR problems for the kernel tests and benchmarks.
#ifndef ZLPR_KERNELS_TEST_UTIL_H_
#define ZLPR_KERNELS_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/zlpr.h"
#include "zlpr/dtype.h"

namespace zlpr::testing {

enum class Labels { kHard, kSoft, kSparseHard, kSparseSoft };

struct ProblemSpec {
  int64_t rows = 1;
  int64_t cols = 1;
  Labels labels = Labels::kHard;
  bool mask = false;           // random mask, with some rows entirely masked
  bool neg_inf = false;        // some scores -inf
  float scale = 3.0f;          // scores ~ uniform(-scale, scale)
  double positive_rate = 0.1;  // share of labels that are non-zero
  uint64_t seed = 1;
};

// A problem with its labels both dense and sparse (identical values).
struct Problem {
  ProblemSpec spec;
  std::vector<float> scores, dense;
  std::vector<uint8_t> mask;
  std::vector<int64_t> row_splits;
  std::vector<int32_t> indices;
  std::vector<float> values;

  bool sparse() const {
    return spec.labels == Labels::kSparseHard || spec.labels == Labels::kSparseSoft;
  }

  LossInput Input(bool as_sparse) const {
    LossInput in;
    in.scores = {scores.data(), DType::kFloat32, spec.rows, spec.cols};
    if (as_sparse) {
      in.labels = SparseLabelsView{row_splits, indices, values};
    } else {
      in.labels = MatrixView{dense.data(), DType::kFloat32, spec.rows, spec.cols};
    }
    in.mask = mask.empty() ? nullptr : mask.data();
    return in;
  }
  LossInput Input() const { return Input(sparse()); }

  // Rows [r0, r1) as a problem of their own (for batch-invariance checks).
  Problem Slice(int64_t r0, int64_t r1) const {
    Problem p;
    p.spec = spec;
    p.spec.rows = r1 - r0;
    const int64_t c = spec.cols;
    p.scores.assign(scores.begin() + r0 * c, scores.begin() + r1 * c);
    p.dense.assign(dense.begin() + r0 * c, dense.begin() + r1 * c);
    if (!mask.empty()) p.mask.assign(mask.begin() + r0 * c, mask.begin() + r1 * c);
    p.row_splits.push_back(0);
    for (int64_t r = r0; r < r1; ++r) p.row_splits.push_back(row_splits[r + 1] - row_splits[r0]);
    p.indices.assign(indices.begin() + row_splits[r0], indices.begin() + row_splits[r1]);
    if (!values.empty())
      p.values.assign(values.begin() + row_splits[r0], values.begin() + row_splits[r1]);
    return p;
  }

  std::vector<double> RowScores(int64_t r) const {
    return std::vector<double>(scores.begin() + r * spec.cols,
                               scores.begin() + (r + 1) * spec.cols);
  }
  std::vector<double> RowLabels(int64_t r) const {
    return std::vector<double>(dense.begin() + r * spec.cols, dense.begin() + (r + 1) * spec.cols);
  }
  const uint8_t* RowMask(int64_t r) const {
    return mask.empty() ? nullptr : mask.data() + r * spec.cols;
  }
};

inline Problem MakeProblem(const ProblemSpec& spec) {
  Problem p;
  p.spec = spec;
  std::mt19937_64 rng(spec.seed);
  std::uniform_real_distribution<float> score(-spec.scale, spec.scale);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int64_t n = spec.rows * spec.cols;
  const bool soft = spec.labels == Labels::kSoft || spec.labels == Labels::kSparseSoft;
  p.scores.resize(n);
  p.dense.assign(n, 0.0f);
  for (int64_t i = 0; i < n; ++i) p.scores[i] = score(rng);
  if (spec.neg_inf) {
    for (int64_t i = 0; i < n; ++i) {
      if (u(rng) < 0.05) p.scores[i] = -std::numeric_limits<float>::infinity();
    }
  }
  p.row_splits.push_back(0);
  for (int64_t r = 0; r < spec.rows; ++r) {
    for (int64_t c = 0; c < spec.cols; ++c) {
      if (u(rng) >= spec.positive_rate) continue;
      float v = 1.0f;
      if (soft) {
        // Soft values, with some exact 0/1 mixed in.
        const double k = u(rng);
        v = k < 0.1 ? 1.0f : static_cast<float>(u(rng) * 0.98 + 0.01);
      }
      p.dense[r * spec.cols + c] = v;
      p.indices.push_back(static_cast<int32_t>(c));
      if (soft) p.values.push_back(v);
    }
    p.row_splits.push_back(static_cast<int64_t>(p.indices.size()));
  }
  if (spec.mask) {
    p.mask.resize(n);
    for (int64_t r = 0; r < spec.rows; ++r) {
      const bool all_masked = spec.rows > 1 && r % 4 == 1;
      for (int64_t c = 0; c < spec.cols; ++c) {
        p.mask[r * spec.cols + c] = all_masked ? 0 : (u(rng) < 0.8 ? 1 : 0);
      }
    }
  }
  return p;
}

// The docs/MATH.md tolerances.
inline double LossTolerance(double ref) {
  return std::abs(ref) < 0.1 ? 1e-6 : 1e-5 * std::abs(ref);
}
inline double GradTolerance(double ref) { return 1e-6 + 1e-5 * std::abs(ref); }

}  // namespace zlpr::testing

#endif  // ZLPR_KERNELS_TEST_UTIL_H_
