// The structural rules of the tensors every protocol carries, in one place: a [rows, cols]
// matrix, a mask over it, and per-column label thresholds. Each protocol's codec applies them
// and words the refusal its own way (zlpr.v1 names fields, "scores.shape"; the Open Inference
// Protocol names inputs, "input 'scores'"), so that the rules cannot drift apart.
//
//   uint64_t want = 0;
//   switch (CheckMatrixShape(shape, /*element_bytes=*/4, data.size(), &want)) { ... }
#ifndef ZLPR_COMMON_TENSOR_RULES_H_
#define ZLPR_COMMON_TENSOR_RULES_H_

#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string_view>

namespace zlpr {

// The largest rows or columns a matrix may have (the kernels index with int32).
inline constexpr int64_t kMaxMatrixDim = std::numeric_limits<int32_t>::max();

enum class MatrixProblem {
  kNone,
  kNotTwoDimensions,  // the shape is not [rows, cols]
  kDimensionRange,    // rows or cols outside 1 to kMaxMatrixDim
  kByteCount,         // the data is not rows * cols elements
};

// A [rows, cols] matrix of `element_bytes` elements held in `data_bytes`; *want is the byte
// count its shape needs (when the shape itself is valid).
inline MatrixProblem CheckMatrixShape(std::span<const int64_t> shape, uint64_t element_bytes,
                                      uint64_t data_bytes, uint64_t* want) {
  *want = 0;
  if (shape.size() != 2) return MatrixProblem::kNotTwoDimensions;
  if (shape[0] < 1 || shape[1] < 1 || shape[0] > kMaxMatrixDim || shape[1] > kMaxMatrixDim) {
    return MatrixProblem::kDimensionRange;
  }
  // Both below 2^31 and elements of at most 8 bytes: the product fits in 64 bits.
  *want = static_cast<uint64_t>(shape[0]) * static_cast<uint64_t>(shape[1]) * element_bytes;
  return data_bytes == *want ? MatrixProblem::kNone : MatrixProblem::kByteCount;
}

// A mask (one byte per element) over a [rows, cols] matrix: the same shape, one byte each.
inline bool MaskMatches(std::span<const int64_t> shape, uint64_t data_bytes, int64_t rows,
                        int64_t cols) {
  return shape.size() == 2 && shape[0] == rows && shape[1] == cols &&
         data_bytes == static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
}

enum class ThresholdsProblem {
  kNone,
  kShape,       // neither [cols] nor [n, cols] of float32 with n >= 1 and matching bytes
  kRowsDiffer,  // [n, cols] whose rows are not all the same (*row: the first that differs)
};

// Per-column thresholds for `cols` columns: float32 [cols], or [n, cols] with n equal rows (a
// client that batches requests repeats them per request row).
inline ThresholdsProblem CheckThresholds(std::span<const int64_t> shape, std::string_view data,
                                         int64_t cols, int64_t* row) {
  *row = 0;
  const int64_t copies = shape.size() == 2 ? shape[0] : 1;
  const bool shape_ok = (shape.size() == 1 && shape[0] == cols) ||
                        (shape.size() == 2 && copies >= 1 && shape[1] == cols);
  // Compared by division first: a hostile row count must not overflow the product.
  const uint64_t row_bytes = static_cast<uint64_t>(cols) * 4;
  if (!shape_ok || cols < 1 || static_cast<uint64_t>(copies) > data.size() / row_bytes ||
      data.size() != static_cast<uint64_t>(copies) * row_bytes) {
    return ThresholdsProblem::kShape;
  }
  for (int64_t r = 1; r < copies; ++r) {
    if (std::memcmp(data.data() + r * row_bytes, data.data(), row_bytes) != 0) {
      *row = r;
      return ThresholdsProblem::kRowsDiffer;
    }
  }
  return ThresholdsProblem::kNone;
}

}  // namespace zlpr

#endif  // ZLPR_COMMON_TENSOR_RULES_H_
