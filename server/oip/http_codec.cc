// The Open Inference Protocol's HTTP/REST body formats (KServe v2 REST, as Triton serves it):
// an inference request's JSON (and the binary tensor extension's bytes after it) read straight
// into the binding-free Request (request.h), a Response written as JSON (and binary outputs),
// and the JSON of metadata, configuration, statistics and errors.
#include "server/oip/http_codec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {
namespace {

using json = nlohmann::json;

// Containers nested deeper than this in a request are refused (the DOM is ours to bound).
constexpr int kMaxJsonDepth = 64;

// Every JSON text the binding writes goes through here. Messages quote the request (its path, a
// header, a string of its JSON), whose bytes need not be UTF-8: nlohmann's default dump() throws
// on those, so they are written as U+FFFD instead.
std::string JsonText(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
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

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// A JSON parameter value as a Parameter (bool, int64, uint64, double or string).
absl::StatusOr<Parameter> ToParameter(const std::string& where, const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(u);
    }
    return u;
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) return v.get<double>();
  if (v.is_string()) return v.get<std::string>();
  return Invalid(absl::StrFormat("%s must be a boolean, number or string", where));
}

// JSON numbers (as float32) to the bytes of `datatype`: FP32 as they are, UINT8 and BOOL when
// each is a whole number in range. FP16 and BF16 go as binary data.
absl::StatusOr<std::string> JsonTensorBytes(const std::string& name, DataType datatype,
                                            std::string floats) {
  if (datatype == DataType::kFp32) return floats;
  if (datatype == DataType::kUint8 || datatype == DataType::kBool) {
    const size_t n = floats.size() / sizeof(float);
    const int max = datatype == DataType::kBool ? 1 : 255;
    std::string out(n, '\0');
    for (size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, floats.data() + i * sizeof v, sizeof v);
      if (!(v >= 0 && v <= static_cast<float>(max)) || v != std::floor(v)) {
        return Invalid(
            absl::StrFormat("input '%s': element %d is %g, not a whole number 0 to %d "
                            "for %s",
                            name, i, v, max, DataTypeName(datatype)));
      }
      out[i] = static_cast<char>(static_cast<int>(v));
    }
    return out;
  }
  if (datatype == DataType::kFp16 || datatype == DataType::kBf16) {
    return Invalid(absl::StrFormat(
        "input '%s': %s tensors go as binary data (parameters.binary_data_size, with the "
        "Inference-Header-Content-Length header); JSON data is read for FP32, UINT8 and BOOL",
        name, DataTypeName(datatype)));
  }
  // Not a datatype any input takes: say what is, rather than point at the binary extension,
  // which would refuse it too.
  return Invalid(absl::StrFormat(
      "input '%s': datatype %s is not accepted: scores and labels are FP32 (JSON or binary "
      "data), FP16 or BF16 (binary data); masks UINT8 or BOOL",
      name, DataTypeName(datatype)));
}

}  // namespace

absl::Status ParseInferRequest(std::string_view body, std::optional<size_t> header_length,
                               const std::string& model, const std::string& version,
                               Request* request, OutputFormat* format) {
  const size_t json_length = header_length.value_or(body.size());
  if (json_length > body.size()) {
    return Invalid(
        absl::StrFormat("Inference-Header-Content-Length is %d, more than the %d bytes of the body",
                        json_length, body.size()));
  }
  RequestReader reader;
  const std::string_view text = body.substr(0, json_length);
  if (!json::sax_parse(text.begin(), text.end(), &reader)) {
    return Invalid(reader.error.empty() ? "the request is not valid JSON" : reader.error);
  }
  const json& root = reader.root;
  if (!root.is_object()) return Invalid("the request must be a JSON object");
  request->model = model;
  request->version = version;
  if (auto it = root.find("id"); it != root.end()) {
    if (!it->is_string()) return Invalid("request: 'id' must be a string");
    request->id = it->get<std::string>();
  }
  if (auto it = root.find("parameters"); it != root.end()) {
    if (!it->is_object()) return Invalid("request: 'parameters' must be an object");
    for (const auto& [key, value] : it->items()) {
      if (key == "binary_data_output") {
        if (!value.is_boolean()) return Invalid("parameter 'binary_data_output' must be a boolean");
        format->all_binary = value.get<bool>();
        continue;
      }
      ZLPR_ASSIGN_OR_RETURN(request->parameters[key],
                            ToParameter(absl::StrCat("parameter '", key, "'"), value));
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
    Tensor& t = request->inputs.emplace_back();
    const auto name = in.find("name");
    if (name == in.end() || !name->is_string()) return Invalid(where + ": 'name' must be a string");
    t.name = name->get<std::string>();
    const std::string tensor = absl::StrFormat("input '%s'", t.name);
    const auto datatype = in.find("datatype");
    if (datatype == in.end() || !datatype->is_string()) {
      return Invalid(tensor + ": 'datatype' must be a string");
    }
    const std::optional<DataType> type = ParseDataType(datatype->get<std::string>());
    if (!type) {
      return Invalid(
          absl::StrFormat("%s: unknown datatype '%s'", tensor, datatype->get<std::string>()));
    }
    t.datatype = *type;
    const uint64_t element = static_cast<uint64_t>(ElementSize(t.datatype));
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
      t.shape.push_back(d.get<int64_t>());
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
        ZLPR_ASSIGN_OR_RETURN(
            t.parameters[key],
            ToParameter(absl::StrFormat("%s: parameter '%s'", tensor, key), value));
      }
    }
    const bool has_data = i < reader.data.size() && reader.data[i].has_value();
    if (!has_data && !binary_size && InSharedMemory(t.parameters)) {
      continue;  // its bytes come from the region (oip::Inference)
    }
    if (has_data == binary_size.has_value()) {
      return Invalid(tensor + (has_data ? ": give 'data' or parameters.binary_data_size, not both"
                                        : ": give its 'data' or parameters.binary_data_size"));
    }
    if (binary_size) {
      if (*binary_size > binary.size()) {
        return Invalid(absl::StrFormat(
            "%s: binary_data_size is %d bytes, but only %d bytes of binary data are left", tensor,
            *binary_size, binary.size()));
      }
      if (element > 0 && *binary_size != elements * element) {
        return Invalid(
            absl::StrFormat("%s: %d bytes of binary data for shape %s of %s, "
                            "expected %d",
                            tensor, *binary_size, ShapeString(t.shape), DataTypeName(t.datatype),
                            elements * element));
      }
      t.data = binary.substr(0, *binary_size);
      binary.remove_prefix(*binary_size);
      // Used in place when it is aligned to its elements (the kernels load them as such);
      // else copied once, into storage that is.
      if (element > 1 && reinterpret_cast<uintptr_t>(t.data.data()) % element != 0) {
        t.data = request->owned.emplace_back(t.data);
      }
      continue;
    }
    std::string& floats = *reader.data[i];
    const uint64_t values = floats.size() / sizeof(float);
    if (values != elements) {
      return Invalid(absl::StrFormat("%s: %d values in 'data' for shape %s (%d elements)", tensor,
                                     values, ShapeString(t.shape), elements));
    }
    ZLPR_ASSIGN_OR_RETURN(std::string bytes,
                          JsonTensorBytes(t.name, t.datatype, std::move(floats)));
    t.data = request->owned.emplace_back(std::move(bytes));
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
      RequestedOutput& o = request->outputs.emplace_back();
      o.name = name->get<std::string>();
      if (auto p = out.find("parameters"); p != out.end()) {
        if (!p->is_object()) return Invalid(where + ": 'parameters' must be an object");
        for (const auto& [key, value] : p->items()) {
          if (key == "binary_data") {
            if (!value.is_boolean()) {
              return Invalid(absl::StrFormat("output '%s': binary_data must be a boolean", o.name));
            }
            (value.get<bool>() ? format->binary : format->json).insert(o.name);
            continue;
          }
          ZLPR_ASSIGN_OR_RETURN(
              o.parameters[key],
              ToParameter(absl::StrFormat("output '%s': parameter '%s'", o.name, key), value));
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

template <typename Shape>
json ShapeJson(const Shape& shape) {
  json out = json::array();
  for (int64_t d : shape) out.push_back(d);
  return out;
}

json ParameterJson(const Parameter& p) {
  return std::visit([](const auto& v) { return json(v); }, p);
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
void AppendData(DataType datatype, const std::string& raw, std::string* out) {
  out->push_back('[');
  if (datatype == DataType::kBytes) {
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
    const size_t size = datatype == DataType::kInt32 || datatype == DataType::kFp32 ? 4 : 1;
    for (size_t i = 0; i + size <= raw.size(); i += size) {
      if (i > 0) out->push_back(',');
      if (datatype == DataType::kFp32) {
        float v;
        std::memcpy(&v, raw.data() + i, 4);
        AppendFloat(v, out);
      } else if (datatype == DataType::kInt32) {
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

std::string FormatInferResponse(const Response& response, const OutputFormat& format,
                                size_t* json_length) {
  std::string binary;
  json head = json::object();
  head["model_name"] = response.model;
  head["model_version"] = response.version;
  if (!response.id.empty()) head["id"] = response.id;
  if (!response.parameters.empty()) {
    json params = json::object();
    for (const auto& [key, value] : response.parameters) params[key] = ParameterJson(value);
    head["parameters"] = std::move(params);
  }
  // The envelope comes from nlohmann; the outputs' data arrays are written straight into the
  // text (a DOM node per value would cost several times the values).
  std::string text = JsonText(head);
  text.pop_back();  // the closing brace
  text.append(",\"outputs\":[");
  for (size_t i = 0; i < response.outputs.size(); ++i) {
    const Output& o = response.outputs[i];
    json meta = {
        {"name", o.name}, {"datatype", DataTypeName(o.datatype)}, {"shape", ShapeJson(o.shape)}};
    const bool as_binary = format.IsBinary(o.name) && !o.in_shared_memory;
    if (o.in_shared_memory) {  // its parameters say where its bytes are; no data here
      json params = json::object();
      for (const auto& [key, value] : o.parameters) params[key] = ParameterJson(value);
      meta["parameters"] = std::move(params);
    }
    if (as_binary) {
      meta["parameters"] = {{"binary_data_size", o.data.size()}};
      binary.append(o.data);
    }
    if (i > 0) text.push_back(',');
    std::string piece = JsonText(meta);
    if (!as_binary && !o.in_shared_memory) {
      piece.pop_back();
      piece.append(",\"data\":");
      AppendData(o.datatype, o.data, &piece);
      piece.push_back('}');
    }
    text.append(piece);
  }
  text.append("]}");
  *json_length = text.size();
  text.append(binary);
  return text;
}

std::string SystemSharedMemoryStatusText(const inference::SystemSharedMemoryStatusResponse& r) {
  json regions = json::array();
  std::vector<std::string> names;
  for (const auto& [name, region] : r.regions()) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const auto& region = r.regions().at(name);
    regions.push_back({{"name", region.name()},
                       {"key", region.key()},
                       {"offset", region.offset()},
                       {"byte_size", region.byte_size()}});
  }
  return JsonText(regions);
}

absl::StatusOr<SharedMemoryRegistration> ParseSharedMemoryRegistration(std::string_view body) {
  const json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Invalid(
        R"(the body must be a JSON object {"key": ..., "offset": ..., "byte_size": ...})");
  }
  SharedMemoryRegistration out;
  for (const auto& [key, value] : j.items()) {
    if (key == "key") {
      if (!value.is_string())
        return Invalid("'key' must be a string (a shared-memory object's name)");
      out.key = value.get<std::string>();
    } else if (key == "offset" || key == "byte_size") {
      if (!value.is_number_unsigned()) {
        return Invalid(absl::StrFormat("'%s' must be a whole number of bytes, 0 or more", key));
      }
      (key == "offset" ? out.offset : out.byte_size) = value.get<uint64_t>();
    } else if (key != "device_id" && key != "raw_handle") {
      return Invalid(absl::StrFormat("unknown key '%s': give key, offset and byte_size", key));
    }
  }
  return out;
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
    case absl::StatusCode::kAlreadyExists:
      return 409;
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
  const auto& b = c.dynamic_batching();
  out["dynamic_batching"] = {{"max_queue_delay_microseconds", b.max_queue_delay_microseconds()},
                             {"priority_levels", b.priority_levels()},
                             {"default_priority_level", b.default_priority_level()}};
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

std::string ServerMetadataText(const inference::ServerMetadataResponse& m) {
  return JsonText(
      json{{"name", m.name()}, {"version", m.version()}, {"extensions", m.extensions()}});
}
std::string ModelMetadataText(const inference::ModelMetadataResponse& m) {
  return JsonText(MetadataJson(m));
}
std::string ModelConfigText(const inference::ModelConfig& c) { return JsonText(ConfigJson(c)); }
std::string StatisticsText(const inference::ModelStatisticsResponse& r) {
  return JsonText(StatisticsJson(r));
}
std::string ErrorText(const std::string& message) { return JsonText(json{{"error", message}}); }

}  // namespace zlpr::server::oip
