// The Open Inference Protocol's two models, for both bindings: a Request becomes a typed job
// once (with the same matrix, mask and threshold rules as zlpr.v1, common/tensor_rules.h, and
// the kernels' validators), and a result becomes the Response's outputs.
//
//   zlpr_predict  inputs  scores FP32|FP16|BF16 [-1, -1]; optional label_thresholds FP32 [-1]
//                         or [-1, -1] (equal rows), mask UINT8 [-1, -1]; parameters threshold,
//                         top_k, min_labels
//                 outputs probs FP32 [-1, -1] (or Triton's classification of them), labels
//                         INT32 [-1, -1] (each row's labels in the labeler's order, padded with
//                         -1), label_probs FP32 [-1, -1] (padded with 0), label_count INT32 [-1]
//   zlpr_loss     inputs  scores, labels FP32|FP16|BF16 [-1, -1]; optional mask UINT8 [-1, -1]
//                 outputs loss FP32 [-1], grad FP32 [-1, -1]; response parameters loss_sum,
//                         loss_mean
// Parameter "timeout" (Triton's, microseconds) bounds a request's time like a deadline;
// "priority" (Triton's levels: 0 the model's default, 1 interactive, 2 bulk; zlpr_predict is
// interactive by default and zlpr_loss bulk) sets its class (job.h, Priority);
// parameters named "triton_..." are Triton's own and ignored. Only the requested outputs are
// returned (all when none is named); the gradient and the dense probabilities are computed only
// when returned.
#ifndef ZLPR_SERVER_OIP_CONVERTER_H_
#define ZLPR_SERVER_OIP_CONVERTER_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/job.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

inline constexpr char kPredictModel[] = "zlpr_predict";
inline constexpr char kLossModel[] = "zlpr_loss";
inline constexpr char kPlatform[] = "zlpr";

// NOT_FOUND unless `name` is one of the two models and `version` is empty or "1".
absl::Status CheckModel(std::string_view name, std::string_view version);

// A model's input or output as its metadata and configuration report it.
struct TensorSpec {
  const char* name;
  DataType datatype;           // the main one; scores and labels also take FP16 and BF16
  std::vector<int64_t> shape;  // with the batch dimension first
  bool optional = false;
};
const std::vector<TensorSpec>& InputSpecs(std::string_view model);
const std::vector<TensorSpec>& OutputSpecs(std::string_view model);

// The outputs a request asked for: names of a model's outputs (OutputSpecs), each once.
class OutputSet {
 public:
  // Adds a TensorSpec's name (it must outlive the set: the specs' names are static).
  void insert(std::string_view spec_name) {
    if (count(spec_name) == 0) names_.push_back(spec_name);
  }
  size_t count(std::string_view name) const {
    return std::find(names_.begin(), names_.end(), name) != names_.end() ? 1 : 0;
  }
  size_t size() const { return names_.size(); }
  bool empty() const { return names_.empty(); }

 private:
  absl::InlinedVector<std::string_view, 4> names_;
};

// A request converted: the job to queue and how to answer it.
struct Plan {
  std::variant<std::monostate, LossJob, PredictJob> job;  // set by Convert
  OutputSet want;                                         // the outputs to return
  int64_t classification = 0;  // zlpr_predict's probs as Triton's classification of k; 0: dense
  int64_t timeout_us = 0;      // Triton's "timeout"; 0: none
  std::optional<Priority> priority;  // Triton's "priority"; nullopt: the model's default
  // An upper bound on the response's outputs before anything is computed (label lists aside).
  int64_t response_bytes = 0;
};

// INVALID_ARGUMENT naming the input, element, row or column; NOT_FOUND for an unknown model.
// The job's views point into `request`'s tensors, which must outlive it.
absl::StatusOr<Plan> Convert(const Request& request);

// The outputs (and parameters) of a computed job, as `plan` asked for them.
void Fill(LossResult result, const Plan& plan, Response* response);
void Fill(PredictResult result, const Plan& plan, Response* response);

// Triton's priority levels: 1 interactive, 2 bulk (0 in a request: the model's default).
inline constexpr int kPriorityLevels = 2;
int DefaultPriorityLevel(std::string_view model);

// An upper bound on `response`'s size on either wire (its outputs' bytes and their framing).
int64_t WireBytes(const Response& response);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_CONVERTER_H_
