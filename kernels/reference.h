// Plain float64 evaluation of the ZLPR formulas: the oracle for every kernel test.
// Slow and obvious on purpose; it follows docs/MATH.md line by line.
#ifndef ZLPR_KERNELS_REFERENCE_H_
#define ZLPR_KERNELS_REFERENCE_H_

#include <cstdint>
#include <vector>

namespace zlpr::reference {

// One row. `mask` may be null; an entry is excluded when mask[i] == 0 or s[i] == -inf.
struct Row {
  const double* s;
  const double* t;
  const uint8_t* mask;
  int64_t cols;
};

double Loss(const Row& row);
// ∂L/∂s into grad (cols entries).
void Grad(const Row& row, double* grad);
// σ(2s), 0 at excluded entries.
double Prob(double s);

struct LabelRow {
  const double* s;
  const uint8_t* mask;
  int64_t cols;
};
struct LabelOptions {
  double threshold = 0.5;
  const double* label_thresholds = nullptr;
  uint32_t top_k = 0;
  uint32_t min_labels = 0;
};
// The labeler's selection for one row, in output order.
std::vector<int32_t> Labels(const LabelRow& row, const LabelOptions& options);

}  // namespace zlpr::reference

#endif  // ZLPR_KERNELS_REFERENCE_H_
