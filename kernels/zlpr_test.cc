// The CPU backend against the float64 reference (kernels/reference.h) and the properties of
// docs/MATH.md: tolerances, gradient, optimum, sparse = dense, batch invariance.
#include "kernels/zlpr.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference.h"
#include "kernels/test_util.h"
#include "zlpr/dtype.h"

namespace zlpr {
namespace {

using testing::Labels;
using testing::MakeProblem;
using testing::Problem;
using testing::ProblemSpec;

constexpr float kInf = std::numeric_limits<float>::infinity();

struct LossResult {
  std::vector<float> loss, grad;
};

LossResult RunLoss(Backend& backend, const LossInput& in, bool want_grad) {
  LossResult res;
  res.loss.assign(in.scores.rows, -1.0f);
  if (want_grad) res.grad.assign(in.scores.rows * in.scores.cols, -7.0f);
  const absl::Status st =
      backend.Loss(in, {res.loss.data(), want_grad ? res.grad.data() : nullptr});
  EXPECT_TRUE(st.ok()) << st;
  return res;
}

// Checks every row's loss and gradient against the float64 reference.
void ExpectMatchesReference(const Problem& p, const LossResult& res) {
  const int64_t cols = p.spec.cols;
  std::vector<double> ref_grad(cols);
  for (int64_t r = 0; r < p.spec.rows; ++r) {
    const std::vector<double> s = p.RowScores(r), t = p.RowLabels(r);
    const reference::Row row{s.data(), t.data(), p.RowMask(r), cols};
    const double ref = reference::Loss(row);
    ASSERT_NEAR(res.loss[r], ref, testing::LossTolerance(ref)) << "row " << r;
    if (res.grad.empty()) continue;
    reference::Grad(row, ref_grad.data());
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_NEAR(res.grad[r * cols + c], ref_grad[c], testing::GradTolerance(ref_grad[c]))
          << "row " << r << " column " << c << " score " << s[c] << " label " << t[c];
    }
  }
}

// --- The sweep over awkward sizes ----------------------------------------------------------

using SweepParam = std::tuple<int64_t /*cols*/, Labels, bool /*mask*/, float /*scale*/>;

class LossSweepTest : public ::testing::TestWithParam<SweepParam> {};

TEST_P(LossSweepTest, MatchesFloat64Reference) {
  const auto [cols, labels, mask, scale] = GetParam();
  ProblemSpec spec;
  spec.cols = cols;
  spec.rows = cols >= 100000 ? 3 : (cols >= 4000 ? 5 : 9);
  spec.labels = labels;
  spec.mask = mask;
  spec.neg_inf = mask;
  spec.scale = scale;
  spec.seed = static_cast<uint64_t>(cols) * 31 + static_cast<uint64_t>(labels) * 7 + mask;
  const Problem p = MakeProblem(spec);
  auto backend = NewCpuBackend({.threads = 2});
  const LossResult with_grad = RunLoss(*backend, p.Input(), true);
  ExpectMatchesReference(p, with_grad);
  // The loss alone is the same computation: identical bits.
  const LossResult loss_only = RunLoss(*backend, p.Input(), false);
  EXPECT_EQ(0, std::memcmp(loss_only.loss.data(), with_grad.loss.data(), 4 * spec.rows));
}

std::string SweepName(const ::testing::TestParamInfo<SweepParam>& info) {
  const auto [cols, labels, mask, scale] = info.param;
  static const char* kLabelNames[] = {"Hard", "Soft", "SparseHard", "SparseSoft"};
  return absl::StrCat("C", cols, kLabelNames[static_cast<int>(labels)], mask ? "Masked" : "",
                      scale > 100 ? "Huge" : "");
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, LossSweepTest,
    ::testing::Combine(::testing::Values(1, 7, 31, 32, 33, 1000, 4097, 8193, 131072),
                       ::testing::Values(Labels::kHard, Labels::kSoft, Labels::kSparseHard,
                                         Labels::kSparseSoft),
                       ::testing::Bool(), ::testing::Values(3.0f, 1e4f)),
    SweepName);

// --- Edge cases -------------------------------------------------------------------------------

TEST(CpuLossTest, AllMaskedRowHasZeroLossAndZeroGradient) {
  const std::vector<float> s = {1.0f, -2.0f, 3.0f, 0.5f};
  const std::vector<float> t = {1.0f, 0.0f, 0.3f, 1.0f};
  const std::vector<uint8_t> mask(4, 0);
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 4};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, 4};
  in.mask = mask.data();
  auto backend = NewCpuBackend({.threads = 1});
  const LossResult res = RunLoss(*backend, in, true);
  EXPECT_EQ(res.loss[0], 0.0f);
  for (float g : res.grad) EXPECT_EQ(g, 0.0f);
  EXPECT_FALSE(std::signbit(res.grad[0]));
}

TEST(CpuLossTest, NegativeInfinityScoreExcludesTheEntryLikeTheMask) {
  const std::vector<float> s = {-kInf, -2.0f, 3.0f, -kInf};
  const std::vector<float> s_masked = {123.0f, -2.0f, 3.0f, -45.0f};
  const std::vector<float> t = {1.0f, 0.0f, 0.3f, 0.0f};
  const std::vector<uint8_t> mask = {0, 1, 1, 0};
  auto backend = NewCpuBackend({.threads = 1});
  LossInput a;
  a.scores = {s.data(), DType::kFloat32, 1, 4};
  a.labels = MatrixView{t.data(), DType::kFloat32, 1, 4};
  LossInput b = a;
  b.scores.data = s_masked.data();
  b.mask = mask.data();
  const LossResult ra = RunLoss(*backend, a, true), rb = RunLoss(*backend, b, true);
  EXPECT_EQ(ra.loss, rb.loss);
  EXPECT_EQ(ra.grad, rb.grad);
  EXPECT_TRUE(std::isfinite(ra.loss[0]));
  EXPECT_EQ(ra.grad[0], 0.0f);
}

TEST(CpuLossTest, HardLabelsReduceToTheOriginalZlpr) {
  // L = log(1 + Σ_neg e^s) + log(1 + Σ_pos e^-s)
  const std::vector<float> s = {2.0f, -1.0f, 0.5f, -3.0f, 1.5f};
  const std::vector<float> t = {1.0f, 0.0f, 1.0f, 0.0f, 0.0f};
  const double expected = std::log(1 + std::exp(-1.0) + std::exp(-3.0) + std::exp(1.5)) +
                          std::log(1 + std::exp(-2.0) + std::exp(-0.5));
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 5};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, 5};
  auto backend = NewCpuBackend();
  EXPECT_NEAR(RunLoss(*backend, in, false).loss[0], expected, 1e-5 * expected);
}

TEST(CpuLossTest, GradientMatchesCentralFiniteDifferencesOfTheFloat64Loss) {
  ProblemSpec spec{.rows = 4,
                   .cols = 13,
                   .labels = Labels::kSoft,
                   .mask = true,
                   .scale = 4.0f,
                   .positive_rate = 0.4,
                   .seed = 99};
  const Problem p = MakeProblem(spec);
  auto backend = NewCpuBackend();
  const LossResult res = RunLoss(*backend, p.Input(), true);
  for (int64_t r = 0; r < spec.rows; ++r) {
    std::vector<double> s = p.RowScores(r);
    const std::vector<double> t = p.RowLabels(r);
    for (int64_t c = 0; c < spec.cols; ++c) {
      const double h = 1e-5, s0 = s[c];
      s[c] = s0 + h;
      const double up = reference::Loss({s.data(), t.data(), p.RowMask(r), spec.cols});
      s[c] = s0 - h;
      const double down = reference::Loss({s.data(), t.data(), p.RowMask(r), spec.cols});
      s[c] = s0;
      const double fd = (up - down) / (2 * h);
      EXPECT_NEAR(res.grad[r * spec.cols + c], fd, 1e-5 + 1e-5 * std::abs(fd))
          << "row " << r << " column " << c;
    }
  }
}

TEST(CpuLossTest, GradientIsZeroAtHalfLogitOfTheLabels) {
  const int64_t cols = 257;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0.02, 0.98);
  std::vector<float> s(cols), t(cols);
  for (int64_t c = 0; c < cols; ++c) {
    t[c] = static_cast<float>(u(rng));
    s[c] = static_cast<float>(0.5 * std::log(double{t[c]} / (1.0 - t[c])));
  }
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, cols};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, cols};
  auto backend = NewCpuBackend();
  const LossResult res = RunLoss(*backend, in, true);
  // s is ½·logit(t) rounded to fp32, so the gradient is zero up to that rounding.
  for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(res.grad[c], 0.0f, 2e-7) << "column " << c;
}

TEST(CpuLossTest, GradientDescentConvergesToSigmaOfTwoSEqualsLabels) {
  const std::vector<float> t = {0.9f, 0.2f, 0.5f, 0.05f, 0.7f};
  std::vector<float> s(t.size(), 0.0f), grad(t.size());
  float loss;
  auto backend = NewCpuBackend({.threads = 1});
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, static_cast<int64_t>(t.size())};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, static_cast<int64_t>(t.size())};
  for (int step = 0; step < 3000; ++step) {
    ASSERT_TRUE(backend->Loss(in, {&loss, grad.data()}).ok());
    for (size_t i = 0; i < s.size(); ++i) s[i] -= 2.0f * grad[i];
  }
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_NEAR(reference::Prob(s[i]), t[i], 1e-3) << "label " << i;
  }
}

TEST(CpuLossTest, SparseAndDenseLabelsGiveIdenticalBits) {
  for (Labels kind : {Labels::kSparseHard, Labels::kSparseSoft}) {
    for (int64_t cols : {7, 1000, 20000}) {
      const Problem p = MakeProblem({.rows = 6,
                                     .cols = cols,
                                     .labels = kind,
                                     .mask = true,
                                     .neg_inf = true,
                                     .seed = static_cast<uint64_t>(cols)});
      auto backend = NewCpuBackend({.threads = 2});
      const LossResult sparse = RunLoss(*backend, p.Input(true), true);
      const LossResult dense = RunLoss(*backend, p.Input(false), true);
      EXPECT_EQ(0, std::memcmp(sparse.loss.data(), dense.loss.data(), 4 * sparse.loss.size()));
      EXPECT_EQ(0, std::memcmp(sparse.grad.data(), dense.grad.data(), 4 * sparse.grad.size()));
    }
  }
}

TEST(CpuLossTest, RowBitsDoNotDependOnTheBatchOrThreadCount) {
  for (int64_t cols : {33, 1000, 20000}) {
    const Problem p =
        MakeProblem({.rows = 37, .cols = cols, .labels = Labels::kSoft, .mask = true, .seed = 11});
    auto one = NewCpuBackend({.threads = 1});
    auto three = NewCpuBackend({.threads = 3});
    const LossResult full = RunLoss(*three, p.Input(), true);
    for (int64_t r : {0, 5, 36}) {
      const Problem alone = p.Slice(r, r + 1);
      const LossResult res = RunLoss(*one, alone.Input(), true);
      EXPECT_EQ(0, std::memcmp(&res.loss[0], &full.loss[r], 4)) << "row " << r;
      EXPECT_EQ(0, std::memcmp(res.grad.data(), &full.grad[r * cols], 4 * cols)) << "row " << r;
    }
    const Problem middle = p.Slice(3, 20);
    const LossResult part = RunLoss(*one, middle.Input(), true);
    EXPECT_EQ(0, std::memcmp(part.loss.data(), &full.loss[3], 4 * 17));
    EXPECT_EQ(0, std::memcmp(part.grad.data(), &full.grad[3 * cols], 4 * 17 * cols));
  }
}

TEST(CpuLossTest, HalfPrecisionInputsAreWidenedOnLoad) {
  const Problem p = MakeProblem({.rows = 5, .cols = 777, .labels = Labels::kSoft, .mask = true});
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    std::vector<uint16_t> s16(p.scores.size()), t16(p.dense.size());
    for (size_t i = 0; i < s16.size(); ++i) {
      s16[i] =
          dtype == DType::kFloat16 ? FloatToFloat16(p.scores[i]) : FloatToBFloat16(p.scores[i]);
      t16[i] = dtype == DType::kFloat16 ? FloatToFloat16(p.dense[i]) : FloatToBFloat16(p.dense[i]);
    }
    // The same problem with the rounded values in fp32.
    Problem widened = p;
    for (size_t i = 0; i < s16.size(); ++i) {
      widened.scores[i] = LoadAsFloat(s16.data(), dtype, static_cast<int64_t>(i));
      widened.dense[i] = LoadAsFloat(t16.data(), dtype, static_cast<int64_t>(i));
    }
    LossInput in = p.Input(false);
    in.scores = {s16.data(), dtype, 5, 777};
    in.labels = MatrixView{t16.data(), dtype, 5, 777};
    auto backend = NewCpuBackend();
    const LossResult half = RunLoss(*backend, in, true);
    const LossResult full = RunLoss(*backend, widened.Input(false), true);
    EXPECT_EQ(half.loss, full.loss) << DTypeName(dtype);
    EXPECT_EQ(half.grad, full.grad) << DTypeName(dtype);
    ExpectMatchesReference(widened, half);
  }
}

TEST(CpuLossTest, InvalidInputWritesNothing) {
  std::vector<float> s = {1.0f, std::nanf(""), 0.0f};
  const std::vector<float> t = {1.0f, 0.0f, 0.0f};
  LossInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 3};
  in.labels = MatrixView{t.data(), DType::kFloat32, 1, 3};
  float loss = -5.0f;
  std::vector<float> grad(3, -5.0f);
  auto backend = NewCpuBackend();
  const absl::Status st = backend->Loss(in, {&loss, grad.data()});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "scores[0, 1] is NaN");
  EXPECT_EQ(loss, -5.0f);
  EXPECT_EQ(grad, std::vector<float>(3, -5.0f));
}

TEST(CpuLossTest, SubnormalLabelsGiveTheExactLossAndGradientNotNaN) {
  // Found by fuzz/convert_fuzzer: a subnormal label on the entry that sets the positive term's
  // maximum left that term's fp32 total subnormal, 1/total overflowed, and the gradient was
  // NaN at every t = 0 entry. One row of one chunk, and one of several chunks.
  for (int64_t cols : {7, 20000}) {
    std::vector<float> s(cols), t(cols, 0.0f);
    for (int64_t c = 0; c < cols; ++c) s[c] = static_cast<float>(c % 5) - 2.0f;
    t[3] = t[4] = t[5] = 1.0f;
    s[2] = -std::numeric_limits<float>::infinity();
    const int64_t tiny = cols - 1;  // in the last chunk of the long row
    s[tiny] = -344064.0f;
    t[tiny] = 4.48415509e-44f;  // subnormal
    LossInput in;
    in.scores = {s.data(), DType::kFloat32, 1, cols};
    in.labels = MatrixView{t.data(), DType::kFloat32, 1, cols};
    float loss = -1;
    std::vector<float> grad(cols, 9.0f);
    ASSERT_TRUE(NewCpuBackend({.threads = 2})->Loss(in, {&loss, grad.data()}).ok());
    const std::vector<double> sd(s.begin(), s.end()), td(t.begin(), t.end());
    const reference::Row row{sd.data(), td.data(), nullptr, cols};
    const double ref = reference::Loss(row);
    EXPECT_NEAR(loss, ref, testing::LossTolerance(ref)) << "cols " << cols;
    std::vector<double> ref_grad(cols);
    reference::Grad(row, ref_grad.data());
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_NEAR(grad[c], ref_grad[c], testing::GradTolerance(ref_grad[c])) << "column " << c;
    }
    EXPECT_NEAR(grad[tiny], -1.0, 1e-6);
  }
}

// --- Probabilities and the labeler ------------------------------------------------------------

TEST(CpuProbabilitiesTest, MatchSigmaOfTwoSAndZeroWhereExcluded) {
  for (int64_t cols : {1, 7, 33, 1000, 9000}) {
    const Problem p = MakeProblem(
        {.rows = 4, .cols = cols, .mask = true, .neg_inf = true, .scale = 30.0f, .seed = 3});
    std::vector<float> probs(p.scores.size(), -1.0f);
    auto backend = NewCpuBackend({.threads = 2});
    LabelerInput in;
    in.scores = {p.scores.data(), DType::kFloat32, 4, cols};
    in.mask = p.mask.data();
    LabelSets sets;
    ASSERT_TRUE(backend->Label(in, &sets, probs.data()).ok());
    for (size_t i = 0; i < probs.size(); ++i) {
      const bool excluded = p.mask[i] == 0 || p.scores[i] == -kInf;
      const double ref = excluded ? 0.0 : reference::Prob(p.scores[i]);
      ASSERT_NEAR(probs[i], ref, 1e-7 + 1e-6 * ref) << "entry " << i << " score " << p.scores[i];
    }
  }
}

struct LabelerCase {
  const char* name;
  float threshold;
  bool per_label;
  uint32_t top_k;
  uint32_t min_labels;
};

class LabelerTest : public ::testing::TestWithParam<std::tuple<LabelerCase, int64_t>> {};

TEST_P(LabelerTest, MatchesTheReferenceSelectionAndOrder) {
  const auto [lc, cols] = GetParam();
  Problem p = MakeProblem({.rows = 11,
                           .cols = cols,
                           .mask = true,
                           .neg_inf = true,
                           .scale = 4.0f,
                           .seed = static_cast<uint64_t>(cols) + lc.top_k});
  // Coarse scores make ties, which must go to the smaller index.
  for (float& s : p.scores) {
    if (std::isfinite(s)) s = std::round(s * 4.0f) / 4.0f;
  }
  std::vector<float> thresholds(cols);
  std::vector<double> thresholds_d(cols);
  for (int64_t c = 0; c < cols; ++c) {
    thresholds[c] = 0.1f + 0.8f * static_cast<float>(c % 9) / 8.0f;
    thresholds_d[c] = thresholds[c];
  }
  LabelerInput in;
  in.scores = {p.scores.data(), DType::kFloat32, 11, cols};
  in.mask = p.mask.data();
  in.options = {lc.threshold, lc.per_label ? thresholds.data() : nullptr, lc.top_k, lc.min_labels};
  LabelSets out;
  std::vector<float> probs(p.scores.size());
  auto backend = NewCpuBackend({.threads = 2});
  ASSERT_TRUE(backend->Label(in, &out, probs.data()).ok());
  ASSERT_EQ(out.row_offsets.size(), 12u);
  for (int64_t r = 0; r < 11; ++r) {
    const std::vector<double> s = p.RowScores(r);
    const std::vector<int32_t> expected = reference::Labels(
        {s.data(), p.RowMask(r), cols},
        {lc.threshold, lc.per_label ? thresholds_d.data() : nullptr, lc.top_k, lc.min_labels});
    const std::vector<int32_t> got(out.labels.begin() + out.row_offsets[r],
                                   out.labels.begin() + out.row_offsets[r + 1]);
    ASSERT_EQ(got, expected) << "row " << r;
    for (int64_t k = out.row_offsets[r]; k < out.row_offsets[r + 1]; ++k) {
      // The label's probability is the dense probability, to the bit.
      ASSERT_EQ(out.probs[k], probs[r * cols + out.labels[k]]);
    }
  }
}

const LabelerCase kLabelerCases[] = {
    {"Default", 0.5f, false, 0, 0},   {"LowThreshold", 0.2f, false, 0, 0},
    {"TopK", 0.5f, false, 3, 0},      {"TopKOfMany", 0.1f, false, 5, 0},
    {"MinLabels", 0.9f, false, 0, 4}, {"TopKBelowMin", 0.3f, false, 2, 6},
    {"PerLabel", 0.5f, true, 0, 0},   {"PerLabelTopKMin", 0.5f, true, 4, 5},
};

INSTANTIATE_TEST_SUITE_P(Options, LabelerTest,
                         ::testing::Combine(::testing::ValuesIn(kLabelerCases),
                                            ::testing::Values(1, 7, 33, 1000, 9000)),
                         [](const auto& param_info) {
                           return absl::StrCat(std::get<0>(param_info.param).name, "C",
                                               std::get<1>(param_info.param));
                         });

TEST(CpuLabelerTest, ThresholdIsDecidedInScoreSpaceWithoutRounding) {
  // σ(2s) rounds to exactly 0.5f for tiny positive s, but s > 0 is still above θ = 0.5.
  const std::vector<float> s = {1e-9f, 0.0f, -1e-9f};
  LabelerInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 3};
  LabelSets out;
  auto backend = NewCpuBackend();
  ASSERT_TRUE(backend->Label(in, &out, nullptr).ok());
  EXPECT_EQ(out.labels, std::vector<int32_t>{0});
}

TEST(CpuLabelerTest, MinLabelsNeverPicksExcludedEntries) {
  const std::vector<float> s = {-kInf, -5.0f, 2.0f, -1.0f};
  const std::vector<uint8_t> mask = {1, 1, 0, 1};
  LabelerInput in;
  in.scores = {s.data(), DType::kFloat32, 1, 4};
  in.mask = mask.data();
  in.options.min_labels = 4;
  LabelSets out;
  auto backend = NewCpuBackend();
  ASSERT_TRUE(backend->Label(in, &out, nullptr).ok());
  EXPECT_EQ(out.labels, (std::vector<int32_t>{3, 1}));
}

}  // namespace
}  // namespace zlpr
