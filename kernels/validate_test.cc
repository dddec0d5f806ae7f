// Every invalid input of docs/MATH.md is rejected with INVALID_ARGUMENT and a message that
// names the field, the row and the column.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/zlpr.h"
#include "zlpr/dtype.h"

namespace zlpr {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

class ValidateTest : public ::testing::Test {
 protected:
  // 3 rows x 4 columns of valid data, changed by each test.
  std::vector<float> s_ = {0, 1, 2, 3, -1, -2, -kInf, 4, 5, 6, 7, 8};
  std::vector<float> t_ = {0, 1, 0.5f, 0, 1, 0, 0, 0, 0, 0, 0, 1};
  std::vector<uint8_t> mask_ = std::vector<uint8_t>(12, 1);
  std::vector<int64_t> splits_ = {0, 2, 2, 5};
  std::vector<int32_t> indices_ = {1, 3, 0, 2, 3};
  std::vector<float> values_ = {1, 0.5f, 1, 1, 0.25f};

  LossInput Dense() {
    LossInput in;
    in.scores = {s_.data(), DType::kFloat32, 3, 4};
    in.labels = MatrixView{t_.data(), DType::kFloat32, 3, 4};
    in.mask = mask_.data();
    return in;
  }
  LossInput Sparse() {
    LossInput in = Dense();
    in.labels = SparseLabelsView{splits_, indices_, values_};
    return in;
  }
  static void ExpectInvalid(const absl::Status& st, const std::string& message) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(st.message(), message);
  }
  template <typename T>
  static void ExpectInvalid(const absl::StatusOr<T>& v, const std::string& message) {
    ExpectInvalid(v.status(), message);
  }
};

TEST_F(ValidateTest, AcceptsValidDenseAndSparseInput) {
  EXPECT_TRUE(ValidateLossInput(Dense()).ok());
  EXPECT_TRUE(ValidateLossInput(Sparse()).ok());
  values_.clear();
  EXPECT_TRUE(ValidateLossInput(Sparse()).ok());
}

TEST_F(ValidateTest, RejectsNaNScoreNamingRowAndColumn) {
  s_[6] = std::nanf("");
  ExpectInvalid(ValidateLossInput(Dense()), "scores[1, 2] is NaN");
}

TEST_F(ValidateTest, RejectsPositiveInfinityScore) {
  s_[11] = kInf;
  ExpectInvalid(ValidateLossInput(Dense()),
                "scores[2, 3] is +inf (only -inf, which excludes an entry, is allowed)");
}

TEST_F(ValidateTest, ReportsTheFirstBadEntryInRowMajorOrder) {
  s_[9] = std::nanf("");
  s_[3] = kInf;
  ExpectInvalid(ValidateLossInput(Dense()),
                "scores[0, 3] is +inf (only -inf, which excludes an entry, is allowed)");
}

TEST_F(ValidateTest, RejectsNaNInHalfPrecisionScores) {
  std::vector<uint16_t> h(12, FloatToFloat16(0.5f));
  h[5] = 0x7E00;  // NaN
  LossInput in = Dense();
  in.scores = {h.data(), DType::kFloat16, 3, 4};
  ExpectInvalid(ValidateLossInput(in), "scores[1, 1] is NaN");
}

TEST_F(ValidateTest, RejectsLabelsOutsideZeroOne) {
  t_[7] = 1.5f;
  ExpectInvalid(ValidateLossInput(Dense()), "dense_labels[1, 3] = 1.5 is outside [0, 1]");
  t_[7] = -0.25f;
  ExpectInvalid(ValidateLossInput(Dense()), "dense_labels[1, 3] = -0.25 is outside [0, 1]");
  t_[7] = std::nanf("");
  ExpectInvalid(ValidateLossInput(Dense()), "dense_labels[1, 3] is NaN");
}

TEST_F(ValidateTest, RejectsShapesThatDisagree) {
  LossInput in = Dense();
  in.labels = MatrixView{t_.data(), DType::kFloat32, 4, 3};
  ExpectInvalid(ValidateLossInput(in), "dense_labels: shape [4, 3] does not match scores [3, 4]");
  in.scores.rows = 0;
  ExpectInvalid(ValidateLossInput(in),
                "scores: shape [0, 4] must have at least one row and one column");
}

TEST_F(ValidateTest, RejectsMaskValuesOtherThanZeroAndOne) {
  mask_[10] = 2;
  ExpectInvalid(ValidateLossInput(Dense()), "mask[2, 2] = 2 must be 0 or 1");
}

TEST_F(ValidateTest, RejectsSparseIndexOutOfRange) {
  indices_[4] = 4;
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.indices[4] (row 2) = 4 is out of range [0, 4)");
  indices_[4] = -1;
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.indices[4] (row 2) = -1 is out of range [0, 4)");
}

TEST_F(ValidateTest, RejectsSparseIndicesOutOfOrder) {
  indices_[3] = 0;
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.indices[3] (row 2, column 0) is not greater than the previous "
                "index 0: indices must be strictly increasing within a row");
}

TEST_F(ValidateTest, RejectsSparseValuesOutsideZeroOne) {
  values_[1] = 2.0f;
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.values[1] (row 0, column 3) = 2 is outside [0, 1]");
}

TEST_F(ValidateTest, RejectsMalformedRowSplits) {
  splits_ = {0, 2, 5};
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.row_splits has 3 entries, expected rows + 1 = 4");
  splits_ = {1, 2, 2, 5};
  ExpectInvalid(ValidateLossInput(Sparse()), "sparse_labels.row_splits[0] = 1, expected 0");
  splits_ = {0, 3, 2, 5};
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.row_splits[2] = 2 is less than row_splits[1] = 3 (row 1)");
  splits_ = {0, 2, 2, 4};
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.row_splits[3] = 4 does not match the 5 indices");
  splits_ = {0, 2, 2, 5};
  values_.pop_back();
  ExpectInvalid(ValidateLossInput(Sparse()),
                "sparse_labels.values has 4 entries, expected 0 or 5 (one per index)");
}

TEST_F(ValidateTest, RejectsThresholdsOutsideTheOpenUnitInterval) {
  LabelerInput in;
  in.scores = {s_.data(), DType::kFloat32, 3, 4};
  in.options.threshold = 1.0f;
  ExpectInvalid(ValidateLabelerInput(in), "threshold = 1 must be in (0, 1)");
  in.options.threshold = std::nanf("");
  ExpectInvalid(ValidateLabelerInput(in), "threshold = nan must be in (0, 1)");
  const std::vector<float> per_label = {0.5f, 0.2f, 0.0f, 0.7f};
  in.options.label_thresholds = per_label.data();
  ExpectInvalid(ValidateLabelerInput(in), "label_thresholds[2] = 0 must be in (0, 1)");
}

TEST_F(ValidateTest, BackendRejectsBeforeComputing) {
  auto backend = NewCpuBackend();
  t_[0] = 3.0f;
  std::vector<float> loss(3, 9.0f);
  const absl::Status st = backend->Loss(Dense(), {loss.data(), nullptr});
  ExpectInvalid(st, "dense_labels[0, 0] = 3 is outside [0, 1]");
  EXPECT_EQ(loss, std::vector<float>(3, 9.0f));
}

TEST_F(ValidateTest, CapsTopKAndMinLabelsAtTheColumnCount) {
  LabelerInput in;
  in.scores = {s_.data(), DType::kFloat32, 3, 4};
  in.options.top_k = 4294967295u;
  in.options.min_labels = 4294967295u;
  auto valid = ValidateLabelerInput(in);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ((*valid)->options.top_k, 4u);
  EXPECT_EQ((*valid)->options.min_labels, 4u);
  in.options.top_k = 3;
  in.options.min_labels = 0;
  EXPECT_EQ((*ValidateLabelerInput(in))->options.top_k, 3u);
}

TEST_F(ValidateTest, ABackendSelectsEveryLabelForAHugeTopKWithoutSizingByIt) {
  // 2^32 - 1 labels asked of a 4-column row: the same answer as top_k = 4, nothing huge
  // allocated (this used to abort with std::bad_alloc).
  LabelerInput in;
  in.scores = {s_.data(), DType::kFloat32, 3, 4};
  in.options.threshold = 0.01f;
  in.options.top_k = 4294967295u;
  in.options.min_labels = 4294967295u;
  LabelSets huge, four;
  auto backend = NewCpuBackend({.threads = 1});
  ASSERT_TRUE(backend->Label(in, &huge, nullptr).ok());
  in.options.top_k = 4;
  in.options.min_labels = 4;
  ASSERT_TRUE(backend->Label(in, &four, nullptr).ok());
  EXPECT_EQ(huge.labels, four.labels);
  EXPECT_EQ(huge.row_offsets, (std::vector<int64_t>{0, 4, 7, 11}));  // -inf is never a label
}

TEST_F(ValidateTest, ConcatenationNeedsMatchingShapesTypesAndOptions) {
  auto a = ValidateLossInput(Dense());
  auto b = ValidateLossInput(Sparse());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(Concatenable(*a, *a));
  EXPECT_FALSE(Concatenable(*a, *b));
  ConcatBuffers buf;
  const ValidatedLossInput* parts[] = {&*a, &*b};
  EXPECT_EQ(ConcatenateLossInputs(parts, &buf).status().code(),
            absl::StatusCode::kFailedPrecondition);

  LabelerInput x;
  x.scores = {s_.data(), DType::kFloat32, 3, 4};
  LabelerInput y = x;
  y.options.threshold = 0.25f;
  auto vx = ValidateLabelerInput(x);
  auto vy = ValidateLabelerInput(y);
  EXPECT_FALSE(Concatenable(*vx, *vy));
  y.options.threshold = 0.5f;
  EXPECT_TRUE(Concatenable(*vx, *ValidateLabelerInput(y)));
}

TEST_F(ValidateTest, ConcatenatedInputsHoldEveryPartsRowsInOrder) {
  // Dense labels, sparse labels and masks: the whole equals the parts stacked.
  for (bool sparse : {false, true}) {
    auto a = ValidateLossInput(sparse ? Sparse() : Dense());
    ASSERT_TRUE(a.ok());
    ConcatBuffers buf;
    const ValidatedLossInput* parts[] = {&*a, &*a};
    auto whole = ConcatenateLossInputs(parts, &buf);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(whole->rows(), 6);
    const auto* s = static_cast<const float*>((*whole)->scores.data);
    for (int64_t i = 0; i < 12; ++i) {
      EXPECT_EQ(std::memcmp(&s[i], &s_[i], 4), 0);
      EXPECT_EQ(std::memcmp(&s[12 + i], &s_[i], 4), 0);
      EXPECT_EQ((*whole)->mask[12 + i], mask_[i]);
    }
    if (sparse) {
      const auto& sp = std::get<SparseLabelsView>((*whole)->labels);
      EXPECT_EQ(std::vector<int64_t>(sp.row_splits.begin(), sp.row_splits.end()),
                (std::vector<int64_t>{0, 2, 2, 5, 7, 7, 10}));
      EXPECT_EQ(sp.indices.size(), 10u);
      EXPECT_EQ(sp.values.size(), 10u);
    } else {
      const auto& d = std::get<MatrixView>((*whole)->labels);
      EXPECT_EQ(d.rows, 6);
      EXPECT_EQ(static_cast<const float*>(d.data)[12 + 2], 0.5f);
    }
  }
}

TEST_F(ValidateTest, SlicesComputeToTheBitsOfTheWhole) {
  // Seeded random rows at an awkward size, dense and sparse (soft) labels, a mask: every row
  // range's loss, gradient and labels equal the whole input's rows, bit for bit.
  constexpr int64_t kRows = 13, kCols = 1031;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 3);
  std::uniform_real_distribution<float> unit(0, 1);
  std::vector<float> s(kRows * kCols), t(kRows * kCols, 0);
  std::vector<uint8_t> mask(kRows * kCols);
  std::vector<int64_t> splits = {0};
  std::vector<int32_t> indices;
  std::vector<float> values;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      s[r * kCols + c] = normal(rng);
      mask[r * kCols + c] = unit(rng) < 0.95f ? 1 : 0;
      if (unit(rng) < 0.01f * static_cast<float>(r % 4)) {
        t[r * kCols + c] = unit(rng);
        indices.push_back(static_cast<int32_t>(c));
        values.push_back(t[r * kCols + c]);
      }
    }
    splits.push_back(static_cast<int64_t>(indices.size()));
  }
  auto backend = NewCpuBackend({.threads = 2});
  for (bool sparse : {false, true}) {
    LossInput in;
    in.scores = {s.data(), DType::kFloat32, kRows, kCols};
    in.mask = mask.data();
    if (sparse) {
      in.labels = SparseLabelsView{splits, indices, values};
    } else {
      in.labels = MatrixView{t.data(), DType::kFloat32, kRows, kCols};
    }
    auto whole = ValidateLossInput(in);
    ASSERT_TRUE(whole.ok()) << whole.status();
    std::vector<float> loss(kRows), grad(kRows * kCols);
    ASSERT_TRUE(backend->Loss(*whole, {loss.data(), grad.data()}).ok());
    ConcatBuffers buf;
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 1}, {1, 6}, {6, 13}, {0, 13}}) {
      const ValidatedLossInput slice = SliceRows(*whole, begin, end, &buf);
      ASSERT_EQ(slice.rows(), end - begin);
      std::vector<float> l(end - begin), g((end - begin) * kCols);
      ASSERT_TRUE(backend->Loss(slice, {l.data(), g.data()}).ok());
      EXPECT_EQ(std::memcmp(l.data(), loss.data() + begin, l.size() * 4), 0) << begin;
      EXPECT_EQ(std::memcmp(g.data(), grad.data() + begin * kCols, g.size() * 4), 0) << begin;
    }
  }
  LabelerInput li;
  li.scores = {s.data(), DType::kFloat32, kRows, kCols};
  li.mask = mask.data();
  li.options.top_k = 7;
  auto labeler = ValidateLabelerInput(li);
  ASSERT_TRUE(labeler.ok());
  LabelSets all, part;
  ASSERT_TRUE(backend->Label(*labeler, &all, nullptr).ok());
  ASSERT_TRUE(backend->Label(SliceRows(*labeler, 5, 9), &part, nullptr).ok());
  const int64_t first = all.row_offsets[5], last = all.row_offsets[9];
  EXPECT_EQ(part.labels,
            std::vector<int32_t>(all.labels.begin() + first, all.labels.begin() + last));
  EXPECT_EQ(part.probs, std::vector<float>(all.probs.begin() + first, all.probs.begin() + last));
}

}  // namespace
}  // namespace zlpr
