// Between zlpr.v1 messages and the kernels' views: requests become LossInput / LabelerInput
// pointing into the message's own bytes (no copy), checked for shape, type and size; results
// become response fields.
#ifndef ZLPR_SERVER_CONVERT_H_
#define ZLPR_SERVER_CONVERT_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/zlpr.h"
#include "zlpr/v1/zlpr.pb.h"

namespace zlpr::server {

// The request's tensors as kernel views, after the structural checks (shapes, dtypes, byte
// counts) and the kernels' value checks (NaN, ranges, sparse order). INVALID_ARGUMENT names
// the field, row and column. The views point into `request`, which must outlive them.
absl::StatusOr<LossInput> LossInputFromRequest(const v1::LossRequest& request);

struct PredictInput {
  LabelerInput labeler;
  bool want_probs = false;
};
absl::StatusOr<PredictInput> PredictInputFromRequest(const v1::PredictRequest& request);

// The gradient's element type from the request (FLOAT32 when unset).
absl::StatusOr<DType> GradDType(const v1::LossRequest& request);

// Writes rows x cols fp32 values to `tensor` as `dtype` (narrowing fp16/bf16 with rounding
// to nearest even).
void FillTensor(std::span<const float> values, int64_t rows, int64_t cols, DType dtype,
                v1::Tensor* tensor);

v1::DType ToProto(DType dtype);

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CONVERT_H_
