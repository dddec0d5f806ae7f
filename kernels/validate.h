// Input validation shared by every backend (docs/zlpr-math.md, "Invalid input").
#ifndef ZLPR_KERNELS_VALIDATE_H_
#define ZLPR_KERNELS_VALIDATE_H_

#include "absl/status/status.h"
#include "kernels/thread_pool.h"
#include "kernels/zlpr.h"

namespace zlpr::internal {

// As zlpr::ValidateLossInput / ValidateLabelerInput, scanning rows on `pool` when given.
// When several entries are invalid, the error names the first in row-major order.
absl::Status ValidateLoss(const LossInput& input, ThreadPool* pool);
absl::Status ValidateLabeler(const LabelerInput& input, ThreadPool* pool);
absl::Status ValidateScoresAndMask(const MatrixView& scores, const uint8_t* mask, ThreadPool* pool);

// z such that s > z, in fp32, holds exactly when s > ½·logit(θ) in real arithmetic: the
// labeler's threshold in score space (docs/zlpr-math.md, "Decoding").
float ScoreThreshold(float theta);

}  // namespace zlpr::internal

#endif  // ZLPR_KERNELS_VALIDATE_H_
