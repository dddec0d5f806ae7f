// The Open Inference Protocol's converter on binding-free requests: the models' inputs,
// parameters and outputs, the shared tensor rules, and results turned into outputs.
#include "server/oip/converter.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace zlpr::server::oip {
namespace {

using ::testing::HasSubstr;

template <typename T>
std::string_view Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

class ConverterTest : public ::testing::Test {
 protected:
  Request Predict(int64_t rows, int64_t cols) {
    Request r;
    r.model = kPredictModel;
    scores_.assign(rows * cols, 0.25f);
    r.inputs.push_back(Tensor{.name = "scores",
                              .datatype = DataType::kFp32,
                              .shape = {rows, cols},
                              .data = Bytes(scores_)});
    return r;
  }
  std::vector<float> scores_;
};

TEST_F(ConverterTest, APredictRequestBecomesAJobWithItsOptions) {
  Request r = Predict(2, 3);
  r.parameters["threshold"] = std::string("0.4");
  r.parameters["top_k"] = int64_t{2};
  r.parameters["triton_anything"] = true;  // Triton's own: ignored
  r.outputs.push_back({.name = "labels"});
  absl::StatusOr<Plan> plan = Convert(r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& job = std::get<PredictJob>(plan->job);
  EXPECT_EQ(job.rows(), 2);
  EXPECT_FALSE(job.want_probs);  // probabilities only when returned
  EXPECT_EQ(plan->want.size(), 1u);
  EXPECT_EQ(plan->want.count("labels"), 1u);
}

TEST_F(ConverterTest, TritonsPriorityLevelsChooseTheClass) {
  Request r = Predict(1, 3);
  EXPECT_FALSE(Convert(r)->priority.has_value());  // the model's default
  r.parameters["priority"] = uint64_t{0};
  EXPECT_FALSE(Convert(r)->priority.has_value());
  r.parameters["priority"] = uint64_t{1};
  EXPECT_EQ(Convert(r)->priority, Priority::kInteractive);
  r.parameters["priority"] = int64_t{2};
  EXPECT_EQ(Convert(r)->priority, Priority::kBulk);
  for (const Parameter& bad : {Parameter(uint64_t{3}), Parameter(int64_t{-1}), Parameter(1.5),
                               Parameter(uint64_t{18446744073709551615u})}) {
    r.parameters["priority"] = bad;
    EXPECT_EQ(Convert(r).status().code(), absl::StatusCode::kInvalidArgument);
  }
  r.parameters["priority"] = uint64_t{3};
  EXPECT_EQ(
      Convert(r).status().message(),
      "parameter 'priority' = 3 must be 0 (the model's default), 1 (interactive) or 2 (bulk)");
  EXPECT_EQ(DefaultPriorityLevel(kPredictModel), 1);
  EXPECT_EQ(DefaultPriorityLevel(kLossModel), 2);
}

TEST_F(ConverterTest, RefusalsNameWhatIsWrong) {
  struct Case {
    std::function<void(Request&)> change;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {[](Request& r) { r.model = "nope"; }, absl::StatusCode::kNotFound, "unknown model 'nope'"},
      {[](Request& r) { r.version = "2"; }, absl::StatusCode::kNotFound, "has only version 1"},
      {[](Request& r) { r.inputs[0].name = "x"; }, absl::StatusCode::kInvalidArgument,
       "unknown input 'x' for model zlpr_predict"},
      {[](Request& r) { r.inputs.push_back(r.inputs[0]); }, absl::StatusCode::kInvalidArgument,
       "input 'scores' given twice"},
      {[](Request& r) { r.inputs[0].datatype = DataType::kInt32; },
       absl::StatusCode::kInvalidArgument, "input 'scores': datatype INT32 is not allowed"},
      {[](Request& r) { r.inputs[0].shape = {6}; }, absl::StatusCode::kInvalidArgument,
       "input 'scores': shape [6] must be [rows, cols]"},
      {[](Request& r) {
         r.inputs[0].shape = {3, 3};
       },
       absl::StatusCode::kInvalidArgument,
       "input 'scores': 24 bytes of data for shape [3, 3] of FP32, expected 36"},
      {[](Request& r) { r.parameters["colour"] = std::string("red"); },
       absl::StatusCode::kInvalidArgument, "unknown parameter 'colour'"},
      {[](Request& r) { r.parameters["top_k"] = -1.0; }, absl::StatusCode::kInvalidArgument,
       "parameter 'top_k' = -1 must be 0 or more"},
      {[](Request& r) { r.outputs.push_back({.name = "grad"}); },
       absl::StatusCode::kInvalidArgument, "unknown output 'grad' for model zlpr_predict"},
      {[](Request& r) {
         r.outputs.push_back({.name = "probs", .parameters = {{"classification", 0.5}}});
       },
       absl::StatusCode::kInvalidArgument, "classification = 0.5 must be a whole number"},
  };
  for (const Case& c : cases) {
    Request r = Predict(2, 3);
    c.change(r);
    const absl::Status st = Convert(r).status();
    EXPECT_EQ(st.code(), c.code) << c.says;
    EXPECT_THAT(st.message(), HasSubstr(c.says));
  }
}

TEST_F(ConverterTest, ThresholdsAndMasksFollowTheSharedRules) {
  Request r = Predict(2, 3);
  const std::vector<float> thresholds = {0.5f, 0.6f, 0.7f, 0.5f, 0.6f, 0.7f};
  r.inputs.push_back(Tensor{.name = "label_thresholds",
                            .datatype = DataType::kFp32,
                            .shape = {2, 3},
                            .data = Bytes(thresholds)});
  const std::vector<uint8_t> mask = {1, 1, 0, 1, 0, 1};
  r.inputs.push_back(
      Tensor{.name = "mask", .datatype = DataType::kUint8, .shape = {2, 3}, .data = Bytes(mask)});
  ASSERT_TRUE(Convert(r).ok()) << Convert(r).status();
  std::vector<float> differ = thresholds;
  differ[4] = 0.9f;
  r.inputs[1].data = Bytes(differ);
  EXPECT_THAT(Convert(r).status().message(), HasSubstr("row 1 differs from row 0"));
  r.inputs[1].shape = {int64_t{1} << 62, 3};  // a row count whose product overflows
  EXPECT_THAT(Convert(r).status().message(),
              HasSubstr("input 'label_thresholds': must be FP32 [3] (one per column) or [n, 3]"));
  r.inputs[1].data = Bytes(thresholds);
  r.inputs[1].shape = {2, 3};
  r.inputs[2].shape = {3, 2};
  EXPECT_THAT(Convert(r).status().message(),
              HasSubstr("input 'mask': shape [3, 2] (6 bytes) does not match scores [2, 3]"));
}

TEST_F(ConverterTest, ALossResultBecomesTheRequestedOutputs) {
  Request r;
  r.model = kLossModel;
  const std::vector<float> s = {1, -1}, t = {1, 0};
  r.inputs.push_back(
      Tensor{.name = "scores", .datatype = DataType::kFp32, .shape = {1, 2}, .data = Bytes(s)});
  r.inputs.push_back(
      Tensor{.name = "labels", .datatype = DataType::kFp32, .shape = {1, 2}, .data = Bytes(t)});
  r.outputs.push_back({.name = "loss"});
  absl::StatusOr<Plan> plan = Convert(r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(std::get<LossJob>(plan->job).want_grad);
  LossResult result{.loss = {0.25f}, .loss_sum = 0.25, .loss_mean = 0.25, .cols = 2};
  Response response;
  Fill(std::move(result), *plan, &response);
  ASSERT_EQ(response.outputs.size(), 1u);
  EXPECT_EQ(response.outputs[0].name, "loss");
  EXPECT_EQ(response.outputs[0].shape, Shape({1}));
  EXPECT_EQ(std::get<double>(response.parameters.at("loss_sum")), 0.25);
  EXPECT_GE(WireBytes(response), 4);
}

TEST_F(ConverterTest, LabelListsArePaddedAndClassificationIsTritons) {
  Request r = Predict(2, 3);
  r.outputs.push_back({.name = "labels"});
  r.outputs.push_back({.name = "probs", .parameters = {{"classification", int64_t{1}}}});
  absl::StatusOr<Plan> plan = Convert(r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  PredictResult result;
  result.cols = 3;
  result.labels.row_offsets = {0, 2, 2};
  result.labels.labels = {2, 0};
  result.labels.probs = {0.9f, 0.6f};
  const std::vector<float> probs = {0.6f, 0.1f, 0.9f, 0.2f, 0.3f, 0.1f};
  result.probs = std::string(Bytes(probs));
  Response response;
  Fill(std::move(result), *plan, &response);
  ASSERT_EQ(response.outputs.size(), 2u);
  EXPECT_EQ(response.outputs[0].datatype, DataType::kBytes);  // "probability:index"
  EXPECT_THAT(response.outputs[0].data, HasSubstr("0.900000:2"));
  EXPECT_THAT(response.outputs[0].data, HasSubstr("0.300000:1"));
  const Output& labels = response.outputs[1];
  EXPECT_EQ(labels.shape, Shape({2, 2}));
  std::vector<int32_t> got(4);
  std::memcpy(got.data(), labels.data.data(), 16);
  EXPECT_EQ(got, std::vector<int32_t>({2, 0, -1, -1}));
}

// Rows without a label (and a batch with none at all: empty lists) come back as -1 padding, 0
// probabilities and counts of 0 in the default outputs.
TEST_F(ConverterTest, RowsWithoutLabelsArePaddingAndCountsOfZero) {
  Request r = Predict(3, 2);
  absl::StatusOr<Plan> plan = Convert(r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const bool none : {false, true}) {
    PredictResult result;
    result.cols = 2;
    result.labels.row_offsets =
        none ? std::vector<int64_t>{0, 0, 0, 0} : std::vector<int64_t>{0, 0, 1, 1};
    if (!none) {
      result.labels.labels = {1};
      result.labels.probs = {0.75f};
    }
    result.probs = std::string(24, '\0');
    Response response;
    Fill(std::move(result), *plan, &response);
    std::map<std::string, const Output*> out;
    for (const Output& o : response.outputs) out[o.name] = &o;
    ASSERT_EQ(out.size(), 4u);
    const int64_t width = none ? 0 : 1;
    EXPECT_EQ(out["labels"]->shape, Shape({3, width}));
    std::vector<int32_t> labels(3 * width), count(3);
    std::vector<float> probs(3 * width);
    ASSERT_EQ(out["labels"]->data.size(), labels.size() * 4);
    ASSERT_EQ(out["label_probs"]->data.size(), probs.size() * 4);
    ASSERT_EQ(out["label_count"]->data.size(), 12u);
    std::memcpy(labels.data(), out["labels"]->data.data(), labels.size() * 4);
    std::memcpy(probs.data(), out["label_probs"]->data.data(), probs.size() * 4);
    std::memcpy(count.data(), out["label_count"]->data.data(), 12);
    if (none) {
      EXPECT_EQ(count, std::vector<int32_t>({0, 0, 0}));
    } else {
      EXPECT_EQ(labels, std::vector<int32_t>({-1, 1, -1}));
      EXPECT_EQ(probs, std::vector<float>({0.0f, 0.75f, 0.0f}));
      EXPECT_EQ(count, std::vector<int32_t>({0, 1, 0}));
    }
  }
}

}  // namespace
}  // namespace zlpr::server::oip
