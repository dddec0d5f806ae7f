// The wire codec against protobuf's parser and serializer (message_reference.h): the same
// Request from the same bytes, wherever the buffers split them; the same refusals; a response
// that parses back to what protobuf's classes would have sent.
#include "server/oip/wire.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.pb.h"
#include "server/oip/message_reference.h"

namespace zlpr::server::oip {
namespace {

using google::protobuf::io::ArrayInputStream;
using google::protobuf::io::CodedInputStream;
using ::testing::HasSubstr;

// Protobuf logs each string that is not UTF-8; these tests send many on purpose.
const bool kQuiet = [] {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return true;
}();

struct Decoded {
  absl::Status status;   // the wire's
  absl::Status invalid;  // the request's
  bool views = false;
  Request request;
};

// Decodes `bytes` from one buffer (in place) or from buffers of `block` bytes each.
Decoded Decode(const std::string& bytes, int block = 0) {
  Decoded d;
  absl::StatusOr<bool> views;
  if (block == 0) {
    CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                        static_cast<int>(bytes.size()));
    views =
        DecodeInferRequest(&in, static_cast<int64_t>(bytes.size()), true, &d.request, &d.invalid);
  } else {
    ArrayInputStream blocks(bytes.data(), static_cast<int>(bytes.size()), block);
    CodedInputStream in(&blocks);
    views =
        DecodeInferRequest(&in, static_cast<int64_t>(bytes.size()), false, &d.request, &d.invalid);
  }
  d.status = views.status();
  d.views = views.value_or(false);
  return d;
}

// Decodes `bytes` in place from a copy of them at `shift` bytes into `buffer` (`*at`: where).
Decoded DecodeShifted(const std::string& bytes, size_t shift, std::string* buffer,
                      const char** at) {
  buffer->assign(shift + bytes.size(), '\0');
  char* start = buffer->data() + shift;
  std::copy(bytes.begin(), bytes.end(), start);
  *at = start;
  Decoded d;
  CodedInputStream in(reinterpret_cast<const uint8_t*>(start), static_cast<int>(bytes.size()));
  const absl::StatusOr<bool> views =
      DecodeInferRequest(&in, static_cast<int64_t>(bytes.size()), true, &d.request, &d.invalid);
  d.status = views.status();
  d.views = views.value_or(false);
  return d;
}

// What protobuf and ViewOf make of `bytes`: nullopt when protobuf does not parse them.
struct Reference {
  inference::ModelInferRequest message;
  absl::Status invalid;
  Request request;
};
std::unique_ptr<Reference> Parse(const std::string& bytes) {
  auto r = std::make_unique<Reference>();
  if (!r->message.ParseFromString(bytes)) return nullptr;
  r->invalid = ViewOf(r->message, &r->request);
  return r;
}

void ExpectSameRequest(const Request& want, const Request& got) {
  EXPECT_EQ(want.model, got.model);
  EXPECT_EQ(want.version, got.version);
  EXPECT_EQ(want.id, got.id);
  EXPECT_EQ(want.parameters, got.parameters);
  ASSERT_EQ(want.inputs.size(), got.inputs.size());
  for (size_t i = 0; i < want.inputs.size(); ++i) {
    SCOPED_TRACE(want.inputs[i].name);
    EXPECT_EQ(want.inputs[i].name, got.inputs[i].name);
    EXPECT_EQ(want.inputs[i].datatype, got.inputs[i].datatype);
    EXPECT_EQ(want.inputs[i].shape, got.inputs[i].shape);
    EXPECT_EQ(want.inputs[i].data, got.inputs[i].data);
    EXPECT_EQ(want.inputs[i].parameters, got.inputs[i].parameters);
  }
  ASSERT_EQ(want.outputs.size(), got.outputs.size());
  for (size_t i = 0; i < want.outputs.size(); ++i) {
    EXPECT_EQ(want.outputs[i].name, got.outputs[i].name);
    EXPECT_EQ(want.outputs[i].parameters, got.outputs[i].parameters);
  }
}

// The decoder agrees with protobuf and ViewOf on `bytes`, read whole and in blocks.
void ExpectAgrees(const std::string& bytes) {
  const std::unique_ptr<Reference> ref = Parse(bytes);
  for (int block : {0, 1, 3, 16, 1000}) {
    SCOPED_TRACE(testing::Message() << "block " << block);
    const Decoded d = Decode(bytes, block);
    ASSERT_EQ(ref != nullptr, d.status.ok()) << d.status << " " << testing::PrintToString(bytes);
    if (ref == nullptr) {
      EXPECT_EQ(d.status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(d.status.message(), HasSubstr("is not a valid inference.ModelInferRequest"));
      continue;
    }
    EXPECT_EQ(ref->invalid, d.invalid);
    if (ref->invalid.ok()) ExpectSameRequest(ref->request, d.request);
  }
}

std::string Floats(std::initializer_list<float> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * sizeof(float));
}

inference::ModelInferRequest FullRequest() {
  inference::ModelInferRequest m;
  m.set_model_name("zlpr_predict");
  m.set_model_version("1");
  m.set_id("req-\xc3\xa9-1");
  auto& params = *m.mutable_parameters();
  params["top_k"].set_int64_param(-5);
  params["threshold"].set_double_param(0.25);
  params["flag"].set_bool_param(true);
  params["big"].set_uint64_param(~uint64_t{0});
  params["name"].set_string_param("text");
  params["none"];  // no value at all
  auto* scores = m.add_inputs();
  scores->set_name("scores");
  scores->set_datatype("FP32");
  scores->add_shape(2);
  scores->add_shape(3);
  (*scores->mutable_parameters())["p"].set_int64_param(7);
  m.add_raw_input_contents(Floats({1, -2, 3.5f, 0, 1e-30f, -7}));
  auto* mask = m.add_inputs();
  mask->set_name("mask");
  mask->set_datatype("UINT8");
  mask->add_shape(2);
  mask->add_shape(3);
  m.add_raw_input_contents(std::string("\x01\x00\x01\x01\x00\x01", 6));
  auto* out = m.add_outputs();
  out->set_name("probs");
  (*out->mutable_parameters())["classification"].set_int64_param(2);
  m.add_outputs()->set_name("labels");
  return m;
}

TEST(WireDecodeTest, AFullRequestReadsAsProtobufParsesIt) {
  ExpectAgrees(FullRequest().SerializeAsString());
}

TEST(WireDecodeTest, EveryTruncationIsRefusedOrReadAsProtobufReadsIt) {
  const std::string bytes = FullRequest().SerializeAsString();
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(testing::Message() << "the first " << n << " bytes");
    ExpectAgrees(bytes.substr(0, n));
  }
}

TEST(WireDecodeTest, EveryByteChangedReadsAsProtobufReadsIt) {
  const std::string bytes = FullRequest().SerializeAsString();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char v : {0x00, 0x07, 0x80, 0xff}) {
      std::string changed = bytes;
      changed[i] = static_cast<char>(v);
      SCOPED_TRACE(testing::Message() << "byte " << i << " = " << int{v});
      ExpectAgrees(changed);
    }
  }
}

TEST(WireDecodeTest, TypedContentsAndTheirRefusals) {
  inference::ModelInferRequest m;
  m.set_model_name("zlpr_loss");
  auto* scores = m.add_inputs();
  scores->set_name("scores");
  scores->set_datatype("FP32");
  scores->add_shape(1);
  scores->add_shape(2);
  scores->mutable_contents()->add_fp32_contents(0.5f);
  scores->mutable_contents()->add_fp32_contents(-1.5f);
  auto* mask = m.add_inputs();
  mask->set_name("mask");
  mask->set_datatype("UINT8");
  mask->add_shape(1);
  mask->add_shape(2);
  mask->mutable_contents()->add_uint_contents(1);
  mask->mutable_contents()->add_uint_contents(0);
  ExpectAgrees(m.SerializeAsString());

  mask->mutable_contents()->set_uint_contents(1, 256);
  ExpectAgrees(m.SerializeAsString());
  const Decoded over = Decode(m.SerializeAsString());
  EXPECT_THAT(over.invalid.message(), HasSubstr("element 1 is 256, over 255 for UINT8"));

  mask->set_datatype("INT32");
  ExpectAgrees(m.SerializeAsString());
  EXPECT_THAT(Decode(m.SerializeAsString()).invalid.message(),
              HasSubstr("INT32 contents must be sent raw"));

  mask->set_datatype("FLOAT");
  ExpectAgrees(m.SerializeAsString());
  EXPECT_THAT(Decode(m.SerializeAsString()).invalid.message(),
              HasSubstr("input 'mask': unknown datatype 'FLOAT'"));

  m.add_raw_input_contents(Floats({1, 2}));  // one raw content for two inputs
  ExpectAgrees(m.SerializeAsString());
  EXPECT_THAT(Decode(m.SerializeAsString()).invalid.message(),
              HasSubstr("raw_input_contents has 1 entries for 2 inputs"));
}

// Hand-made wire bytes.
std::string Varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string Field(uint32_t field, uint32_t type, const std::string& payload) {
  std::string s = Varint(field << 3 | type);
  if (type == 2) s += Varint(payload.size());
  return s + payload;
}

TEST(WireDecodeTest, UnknownFieldsOfEveryWireTypeAreSkipped) {
  const std::string known = Field(1, 2, "zlpr_loss") + Field(3, 2, "id");
  const std::string group = Field(50, 3, "") + Field(1, 0, Varint(5)) + Field(51, 3, "") +
                            Field(51, 4, "") + Field(50, 4, "");
  for (const std::string& unknown :
       {Field(20, 0, Varint(~uint64_t{0})), Field(21, 1, std::string(8, 'x')),
        Field(22, 2, "whatever"), Field(23, 5, std::string(4, 'y')), group,
        Field(1, 0, Varint(3)),  // a known field with another wire type is unknown
        Field(5, 5, "abcd")}) {
    SCOPED_TRACE(testing::PrintToString(unknown));
    ExpectAgrees(unknown + known);
    ExpectAgrees(known + unknown);
    const Decoded d = Decode(known + unknown);
    ASSERT_TRUE(d.status.ok()) << d.status;
    EXPECT_EQ(d.request.model, "zlpr_loss");
    EXPECT_EQ(d.request.id, "id");
  }
  // A group that does not end, ends with another's tag, or an end without a start.
  for (const std::string& bad : {Field(50, 3, ""), Field(50, 3, "") + Field(51, 4, ""),
                                 Field(50, 4, ""), Field(0, 0, Varint(1)), Field(7, 6, "")}) {
    SCOPED_TRACE(testing::PrintToString(bad));
    ExpectAgrees(known + bad);
    EXPECT_FALSE(Decode(known + bad).status.ok());
  }
}

TEST(WireDecodeTest, TheLastOfASingularFieldWinsAndMapKeysToo) {
  const std::string entry_a = Field(1, 2, "top_k") + Field(2, 2, Field(2, 0, Varint(3)));
  const std::string entry_b = Field(1, 2, "top_k") + Field(2, 2, Field(3, 2, "four"));
  const std::string merged = Field(1, 2, "threshold") + Field(2, 2, Field(2, 0, Varint(1))) +
                             Field(2, 2, Field(4, 1, std::string(8, '\0')));
  const std::string bytes = Field(1, 2, "a") + Field(1, 2, "zlpr_predict") + Field(4, 2, entry_a) +
                            Field(4, 2, entry_b) + Field(4, 2, merged);
  ExpectAgrees(bytes);
  const Decoded d = Decode(bytes);
  EXPECT_EQ(d.request.model, "zlpr_predict");
  EXPECT_EQ(d.request.parameters.at("top_k"), Parameter(std::string("four")));
  EXPECT_EQ(d.request.parameters.at("threshold"), Parameter(0.0));
}

TEST(WireDecodeTest, StringsMustBeUtf8AsProtobufRequires) {
  for (const std::string& s :
       {std::string("\xff"), std::string("\xc0\x80"), std::string("\xed\xa0\x80"),
        std::string("\xf4\x90\x80\x80"), std::string("\xe2\x82"), std::string("ok \xe2\x82\xac"),
        std::string("\xf0\x9f\x98\x80")}) {
    SCOPED_TRACE(testing::PrintToString(s));
    ExpectAgrees(Field(3, 2, s));                                               // id
    ExpectAgrees(Field(5, 2, Field(1, 2, s)));                                  // an input's name
    ExpectAgrees(Field(4, 2, Field(1, 2, s)));                                  // a parameter's key
    ExpectAgrees(Field(4, 2, Field(1, 2, "k") + Field(2, 2, Field(3, 2, s))));  // its value
    EXPECT_EQ(IsUtf8(s), Decode(Field(3, 2, s)).status.ok());
  }
}

TEST(WireDecodeTest, ALengthBeyondTheMessageIsRefusedWithoutAllocatingIt) {
  for (uint64_t length : {uint64_t{100}, uint64_t{1} << 31, uint64_t{1} << 40}) {
    const std::string bytes = Varint(7 << 3 | 2) + Varint(length) + "abc";
    ExpectAgrees(bytes);
    EXPECT_THAT(Decode(bytes).status.message(), HasSubstr("longer than the message"));
  }
}

TEST(WireDecodeTest, AlignedRawTensorsAreViewsIntoTheMessage) {
  inference::ModelInferRequest m;
  m.set_model_name("zlpr_predict");
  auto* scores = m.add_inputs();
  scores->set_name("scores");
  scores->set_datatype("FP32");
  scores->add_shape(1);
  scores->add_shape(4);
  m.add_raw_input_contents(Floats({1, 2, 3, 4}));
  const std::string bytes = m.SerializeAsString();
  // The same bytes at each alignment of the tensor.
  for (size_t shift = 0; shift < 4; ++shift) {
    std::string buffer;
    const char* at;
    const Decoded d = DecodeShifted(bytes, shift, &buffer, &at);
    ASSERT_TRUE(d.status.ok() && d.invalid.ok());
    const char* data = d.request.inputs[0].data.data();
    const bool inside = data >= at && data < at + bytes.size();
    EXPECT_EQ(inside, d.views);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(data) % alignof(float), 0u);
    EXPECT_EQ(d.request.inputs[0].data, Floats({1, 2, 3, 4}));
  }
}

TEST(WireDecodeTest, OnceOneRawTensorIsCopiedAllAreAndTheMessageCanGo) {
  // Two raw tensors; shift the message until the first is aligned and the second is not.
  inference::ModelInferRequest m = FullRequest();
  m.set_raw_input_contents(1, std::string("\x01\x00\x01\x01\x00", 5));  // 5 bytes: shifts the next
  m.mutable_inputs(1)->set_datatype("UINT8");
  m.add_raw_input_contents(Floats({9, 9}));
  auto* third = m.add_inputs();
  third->set_name("label_thresholds");
  third->set_datatype("FP32");
  third->add_shape(2);
  const std::string bytes = m.SerializeAsString();
  bool mixed = false;
  for (size_t shift = 0; shift < 4; ++shift) {
    std::string buffer;
    const char* at;
    const Decoded d = DecodeShifted(bytes, shift, &buffer, &at);
    ASSERT_TRUE(d.status.ok() && d.invalid.ok()) << d.invalid;
    int inside = 0;
    for (const Tensor& t : d.request.inputs) {
      inside += t.data.data() >= at && t.data.data() < at + bytes.size() ? 1 : 0;
    }
    EXPECT_TRUE(inside == 0 || inside == 3) << inside << " of 3 in the message";
    EXPECT_EQ(d.views, inside == 3);
    mixed = mixed || inside == 0;
  }
  EXPECT_TRUE(mixed);
}

// A response's wire form put together: the head with the large outputs at their gaps.
std::string Assemble(const ResponseWire& wire, const Response& response) {
  std::string head(wire.head_bytes(), '\0');
  const std::vector<ResponseWire::Gap> gaps = wire.Write(head.data());
  std::string out;
  size_t at = 0;
  for (const ResponseWire::Gap& gap : gaps) {
    out.append(head, at, gap.offset - at);
    out += response.outputs[gap.output].data;
    at = gap.offset;
  }
  out.append(head, at);
  EXPECT_EQ(out.size(), wire.total_bytes());
  return out;
}

Response FullResponse() {
  Response r;
  r.model = "zlpr_loss";
  r.version = "1";
  r.id = "id-\xc3\xa9";
  r.parameters["loss_sum"] = 12.5;
  r.parameters["n"] = int64_t{-3};
  r.parameters["u"] = ~uint64_t{0};
  r.parameters["b"] = false;
  r.parameters["s"] = std::string("text");
  r.outputs.push_back(Output{
      .name = "loss", .datatype = DataType::kFp32, .shape = {2}, .data = Floats({0.5f, 1.5f})});
  r.outputs.push_back(Output{.name = "grad",
                             .datatype = DataType::kFp32,
                             .shape = {2, 300},
                             .data = std::string(2400, 'g')});
  r.outputs.push_back(Output{.name = "empty", .datatype = DataType::kInt32, .shape = {0, 0}});
  r.outputs.push_back(Output{.name = "probs",
                             .datatype = DataType::kBytes,
                             .shape = {1, 1},
                             .data = std::string("\x03\0\0\0"
                                                 "abc",
                                                 7)});
  r.outputs[3].parameters["p"] = int64_t{1};
  return r;
}

TEST(WireEncodeTest, AResponseParsesBackAsProtobufWouldHaveSentIt) {
  for (size_t large : {size_t{0}, size_t{1}, size_t{8}, size_t{1000}}) {
    SCOPED_TRACE(testing::Message() << "large from " << large << " bytes");
    const Response r = FullResponse();
    const ResponseWire wire = ResponseWire::Infer(r, large);
    inference::ModelInferResponse got;
    ASSERT_TRUE(got.ParseFromString(Assemble(wire, r)));
    inference::ModelInferResponse want;
    ToMessage(FullResponse(), &want);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(want, got))
        << want.ShortDebugString() << "\n"
        << got.ShortDebugString();
    EXPECT_EQ(wire.total_bytes(), want.ByteSizeLong());
    if (large == 1000) {
      EXPECT_EQ(wire.head_bytes() + 2400, wire.total_bytes());
    }
  }
  const Response empty;
  EXPECT_EQ(ResponseWire::Infer(empty, 0).total_bytes(), 0u);
}

TEST(WireEncodeTest, AStreamResponseCarriesTheErrorTheResponseOrBoth) {
  const Response r = FullResponse();
  for (const char* error : {"", "input 'scores': bad"}) {
    for (const Response* response : {&r, static_cast<const Response*>(nullptr)}) {
      const ResponseWire wire = ResponseWire::Stream(response, error, 100);
      inference::ModelStreamInferResponse got;
      ASSERT_TRUE(got.ParseFromString(Assemble(wire, r)));
      EXPECT_EQ(got.error_message(), error);
      EXPECT_EQ(got.has_infer_response(), response != nullptr);
      if (response != nullptr) {
        inference::ModelInferResponse want;
        ToMessage(FullResponse(), &want);
        EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(want, got.infer_response()));
      }
    }
  }
}

TEST(WireTest, Utf8) {
  EXPECT_TRUE(IsUtf8(""));
  EXPECT_TRUE(IsUtf8("plain"));
  EXPECT_TRUE(IsUtf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf"));
  EXPECT_FALSE(IsUtf8("\x80"));
  EXPECT_FALSE(IsUtf8("\xc1\xbf"));          // overlong
  EXPECT_FALSE(IsUtf8("\xe0\x9f\xbf"));      // overlong
  EXPECT_FALSE(IsUtf8("\xed\xbf\xbf"));      // a surrogate
  EXPECT_FALSE(IsUtf8("\xf4\x90\x80\x80"));  // over U+10FFFF
  EXPECT_FALSE(IsUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsUtf8("\xe2\x82"));  // cut short
  EXPECT_FALSE(IsUtf8("\xe2\x28\xa1"));
}

}  // namespace
}  // namespace zlpr::server::oip
