// The HTTP binding's codec without a server: request bodies into the binding-free Request
// (structure checked as it is read, tensors as views), responses out as JSON and binary.
#include "server/oip/http_codec.h"

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace zlpr::server::oip {
namespace {

using ::testing::HasSubstr;

absl::Status Parse(const std::string& body) {
  Request request;
  OutputFormat format;
  return ParseInferRequest(body, std::nullopt, "zlpr_predict", "", &request, &format);
}

TEST(HttpCodecTest, UnknownKeysAreRefusedAsTheyAreRead) {
  // 8 MiB of empty objects under a key the protocol does not have: refused at the key, before
  // any of them is built.
  std::string body = R"({"x":[)";
  while (body.size() < (8 << 20)) body += "{},";
  body += "{}]}";
  const absl::Status st = Parse(body);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "request: unknown key 'x'");
}

TEST(HttpCodecTest, TheJsonOutsideTheDataIsBounded) {
  std::string body = R"({"inputs":[)";
  for (int i = 0; i < 100000; ++i) body += "{},";
  body += "{}]}";
  EXPECT_EQ(Parse(body).message(),
            "the request has more than 4096 keys and values outside its inputs' data");
  body = R"({"parameters":{)";
  for (int i = 0; i < 5000; ++i) absl::StrAppend(&body, "\"p", i, "\":1,");
  body += R"("q":1}})";
  EXPECT_EQ(Parse(body).message(),
            "the request has more than 4096 keys and values outside its inputs' data");
  // Containers only where the protocol has them.
  EXPECT_EQ(Parse(R"({"parameters":{"a":[1]}})").message(),
            "parameters: 'a' must be a boolean, number or string");
  EXPECT_EQ(Parse(R"({"inputs":[{"shape":[[1]]}]})").message(),
            "inputs[0].shape[0] must be a number");
  EXPECT_EQ(Parse(R"({"inputs":[[]]})").message(), "inputs[0] must be an object");
  EXPECT_EQ(Parse(R"({"inputs":[1]})").message(), "inputs[0] must be an object");
  EXPECT_EQ(Parse(R"({"id":{}})").message(), "request: 'id' must be a string");
  EXPECT_EQ(Parse(R"([1])").message(), "the request must be a JSON object");
  // Data may nest (a [rows, cols] list of lists), to a bound.
  EXPECT_THAT(
      Parse(R"({"inputs":[{"data":)" + std::string(100, '[') + std::string(100, ']') + "}]}")
          .message(),
      HasSubstr("data nested too deeply"));
}

TEST(HttpCodecTest, AShapeWhoseProductOverflowsIsRefused) {
  // 2^30 cubed is 2^90, 0 modulo 2^64: an unchecked product would take no data for it.
  const absl::Status st =
      Parse(R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1073741824,1073741824,)"
            R"(1073741824],"data":[]}]})");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("0 values in 'data'"));
  const std::string header =
      R"({"inputs":[{"name":"scores","datatype":"FP64","shape":[1073741824,1073741824,)"
      R"(1073741824],"parameters":{"binary_data_size":0}}]})";
  Request request;
  OutputFormat format;
  const absl::Status binary =
      ParseInferRequest(header, header.size(), "zlpr_predict", "", &request, &format);
  EXPECT_EQ(binary.code(), absl::StatusCode::kInvalidArgument);
}

TEST(HttpCodecTest, TheCodecWritesShortestFloatsAndBinaryAfterTheJson) {
  Response r;
  r.model = "zlpr_loss";
  const float v[2] = {0.1f, 1e-30f};
  r.outputs.push_back(Output{.name = "loss",
                             .datatype = DataType::kFp32,
                             .shape = {2},
                             .data = std::string(reinterpret_cast<const char*>(v), sizeof v)});
  size_t json_length = 0;
  OutputFormat as_json;
  std::string body = FormatInferResponse(r, as_json, &json_length);
  EXPECT_EQ(json_length, body.size());
  EXPECT_THAT(body, HasSubstr(R"("data":[0.1,1e-30])"));
  OutputFormat as_binary{.all_binary = true};
  body = FormatInferResponse(r, as_binary, &json_length);
  EXPECT_EQ(body.size(), json_length + sizeof v);
  EXPECT_THAT(body.substr(0, json_length), HasSubstr(R"("binary_data_size":8)"));
  EXPECT_EQ(body.substr(json_length), std::string(reinterpret_cast<const char*>(v), sizeof v));
}

TEST(HttpCodecTest, BinaryTensorsAreViewsOfTheBodyAndJsonDataIsKept) {
  const float scores[2] = {1.0f, -1.0f};
  const std::string header =
      R"({"id":"7","inputs":[{"name":"scores","datatype":"FP32","shape":[1,2],)"
      R"("parameters":{"binary_data_size":8}},{"name":"mask","datatype":"UINT8","shape":[1,2],)"
      R"("data":[1,0]}],"outputs":[{"name":"labels","parameters":{"binary_data":true}}]})";
  const std::string body = header + std::string(reinterpret_cast<const char*>(scores), 8);
  Request request;
  OutputFormat format;
  ASSERT_TRUE(ParseInferRequest(body, header.size(), "zlpr_predict", "1", &request, &format).ok());
  EXPECT_EQ(request.id, "7");
  EXPECT_EQ(request.version, "1");
  ASSERT_EQ(request.inputs.size(), 2u);
  if (reinterpret_cast<uintptr_t>(body.data() + header.size()) % 4 == 0) {
    EXPECT_EQ(request.inputs[0].data.data(), body.data() + header.size());  // not copied
  } else {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(request.inputs[0].data.data()) % 4, 0u);  // realigned
  }
  EXPECT_EQ(request.inputs[0].data, body.substr(header.size()));
  EXPECT_EQ(request.inputs[1].data, std::string("\x01\x00", 2));
  EXPECT_TRUE(format.IsBinary("labels"));
  EXPECT_FALSE(format.IsBinary("label_count"));
  ASSERT_EQ(request.outputs.size(), 1u);
  EXPECT_EQ(request.outputs[0].name, "labels");
}

TEST(HttpCodecTest, ABinaryTensorIsAlignedToItsElementsWhereverItStartsInTheBody) {
  for (size_t pad = 0; pad < 8; ++pad) {
    const std::string header = R"({"inputs":[{"name":"scores","datatype":"FP32","shape":[1,3],)"
                               R"("parameters":{"binary_data_size":12}}])" +
                               std::string(pad, ' ') + "}";
    const float v[3] = {1, 2, 3};
    std::string body = header + std::string(reinterpret_cast<const char*>(v), 12);
    Request request;
    OutputFormat format;
    ASSERT_TRUE(ParseInferRequest(body, header.size(), "zlpr_predict", "", &request, &format).ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(request.inputs[0].data.data()) % 4, 0u) << pad;
    EXPECT_EQ(request.inputs[0].data, std::string(reinterpret_cast<const char*>(v), 12));
  }
}

TEST(HttpCodecTest, TextThatIsNotUtf8IsWrittenAsReplacementCharacters) {
  EXPECT_EQ(ErrorText("a\xff"), "{\"error\":\"a\xef\xbf\xbd\"}");
}

}  // namespace
}  // namespace zlpr::server::oip
