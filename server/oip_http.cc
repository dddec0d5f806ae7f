// HttpFrontEnd: the Open Inference Protocol's REST binding on Boost.Beast, and its JSON codec.
#include "server/oip_http.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/types/span.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/thread_pool.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "server/oip_service.h"

namespace zlpr::server {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;
using json = nlohmann::json;

// Containers nested deeper than this in a request are refused (the DOM is ours to bound).
constexpr int kMaxJsonDepth = 64;

// Every JSON text the binding writes goes through here. Messages quote the request (its path, a
// header, a string of its JSON), whose bytes need not be UTF-8: nlohmann's default dump() throws
// on those, so they are written as U+FFFD instead.
std::string JsonText(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

// Bytes per element of the datatypes the protocol names (0: BYTES, variable).
std::optional<int> ElementSize(std::string_view datatype) {
  static const std::pair<std::string_view, int> kSizes[] = {
      {"BOOL", 1}, {"UINT8", 1}, {"INT8", 1},  {"UINT16", 2}, {"INT16", 2}, {"FP16", 2},
      {"BF16", 2}, {"UINT32", 4}, {"INT32", 4}, {"FP32", 4},  {"UINT64", 8}, {"INT64", 8},
      {"FP64", 8}, {"BYTES", 0}};
  for (const auto& [name, size] : kSizes) {
    if (name == datatype) return size;
  }
  return std::nullopt;
}

// Values outside the inputs' "data" a request may hold (keys, strings, numbers, containers):
// the DOM of everything but the tensors stays small whatever the body's size.
constexpr int kMaxJsonValues = 4096;

// nlohmann's SAX events into a DOM of the request, except the numbers of each input's "data"
// (inputs[i].data, any nesting), which are appended to `data[i]` as float32 bytes. The request's
// structure is checked as it is read, so that a hostile body costs no more than its bytes: a
// key the protocol does not have, a key given twice, a container where a value belongs, or more
// than kMaxJsonValues values outside the data end the parse at once.
class RequestReader final : public json::json_sax_t {
 public:
  json root;
  std::vector<std::optional<std::string>> data;  // per input: its JSON data, as FP32 bytes
  std::string error;

  bool null() override { return Value(nullptr); }
  bool boolean(bool v) override { return Value(v); }
  bool number_integer(number_integer_t v) override {
    return collecting_ ? Collect(static_cast<double>(v)) : Value(v);
  }
  bool number_unsigned(number_unsigned_t v) override {
    return collecting_ ? Collect(static_cast<double>(v)) : Value(v);
  }
  bool number_float(number_float_t v, const string_t&) override {
    return collecting_ ? Collect(v) : Value(v);
  }
  bool string(string_t& v) override { return Value(std::move(v)); }
  bool binary(binary_t&) override { return Fail("binary values are not JSON"); }
  bool start_object(std::size_t) override {
    if (collecting_) return NotANumber();
    return Open(json::object());
  }
  bool key(string_t& k) override {
    const Level& top = levels_.back();
    static constexpr std::string_view kRequestKeys[] = {"id", "parameters", "inputs", "outputs"};
    static constexpr std::string_view kInputKeys[] = {"name", "shape", "datatype", "parameters",
                                                      "data"};
    static constexpr std::string_view kOutputKeys[] = {"name", "parameters"};
    absl::Span<const std::string_view> allowed;
    if (top.kind == Kind::kRequest) allowed = kRequestKeys;
    if (top.kind == Kind::kInput) allowed = kInputKeys;
    if (top.kind == Kind::kOutput) allowed = kOutputKeys;
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
      return Fail(absl::StrFormat("%s: unknown key '%s'", top.where, k));
    }
    if (top.node->contains(k)) {
      return Fail(absl::StrFormat("%s: key '%s' given twice", top.where, k));
    }
    if (!Count()) return false;
    key_ = std::move(k);
    return true;
  }
  bool end_object() override { return Close(); }
  bool start_array(std::size_t) override {
    if (collecting_) {
      if (++collect_depth_ > kMaxJsonDepth) return Fail("inputs: data nested too deeply");
      return true;
    }
    if (!levels_.empty() && levels_.back().kind == Kind::kInput && key_ == "data") {
      input_ = levels_[1].node->size() - 1;
      if (data.size() <= input_) data.resize(input_ + 1);
      data[input_].emplace();
      (*levels_.back().node)["data"] = json::array();  // marks that the data was given
      collecting_ = true;
      collect_depth_ = 1;
      return true;
    }
    return Open(json::array());
  }
  bool end_array() override {
    if (collecting_) {
      collecting_ = --collect_depth_ > 0;
      return true;
    }
    return Close();
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    // nlohmann's message has the line, column and what was expected.
    if (error.empty()) error = absl::StrCat("the request is not valid JSON: ", e.what());
    return false;
  }

 private:
  // Where a container sits in a request: the protocol's objects and arrays, and parameters and
  // shapes, which hold values only.
  enum class Kind { kRequest, kInputs, kInput, kOutputs, kOutput, kValues };
  struct Level {
    Kind kind;
    json* node;
    std::string where;  // for messages: "request", "inputs[2]", ...
  };

  bool Fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }
  bool Count() {
    if (++values_ <= kMaxJsonValues) return true;
    return Fail(absl::StrFormat(
        "the request has more than %d keys and values outside its inputs' data", kMaxJsonValues));
  }
  bool NotANumber() {
    return Fail(absl::StrFormat("inputs[%d].data: element %d is not a number", input_,
                                data[input_]->size() / sizeof(float)));
  }
  bool Collect(double v) {
    const auto f = static_cast<float>(v);
    data[input_]->append(reinterpret_cast<const char*>(&f), sizeof f);
    return true;
  }
  // Puts `v` where the parser is: the root, the end of an array, or the object's current key.
  json* Insert(json v) {
    if (levels_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& top = *levels_.back().node;
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    json& slot = top[key_];
    slot = std::move(v);
    return &slot;
  }
  bool Value(json v) {
    if (collecting_) return NotANumber();
    if (levels_.empty()) return Fail("the request must be a JSON object");
    if (!Count()) return false;
    const Level& top = levels_.back();
    if (top.kind == Kind::kInputs || top.kind == Kind::kOutputs) {
      return Fail(absl::StrFormat("%s[%d] must be an object", top.where, top.node->size()));
    }
    Insert(std::move(v));
    return true;
  }
  // A container may open only where the protocol has one.
  bool Open(json container) {
    if (!Count()) return false;
    const bool object = container.is_object();
    std::optional<Level> level;
    if (levels_.empty()) {
      if (object) level = Level{Kind::kRequest, nullptr, "request"};
    } else {
      const Level& top = levels_.back();
      const std::string index = absl::StrFormat("%s[%d]", top.where, top.node->size());
      switch (top.kind) {
        case Kind::kRequest:
          if (key_ == "parameters" && object) level = Level{Kind::kValues, nullptr, "parameters"};
          if (key_ == "inputs" && !object) level = Level{Kind::kInputs, nullptr, "inputs"};
          if (key_ == "outputs" && !object) level = Level{Kind::kOutputs, nullptr, "outputs"};
          if (!level) return Fail(WrongType("request", key_));
          break;
        case Kind::kInputs:
          if (!object) return Fail(index + " must be an object");
          level = Level{Kind::kInput, nullptr, index};
          break;
        case Kind::kOutputs:
          if (!object) return Fail(index + " must be an object");
          level = Level{Kind::kOutput, nullptr, index};
          break;
        case Kind::kInput:
        case Kind::kOutput:
          if (key_ == "parameters" && object) {
            level = Level{Kind::kValues, nullptr, top.where + ".parameters"};
          }
          if (key_ == "shape" && top.kind == Kind::kInput && !object) {
            level = Level{Kind::kValues, nullptr, top.where + ".shape"};
          }
          if (!level) return Fail(WrongType(top.where, key_));
          break;
        case Kind::kValues:
          return Fail(top.node->is_array()
                          ? index + " must be a number"
                          : absl::StrFormat("%s: '%s' must be a boolean, number or string",
                                            top.where, key_));
      }
    }
    if (!level) return Fail("the request must be a JSON object");
    level->node = Insert(std::move(container));
    levels_.push_back(std::move(*level));
    return true;
  }
  // The message for a container under `key` of `where`, which takes none there.
  static std::string WrongType(const std::string& where, const std::string& key) {
    if (key == "inputs") return "request: 'inputs' must be an array of tensors";
    if (key == "outputs") return "request: 'outputs' must be an array";
    if (key == "parameters") return absl::StrFormat("%s: 'parameters' must be an object", where);
    if (key == "shape") return absl::StrFormat("%s: 'shape' must be an array of dimensions", where);
    if (key == "data") return absl::StrFormat("%s: 'data' must be an array of numbers", where);
    return absl::StrFormat("%s: '%s' must be a string", where, key);
  }
  bool Close() {
    levels_.pop_back();
    return true;
  }

  std::vector<Level> levels_;  // the open containers, outermost first
  std::string key_;
  int values_ = 0;
  bool collecting_ = false;
  int collect_depth_ = 0;
  size_t input_ = 0;
};

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// A JSON parameter value as an InferParameter (bool, int64, uint64, double or string).
absl::Status ToParameter(const std::string& where, const json& v, inference::InferParameter* p) {
  if (v.is_boolean()) {
    p->set_bool_param(v.get<bool>());
  } else if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      p->set_int64_param(static_cast<int64_t>(u));
    } else {
      p->set_uint64_param(u);
    }
  } else if (v.is_number_integer()) {
    p->set_int64_param(v.get<int64_t>());
  } else if (v.is_number_float()) {
    p->set_double_param(v.get<double>());
  } else if (v.is_string()) {
    p->set_string_param(v.get<std::string>());
  } else {
    return Invalid(absl::StrFormat("%s must be a boolean, number or string", where));
  }
  return absl::OkStatus();
}

// JSON numbers (as float32) to the bytes of `datatype`: FP32 as they are, UINT8 and BOOL when
// each is a whole number in range. Other datatypes go as binary data.
absl::StatusOr<std::string> JsonTensorBytes(const std::string& name, const std::string& datatype,
                                            std::string floats) {
  if (datatype == "FP32") return floats;
  if (datatype == "UINT8" || datatype == "BOOL") {
    const size_t n = floats.size() / sizeof(float);
    const int max = datatype == "BOOL" ? 1 : 255;
    std::string out(n, '\0');
    for (size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, floats.data() + i * sizeof v, sizeof v);
      if (!(v >= 0 && v <= static_cast<float>(max)) || v != std::floor(v)) {
        return Invalid(absl::StrFormat("input '%s': element %d is %g, not a whole number 0 to %d "
                                       "for %s",
                                       name, i, v, max, datatype));
      }
      out[i] = static_cast<char>(static_cast<int>(v));
    }
    return out;
  }
  return Invalid(absl::StrFormat(
      "input '%s': %s tensors go as binary data (parameters.binary_data_size); JSON data is "
      "read for FP32, UINT8 and BOOL",
      name, datatype));
}

}  // namespace

absl::Status ParseInferRequest(std::string_view body, std::optional<size_t> header_length,
                               const std::string& model, const std::string& version,
                               ModelInferRequest* request, HttpOutputFormat* format) {
  const size_t json_length = header_length.value_or(body.size());
  if (json_length > body.size()) {
    return Invalid(absl::StrFormat(
        "Inference-Header-Content-Length is %d, more than the %d bytes of the body", json_length,
        body.size()));
  }
  RequestReader reader;
  const std::string_view text = body.substr(0, json_length);
  if (!json::sax_parse(text.begin(), text.end(), &reader)) {
    return Invalid(reader.error.empty() ? "the request is not valid JSON" : reader.error);
  }
  const json& root = reader.root;
  if (!root.is_object()) return Invalid("the request must be a JSON object");
  request->set_model_name(model);
  request->set_model_version(version);
  if (auto it = root.find("id"); it != root.end()) {
    if (!it->is_string()) return Invalid("request: 'id' must be a string");
    request->set_id(it->get<std::string>());
  }
  if (auto it = root.find("parameters"); it != root.end()) {
    if (!it->is_object()) return Invalid("request: 'parameters' must be an object");
    for (const auto& [key, value] : it->items()) {
      if (key == "binary_data_output") {
        if (!value.is_boolean()) return Invalid("parameter 'binary_data_output' must be a boolean");
        format->all_binary = value.get<bool>();
        continue;
      }
      ZLPR_RETURN_IF_ERROR(ToParameter(absl::StrCat("parameter '", key, "'"), value,
                                       &(*request->mutable_parameters())[key]));
    }
  }
  const auto inputs = root.find("inputs");
  if (inputs == root.end() || !inputs->is_array()) {
    return Invalid("request: 'inputs' must be an array of tensors");
  }
  std::string_view binary = body.substr(json_length);
  for (size_t i = 0; i < inputs->size(); ++i) {
    const json& in = (*inputs)[i];
    const std::string where = absl::StrFormat("inputs[%d]", i);
    if (!in.is_object()) return Invalid(where + " must be an object");
    auto* t = request->add_inputs();
    const auto name = in.find("name");
    if (name == in.end() || !name->is_string()) return Invalid(where + ": 'name' must be a string");
    t->set_name(name->get<std::string>());
    const std::string tensor = absl::StrFormat("input '%s'", t->name());
    const auto datatype = in.find("datatype");
    if (datatype == in.end() || !datatype->is_string()) {
      return Invalid(tensor + ": 'datatype' must be a string");
    }
    t->set_datatype(datatype->get<std::string>());
    const std::optional<int> element = ElementSize(t->datatype());
    if (!element) return Invalid(absl::StrFormat("%s: unknown datatype '%s'", tensor, t->datatype()));
    const auto shape = in.find("shape");
    if (shape == in.end() || !shape->is_array()) {
      return Invalid(tensor + ": 'shape' must be an array of dimensions");
    }
    // The element count, saturated at 2^40: beyond any body (messages are under 2^31 bytes), so
    // the counts below refuse it, and neither it nor its byte size can overflow.
    constexpr uint64_t kMaxElements = uint64_t{1} << 40;
    uint64_t elements = 1;
    for (const json& d : *shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0 ||
          d.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Invalid(tensor + ": 'shape' must hold whole numbers 0 to 2^31 - 1");
      }
      const auto dim = static_cast<uint64_t>(d.get<int64_t>());
      t->add_shape(d.get<int64_t>());
      elements = dim != 0 && elements > kMaxElements / dim ? kMaxElements : elements * dim;
    }
    std::optional<uint64_t> binary_size;
    if (auto p = in.find("parameters"); p != in.end()) {
      if (!p->is_object()) return Invalid(tensor + ": 'parameters' must be an object");
      for (const auto& [key, value] : p->items()) {
        if (key == "binary_data_size") {
          if (!value.is_number_integer() || value.get<int64_t>() < 0) {
            return Invalid(tensor + ": binary_data_size must be a whole number of bytes");
          }
          binary_size = value.get<uint64_t>();
          continue;
        }
        ZLPR_RETURN_IF_ERROR(ToParameter(absl::StrFormat("%s: parameter '%s'", tensor, key), value,
                                         &(*t->mutable_parameters())[key]));
      }
    }
    const bool has_data = i < reader.data.size() && reader.data[i].has_value();
    if (has_data == binary_size.has_value()) {
      return Invalid(tensor + (has_data ? ": give 'data' or parameters.binary_data_size, not both"
                                        : ": give its 'data' or parameters.binary_data_size"));
    }
    std::string* bytes = request->add_raw_input_contents();
    if (binary_size) {
      if (*binary_size > binary.size()) {
        return Invalid(absl::StrFormat(
            "%s: binary_data_size is %d bytes, but only %d bytes of binary data are left", tensor,
            *binary_size, binary.size()));
      }
      if (*element > 0 && *binary_size != elements * static_cast<uint64_t>(*element)) {
        return Invalid(absl::StrFormat("%s: %d bytes of binary data for shape [%s] of %s, "
                                       "expected %d",
                                       tensor, *binary_size, absl::StrJoin(t->shape(), ", "),
                                       t->datatype(), elements * static_cast<uint64_t>(*element)));
      }
      bytes->assign(binary.substr(0, *binary_size));
      binary.remove_prefix(*binary_size);
      continue;
    }
    std::string& floats = *reader.data[i];
    const uint64_t values = floats.size() / sizeof(float);
    if (values != elements) {
      return Invalid(absl::StrFormat("%s: %d values in 'data' for shape [%s] (%d elements)", tensor,
                                     values, absl::StrJoin(t->shape(), ", "), elements));
    }
    ZLPR_ASSIGN_OR_RETURN(*bytes, JsonTensorBytes(t->name(), t->datatype(), std::move(floats)));
  }
  if (!binary.empty()) {
    return Invalid(absl::StrFormat(
        "%d bytes of binary data after the inputs' binary_data_size: the sizes do not add up",
        binary.size()));
  }
  if (auto outputs = root.find("outputs"); outputs != root.end()) {
    if (!outputs->is_array()) return Invalid("request: 'outputs' must be an array");
    for (size_t i = 0; i < outputs->size(); ++i) {
      const json& out = (*outputs)[i];
      const std::string where = absl::StrFormat("outputs[%d]", i);
      if (!out.is_object()) return Invalid(where + " must be an object");
      const auto name = out.find("name");
      if (name == out.end() || !name->is_string()) {
        return Invalid(where + ": 'name' must be a string");
      }
      auto* o = request->add_outputs();
      o->set_name(name->get<std::string>());
      if (auto p = out.find("parameters"); p != out.end()) {
        if (!p->is_object()) return Invalid(where + ": 'parameters' must be an object");
        for (const auto& [key, value] : p->items()) {
          if (key == "binary_data") {
            if (!value.is_boolean()) {
              return Invalid(absl::StrFormat("output '%s': binary_data must be a boolean",
                                             o->name()));
            }
            (value.get<bool>() ? format->binary : format->json).insert(o->name());
            continue;
          }
          ZLPR_RETURN_IF_ERROR(
              ToParameter(absl::StrFormat("output '%s': parameter '%s'", o->name(), key), value,
                          &(*o->mutable_parameters())[key]));
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

json ShapeJson(const google::protobuf::RepeatedField<int64_t>& shape) {
  json out = json::array();
  for (int64_t d : shape) out.push_back(d);
  return out;
}

json ParameterJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param();
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      return p.uint64_param();
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kStringParam:
      return p.string_param();
    default:
      return nullptr;
  }
}

void AppendFloat(float v, std::string* out) {
  if (!std::isfinite(v)) {
    out->append(std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
    return;
  }
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  out->append(buf, r.ptr);
}

// `raw` (the output's raw bytes) as the JSON array of its values.
void AppendData(const std::string& datatype, const std::string& raw, std::string* out) {
  out->push_back('[');
  if (datatype == "BYTES") {
    // Each element: a little-endian uint32 length, then the bytes (Triton's raw BYTES form).
    size_t at = 0;
    bool first = true;
    while (at + 4 <= raw.size()) {
      uint32_t n;
      std::memcpy(&n, raw.data() + at, 4);
      at += 4;
      if (!first) out->push_back(',');
      first = false;
      out->append(JsonText(json(raw.substr(at, n))));
      at += n;
    }
  } else {
    const size_t size = datatype == "INT32" || datatype == "FP32" ? 4 : 1;
    for (size_t i = 0; i + size <= raw.size(); i += size) {
      if (i > 0) out->push_back(',');
      if (datatype == "FP32") {
        float v;
        std::memcpy(&v, raw.data() + i, 4);
        AppendFloat(v, out);
      } else if (datatype == "INT32") {
        int32_t v;
        std::memcpy(&v, raw.data() + i, 4);
        absl::StrAppend(out, v);
      } else {
        absl::StrAppend(out, static_cast<unsigned char>(raw[i]));
      }
    }
  }
  out->push_back(']');
}

}  // namespace

std::string FormatInferResponse(const ModelInferResponse& response, const HttpOutputFormat& format,
                                size_t* json_length) {
  std::string binary;
  json head = json::object();
  head["model_name"] = response.model_name();
  head["model_version"] = response.model_version();
  if (!response.id().empty()) head["id"] = response.id();
  if (!response.parameters().empty()) {
    json params = json::object();
    for (const auto& [key, value] : response.parameters()) params[key] = ParameterJson(value);
    head["parameters"] = std::move(params);
  }
  // The envelope comes from nlohmann; the outputs' data arrays are written straight into the
  // text (a DOM node per value would cost several times the values).
  std::string text = JsonText(head);
  text.pop_back();  // the closing brace
  text.append(",\"outputs\":[");
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& o = response.outputs(i);
    const std::string& raw = response.raw_output_contents(i);
    json meta = {{"name", o.name()}, {"datatype", o.datatype()}, {"shape", ShapeJson(o.shape())}};
    const bool as_binary = format.IsBinary(o.name());
    if (as_binary) {
      meta["parameters"] = {{"binary_data_size", raw.size()}};
      binary.append(raw);
    }
    if (i > 0) text.push_back(',');
    std::string piece = JsonText(meta);
    if (!as_binary) {
      piece.pop_back();
      piece.append(",\"data\":");
      AppendData(o.datatype(), raw, &piece);
      piece.push_back('}');
    }
    text.append(piece);
  }
  text.append("]}");
  *json_length = text.size();
  text.append(binary);
  return text;
}

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

namespace {

json MetadataJson(const inference::ModelMetadataResponse& m) {
  json out = {{"name", m.name()}, {"versions", m.versions()}, {"platform", m.platform()}};
  for (const char* key : {"inputs", "outputs"}) {
    json tensors = json::array();
    const auto& list = std::string_view(key) == "inputs" ? m.inputs() : m.outputs();
    for (const auto& t : list) {
      tensors.push_back(
          {{"name", t.name()}, {"datatype", t.datatype()}, {"shape", ShapeJson(t.shape())}});
    }
    out[key] = std::move(tensors);
  }
  return out;
}

// Triton's JSON form of a model configuration (data types as "TYPE_FP32", dims as numbers).
json ConfigJson(const inference::ModelConfig& c) {
  json out = {{"name", c.name()},
              {"platform", c.platform()},
              {"backend", c.backend()},
              {"max_batch_size", c.max_batch_size()}};
  json inputs = json::array();
  for (const auto& in : c.input()) {
    inputs.push_back({{"name", in.name()},
                      {"data_type", inference::DataType_Name(in.data_type())},
                      {"dims", ShapeJson(in.dims())},
                      {"optional", in.optional()}});
  }
  json outputs = json::array();
  for (const auto& o : c.output()) {
    outputs.push_back({{"name", o.name()},
                       {"data_type", inference::DataType_Name(o.data_type())},
                       {"dims", ShapeJson(o.dims())}});
  }
  out["input"] = std::move(inputs);
  out["output"] = std::move(outputs);
  return out;
}

json DurationJson(const inference::StatisticDuration& d) {
  return {{"count", d.count()}, {"ns", d.ns()}};
}

json StatisticsJson(const inference::ModelStatisticsResponse& r) {
  json models = json::array();
  for (const auto& m : r.model_stats()) {
    const auto& i = m.inference_stats();
    models.push_back({{"name", m.name()},
                      {"version", m.version()},
                      {"last_inference", m.last_inference()},
                      {"inference_count", m.inference_count()},
                      {"execution_count", m.execution_count()},
                      {"inference_stats",
                       {{"success", DurationJson(i.success())},
                        {"fail", DurationJson(i.fail())},
                        {"queue", DurationJson(i.queue())},
                        {"compute_input", DurationJson(i.compute_input())},
                        {"compute_infer", DurationJson(i.compute_infer())},
                        {"compute_output", DurationJson(i.compute_output())}}},
                      {"batch_stats", json::array()}});
  }
  return {{"model_stats", std::move(models)}};
}

}  // namespace


namespace {

// A handler that throws is a bug of ours (or memory running out): say so in the log, without
// letting a client that can repeat it flood the log (the first 10, then every 1000th).
void LogHandlerFailure(std::string_view what) {
  static std::atomic<int64_t> failures{0};
  const int64_t n = failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n <= 10 || n % 1000 == 0) {
    std::fprintf(stderr, "zlpr-server: an HTTP request failed with an exception (%lld so far): %.*s\n",
                 static_cast<long long>(n), static_cast<int>(what.size()), what.data());
  }
}

}  // namespace

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;

class HttpFrontEnd::Impl {
 public:
  Impl(const HttpOptions& opts, ZlprServiceImpl* svc, int codec_threads)
      : options(opts), service(svc), acceptor(ioc), codec_pool(codec_threads) {}

  const HttpOptions options;
  ZlprServiceImpl* const service;
  // Declared before the io_context, so that they outlive it: its destructor destroys the
  // handlers still queued, and with them the last sessions, which use these.
  std::optional<ssl::context> tls;
  std::atomic<int> connections{0};
  std::atomic<bool> stopping{false};
  // Closed by Stop() before the I/O threads end: from then on the memory budget's grants, which
  // run on other threads, post nothing more to the io_context (their leases go back instead).
  struct PostGate {
    absl::Mutex mu;
    bool open ABSL_GUARDED_BY(mu) = true;
  };
  std::shared_ptr<PostGate> gate = std::make_shared<PostGate>();
  net::io_context ioc;
  tcp::acceptor acceptor;
  std::vector<std::thread> threads;
  // Parses large JSON requests and formats large JSON responses, so that an I/O thread, which
  // serves many connections, is never held by one of them for long (a 64 MB JSON body takes
  // about a second to parse). Declared after the io_context: destroyed (joined) first, while
  // the handlers it posts back can still be queued.
  net::thread_pool codec_pool;

  void Accept();
};

namespace {

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// JSON up to this size is parsed and formatted on the I/O thread (about 0.1 ms of work); larger
// goes to the codec pool.
constexpr size_t kInlineCodecBytes = 64 << 10;

using SteadyClock = std::chrono::steady_clock;

// When a transfer that began at `start` must have moved `done` bytes: `timeout` plus the time
// those bytes take at the slowest rate allowed. Re-armed as bytes move, it cuts off a client
// that stalls or trickles, and never one that keeps up.
SteadyClock::time_point TransferDeadline(SteadyClock::time_point start,
                                         std::chrono::milliseconds timeout, uint64_t done,
                                         int64_t min_bytes_per_second) {
  const auto ms = static_cast<int64_t>(
      std::min<double>(1e12, 1000.0 * static_cast<double>(done) /
                                 static_cast<double>(std::max<int64_t>(1, min_bytes_per_second))));
  return start + timeout + std::chrono::milliseconds(ms);
}

// Empties `message` and frees what it held: Clear() keeps its strings' capacity for reuse, so a
// keep-alive connection would hold its largest request's memory while idle.
template <typename Message>
void FreeMessage(Message* message) {
  Message().Swap(message);
}

// A reserved connection (over --http_max_connections) gets this long for its header.
constexpr std::chrono::seconds kReservedHeaderTimeout{2};

// One connection: requests read one after another (keep-alive), each answered before the next is
// read. Runs on its strand; a request being computed holds no thread. `Stream` is a
// beast::tcp_stream or a TLS stream over one.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(HttpFrontEnd::Impl* front, Stream stream, bool reserve)
      : front_(front), service_(front->service), stream_(std::move(stream)),
        budget_timer_(stream_.get_executor()), reserve_(reserve),
        inference_(service_, Method::kModelInferHttp) {
    service_->metrics().http_connections().Increment();
  }

  ~Session() {
    budget_ticket_.Cancel();
    service_->metrics().http_connections().Decrement();
    front_->connections.fetch_sub(1);
  }

  void Start() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] { self->Read(); });
    } else {
      beast::get_lowest_layer(stream_).expires_after(front_->options.io_timeout);
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (!ec) self->Read();
                              });
    }
  }

 private:
  const HttpOptions& options() const { return front_->options; }

  void Read() {
    head_ = false;
    expect_continue_ = false;
    discarded_ = 0;
    parser_.emplace();
    parser_->header_limit(16 << 10);
    // Checked against the header's Content-Length below, with a clear answer. (Not boost::none:
    // Boost 1.74 compares a Content-Length with an empty limit as if the limit were smaller.)
    parser_->body_limit(std::numeric_limits<uint64_t>::max());
    beast::get_lowest_layer(stream_).expires_after(
        reserve_ ? std::chrono::milliseconds(kReservedHeaderTimeout) : options().io_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = this->shared_from_this()](beast::error_code ec, size_t) {
                              self->Step([&] { self->OnHeader(ec); });
                            });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) {
      if (ec != http::error::end_of_stream && ec != beast::error::timeout &&
          ec != net::error::eof && ec != net::error::operation_aborted) {
        // A malformed request line or header (or one over 16 KiB): say so, then close.
        return SendError(absl::InvalidArgumentError(absl::StrCat(
                             "the request's header could not be read: ", ec.message())),
                         /*close=*/true);
      }
      return Close();
    }
    start_ = service_->clock().Now();
    const auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    head_ = req.method() == http::verb::head;
    // Transfer-Encoding decides where this request ends and the next begins: anything but one
    // plain "chunked" (and no Content-Length beside it) could be read one way here and another
    // by a proxy in front, and is refused with the connection closed (RFC 9112, section 6.3).
    if (const auto te = req.find(http::field::transfer_encoding); te != req.end()) {
      if (req.count(http::field::transfer_encoding) > 1 ||
          !beast::iequals(te->value(), "chunked") || req.count(http::field::content_length) > 0) {
        service_->metrics().rejected(Reject::kInvalid).Increment();
        return SendError(absl::InvalidArgumentError(absl::StrFormat(
                             "Transfer-Encoding '%s'%s is not supported: send a Content-Length",
                             std::string(te->value()),
                             req.count(http::field::content_length) > 0 ? " with Content-Length"
                                                                        : "")),
                         /*close=*/true);
      }
    }
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    path_ = absl::StrSplit(absl::string_view(path.data(), path.size()), '/', absl::SkipEmpty());
    has_body_ = parser_->chunked() || parser_->content_length().value_or(0) > 0;
    const bool health = path_.size() == 3 && path_[0] == "v2" && path_[1] == "health";
    if (reserve_ && !health) {
      return SendError(absl::UnavailableError(absl::StrFormat(
                           "the server has %d connections open (--http_max_connections): only "
                           "health checks are answered on this one; retry later",
                           options().max_connections)),
                       /*close=*/true);
    }
    if (options().tokens != nullptr && !health) {
      const auto it = req.find(http::field::authorization);
      if (it == req.end() || !options().tokens->Accepts(std::string_view(it->value().data(),
                                                                         it->value().size()))) {
        service_->metrics().rejected(Reject::kUnauthenticated).Increment();
        Response res = ErrorResponse(absl::UnauthenticatedError(
            it == req.end() ? "this server needs a bearer token (authorization: Bearer ...)"
                            : "the bearer token is not valid"));
        res.set(http::field::www_authenticate, "Bearer");
        return Send(std::move(res), /*close=*/true);
      }
    }
    if (IsInfer()) {
      if (req.method() != http::verb::post) return SendMethodNotAllowed("POST");
      return ReadBody();
    }
    // Every other endpoint takes no body: a body is not read, and the connection closes after.
    Send(Route(), has_body_);
  }

  bool IsInfer() const {
    return path_.size() >= 4 && path_[0] == "v2" && path_[1] == "models" &&
           path_.back() == "infer" &&
           (path_.size() == 4 || (path_.size() == 6 && path_[3] == "versions"));
  }

  // GET endpoints: health, metadata, readiness, configuration, statistics.
  Response Route() {
    const auto& req = parser_->get();
    const bool get = req.method() == http::verb::get || req.method() == http::verb::head;
    auto not_found = [&] {
      return ErrorResponse(absl::NotFoundError(absl::StrFormat(
          "no such endpoint: %s %s (see the protocol's /v2 paths)",
          std::string(req.method_string()), std::string(req.target()))));
    };
    if (path_.size() == 1 && path_[0] == "metrics" && options().metrics_text) {
      if (!get) return MethodNotAllowed("GET");
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain; version=0.0.4");
      res.body() = options().metrics_text();
      return res;
    }
    if (path_.empty() || path_[0] != "v2") return not_found();
    if (path_.size() == 3 && path_[1] == "health" && (path_[2] == "live" || path_[2] == "ready")) {
      if (!get) return MethodNotAllowed("GET");
      const bool ok = path_[2] == "live" || service_->ready();
      return JsonResponse(ok ? 200 : 503, "");
    }
    if (!get) return MethodNotAllowed("GET");
    if (path_.size() == 1) {
      const auto m = ServerMetadataOf(options().version);
      return JsonResponse(200, JsonText(json{{"name", m.name()},
                                             {"version", m.version()},
                                             {"extensions", m.extensions()}}));
    }
    if (path_[1] != "models" || path_.size() < 3) return not_found();
    if (path_.size() == 3 && path_[2] == "stats") {
      return JsonResponse(200, JsonText(StatisticsJson(*StatisticsOf(*service_, "", ""))));
    }
    const std::string& model = path_[2];
    std::string version;
    size_t next = 3;
    if (path_.size() >= 5 && path_[3] == "versions") {
      version = path_[4];
      next = 5;
    }
    if (path_.size() > next + 1) return not_found();
    const std::string action = path_.size() == next ? "" : path_[next];
    if (action.empty()) {
      auto r = ModelMetadataOf(model, version);
      return r.ok() ? JsonResponse(200, JsonText(MetadataJson(*r))) : ErrorResponse(r.status());
    }
    if (action == "ready") {
      if (absl::Status st = CheckModel(model, version); !st.ok()) return ErrorResponse(st);
      return JsonResponse(service_->ready() ? 200 : 503, "");
    }
    if (action == "config") {
      auto r = ModelConfigOf(model, version, options().max_batch_rows);
      return r.ok() ? JsonResponse(200, JsonText(ConfigJson(*r))) : ErrorResponse(r.status());
    }
    if (action == "stats") {
      auto r = StatisticsOf(*service_, model, version);
      return r.ok() ? JsonResponse(200, JsonText(StatisticsJson(*r))) : ErrorResponse(r.status());
    }
    return not_found();
  }

  // An inference request's body: its size checked and charged before it is read.
  void ReadBody() {
    Metrics& metrics = service_->metrics();
    const auto& req = parser_->get();
    if (service_->shutting_down()) {
      return Refuse(absl::UnavailableError("the server is shutting down"), Reject::kShuttingDown);
    }
    if (const auto it = req.find(http::field::content_encoding);
        it != req.end() && it->value() != "identity") {
      return Refuse(absl::InvalidArgumentError(absl::StrFormat(
                        "Content-Encoding %s is not supported: send the body uncompressed",
                        std::string(it->value()))),
                    Reject::kInvalid);
    }
    if (!parser_->content_length()) {
      // A chunked body's size is not known before it is read: refuse it rather than read blind.
      metrics.rejected(Reject::kInvalid).Increment();
      Response res = ErrorResponse(
          411, "send the request with a Content-Length (chunked bodies are not read)");
      return Send(std::move(res), /*close=*/true);
    }
    const uint64_t length = *parser_->content_length();
    if (length > static_cast<uint64_t>(options().max_message_bytes)) {
      metrics.rejected(Reject::kInvalid).Increment();
      Done(grpc::StatusCode::RESOURCE_EXHAUSTED);
      Response res = ErrorResponse(
          413, absl::StrFormat("the request body is %d bytes, over the server's limit of %d "
                               "(--max_message_bytes)",
                               length, options().max_message_bytes));
      return Send(std::move(res), /*close=*/true);
    }
    body_length_ = length;
    parser_->body_limit(length);
    body_start_ = SteadyClock::now();
    // A client that waits for leave to send its body (curl does for large ones) sends nothing
    // before it: its memory is found first.
    if (const auto it = req.find(http::field::expect);
        it != req.end() && beast::iequals(it->value(), "100-continue")) {
      expect_continue_ = true;
      return Reserve();
    }
    if (parser_->is_done() || buffer_.size() > 0) return Reserve();
    // The body is given its memory once its first bytes arrive (at most one read, 64 KiB, is
    // taken before): a client that sends only a header holds none.
    beast::get_lowest_layer(stream_).expires_at(body_start_ + options().body_timeout);
    http::async_read_some(stream_, buffer_, *parser_,
                          [self = this->shared_from_this()](beast::error_code ec, size_t) {
                            self->Step([&] {
                              if (ec) return self->OnBody(ec);
                              self->Reserve();
                            });
                          });
  }

  // Takes the body's memory (twice its size: it and its parsed form) from the budget, in turn
  // with other waiting bodies; the body stays unread meanwhile, for at most budget_wait.
  void Reserve() {
    const int64_t bytes = 2 * static_cast<int64_t>(body_length_);
    MemoryBudget& budget = service_->budget();
    if (bytes > budget.limit()) {  // can never fit
      service_->metrics().rejected(Reject::kMemory).Increment();
      Done(grpc::StatusCode::RESOURCE_EXHAUSTED);
      return RefuseBody(ErrorResponse(absl::ResourceExhaustedError(absl::StrFormat(
          "the request needs %d bytes, more than the server's whole memory for requests in "
          "flight (%d bytes, --max_inflight_bytes): send fewer rows per request",
          bytes, budget.limit()))));
    }
    waiting_budget_ = true;
    budget_ticket_ = budget.Wait(
        bytes, [weak = this->weak_from_this(), gate = front_->gate](MemoryBudget::Lease lease) {
          // On the thread that returned the bytes (or this one): back to the strand, unless
          // the session or the front end is gone (the lease then goes back with this lambda).
          auto self = weak.lock();
          absl::MutexLock lock(&gate->mu);
          if (self == nullptr || !gate->open) return;
          net::post(self->stream_.get_executor(),
                    [self, lease = std::make_shared<MemoryBudget::Lease>(std::move(lease))] {
                      self->Step([&] { self->OnReserved(std::move(*lease)); });
                    });
        });
    if (!budget_ticket_.queued()) return;  // granted at once: OnReserved is posted
    budget_timer_.expires_after(options().budget_wait);
    budget_timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (!ec) self->Step([&] { self->OnBudgetWaitOver(); });
    });
  }

  void OnReserved(MemoryBudget::Lease lease) {
    if (!waiting_budget_) return;  // the wait already ended: the lease goes back
    waiting_budget_ = false;
    budget_timer_.cancel();
    body_lease_ = std::move(lease);
    body_start_ = SteadyClock::now();  // the transfer's clock starts once the body may flow
    if (!expect_continue_) return ReadBodyBytes();
    continue_ = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
    beast::get_lowest_layer(stream_).expires_after(options().write_timeout);
    http::async_write(stream_, *continue_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                        self->Step([&] {
                          self->continue_.reset();
                          if (ec) return self->OnBody(ec);
                          self->body_start_ = SteadyClock::now();
                          self->ReadBodyBytes();
                        });
                      });
  }

  // The budget could not cover the body in time: 429 with Retry-After.
  void OnBudgetWaitOver() {
    if (!waiting_budget_ || !budget_ticket_.Cancel()) return;  // granted meanwhile
    waiting_budget_ = false;
    service_->metrics().rejected(Reject::kMemory).Increment();
    Done(grpc::StatusCode::RESOURCE_EXHAUSTED);
    const auto waited = std::chrono::duration_cast<std::chrono::seconds>(options().budget_wait);
    Response res = ErrorResponse(absl::ResourceExhaustedError(absl::StrFormat(
        "the server's memory for requests in flight (--max_inflight_bytes) could not hold this "
        "request's %d bytes within %d s: retry later, or send fewer rows per request",
        2 * body_length_, waited.count())));
    res.set(http::field::retry_after, "1");
    RefuseBody(std::move(res));
  }

  // Answers `res` instead of reading the body into memory: the body is read and dropped first,
  // so that a client still sending it sees the answer and the connection stays usable. A client
  // that waits for 100-continue has sent none: the answer goes at once, and the connection
  // closes after it.
  void RefuseBody(Response res) {
    if (expect_continue_) return Send(std::move(res), /*close=*/true);
    refusal_ = std::move(res);
    discarding_ = true;
    body_start_ = SteadyClock::now();
    ReadBodyBytes();
  }

  // Reads the body as it arrives, each read due by the transfer deadline (a stalled or
  // trickling client is cut off); a body being discarded is dropped as it is read.
  void ReadBodyBytes() {
    if (parser_->is_done()) return OnBody({});
    auto& body = parser_->get().body();
    if (discarding_) {
      discarded_ += body.size();
      body.clear();
      body.shrink_to_fit();
    }
    beast::get_lowest_layer(stream_).expires_at(
        TransferDeadline(body_start_, options().body_timeout, discarded_ + body.size(),
                         options().min_bytes_per_second));
    http::async_read_some(stream_, buffer_, *parser_,
                          [self = this->shared_from_this()](beast::error_code ec, size_t) {
                            self->Step([&] {
                              if (ec) return self->OnBody(ec);
                              self->ReadBodyBytes();
                            });
                          });
  }

  void OnBody(beast::error_code ec) {
    if (ec) {  // the client went away or stalled past its deadline: nobody to answer
      body_lease_.Reset();
      if (!discarding_) {
        service_->metrics().rejected(Reject::kCancelled).Increment();
        Done(grpc::StatusCode::CANCELLED);
      }
      return Close();
    }
    if (discarding_) {
      discarding_ = false;
      parser_->release();
      return Send(*std::exchange(refusal_, std::nullopt), /*close=*/false);
    }
    Request req = parser_->release();
    keep_alive_ = req.keep_alive();
    std::optional<size_t> header_length;
    if (const auto it = req.find("Inference-Header-Content-Length"); it != req.end()) {
      uint64_t n;
      if (!absl::SimpleAtoi(absl::string_view(it->value().data(), it->value().size()), &n)) {
        return Refuse(absl::InvalidArgumentError(absl::StrFormat(
                          "Inference-Header-Content-Length '%s' is not a number of bytes",
                          std::string(it->value()))),
                      Reject::kInvalid);
      }
      header_length = static_cast<size_t>(std::min<uint64_t>(n, SIZE_MAX));
    }
    const std::string version = path_.size() == 6 ? path_[4] : "";
    if (absl::Status st = CheckModel(path_[2], version); !st.ok()) {
      body_lease_.Reset();
      return Refuse(st, Reject::kInvalid, /*close=*/false);
    }
    FreeMessage(&request_);
    format_ = HttpOutputFormat();
    const bool large = header_length.value_or(req.body().size()) > kInlineCodecBytes;
    OffTheIoThreadIf(
        large,
        [this, req = std::move(req), header_length, version]() mutable {
          absl::Status parsed =
              ParseInferRequest(req.body(), header_length, path_[2], version, &request_, &format_);
          req = Request();  // the body, freed where it was parsed
          return parsed;
        },
        [self = this->shared_from_this()](absl::Status parsed) { self->OnParsed(parsed); });
  }

  // Runs `work` and hands its result to `then`: here and now, or, when `large`, on the codec
  // pool, with `then` posted back to this session's strand. Nothing else touches the session's
  // request or response meanwhile: it reads nothing more until it has answered.
  template <typename Work, typename Then>
  void OffTheIoThreadIf(bool large, Work work, Then then) {
    if (!large) return then(work());
    net::post(front_->codec_pool, [self = this->shared_from_this(), work = std::move(work),
                                   then = std::move(then)]() mutable {
      std::optional<decltype(work())> result;
      std::string failure;
      try {
        result.emplace(work());
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "an exception that is not a std::exception";
      }
      net::post(self->stream_.get_executor(), [self, then = std::move(then),
                                               result = std::move(result),
                                               failure = std::move(failure)]() mutable {
        if (!result) return self->Fail(failure);
        self->Step([&] { then(*std::move(result)); });
      });
    });
  }

  // Runs one step of the session on its strand. An exception must not leave an I/O thread (it
  // would end the process): it fails this request with 500 and closes the connection, and the
  // server goes on.
  template <typename F>
  void Step(F&& step) {
    try {
      std::forward<F>(step)();
    } catch (const std::exception& e) {
      Fail(e.what());
    } catch (...) {
      Fail("an exception that is not a std::exception");
    }
  }

  void Fail(std::string_view what) {
    LogHandlerFailure(what);
    failed_ = true;
    if (computing_ || writing_ != nullptr || continue_ != nullptr) {
      // A worker still owns the request, or a write is under way: the connection just closes;
      // OnResult or OnWritten ends the call.
      return Close();
    }
    FreeMessage(&request_);
    body_lease_.Reset();
    if (IsInfer() && !in_call_) Done(grpc::StatusCode::INTERNAL);
    Send(ErrorResponse(500, "the server could not handle this request (an internal error, "
                            "logged by the server)"),
         /*close=*/true);
  }

  void OnParsed(const absl::Status& parsed) {
    // The body is no longer needed, nor its charge: OipInference::Run charges the parsed
    // request (and what the job adds to it) in its place.
    body_lease_.Reset();
    if (!parsed.ok()) {
      FreeMessage(&request_);
      return Refuse(parsed, Reject::kInvalid, /*close=*/false);
    }
    accepted_ = service_->CallBegins();
    in_call_ = true;
    computing_ = true;
    FreeMessage(&response_);
    auto gone = std::make_shared<std::atomic<bool>>(false);
    inference_.Run(CallControl{.cancelled = [gone] { return gone->load(); }}, &request_,
                   &response_, [self = this->shared_from_this()](absl::Status st) {
                     // From a worker (or this strand, when refused): back to the strand.
                     net::post(self->stream_.get_executor(),
                               [self, st = std::move(st)]() mutable {
                                 self->Step([&] { self->OnResult(st); });
                               });
                   });
    WatchForDisconnect(std::move(gone));
  }

  // While a request is computed its connection has nothing to read, so a readable socket means
  // the client closed it (end of stream, or a reset) or sent more (a pipelined request). A
  // close cancels the request: the batcher drops it if it is still queued, as it drops a gRPC
  // call its client cancelled. A TLS client's close_notify is data: over TLS only an abrupt
  // close is seen.
  void WatchForDisconnect(std::shared_ptr<std::atomic<bool>> gone) {
    beast::get_lowest_layer(stream_).socket().async_wait(
        tcp::socket::wait_read,
        [self = this->shared_from_this(), gone = std::move(gone)](beast::error_code ec) mutable {
          if (ec || !self->computing_) return;  // the result came first (the wait cancelled)
          auto& socket = beast::get_lowest_layer(self->stream_).socket();
          char byte;
          beast::error_code peek, ignored;
          socket.non_blocking(true, ignored);  // never block this I/O thread on a peek
          const size_t n = socket.receive(net::buffer(&byte, 1), tcp::socket::message_peek, peek);
          socket.non_blocking(false, ignored);
          if (peek == net::error::would_block || peek == net::error::try_again) {
            return self->WatchForDisconnect(std::move(gone));  // woken for nothing: again
          }
          if (!peek && n > 0) return;  // the client sent more: it is there
          gone->store(true);
        });
  }

  void OnResult(absl::Status status) {
    computing_ = false;
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().cancel(ignored);  // the disconnect watch
    FreeMessage(&request_);
    if (failed_) {  // the connection is closing: nobody to answer
      FreeMessage(&response_);
      inference_.Release();
      in_call_ = false;
      service_->CallEnds(accepted_);
      return;
    }
    if (!status.ok()) return SendError(status, /*close=*/false);
    // The text is held beside the response until it is sent: at most ~16 characters a value.
    int64_t bound = 4096;
    for (int i = 0; i < response_.outputs_size(); ++i) {
      const auto raw = static_cast<int64_t>(response_.raw_output_contents(i).size());
      bound += format_.IsBinary(response_.outputs(i).name()) ? raw : 4 * raw + 64;
    }
    if (!inference_.GrowLease(bound)) {
      service_->metrics().rejected(Reject::kMemory).Increment();
      return SendError(absl::ResourceExhaustedError(
                           "the server's memory for requests in flight cannot hold this "
                           "response as JSON now: ask for its outputs as binary data "
                           "(parameters.binary_data) or retry later"),
                       /*close=*/false);
    }
    OffTheIoThreadIf(
        bound - 4096 > static_cast<int64_t>(kInlineCodecBytes),
        [this] {
          size_t json_length = 0;
          std::string body = FormatInferResponse(response_, format_, &json_length);
          FreeMessage(&response_);
          return std::make_pair(std::move(body), json_length);
        },
        [self = this->shared_from_this()](std::pair<std::string, size_t> text) {
          self->SendResult(std::move(text.first), text.second);
        });
  }

  void SendResult(std::string body, size_t json_length) {
    const bool binary = json_length < body.size();
    Response res{http::status::ok, 11};
    res.set(http::field::content_type, binary ? "application/octet-stream" : "application/json");
    if (binary) res.set("Inference-Header-Content-Length", std::to_string(json_length));
    res.body() = std::move(body);
    Send(std::move(res), /*close=*/false);
  }

  // Refusals of an inference request before OipInference has it, counted like its own.
  void Refuse(const absl::Status& st, Reject reason, bool close = true) {
    service_->metrics().rejected(reason).Increment();
    Done(static_cast<grpc::StatusCode>(st.code()));
    SendError(st, close);
  }

  void Done(grpc::StatusCode code) {
    service_->metrics().RequestDone(
        Method::kModelInferHttp, code,
        std::chrono::duration<double>(service_->clock().Now() - start_).count());
  }

  static Response JsonResponse(int status, std::string body) {
    Response res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, "application/json");
    res.body() = std::move(body);
    return res;
  }

  // {"error": message}. Messages may quote the request (its path, a header, a JSON string):
  // JsonText writes bytes that are not UTF-8 as U+FFFD instead of throwing.
  static Response ErrorResponse(int status, const std::string& message) {
    return JsonResponse(status, JsonText(json{{"error", message}}));
  }

  static Response ErrorResponse(const absl::Status& st) {
    return ErrorResponse(HttpStatus(st.code()), std::string(st.message()));
  }

  static Response MethodNotAllowed(const char* allowed) {
    Response res =
        ErrorResponse(405, absl::StrCat("this method is not allowed here: use ", allowed));
    res.set(http::field::allow, allowed);
    return res;
  }

  void SendMethodNotAllowed(const char* allowed) { Send(MethodNotAllowed(allowed), has_body_); }
  void SendError(const absl::Status& st, bool close) { Send(ErrorResponse(st), close); }

  // Writes `res`; then reads the next request, or closes when `close`, the client asked to, or
  // the server is shutting down.
  void Send(Response res, bool close) {
    const bool keep = !close && keep_alive_ && !reserve_ && !front_->stopping.load();
    res.keep_alive(keep);
    res.set(http::field::server, "zlpr-server");
    res.prepare_payload();
    if (head_) {
      // The answer to HEAD is GET's header, its Content-Length included, without the body.
      return Write(std::make_shared<http::response<http::empty_body>>(std::move(res.base())),
                   keep);
    }
    Write(std::make_shared<Response>(std::move(res)), keep);
  }

  // Writes `message` a piece at a time, each due by the transfer deadline: a client that stops
  // reading is cut off, and what its request held goes back.
  template <typename Message>
  void Write(std::shared_ptr<Message> message, bool keep) {
    writing_ = message;
    written_ = 0;
    write_start_ = SteadyClock::now();
    WriteSome(std::move(message),
              std::make_shared<http::serializer<false, typename Message::body_type>>(*message),
              keep);
  }

  template <typename Message, typename Serializer>
  void WriteSome(std::shared_ptr<Message> message, std::shared_ptr<Serializer> serializer,
                 bool keep) {
    beast::get_lowest_layer(stream_).expires_at(TransferDeadline(
        write_start_, options().write_timeout, written_, options().min_bytes_per_second));
    Serializer& sr = *serializer;
    http::async_write_some(
        stream_, sr,
        [self = this->shared_from_this(), message = std::move(message),
         serializer = std::move(serializer), keep](beast::error_code ec, size_t n) mutable {
          self->written_ += n;
          if (ec || serializer->is_done()) return self->OnWritten(ec, keep);
          self->WriteSome(std::move(message), std::move(serializer), keep);
        });
  }

  void OnWritten(beast::error_code ec, bool keep) {
    writing_.reset();
    inference_.Release();
    if (in_call_) {
      in_call_ = false;
      service_->CallEnds(accepted_);
    }
    if (ec || !keep) return Close();
    keep_alive_ = true;
    Read();
  }

  void Close() {
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  HttpFrontEnd::Impl* const front_;
  ZlprServiceImpl* const service_;
  Stream stream_;
  net::steady_timer budget_timer_;  // the end of a body's wait for memory
  const bool reserve_;              // over --http_max_connections: health checks only
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::vector<std::string> path_;
  bool has_body_ = false;
  bool keep_alive_ = true;
  SteadyTime start_{};
  // The body being read: its declared length, when its transfer began, its place in the memory
  // budget's queue and the memory it was given.
  uint64_t body_length_ = 0;
  SteadyClock::time_point body_start_{};
  MemoryBudget::Ticket budget_ticket_;
  bool waiting_budget_ = false;
  bool expect_continue_ = false;
  bool discarding_ = false;  // refused for memory: read and dropped, then refusal_ is sent
  uint64_t discarded_ = 0;
  std::optional<Response> refusal_;
  // The request being computed (alive until its response is written).
  MemoryBudget::Lease body_lease_;
  inference::ModelInferRequest request_;
  ModelInferResponse response_;
  HttpOutputFormat format_;
  OipInference inference_;
  bool in_call_ = false;
  bool computing_ = false;  // from Run to OnResult: the disconnect watch is on
  bool failed_ = false;     // a step threw: the connection is closing
  bool head_ = false;       // the request is a HEAD: its answer has no body
  bool accepted_ = false;
  std::shared_ptr<void> writing_;  // the response being written
  SteadyClock::time_point write_start_{};
  uint64_t written_ = 0;
  std::shared_ptr<http::response<http::empty_body>> continue_;
};

}  // namespace

void HttpFrontEnd::Impl::Accept() {
  acceptor.async_accept(
      net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
        if (ec == net::error::operation_aborted || stopping.load()) return;
        if (!ec) {
          // Over the connection limit and its reserve for health checks: closed at once (the
          // client sees a reset and retries). In the reserve: health checks only (Session).
          const int open = connections.fetch_add(1);
          if (open >= options.max_connections + options.reserved_connections) {
            connections.fetch_sub(1);
            beast::error_code ignored;
            socket.close(ignored);
          } else {
            const bool reserve = open >= options.max_connections;
            // Small responses go out at once, not held back for a delayed ACK.
            beast::error_code ignored;
            socket.set_option(tcp::no_delay(true), ignored);
            beast::tcp_stream stream(std::move(socket));
            if (tls) {
              std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
                  this, beast::ssl_stream<beast::tcp_stream>(std::move(stream), *tls), reserve)
                  ->Start();
            } else {
              std::make_shared<Session<beast::tcp_stream>>(this, std::move(stream), reserve)
                  ->Start();
            }
          }
        }
        Accept();
      });
}

HttpFrontEnd::HttpFrontEnd(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<HttpFrontEnd>> HttpFrontEnd::Start(const HttpOptions& options,
                                                                  ZlprServiceImpl* service) {
  // Few I/O threads by default: they only parse and format, and more contend with the compute
  // threads (measured: 1 thread answered a 1 x 1000 Predict at concurrency 1 in 316 µs, 2 in
  // 430 µs on 2 cores). As many codec threads, for the large JSON texts.
  const int threads =
      options.threads != 0
          ? options.threads
          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 4);
  auto impl = std::make_unique<Impl>(options, service, threads);
  if (!options.tls_cert_file.empty()) {
    try {
      ssl::context& ctx = impl->tls.emplace(ssl::context::tls_server);
      ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                      ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
      ctx.use_certificate_chain_file(options.tls_cert_file);
      ctx.use_private_key_file(options.tls_key_file, ssl::context::pem);
      if (!options.tls_client_ca_file.empty()) {
        ctx.load_verify_file(options.tls_client_ca_file);
        ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
      }
    } catch (const boost::system::system_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls_cert/--tls_key/--tls_client_ca for the HTTP port: ", e.what()));
    }
  }
  // HOST:PORT or [V6]:PORT; the host may be a name.
  const size_t colon = options.address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address=", options.address, ": use HOST:PORT"));
  }
  std::string host = options.address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = options.address.substr(colon + 1);
  try {
    tcp::resolver resolver(impl->ioc);
    const auto endpoints = resolver.resolve(host, port, tcp::resolver::passive);
    const tcp::endpoint endpoint = endpoints.begin()->endpoint();
    impl->acceptor.open(endpoint.protocol());
    impl->acceptor.set_option(net::socket_base::reuse_address(true));
    impl->acceptor.bind(endpoint);
    impl->acceptor.listen(net::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    return absl::UnavailableError(
        absl::StrCat("--http_address=", options.address, ": could not listen there (", e.what(),
                     ")"));
  }
  std::unique_ptr<HttpFrontEnd> front(new HttpFrontEnd(std::move(impl)));
  Impl* i = front->impl_.get();
  front->port_ = i->acceptor.local_endpoint().port();
  i->Accept();
  for (int t = 0; t < threads; ++t) {
    i->threads.emplace_back([i] {
      // Sessions catch their own exceptions (Session::Step); this is the last line, for a
      // handler outside a session: the thread logs it and goes on serving.
      for (;;) {
        try {
          i->ioc.run();
          return;
        } catch (const std::exception& e) {
          LogHandlerFailure(e.what());
        } catch (...) {
          LogHandlerFailure("an exception that is not a std::exception");
        }
      }
    });
  }
  return front;
}

void HttpFrontEnd::Stop(std::chrono::milliseconds flush) {
  if (impl_ == nullptr || impl_->threads.empty()) return;
  Impl* i = impl_.get();
  i->stopping.store(true);
  {
    absl::MutexLock lock(&i->gate->mu);
    i->gate->open = false;
  }
  net::post(i->acceptor.get_executor(), [i] {
    beast::error_code ignored;
    i->acceptor.close(ignored);
  });
  // Responses being written get `flush`; then every connection is dropped with the I/O threads.
  const auto until = std::chrono::steady_clock::now() + flush;
  while (i->connections.load() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  i->ioc.stop();
  for (auto& t : i->threads) t.join();
  i->threads.clear();
  // Work still on the codec pool finishes; what it posts back is never run (the I/O threads
  // are gone) and is destroyed with the io_context.
  i->codec_pool.join();
}

HttpFrontEnd::~HttpFrontEnd() { Stop(); }

}  // namespace zlpr::server
