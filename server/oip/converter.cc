// Open Inference Protocol requests to jobs, and results to outputs.
#include "server/oip/converter.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/tensor_rules.h"

namespace zlpr::server::oip {

const std::vector<TensorSpec>& InputSpecs(std::string_view model) {
  static const std::vector<TensorSpec> predict = {
      {"scores", DataType::kFp32, {-1, -1}},
      // Per column; batched clients send one row per request row, all equal.
      {"label_thresholds", DataType::kFp32, {-1, -1}, true},
      {"mask", DataType::kUint8, {-1, -1}, true}};
  static const std::vector<TensorSpec> loss = {{"scores", DataType::kFp32, {-1, -1}},
                                               {"labels", DataType::kFp32, {-1, -1}},
                                               {"mask", DataType::kUint8, {-1, -1}, true}};
  return model == kLossModel ? loss : predict;
}

const std::vector<TensorSpec>& OutputSpecs(std::string_view model) {
  static const std::vector<TensorSpec> predict = {{"probs", DataType::kFp32, {-1, -1}},
                                                  {"labels", DataType::kInt32, {-1, -1}},
                                                  {"label_probs", DataType::kFp32, {-1, -1}},
                                                  {"label_count", DataType::kInt32, {-1}}};
  static const std::vector<TensorSpec> loss = {{"loss", DataType::kFp32, {-1}},
                                               {"grad", DataType::kFp32, {-1, -1}}};
  return model == kLossModel ? loss : predict;
}

int DefaultPriorityLevel(std::string_view model) {
  const Priority p = model == kLossModel ? LossJob::kDefaultPriority : PredictJob::kDefaultPriority;
  return p == Priority::kInteractive ? 1 : 2;
}

absl::Status CheckModel(std::string_view name, std::string_view version) {
  if (name != kPredictModel && name != kLossModel) {
    return absl::NotFoundError(
        absl::StrFormat("unknown model '%s': zlpr-server serves zlpr_predict and zlpr_loss", name));
  }
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(
        absl::StrFormat("model '%s' has only version 1, not '%s'", name, version));
  }
  return absl::OkStatus();
}

namespace {

std::string Names(const std::vector<TensorSpec>& specs) {
  std::vector<std::string> names;
  for (const TensorSpec& s : specs) names.emplace_back(s.name);
  return absl::StrJoin(names, ", ");
}

// The spec of `name`, or null.
const TensorSpec* Known(const std::vector<TensorSpec>& specs, const std::string& name) {
  const auto it =
      std::find_if(specs.begin(), specs.end(), [&](const TensorSpec& s) { return name == s.name; });
  return it == specs.end() ? nullptr : &*it;
}

// The request's inputs by name, checked against the model's (a request's handful of inputs:
// a fixed array in the spec's order, no allocation).
class Given {
 public:
  explicit Given(const std::vector<TensorSpec>& specs) : specs_(specs) {}
  // The tensor named `name`, or null when it was not given.
  const Tensor* Find(std::string_view name) const {
    for (size_t i = 0; i < specs_.size(); ++i) {
      if (name == specs_[i].name) return tensors_[i];
    }
    return nullptr;
  }
  const Tensor& Get(std::string_view name) const { return *Find(name); }  // a required one

 private:
  friend absl::StatusOr<Given> Inputs(const Request& req);
  static constexpr size_t kMaxInputs = 4;  // a model's inputs at most (InputSpecs)
  const std::vector<TensorSpec>& specs_;
  std::array<const Tensor*, kMaxInputs> tensors_{};
};

absl::StatusOr<Given> Inputs(const Request& req) {
  const auto& specs = InputSpecs(req.model);
  Given given(specs);
  for (const Tensor& t : req.inputs) {
    const auto spec = std::find_if(specs.begin(), specs.end(),
                                   [&](const TensorSpec& s) { return t.name == s.name; });
    if (spec == specs.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown input '%s' for model %s: its inputs are %s", t.name, req.model, Names(specs)));
    }
    const Tensor*& slot = given.tensors_[static_cast<size_t>(spec - specs.begin())];
    if (slot != nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("input '%s' given twice", t.name));
    }
    slot = &t;
  }
  for (const TensorSpec& s : specs) {
    if (!s.optional && given.Find(s.name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("model %s needs input '%s'", req.model, s.name));
    }
  }
  return given;
}

// A [rows, cols] matrix input of FP32, FP16 or BF16.
absl::StatusOr<MatrixView> FloatMatrix(const Tensor& t) {
  DType dtype;
  switch (t.datatype) {
    case DataType::kFp32:
      dtype = DType::kFloat32;
      break;
    case DataType::kFp16:
      dtype = DType::kFloat16;
      break;
    case DataType::kBf16:
      dtype = DType::kBFloat16;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': datatype %s is not allowed: use FP32, FP16 or BF16", t.name,
                          DataTypeName(t.datatype)));
  }
  uint64_t want = 0;
  switch (CheckMatrixShape(t.shape, DTypeSize(dtype), t.data.size(), &want)) {
    case MatrixProblem::kNotTwoDimensions:
    case MatrixProblem::kDimensionRange:
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': shape %s must be [rows, cols], each 1 to 2^31 - 1", t.name,
                          ShapeString(t.shape)));
    case MatrixProblem::kByteCount:
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': %d bytes of data for shape %s of %s, expected %d", t.name,
                          t.data.size(), ShapeString(t.shape), DataTypeName(t.datatype), want));
    case MatrixProblem::kNone:
      break;
  }
  return MatrixView{t.data.data(), dtype, t.shape[0], t.shape[1]};
}

absl::StatusOr<const uint8_t*> Mask(const Tensor& t, const MatrixView& scores) {
  if (t.datatype != DataType::kUint8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input 'mask': datatype %s is not allowed: use UINT8", DataTypeName(t.datatype)));
  }
  if (!MaskMatches(t.shape, t.data.size(), scores.rows, scores.cols)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("input 'mask': shape %s (%d bytes) does not match scores [%d, %d]",
                        ShapeString(t.shape), t.data.size(), scores.rows, scores.cols));
  }
  return reinterpret_cast<const uint8_t*>(t.data.data());
}

absl::StatusOr<const float*> LabelThresholds(const Tensor& t, int64_t cols) {
  int64_t row = 0;
  const ThresholdsProblem problem = t.datatype != DataType::kFp32
                                        ? ThresholdsProblem::kShape
                                        : CheckThresholds(t.shape, t.data, cols, &row);
  switch (problem) {
    case ThresholdsProblem::kShape:
      return absl::InvalidArgumentError(absl::StrFormat(
          "input 'label_thresholds': must be FP32 [%d] (one per column) or [n, %d], got %s %s",
          cols, cols, DataTypeName(t.datatype), ShapeString(t.shape)));
    case ThresholdsProblem::kRowsDiffer:
      return absl::InvalidArgumentError(absl::StrFormat(
          "input 'label_thresholds': row %d differs from row 0: the thresholds are per "
          "column, the same for every row",
          row));
    case ThresholdsProblem::kNone:
      break;
  }
  return reinterpret_cast<const float*>(t.data.data());
}

// A number parameter (double, int or a string that reads as one).
absl::StatusOr<double> Number(const std::string& name, const Parameter& p) {
  if (const auto* d = std::get_if<double>(&p)) return *d;
  if (const auto* i = std::get_if<int64_t>(&p)) return static_cast<double>(*i);
  if (const auto* u = std::get_if<uint64_t>(&p)) return static_cast<double>(*u);
  if (const auto* s = std::get_if<std::string>(&p)) {
    double v;
    if (absl::SimpleAtod(*s, &v)) return v;
  }
  return absl::InvalidArgumentError(absl::StrFormat("parameter '%s' must be a number", name));
}

bool IsTritons(const std::string& name) { return name.rfind("triton_", 0) == 0; }

struct Params {
  std::optional<float> threshold;
  uint32_t top_k = 0;
  uint32_t min_labels = 0;
  int64_t timeout_us = 0;  // 0: none
  std::optional<Priority> priority;
};

absl::StatusOr<Params> ParseParams(const Request& req) {
  Params out;
  for (const auto& [name, value] : req.parameters) {
    if (IsTritons(name)) continue;
    if (name == "timeout") {
      ZLPR_ASSIGN_OR_RETURN(const double us, Number(name, value));
      if (!(us >= 0)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("parameter 'timeout' = %g must be 0 (none) or more microseconds", us));
      }
      // Beyond a year is no timeout at all.
      out.timeout_us = static_cast<int64_t>(std::min(us, 365 * 86400 * 1e6));
      continue;
    }
    if (name == "priority") {
      // Triton's levels: 0 the model's default, then 1 (the highest) to kPriorityLevels.
      ZLPR_ASSIGN_OR_RETURN(const double level, Number(name, value));
      if (level != 0 && level != 1 && level != 2) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "parameter 'priority' = %g must be 0 (the model's default), 1 (interactive) or 2 "
            "(bulk)",
            level));
      }
      if (level != 0) out.priority = level == 1 ? Priority::kInteractive : Priority::kBulk;
      continue;
    }
    const bool count = name == "top_k" || name == "min_labels";
    if (name != "threshold" && !count) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown parameter '%s': zlpr_predict takes threshold, top_k and min_labels (and both "
          "models timeout and priority)",
          name));
    }
    if (req.model == kLossModel) {
      return absl::InvalidArgumentError(
          absl::StrFormat("parameter '%s' is for zlpr_predict; zlpr_loss takes none", name));
    }
    ZLPR_ASSIGN_OR_RETURN(const double v, Number(name, value));
    if (name == "threshold") {
      out.threshold = static_cast<float>(v);
      continue;
    }
    if (!(v >= 0)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("parameter '%s' = %g must be 0 or more", name, v));
    }
    // Anything over the column count means every label: cap at uint32's largest.
    const auto n = static_cast<uint32_t>(std::min<double>(v, std::numeric_limits<uint32_t>::max()));
    (name == "top_k" ? out.top_k : out.min_labels) = n;
  }
  return out;
}

// The outputs asked for (all of the model's when none is named), and the classification
// extension's k on zlpr_predict's probs (0: none).
absl::Status Requested(const Request& req, Plan* plan) {
  const auto& specs = OutputSpecs(req.model);
  for (const RequestedOutput& o : req.outputs) {
    const TensorSpec* spec = Known(specs, o.name);
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown output '%s' for model %s: its outputs are %s", o.name, req.model, Names(specs)));
    }
    for (const auto& [key, value] : o.parameters) {
      if (IsTritons(key)) continue;
      if (key != "classification" || o.name != "probs") {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output '%s': parameter '%s' is not supported (classification is, on probs)", o.name,
            key));
      }
      ZLPR_ASSIGN_OR_RETURN(const double k, Number(key, value));
      if (!(k >= 1) || k != static_cast<double>(static_cast<int64_t>(k))) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output 'probs': classification = %g must be a whole number of classes, 1 or more", k));
      }
      plan->classification = static_cast<int64_t>(std::min(k, 1e9));
    }
    plan->want.insert(spec->name);
  }
  if (plan->want.empty()) {
    for (const TensorSpec& s : specs) plan->want.insert(s.name);
  }
  return absl::OkStatus();
}

// Room for the response's envelope, its names, shapes and parameters.
constexpr int64_t kSlack = 1024;

}  // namespace

absl::StatusOr<Plan> Convert(const Request& request) {
  ZLPR_RETURN_IF_ERROR(CheckModel(request.model, request.version));
  ZLPR_ASSIGN_OR_RETURN(const auto inputs, Inputs(request));
  Plan plan;
  ZLPR_RETURN_IF_ERROR(Requested(request, &plan));
  ZLPR_ASSIGN_OR_RETURN(const Params params, ParseParams(request));
  plan.timeout_us = params.timeout_us;
  plan.priority = params.priority;
  ZLPR_ASSIGN_OR_RETURN(const MatrixView scores, FloatMatrix(inputs.Get("scores")));
  const uint8_t* mask = nullptr;
  if (const Tensor* m = inputs.Find("mask"); m != nullptr) {
    ZLPR_ASSIGN_OR_RETURN(mask, Mask(*m, scores));
  }
  const int64_t rows = scores.rows, cols = scores.cols;
  if (request.model == kLossModel) {
    LossInput in{.scores = scores, .mask = mask};
    ZLPR_ASSIGN_OR_RETURN(in.labels, FloatMatrix(inputs.Get("labels")));
    ZLPR_ASSIGN_OR_RETURN(ValidatedLossInput valid, ValidateLossInput(in));
    const bool grad = plan.want.count("grad") > 0;
    plan.job = LossJob{.input = valid, .want_grad = grad};
    plan.response_bytes = kSlack + 4 * rows + (grad ? 4 * rows * cols : 0);
    return plan;
  }
  LabelerInput in{.scores = scores, .mask = mask};
  in.options.threshold = params.threshold.value_or(0.5f);
  in.options.top_k = params.top_k;
  in.options.min_labels = params.min_labels;
  if (const Tensor* t = inputs.Find("label_thresholds"); t != nullptr) {
    ZLPR_ASSIGN_OR_RETURN(in.options.label_thresholds, LabelThresholds(*t, cols));
  }
  ZLPR_ASSIGN_OR_RETURN(ValidatedLabelerInput valid, ValidateLabelerInput(in));
  const bool probs = plan.want.count("probs") > 0;
  plan.job = PredictJob{.input = valid, .want_probs = probs};
  plan.response_bytes = kSlack + 12 * rows + (probs ? 4 * rows * cols : 0);
  return plan;
}

namespace {

void AddOutput(Response* resp, const char* name, DataType datatype, Shape shape,
               std::string bytes) {
  resp->outputs.push_back(Output{
      .name = name, .datatype = datatype, .shape = std::move(shape), .data = std::move(bytes)});
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Triton's classification extension: each row's k most probable columns (ties: the smaller
// index first) as BYTES "probability:index", in the raw BYTES layout (a 4-byte little-endian
// length before each element).
std::string Classes(const float* probs, int64_t rows, int64_t cols, int64_t k) {
  std::string out;
  std::vector<int32_t> order(cols);
  for (int64_t i = 0; i < rows; ++i) {
    const float* p = probs + i * cols;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    for (int64_t j = 0; j < k; ++j) {
      const std::string element = absl::StrFormat("%f:%d", p[order[j]], order[j]);
      const auto n = static_cast<uint32_t>(element.size());
      for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((n >> (8 * b)) & 0xff));
      out += element;
    }
  }
  return out;
}

}  // namespace

void Fill(LossResult r, const Plan& plan, Response* resp) {
  const auto rows = static_cast<int64_t>(r.loss.size());
  resp->outputs.reserve(plan.want.size());
  if (plan.want.count("loss")) AddOutput(resp, "loss", DataType::kFp32, {rows}, Bytes(r.loss));
  if (plan.want.count("grad")) {
    AddOutput(resp, "grad", DataType::kFp32, {rows, r.cols}, std::move(r.grad));
    resp->outputs.back().in_shared_memory = r.grad_written;
  }
  resp->parameters["loss_sum"] = r.loss_sum;
  resp->parameters["loss_mean"] = r.loss_mean;
}

void Fill(PredictResult r, const Plan& plan, Response* resp) {
  const LabelSets& ls = r.labels;
  const auto rows = static_cast<int64_t>(ls.row_offsets.size()) - 1;
  int64_t width = 0;
  for (int64_t i = 0; i < rows; ++i) {
    width = std::max(width, ls.row_offsets[i + 1] - ls.row_offsets[i]);
  }
  const OutputSet& want = plan.want;
  resp->outputs.reserve(want.size());
  if (want.count("probs") && plan.classification > 0) {
    const int64_t k = std::min(plan.classification, r.cols);
    AddOutput(resp, "probs", DataType::kBytes, {rows, k},
              Classes(reinterpret_cast<const float*>(r.probs.data()), rows, r.cols, k));
  } else if (want.count("probs")) {
    AddOutput(resp, "probs", DataType::kFp32, {rows, r.cols}, std::move(r.probs));
    resp->outputs.back().in_shared_memory = r.probs_written;
  }
  if (want.count("labels") || want.count("label_probs")) {
    // Padded to the widest row: -1 and 0 after a row's labels. Written as the output's bytes.
    std::string labels(static_cast<size_t>(rows * width) * sizeof(int32_t), '\xff');
    std::string probs(static_cast<size_t>(rows * width) * sizeof(float), '\0');
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = ls.row_offsets[i + 1] - ls.row_offsets[i];
      if (n == 0) continue;  // (and no label at all: the lists' data() may be null)
      std::memcpy(labels.data() + i * width * sizeof(int32_t), ls.labels.data() + ls.row_offsets[i],
                  n * sizeof(int32_t));
      std::memcpy(probs.data() + i * width * sizeof(float), ls.probs.data() + ls.row_offsets[i],
                  n * sizeof(float));
    }
    if (want.count("labels")) {
      AddOutput(resp, "labels", DataType::kInt32, {rows, width}, std::move(labels));
    }
    if (want.count("label_probs")) {
      AddOutput(resp, "label_probs", DataType::kFp32, {rows, width}, std::move(probs));
    }
  }
  if (want.count("label_count")) {
    std::string count(static_cast<size_t>(rows) * sizeof(int32_t), '\0');
    for (int64_t i = 0; i < rows; ++i) {
      const auto n = static_cast<int32_t>(ls.row_offsets[i + 1] - ls.row_offsets[i]);
      std::memcpy(count.data() + i * sizeof(int32_t), &n, sizeof(n));
    }
    AddOutput(resp, "label_count", DataType::kInt32, {rows}, std::move(count));
  }
}

int64_t WireBytes(const Response& r) {
  // A field's tag and length prefix take at most 11 bytes; a shape dimension at most 11.
  constexpr int64_t kField = 11;
  int64_t bytes =
      4 * kField + static_cast<int64_t>(r.model.size() + r.version.size() + r.id.size());
  for (const auto& [key, value] : r.parameters) {
    bytes += 4 * kField + static_cast<int64_t>(key.size());
    if (const auto* s = std::get_if<std::string>(&value)) bytes += static_cast<int64_t>(s->size());
  }
  for (const Output& o : r.outputs) {
    bytes += 6 * kField + static_cast<int64_t>(o.name.size()) +
             kField * static_cast<int64_t>(o.shape.size()) + static_cast<int64_t>(o.data.size());
  }
  return bytes;
}

}  // namespace zlpr::server::oip
