// The zlpr.v1 edge of the request path: a request becomes a typed, proto-free job once, on
// arrival (structural checks of its tensors, then the kernels' value checks), and a result
// becomes a response. Nothing after LossJobFromRequest / PredictJobFromRequest reads the
// proto; the job's views point into the request's own bytes (no copy), so the request must
// outlive the job.
#ifndef ZLPR_SERVER_ZLPR_V1_CONVERT_H_
#define ZLPR_SERVER_ZLPR_V1_CONVERT_H_

#include <optional>

#include "absl/status/statusor.h"
#include "server/core/job.h"
#include "zlpr/v1/zlpr.pb.h"

namespace zlpr::server {

// INVALID_ARGUMENT naming the field, row and column when the request is malformed or invalid.
absl::StatusOr<LossJob> LossJobFromRequest(const v1::LossRequest& request);
// A request's `priority`: nullopt for PRIORITY_DEFAULT (the job type's), INVALID_ARGUMENT for a
// number that is not a Priority.
absl::StatusOr<std::optional<Priority>> PriorityOf(int priority);
absl::StatusOr<PredictJob> PredictJobFromRequest(const v1::PredictRequest& request);

// An upper bound on the serialized size of the response to a job, apart from the label lists a
// Predict returns (which depend on the scores): the per-row losses, the gradient or the dense
// probabilities, their framing, and the echoed request id of `request_id_bytes`. Known before
// anything is computed, so a response that cannot fit the message limit is refused up front.
int64_t DenseResponseBytes(const LossJob& job, size_t request_id_bytes);
int64_t DenseResponseBytes(const PredictJob& job, size_t request_id_bytes);

// Fills `response` from `result` (the gradient and probabilities bytes are moved, not copied).
// The request id is the caller's to set.
void FillResponse(LossResult result, v1::LossResponse* response);
void FillResponse(PredictResult result, v1::PredictResponse* response);

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_ZLPR_V1_CONVERT_H_
