// Input validation shared by every backend (docs/MATH.md, "Invalid input"), and the one place
// that makes ValidatedLossInput / ValidatedLabelerInput.
#ifndef ZLPR_KERNELS_VALIDATE_H_
#define ZLPR_KERNELS_VALIDATE_H_

#include "absl/status/statusor.h"
#include "kernels/thread_pool.h"
#include "kernels/zlpr.h"

namespace zlpr::internal {

class Validator {
 public:
  // As zlpr::ValidateLossInput / ValidateLabelerInput, scanning rows on `pool` when given.
  // When several entries are invalid, the error names the first in row-major order.
  static absl::StatusOr<ValidatedLossInput> Loss(const LossInput& input, ThreadPool* pool);
  static absl::StatusOr<ValidatedLabelerInput> Labeler(const LabelerInput& input, ThreadPool* pool);

  // For operations that keep validity by construction (concatenating validated inputs),
  // never for outside input.
  static ValidatedLossInput AlreadyValid(const LossInput& input) {
    return ValidatedLossInput(input);
  }
  static ValidatedLabelerInput AlreadyValid(const LabelerInput& input) {
    return ValidatedLabelerInput(input);
  }
};

// z such that s > z, in fp32, holds exactly when s > ½·logit(θ) in real arithmetic: the
// labeler's threshold in score space (docs/MATH.md, "Decoding").
float ScoreThreshold(float theta);

}  // namespace zlpr::internal

#endif  // ZLPR_KERNELS_VALIDATE_H_
