// InferenceService: Open Inference Protocol requests converted to the typed jobs, and results
// to v2 responses.
#include "server/oip_service.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "server/convert.h"
#include "server/stream_reactor.h"

namespace zlpr::server {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

constexpr char kPredictModel[] = "zlpr_predict";
constexpr char kLossModel[] = "zlpr_loss";
constexpr char kPlatform[] = "zlpr";

struct TensorSpec {
  const char* name;
  const char* datatype;  // the main one; scores and labels also take FP16 and BF16
  inference::DataType type;
  std::vector<int64_t> shape;  // with the batch dimension first
  bool optional = false;
};

const std::vector<TensorSpec>& InputSpecs(std::string_view model) {
  static const std::vector<TensorSpec> predict = {
      {"scores", "FP32", inference::TYPE_FP32, {-1, -1}},
      // Per column; batched clients send one row per request row, all equal.
      {"label_thresholds", "FP32", inference::TYPE_FP32, {-1, -1}, true},
      {"mask", "UINT8", inference::TYPE_UINT8, {-1, -1}, true}};
  static const std::vector<TensorSpec> loss = {
      {"scores", "FP32", inference::TYPE_FP32, {-1, -1}},
      {"labels", "FP32", inference::TYPE_FP32, {-1, -1}},
      {"mask", "UINT8", inference::TYPE_UINT8, {-1, -1}, true}};
  return model == kLossModel ? loss : predict;
}

const std::vector<TensorSpec>& OutputSpecs(std::string_view model) {
  static const std::vector<TensorSpec> predict = {
      {"probs", "FP32", inference::TYPE_FP32, {-1, -1}},
      {"labels", "INT32", inference::TYPE_INT32, {-1, -1}},
      {"label_probs", "FP32", inference::TYPE_FP32, {-1, -1}},
      {"label_count", "INT32", inference::TYPE_INT32, {-1}}};
  static const std::vector<TensorSpec> loss = {{"loss", "FP32", inference::TYPE_FP32, {-1}},
                                               {"grad", "FP32", inference::TYPE_FP32, {-1, -1}}};
  return model == kLossModel ? loss : predict;
}

}  // namespace

absl::Status CheckModel(const std::string& name, const std::string& version) {
  if (name != kPredictModel && name != kLossModel) {
    return absl::NotFoundError(absl::StrFormat(
        "unknown model '%s': zlpr-server serves zlpr_predict and zlpr_loss", name));
  }
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(
        absl::StrFormat("model '%s' has only version 1, not '%s'", name, version));
  }
  return absl::OkStatus();
}

namespace {

// An input tensor: its metadata and its bytes (a view of the request, or of `owned`).
struct Input {
  const ModelInferRequest::InferInputTensor* meta = nullptr;
  std::string_view bytes;
};

std::string ShapeString(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Inputs by name, checked against the model's. Typed UINT8 contents are narrowed into `owned`.
absl::StatusOr<std::map<std::string, Input>> Inputs(const ModelInferRequest& req,
                                                    std::vector<std::string>* owned) {
  const bool raw = req.raw_input_contents_size() > 0;
  if (raw && req.raw_input_contents_size() != req.inputs_size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "raw_input_contents has %d entries for %d inputs: send one per input, in order",
        req.raw_input_contents_size(), req.inputs_size()));
  }
  const auto& specs = InputSpecs(req.model_name());
  std::map<std::string, Input> out;
  for (int i = 0; i < req.inputs_size(); ++i) {
    const auto& t = req.inputs(i);
    bool known = false;
    for (const TensorSpec& s : specs) known |= t.name() == s.name;
    if (!known) {
      std::vector<std::string> names;
      for (const TensorSpec& s : specs) names.push_back(s.name);
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown input '%s' for model %s: its inputs are %s", t.name(), req.model_name(),
          absl::StrJoin(names, ", ")));
    }
    if (out.count(t.name()) > 0) {
      return absl::InvalidArgumentError(absl::StrFormat("input '%s' given twice", t.name()));
    }
    Input in{.meta = &t};
    if (raw) {
      in.bytes = req.raw_input_contents(i);
    } else if (t.datatype() == "FP32") {
      const auto& v = t.contents().fp32_contents();
      in.bytes = {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
    } else if (t.datatype() == "UINT8") {
      const auto& v = t.contents().uint_contents();
      std::string& bytes = owned->emplace_back(v.size(), '\0');
      for (int k = 0; k < v.size(); ++k) {
        if (v[k] > 255) {
          return absl::InvalidArgumentError(
              absl::StrFormat("input '%s': element %d is %d, over 255 for UINT8", t.name(), k,
                              v[k]));
        }
        bytes[k] = static_cast<char>(v[k]);
      }
      in.bytes = bytes;
    } else {
      return absl::InvalidArgumentError(absl::StrFormat(
          "input '%s': %s contents must be sent raw (raw_input_contents)", t.name(),
          t.datatype()));
    }
    out[t.name()] = in;
  }
  for (const TensorSpec& s : specs) {
    if (!s.optional && out.count(s.name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("model %s needs input '%s'", req.model_name(), s.name));
    }
  }
  return out;
}

// A [rows, cols] matrix input of FP32, FP16 or BF16.
absl::StatusOr<MatrixView> FloatMatrix(const Input& in) {
  const auto& t = *in.meta;
  DType dtype;
  if (t.datatype() == "FP32") {
    dtype = DType::kFloat32;
  } else if (t.datatype() == "FP16") {
    dtype = DType::kFloat16;
  } else if (t.datatype() == "BF16") {
    dtype = DType::kBFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input '%s': datatype %s is not allowed: use FP32, FP16 or BF16", t.name(), t.datatype()));
  }
  if (t.shape_size() != 2 || t.shape(0) < 1 || t.shape(1) < 1 ||
      t.shape(0) > std::numeric_limits<int32_t>::max() ||
      t.shape(1) > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input '%s': shape %s must be [rows, cols], each 1 to 2^31 - 1", t.name(),
        ShapeString(t.shape())));
  }
  const int64_t rows = t.shape(0), cols = t.shape(1);
  const auto want = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) * DTypeSize(dtype);
  if (in.bytes.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrFormat("input '%s': %d bytes of data for shape %s of %s, expected %d", t.name(),
                        in.bytes.size(), ShapeString(t.shape()), t.datatype(), want));
  }
  return MatrixView{in.bytes.data(), dtype, rows, cols};
}

absl::StatusOr<const uint8_t*> Mask(const Input& in, const MatrixView& scores) {
  const auto& t = *in.meta;
  if (t.datatype() != "UINT8") {
    return absl::InvalidArgumentError(
        absl::StrFormat("input 'mask': datatype %s is not allowed: use UINT8", t.datatype()));
  }
  if (t.shape_size() != 2 || t.shape(0) != scores.rows || t.shape(1) != scores.cols ||
      in.bytes.size() != static_cast<size_t>(scores.rows * scores.cols)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input 'mask': shape %s (%d bytes) does not match scores [%d, %d]",
        ShapeString(t.shape()), in.bytes.size(), scores.rows, scores.cols));
  }
  return reinterpret_cast<const uint8_t*>(in.bytes.data());
}

// The request's parameters: threshold (double, int or string), top_k and min_labels (integers),
// and Triton's timeout (microseconds, both models). Parameters named "triton_..." are Triton's
// own and ignored; anything else is an error.
struct Params {
  std::optional<float> threshold;
  uint32_t top_k = 0;
  uint32_t min_labels = 0;
  int64_t timeout_us = 0;  // 0: none
};

absl::StatusOr<double> Number(const std::string& name, const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kInt64Param:
      return static_cast<double>(p.int64_param());
    case inference::InferParameter::kUint64Param:
      return static_cast<double>(p.uint64_param());
    case inference::InferParameter::kStringParam: {
      double v;
      if (absl::SimpleAtod(p.string_param(), &v)) return v;
      break;
    }
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("parameter '%s' must be a number", name));
}

absl::StatusOr<Params> ParseParams(const ModelInferRequest& req) {
  Params out;
  for (const auto& [name, value] : req.parameters()) {
    if (name.rfind("triton_", 0) == 0) continue;
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
    const bool count = name == "top_k" || name == "min_labels";
    if (name != "threshold" && !count) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown parameter '%s': zlpr_predict takes threshold, top_k and min_labels (and both "
          "models timeout)",
          name));
    }
    if (req.model_name() == kLossModel) {
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
absl::StatusOr<std::set<std::string>> Requested(const ModelInferRequest& req,
                                                int64_t* classification) {
  std::set<std::string> out;
  *classification = 0;
  const auto& specs = OutputSpecs(req.model_name());
  for (const auto& o : req.outputs()) {
    bool known = false;
    for (const TensorSpec& s : specs) known |= o.name() == s.name;
    if (!known) {
      std::vector<std::string> names;
      for (const TensorSpec& s : specs) names.push_back(s.name);
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown output '%s' for model %s: its outputs are %s", o.name(), req.model_name(),
          absl::StrJoin(names, ", ")));
    }
    for (const auto& [key, value] : o.parameters()) {
      if (key.rfind("triton_", 0) == 0) continue;
      if (key != "classification" || o.name() != "probs") {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output '%s': parameter '%s' is not supported (classification is, on probs)",
            o.name(), key));
      }
      ZLPR_ASSIGN_OR_RETURN(const double k, Number(key, value));
      if (!(k >= 1) || k != static_cast<double>(static_cast<int64_t>(k))) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output 'probs': classification = %g must be a whole number of classes, 1 or more",
            k));
      }
      *classification = static_cast<int64_t>(std::min(k, 1e9));
    }
    out.insert(o.name());
  }
  if (out.empty()) {
    for (const TensorSpec& s : specs) out.insert(s.name);
  }
  return out;
}

void AddOutput(ModelInferResponse* resp, const char* name, const char* datatype,
               std::vector<int64_t> shape, std::string bytes) {
  auto* o = resp->add_outputs();
  o->set_name(name);
  o->set_datatype(datatype);
  for (int64_t d : shape) o->add_shape(d);
  *resp->add_raw_output_contents() = std::move(bytes);
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void FillLoss(LossResult r, const std::set<std::string>& want, ModelInferResponse* resp) {
  const auto rows = static_cast<int64_t>(r.loss.size());
  if (want.count("loss")) AddOutput(resp, "loss", "FP32", {rows}, Bytes(r.loss));
  if (want.count("grad")) AddOutput(resp, "grad", "FP32", {rows, r.cols}, std::move(r.grad));
  (*resp->mutable_parameters())["loss_sum"].set_double_param(r.loss_sum);
  (*resp->mutable_parameters())["loss_mean"].set_double_param(r.loss_mean);
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
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [p](int32_t a, int32_t b) {
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    });
    for (int64_t j = 0; j < k; ++j) {
      const std::string element = absl::StrFormat("%f:%d", p[order[j]], order[j]);
      const auto n = static_cast<uint32_t>(element.size());
      for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((n >> (8 * b)) & 0xff));
      out += element;
    }
  }
  return out;
}

void FillPredict(PredictResult r, const std::set<std::string>& want, int64_t classification,
                 ModelInferResponse* resp) {
  const LabelSets& ls = r.labels;
  const auto rows = static_cast<int64_t>(ls.row_offsets.size()) - 1;
  int64_t width = 0;
  for (int64_t i = 0; i < rows; ++i) width = std::max(width, ls.row_offsets[i + 1] - ls.row_offsets[i]);
  if (want.count("probs") && classification > 0) {
    const int64_t k = std::min(classification, r.cols);
    AddOutput(resp, "probs", "BYTES", {rows, k},
              Classes(reinterpret_cast<const float*>(r.probs.data()), rows, r.cols, k));
  } else if (want.count("probs")) {
    AddOutput(resp, "probs", "FP32", {rows, r.cols}, std::move(r.probs));
  }
  if (want.count("labels") || want.count("label_probs")) {
    std::vector<int32_t> labels(rows * width, -1);
    std::vector<float> probs(rows * width, 0.0f);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t k = ls.row_offsets[i]; k < ls.row_offsets[i + 1]; ++k) {
        labels[i * width + k - ls.row_offsets[i]] = ls.labels[k];
        probs[i * width + k - ls.row_offsets[i]] = ls.probs[k];
      }
    }
    if (want.count("labels")) AddOutput(resp, "labels", "INT32", {rows, width}, Bytes(labels));
    if (want.count("label_probs")) {
      AddOutput(resp, "label_probs", "FP32", {rows, width}, Bytes(probs));
    }
  }
  if (want.count("label_count")) {
    std::vector<int32_t> count(rows);
    for (int64_t i = 0; i < rows; ++i) {
      count[i] = static_cast<int32_t>(ls.row_offsets[i + 1] - ls.row_offsets[i]);
    }
    AddOutput(resp, "label_count", "INT32", {rows}, Bytes(count));
  }
}

// One threshold per column: [cols], or [n, cols] with n equal rows (a batched client repeats
// them per request row).
absl::StatusOr<const float*> LabelThresholds(const Input& in, int64_t cols) {
  const auto& t = *in.meta;
  const std::string_view bytes = in.bytes;
  const int64_t copies = t.shape_size() == 2 ? t.shape(0) : 1;
  const bool shape_ok = (t.shape_size() == 1 && t.shape(0) == cols) ||
                        (t.shape_size() == 2 && copies >= 1 && t.shape(1) == cols);
  // Compared by division first: a hostile row count must not overflow the product.
  const uint64_t row_bytes = static_cast<uint64_t>(cols) * 4;
  if (t.datatype() != "FP32" || !shape_ok ||
      static_cast<uint64_t>(copies) > bytes.size() / row_bytes ||
      bytes.size() != static_cast<uint64_t>(copies) * row_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input 'label_thresholds': must be FP32 [%d] (one per column) or [n, %d], got %s %s",
        cols, cols, t.datatype(), ShapeString(t.shape())));
  }
  const size_t row = static_cast<size_t>(cols) * 4;
  for (int64_t r = 1; r < copies; ++r) {
    if (bytes.substr(r * row, row) != bytes.substr(0, row)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "input 'label_thresholds': row %d differs from row 0: the thresholds are per "
          "column, the same for every row",
          r));
    }
  }
  return reinterpret_cast<const float*>(bytes.data());
}

}  // namespace

void OipInference::Run(CallControl control, const ModelInferRequest* request,
                       ModelInferResponse* response, Done done) {
  request_ = request;
  response_ = response;
  done_ = std::move(done);
  owned_.clear();
  want_.clear();
  lease_.Reset();
  start_ = service_->clock().Now();
  service_->metrics().inflight().Increment();
  response_->set_model_name(request_->model_name());
  response_->set_model_version("1");
  response_->set_id(request_->id());
  const auto bytes = static_cast<int64_t>(request_->ByteSizeLong());
  service_->metrics().request_bytes().Increment(static_cast<double>(bytes));
  if (service_->shutting_down()) {
    service_->metrics().rejected(Reject::kShuttingDown).Increment();
    return Finish(absl::UnavailableError("the server is shutting down"));
  }
  if (absl::Status st = service_->Charge(bytes, &lease_); !st.ok()) return Finish(st);
  if (absl::Status st = Submit(std::move(control)); !st.ok()) {
    service_->metrics().rejected(Reject::kInvalid).Increment();
    Finish(st);
  }
}

absl::Status OipInference::Submit(CallControl control) {
  ZLPR_RETURN_IF_ERROR(CheckModel(request_->model_name(), request_->model_version()));
  ZLPR_ASSIGN_OR_RETURN(const auto inputs, Inputs(*request_, &owned_));
  ZLPR_ASSIGN_OR_RETURN(want_, Requested(*request_, &classification_));
  ZLPR_ASSIGN_OR_RETURN(const Params params, ParseParams(*request_));
  if (params.timeout_us > 0) {
    // Triton's per-request timeout: the earlier of it and the call's own deadline.
    const SteadyTime by = start_ + std::chrono::microseconds(params.timeout_us);
    control.deadline = std::min(control.deadline, by);
  }
  ZLPR_ASSIGN_OR_RETURN(const MatrixView scores, FloatMatrix(inputs.at("scores")));
  const uint8_t* mask = nullptr;
  if (auto it = inputs.find("mask"); it != inputs.end()) {
    ZLPR_ASSIGN_OR_RETURN(mask, Mask(it->second, scores));
  }
  const int64_t rows = scores.rows, cols = scores.cols;
  constexpr int64_t kSlack = 1024;
  if (request_->model_name() == kLossModel) {
    LossInput in{.scores = scores, .mask = mask};
    ZLPR_ASSIGN_OR_RETURN(in.labels, FloatMatrix(inputs.at("labels")));
    ZLPR_ASSIGN_OR_RETURN(ValidatedLossInput valid, ValidateLossInput(in));
    const bool grad = want_.count("grad") > 0;
    service_->EnqueueLoss(std::move(control), LossJob{.input = std::move(valid), .want_grad = grad},
                          &lease_, kSlack + 4 * rows + (grad ? 4 * rows * cols : 0),
                          [this](absl::StatusOr<LossResult> r) {
                            if (r.ok()) FillLoss(*std::move(r), want_, response_);
                            Finish(r.status());
                          });
    return absl::OkStatus();
  }
  LabelerInput in{.scores = scores, .mask = mask};
  in.options.threshold = params.threshold.value_or(0.5f);
  in.options.top_k = params.top_k;
  in.options.min_labels = params.min_labels;
  if (auto it = inputs.find("label_thresholds"); it != inputs.end()) {
    ZLPR_ASSIGN_OR_RETURN(in.options.label_thresholds, LabelThresholds(it->second, cols));
  }
  ZLPR_ASSIGN_OR_RETURN(ValidatedLabelerInput valid, ValidateLabelerInput(in));
  const bool probs = want_.count("probs") > 0;
  service_->EnqueuePredict(std::move(control),
                           PredictJob{.input = std::move(valid), .want_probs = probs}, &lease_,
                           kSlack + 12 * rows + (probs ? 4 * rows * cols : 0),
                           [this](absl::StatusOr<PredictResult> r) {
                             if (r.ok()) {
                               FillPredict(*std::move(r), want_, classification_, response_);
                             }
                             Finish(r.status());
                           });
  return absl::OkStatus();
}

void OipInference::Finish(absl::Status status) {
  if (status.ok()) {
    const auto bytes = static_cast<int64_t>(response_->ByteSizeLong());
    status = service_->CheckResponseSize(bytes);
    if (status.ok()) {
      service_->metrics().response_bytes().Increment(static_cast<double>(bytes));
      // The job's inputs are no longer needed: from here on the request holds its response
      // (and its serialized copy).
      lease_.ShrinkTo(2 * bytes);
    } else {
      response_->clear_outputs();
      response_->clear_raw_output_contents();
    }
  }
  service_->metrics().RequestDone(
      method_, static_cast<grpc::StatusCode>(status.code()),
      std::chrono::duration<double>(service_->clock().Now() - start_).count());
  service_->metrics().inflight().Decrement();
  Done done = std::move(done_);
  done(std::move(status));
}

namespace {

// A ModelInfer call, counted for shutdown like every call.
class InferCall final : public grpc::ServerUnaryReactor {
 public:
  InferCall(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, bool accepted)
      : service_(service), ctx_(ctx), inference_(service, Method::kModelInfer),
        accepted_(accepted) {}

  void Start(const ModelInferRequest* request, ModelInferResponse* response) {
    inference_.Run(ControlOf(ctx_, service_->clock()), request, response,
                   [this, response](absl::Status st) {
                     write_watch_ = service_->WatchWrite(
                         ctx_, static_cast<int64_t>(response->ByteSizeLong()));
                     HandToGrpc([&] { Finish(ToGrpc(st)); });
                   });
  }

  void OnDone() override {
    service_->watchdog().Disarm(write_watch_);
    inference_.Release();
    service_->CallEnds(accepted_);
    delete this;
  }

 private:
  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  OipInference inference_;
  const bool accepted_;
  Watchdog::Id write_watch_ = 0;
};

// ModelStreamInfer: one request at a time, in order; a request's error is its response's
// error_message and the stream goes on. Ends once the client is done, or at shutdown after the
// request in progress is answered (an idle stream at once).
class InferStream final
    : public grpc::ServerBidiReactor<ModelInferRequest, inference::ModelStreamInferResponse>,
      public StreamRegistry::Member {
 public:
  InferStream(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, bool accepted)
      : service_(service), ctx_(ctx), inference_(service, Method::kModelInfer),
        accepted_(accepted) {}

  void Start() {
    service_->streams().Add(this);
    absl::MutexLock lock(&mu_);
    if (service_->shutting_down()) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return;
    }
    reading_ = true;
    HandToGrpc([this] { StartRead(&request_); });
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;
      if (!ok) return FinishLocked(grpc::Status::OK);
    }
    response_.Clear();
    inference_.Run(ControlOf(ctx_, service_->clock()), &request_,
                   response_.mutable_infer_response(), [this](absl::Status st) {
      if (!st.ok()) response_.set_error_message(std::string(st.message()));
      write_watch_.store(
          service_->WatchWrite(ctx_, static_cast<int64_t>(response_.ByteSizeLong())));
      HandToGrpc([this] { StartWrite(&response_); });
    });
  }

  void OnWriteDone(bool ok) override {
    service_->watchdog().Disarm(write_watch_.exchange(0));
    inference_.Release();
    absl::MutexLock lock(&mu_);
    if (!ok) return FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client is gone"));
    if (draining_) {
      return FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
    reading_ = true;
    HandToGrpc([this] { StartRead(&request_); });
  }

  void OnDone() override {
    service_->watchdog().Disarm(write_watch_.exchange(0));
    service_->streams().Remove(this);  // no Drain() from now on
    // Finish may have been called under mu_ (Drain, from the shutdown thread): wait for that
    // thread to let go of it before the mutex is destroyed.
    { absl::MutexLock lock(&mu_); }
    service_->CallEnds(accepted_);
    delete this;
  }

  // Shutdown: an idle stream (waiting for a request) ends now, a busy one after its answer.
  void Drain() override {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    if (reading_) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
  }

 private:
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    HandToGrpc([&] { Finish(status); });
  }

  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  OipInference inference_;
  const bool accepted_;
  ModelInferRequest request_;
  inference::ModelStreamInferResponse response_;
  std::atomic<Watchdog::Id> write_watch_{0};
  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& st) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  HandToGrpc([&] { reactor->Finish(ToGrpc(st)); });
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* InferenceService::ServerLive(grpc::CallbackServerContext* ctx,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(grpc::CallbackServerContext* ctx,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* response) {
  response->set_ready(zlpr_->ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(grpc::CallbackServerContext* ctx,
                                                       const inference::ModelReadyRequest* request,
                                                       inference::ModelReadyResponse* response) {
  // An unknown model is simply not ready (clients ask before they infer).
  response->set_ready(CheckModel(request->name(), request->version()).ok() && zlpr_->ready());
  return Answer(ctx, absl::OkStatus());
}

inference::ServerMetadataResponse ServerMetadataOf(const std::string& version) {
  inference::ServerMetadataResponse response;
  response.set_name("zlpr-server");
  response.set_version(version);
  response.add_extensions("model_configuration");
  response.add_extensions("statistics");
  response.add_extensions("classification");
  response.add_extensions("binary_tensor_data");
  return response;
}

absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(const std::string& name,
                                                                 const std::string& version) {
  ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelMetadataResponse response;
  response.set_name(name);
  response.add_versions("1");
  response.set_platform(kPlatform);
  for (const TensorSpec& s : InputSpecs(name)) {
    auto* t = response.add_inputs();
    t->set_name(s.name);
    t->set_datatype(s.datatype);
    for (int64_t d : s.shape) t->add_shape(d);
  }
  for (const TensorSpec& s : OutputSpecs(name)) {
    auto* t = response.add_outputs();
    t->set_name(s.name);
    t->set_datatype(s.datatype);
    for (int64_t d : s.shape) t->add_shape(d);
  }
  return response;
}

absl::StatusOr<inference::ModelConfig> ModelConfigOf(const std::string& name,
                                                     const std::string& version,
                                                     int64_t max_batch_rows) {
  ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelConfig c;
  c.set_name(name);
  c.set_platform(kPlatform);
  c.set_backend(kPlatform);
  // Rows are the batch dimension: dims below leave it out, as Triton's configurations do.
  c.set_max_batch_size(
      static_cast<int32_t>(std::min<int64_t>(max_batch_rows, std::numeric_limits<int32_t>::max())));
  for (const TensorSpec& s : InputSpecs(name)) {
    auto* in = c.add_input();
    in->set_name(s.name);
    in->set_data_type(s.type);
    in->set_optional(s.optional);
    for (size_t d = 1; d < s.shape.size(); ++d) in->add_dims(s.shape[d]);
  }
  for (const TensorSpec& s : OutputSpecs(name)) {
    auto* out = c.add_output();
    out->set_name(s.name);
    out->set_data_type(s.type);
    for (size_t d = 1; d < s.shape.size(); ++d) out->add_dims(s.shape[d]);
    if (s.shape.size() == 1) out->add_dims(1);  // a per-row value: [rows] is [rows, 1] to Triton
  }
  return c;
}

namespace {

void SetDuration(const JobStatistics::Duration& d, inference::StatisticDuration* out) {
  out->set_count(d.count.load(std::memory_order_relaxed));
  out->set_ns(d.ns.load(std::memory_order_relaxed));
}

}  // namespace

absl::StatusOr<inference::ModelStatisticsResponse> StatisticsOf(const ZlprServiceImpl& service,
                                                                const std::string& name,
                                                                const std::string& version) {
  if (!name.empty()) ZLPR_RETURN_IF_ERROR(CheckModel(name, version));
  inference::ModelStatisticsResponse response;
  // From the executor, for both protocols' requests: rows are inferences, kernel calls
  // (batches) executions.
  for (const char* model : {kPredictModel, kLossModel}) {
    if (!name.empty() && name != model) continue;
    const JobStatistics& s = service.statistics(
        std::string_view(model) == kLossModel ? JobKind::kLoss : JobKind::kPredict);
    inference::ModelStatistics* m = response.add_model_stats();
    m->set_name(model);
    m->set_version("1");
    m->set_last_inference(s.last_inference_ms.load(std::memory_order_relaxed));
    m->set_inference_count(s.inference_count.load(std::memory_order_relaxed));
    m->set_execution_count(s.execution_count.load(std::memory_order_relaxed));
    inference::InferStatistics* i = m->mutable_inference_stats();
    SetDuration(s.success, i->mutable_success());
    SetDuration(s.fail, i->mutable_fail());
    SetDuration(s.queue, i->mutable_queue());
    SetDuration(s.compute, i->mutable_compute_infer());
    // The kernel time includes reading the inputs and writing the outputs: those phases have
    // the kernel calls' count and no time of their own (clients such as perf_analyzer expect
    // the three counts to agree).
    i->mutable_compute_input()->set_count(i->compute_infer().count());
    i->mutable_compute_output()->set_count(i->compute_infer().count());
  }
  return response;
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  *response = ServerMetadataOf(version_);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto r = ModelMetadataOf(request->name(), request->version());
  if (r.ok()) *response = *std::move(r);
  return Answer(ctx, r.status());
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(
    grpc::CallbackServerContext* ctx, const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  auto r = ModelConfigOf(request->name(), request->version(), max_batch_rows_);
  if (r.ok()) *response->mutable_config() = *std::move(r);
  return Answer(ctx, r.status());
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  auto r = StatisticsOf(*zlpr_, request->name(), request->version());
  if (r.ok()) *response = *std::move(r);
  return Answer(ctx, r.status());
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                       const inference::ModelInferRequest* request,
                                                       inference::ModelInferResponse* response) {
  auto* call = NewReactor<InferCall>(zlpr_, ctx, zlpr_->CallBegins());
  call->Start(request, response);
  return call;
}

grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
InferenceService::ModelStreamInfer(grpc::CallbackServerContext* ctx) {
  auto* stream = NewReactor<InferStream>(zlpr_, ctx, zlpr_->CallBegins());
  stream->Start();
  return stream;
}

}  // namespace zlpr::server
