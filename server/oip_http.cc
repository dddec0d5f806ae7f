// HttpFrontEnd: the Open Inference Protocol's REST binding on CivetWeb, and its JSON codec.
#include "server/oip_http.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "civetweb.h"
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

// nlohmann's SAX events into a DOM of the request, except the numbers of each input's "data"
// (inputs[i].data, any nesting), which are appended to `data[i]` as float32 bytes.
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
    key_ = std::move(k);
    return true;
  }
  bool end_object() override { return Close(); }
  bool start_array(std::size_t) override {
    if (collecting_) {
      if (++collect_depth_ > kMaxJsonDepth) return Fail("inputs: data nested too deeply");
      return true;
    }
    // inputs[i].data: root object > "inputs" array > input object > "data".
    if (stack_.size() == 3 && key_ == "data" && opened_under_[1] == "inputs" &&
        stack_[2]->is_object()) {
      input_ = stack_[1]->size() - 1;
      if (data.size() <= input_) data.resize(input_ + 1);
      data[input_].emplace();
      (*stack_[2])["data"] = json::array();  // marks that the data was given
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
  bool Fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
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
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& top = *stack_.back();
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
    Insert(std::move(v));
    return true;
  }
  bool Open(json container) {
    if (stack_.size() >= kMaxJsonDepth) return Fail("the request is nested too deeply");
    const std::string under = stack_.empty() || stack_.back()->is_array() ? "" : key_;
    stack_.push_back(Insert(std::move(container)));
    opened_under_.push_back(under);
    return true;
  }
  bool Close() {
    stack_.pop_back();
    opened_under_.pop_back();
    return true;
  }

  std::vector<json*> stack_;
  std::vector<std::string> opened_under_;  // the key each open container is the value of
  std::string key_;
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

absl::Status CheckKeys(const std::string& where, const json& object,
                       std::initializer_list<std::string_view> keys) {
  for (const auto& [key, value] : object.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return Invalid(absl::StrFormat("%s: unknown key '%s'", where, key));
    }
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
  ZLPR_RETURN_IF_ERROR(CheckKeys("request", root, {"id", "parameters", "inputs", "outputs"}));
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
    ZLPR_RETURN_IF_ERROR(CheckKeys(where, in, {"name", "shape", "datatype", "parameters", "data"}));
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
    uint64_t elements = 1;
    for (const json& d : *shape) {
      // Each dimension below 2^31 keeps the product of a few exact in 64 bits; larger tensors
      // than the message limit are refused below anyway.
      if (!d.is_number_integer() || d.get<int64_t>() < 0 ||
          d.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Invalid(tensor + ": 'shape' must hold whole numbers 0 to 2^31 - 1");
      }
      t->add_shape(d.get<int64_t>());
      elements = std::min<uint64_t>(elements * static_cast<uint64_t>(d.get<int64_t>()),
                                    uint64_t{1} << 62);
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
      ZLPR_RETURN_IF_ERROR(CheckKeys(where, out, {"name", "parameters"}));
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
      out->append(json(raw.substr(at, n)).dump());
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
                                std::string* binary) {
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
  std::string text = head.dump();
  text.pop_back();  // the closing brace
  text.append(",\"outputs\":[");
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& o = response.outputs(i);
    const std::string& raw = response.raw_output_contents(i);
    json meta = {{"name", o.name()}, {"datatype", o.datatype()}, {"shape", json::array()}};
    for (int64_t d : o.shape()) meta["shape"].push_back(d);
    const bool as_binary = format.IsBinary(o.name());
    if (as_binary) {
      meta["parameters"] = {{"binary_data_size", raw.size()}};
      binary->append(raw);
    }
    if (i > 0) text.push_back(',');
    std::string piece = meta.dump();
    if (!as_binary) {
      piece.pop_back();
      piece.append(",\"data\":");
      AppendData(o.datatype(), raw, &piece);
      piece.push_back('}');
    }
    text.append(piece);
  }
  text.append("]}");
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

// Writes a whole response: status line, headers, body. `close` ends the connection after it
// (when the request's body was not read, so the rest of it is never parsed as a request).
void Reply(mg_connection* conn, int status, std::string_view content_type, std::string_view body,
           std::string_view extra_headers = "", bool close = false, std::string_view tail = "") {
  const std::string head = absl::StrFormat(
      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n", status,
      mg_get_response_code_text(conn, status), content_type, body.size() + tail.size(),
      extra_headers, close ? "Connection: close\r\n" : "");
  mg_write(conn, head.data(), head.size());
  if (!body.empty()) mg_write(conn, body.data(), body.size());
  if (!tail.empty()) mg_write(conn, tail.data(), tail.size());
}

void ReplyJson(mg_connection* conn, int status, const json& body) {
  Reply(conn, status, "application/json", body.dump());
}

int ReplyError(mg_connection* conn, const absl::Status& st, bool close = false,
               std::string_view extra_headers = "") {
  const int status = HttpStatus(st.code());
  Reply(conn, status, "application/json", json{{"error", std::string(st.message())}}.dump(),
        extra_headers, close);
  return status;
}

json ShapeJson(const google::protobuf::RepeatedField<int64_t>& shape) {
  json out = json::array();
  for (int64_t d : shape) out.push_back(d);
  return out;
}

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

// Rate-limits CivetWeb's own log lines (connection errors a hostile client can cause at will).
int LogCivetWeb(const mg_connection*, const char* message) {
  static absl::Mutex mu(absl::kConstInit);
  static absl::Time window_start = absl::InfinitePast();
  static int in_window = 0;
  absl::MutexLock lock(&mu);
  const absl::Time now = absl::Now();
  if (now - window_start >= absl::Seconds(10)) {
    window_start = now;
    in_window = 0;
  }
  if (++in_window <= 5) std::fprintf(stderr, "zlpr-server: http: %s\n", message);
  return 1;  // handled: CivetWeb prints nothing itself
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpFrontEnd>> HttpFrontEnd::Start(const HttpOptions& options,
                                                                  ZlprServiceImpl* service) {
  std::unique_ptr<HttpFrontEnd> s(new HttpFrontEnd(options, service));
  mg_init_library(0);
  const std::string& ports = options.address;  // "HOST:PORT"; "[::]:PORT" for IPv6
  const std::string threads = std::to_string(options.threads);
  const std::string timeout = std::to_string(options.io_timeout.count());
  std::vector<const char*> opts = {"listening_ports", ports.c_str(),
                                   "num_threads", threads.c_str(),
                                   "request_timeout_ms", timeout.c_str(),
                                   "enable_keep_alive", "yes",
                                   "keep_alive_timeout_ms", "5000",
                                   "tcp_nodelay", "1",
                                   "enable_auth_domain_check", "no"};
  opts.push_back(nullptr);
  mg_callbacks callbacks{};
  callbacks.log_message = LogCivetWeb;
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = s.get();
  init.configuration_options = opts.data();
  mg_error_data error{};
  unsigned error_code = 0;
  char error_text[256] = "";
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof error_text;
  s->ctx_ = mg_start2(&init, &error);
  if (s->ctx_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("--http_address=", options.address, ": could not listen there (",
                     error_text, ")"));
  }
  mg_set_request_handler(s->ctx_, "/", &HttpFrontEnd::Dispatch, s.get());
  mg_server_port port{};
  if (mg_get_server_ports(s->ctx_, 1, &port) >= 1) s->port_ = port.port;
  return s;
}

HttpFrontEnd::~HttpFrontEnd() { Stop(); }

void HttpFrontEnd::Stop() {
  if (ctx_ != nullptr) mg_stop(std::exchange(ctx_, nullptr));
}

int HttpFrontEnd::Dispatch(mg_connection* conn, void* self) {
  return static_cast<HttpFrontEnd*>(self)->Handle(conn);
}

int HttpFrontEnd::Handle(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string_view method = info->request_method;
  const std::vector<std::string> path =
      absl::StrSplit(info->local_uri != nullptr ? info->local_uri : "", '/', absl::SkipEmpty());
  const bool has_body = info->content_length > 0 || mg_get_header(conn, "Transfer-Encoding");
  auto not_found = [&] {
    return ReplyError(conn,
                      absl::NotFoundError(absl::StrFormat(
                          "no such endpoint: %s %s (see the protocol's /v2 paths)", method,
                          info->local_uri != nullptr ? info->local_uri : "")),
                      has_body);
  };
  if (path.empty() || path[0] != "v2") return not_found();
  auto wrong_method = [&](const char* allowed) {
    const int status = 405;
    Reply(conn, status, "application/json",
          json{{"error", absl::StrFormat("%s is not allowed here: use %s", method, allowed)}}.dump(),
          absl::StrCat("Allow: ", allowed, "\r\n"), has_body);
    return status;
  };
  // Health needs no token (probes), like gRPC's health service.
  if (path.size() == 3 && path[1] == "health" && (path[2] == "live" || path[2] == "ready")) {
    if (method != "GET" && method != "HEAD") return wrong_method("GET");
    const bool ok = path[2] == "live" || !service_->shutting_down();
    Reply(conn, ok ? 200 : 503, "application/json", "", "", has_body);
    return ok ? 200 : 503;
  }
  if (options_.tokens != nullptr) {
    const char* authorization = mg_get_header(conn, "Authorization");
    if (authorization == nullptr || !options_.tokens->Accepts(authorization)) {
      service_->metrics().rejected(Reject::kUnauthenticated).Increment();
      return ReplyError(conn,
                        absl::UnauthenticatedError(
                            authorization == nullptr
                                ? "this server needs a bearer token (authorization: Bearer ...)"
                                : "the bearer token is not valid"),
                        /*close=*/true, "WWW-Authenticate: Bearer\r\n");
    }
  }
  if (path.size() == 1) {  // GET /v2
    if (method != "GET") return wrong_method("GET");
    const auto m = ServerMetadataOf(options_.version);
    ReplyJson(conn, 200, {{"name", m.name()}, {"version", m.version()}, {"extensions", m.extensions()}});
    return 200;
  }
  if (path[1] != "models") return not_found();
  if (path.size() == 3 && path[2] == "stats") {  // all models
    if (method != "GET") return wrong_method("GET");
    auto r = StatisticsOf(*service_, "", "");
    ReplyJson(conn, 200, StatisticsJson(*r));
    return 200;
  }
  if (path.size() < 3) return not_found();
  const std::string& model = path[2];
  std::string version;
  size_t next = 3;
  if (path.size() >= 5 && path[3] == "versions") {
    version = path[4];
    next = 5;
  }
  if (path.size() > next + 1) return not_found();
  const std::string action = path.size() == next ? "" : path[next];
  if (action == "infer") {
    if (method != "POST") return wrong_method("POST");
    return Infer(conn, model, version);
  }
  if (method != "GET") return wrong_method("GET");
  if (action.empty()) {
    auto r = ModelMetadataOf(model, version);
    if (!r.ok()) return ReplyError(conn, r.status(), has_body);
    ReplyJson(conn, 200, MetadataJson(*r));
    return 200;
  }
  if (action == "ready") {
    if (absl::Status st = CheckModel(model, version); !st.ok()) {
      return ReplyError(conn, st, has_body);
    }
    const bool ready = !service_->shutting_down();
    Reply(conn, ready ? 200 : 503, "application/json", "", "", has_body);
    return ready ? 200 : 503;
  }
  if (action == "config") {
    auto r = ModelConfigOf(model, version, options_.max_batch_rows);
    if (!r.ok()) return ReplyError(conn, r.status(), has_body);
    ReplyJson(conn, 200, ConfigJson(*r));
    return 200;
  }
  if (action == "stats") {
    auto r = StatisticsOf(*service_, model, version);
    if (!r.ok()) return ReplyError(conn, r.status(), has_body);
    ReplyJson(conn, 200, StatisticsJson(*r));
    return 200;
  }
  return not_found();
}

int HttpFrontEnd::Infer(mg_connection* conn, const std::string& model, const std::string& version) {
  const mg_request_info* info = mg_get_request_info(conn);
  const SteadyTime start = service_->clock().Now();
  Metrics& metrics = service_->metrics();
  // Refusals before the request reaches OipInference, counted like its own.
  auto refuse = [&](const absl::Status& st, Reject reason, bool close) {
    metrics.rejected(reason).Increment();
    metrics.RequestDone(Method::kModelInferHttp, static_cast<grpc::StatusCode>(st.code()),
                        std::chrono::duration<double>(service_->clock().Now() - start).count());
    return ReplyError(conn, st, close);
  };
  if (service_->shutting_down()) {
    return refuse(absl::UnavailableError("the server is shutting down"), Reject::kShuttingDown,
                  true);
  }
  if (const char* encoding = mg_get_header(conn, "Content-Encoding");
      encoding != nullptr && std::string_view(encoding) != "identity") {
    return refuse(absl::InvalidArgumentError(absl::StrFormat(
                      "Content-Encoding %s is not supported: send the body uncompressed", encoding)),
                  Reject::kInvalid, true);
  }
  const long long length = info->content_length;
  if (length < 0) {
    // A chunked body's size is not known before it is read: refuse it rather than read blind.
    const int status = 411;
    metrics.rejected(Reject::kInvalid).Increment();
    Reply(conn, status, "application/json",
          json{{"error", "send the request with a Content-Length (chunked bodies are not read)"}}
              .dump(),
          "", true);
    return status;
  }
  if (length > options_.max_message_bytes) {
    const int status = 413;
    metrics.rejected(Reject::kInvalid).Increment();
    metrics.RequestDone(Method::kModelInferHttp, grpc::StatusCode::RESOURCE_EXHAUSTED, 0);
    Reply(conn, status, "application/json",
          json{{"error", absl::StrFormat("the request body is %d bytes, over the server's limit "
                                         "of %d (--max_message_bytes)",
                                         length, options_.max_message_bytes)}}
              .dump(),
          "", true);
    return status;
  }
  std::optional<size_t> header_length;
  if (const char* h = mg_get_header(conn, "Inference-Header-Content-Length"); h != nullptr) {
    uint64_t n;
    if (!absl::SimpleAtoi(h, &n)) {
      return refuse(absl::InvalidArgumentError(absl::StrFormat(
                        "Inference-Header-Content-Length '%s' is not a number of bytes", h)),
                    Reject::kInvalid, true);
    }
    header_length = static_cast<size_t>(std::min<uint64_t>(n, std::numeric_limits<size_t>::max()));
  }
  // The body, its parsed form and the tensors' copy: charged before the body is read.
  MemoryBudget::Lease body_lease;
  if (absl::Status st = service_->Charge(length, &body_lease); !st.ok()) {
    metrics.RequestDone(Method::kModelInferHttp, grpc::StatusCode::RESOURCE_EXHAUSTED, 0);
    return ReplyError(conn, st, true);
  }
  auto body = std::make_unique<std::string>(static_cast<size_t>(length), '\0');
  for (size_t got = 0; got < body->size();) {
    const int n = mg_read(conn, body->data() + got, body->size() - got);
    if (n <= 0) {  // the client went away or stalled past the timeout: nobody to answer
      metrics.rejected(Reject::kCancelled).Increment();
      metrics.RequestDone(Method::kModelInferHttp, grpc::StatusCode::CANCELLED,
                          std::chrono::duration<double>(service_->clock().Now() - start).count());
      return 499;
    }
    got += static_cast<size_t>(n);
  }
  ModelInferRequest request;
  HttpOutputFormat format;
  if (absl::Status st = ParseInferRequest(*body, header_length, model, version, &request, &format);
      !st.ok()) {
    return refuse(st, Reject::kInvalid, false);
  }
  body.reset();
  const bool accepted = service_->CallBegins();
  OipInference inference(service_, Method::kModelInferHttp);
  ModelInferResponse response;
  absl::Notification done;
  absl::Status status;
  inference.Run(CallControl{}, &request, &response, [&](absl::Status st) {
    status = std::move(st);
    done.Notify();
  });
  done.WaitForNotification();
  request.Clear();
  int http_status;
  if (status.ok()) {
    std::string binary;
    // The text is held beside the response until it is sent: at most ~16 characters a value.
    int64_t text_bound = 4096;
    for (int i = 0; i < response.outputs_size(); ++i) {
      if (!format.IsBinary(response.outputs(i).name())) {
        text_bound += 4 * static_cast<int64_t>(response.raw_output_contents(i).size()) + 64;
      }
    }
    if (!inference.GrowLease(text_bound + static_cast<int64_t>(response.ByteSizeLong()))) {
      metrics.rejected(Reject::kMemory).Increment();
      http_status = ReplyError(
          conn, absl::ResourceExhaustedError(
                    "the server's memory for requests in flight cannot hold this response as "
                    "JSON now: ask for its outputs as binary data (parameters.binary_data) or "
                    "retry later"));
    } else {
      const std::string text = FormatInferResponse(response, format, &binary);
      response.Clear();
      http_status = 200;
      if (binary.empty()) {
        Reply(conn, 200, "application/json", text);
      } else {
        Reply(conn, 200, "application/octet-stream", text,
              absl::StrFormat("Inference-Header-Content-Length: %d\r\n", text.size()), false,
              binary);
      }
    }
  } else {
    http_status = ReplyError(conn, status);
  }
  inference.Release();
  service_->CallEnds(accepted);
  return http_status;
}

}  // namespace zlpr::server
