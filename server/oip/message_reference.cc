// ViewOf and ToMessage: the Open Inference Protocol's messages as protobuf parses them.
#include "server/oip/message_reference.h"

#include <string>
#include <utility>
#include <variant>

#include "absl/strings/str_format.h"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

Parameter ParameterOf(const inference::InferParameter& p) {
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
      return std::string();  // no value: what needs one refuses it
  }
}

void SetParameter(const Parameter& value, inference::InferParameter* p) {
  std::visit(
      [p](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) p->set_bool_param(v);
        if constexpr (std::is_same_v<T, int64_t>) p->set_int64_param(v);
        if constexpr (std::is_same_v<T, uint64_t>) p->set_uint64_param(v);
        if constexpr (std::is_same_v<T, double>) p->set_double_param(v);
        if constexpr (std::is_same_v<T, std::string>) p->set_string_param(v);
      },
      value);
}

template <typename Map>
Parameters ParametersOf(const Map& map) {
  Parameters out;
  for (const auto& [key, value] : map) out.emplace(key, ParameterOf(value));
  return out;
}

}  // namespace

absl::Status ViewOf(const ModelInferRequest& m, Request* r) {
  r->model = m.model_name();
  r->version = m.model_version();
  r->id = m.id();
  r->parameters = ParametersOf(m.parameters());
  // Raw contents come for the inputs that are not in shared memory, in order.
  int in_messages = 0;
  for (const auto& in : m.inputs()) {
    in_messages += in.parameters().count(kShmRegion) == 0 ? 1 : 0;
  }
  const bool raw = m.raw_input_contents_size() > 0;
  if (raw && m.raw_input_contents_size() != in_messages) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "raw_input_contents has %d entries for %d inputs (not counting those in shared memory): "
        "send one per input, in order",
        m.raw_input_contents_size(), in_messages));
  }
  int next_raw = 0;
  for (int i = 0; i < m.inputs_size(); ++i) {
    const auto& in = m.inputs(i);
    Tensor& t = r->inputs.emplace_back();
    t.name = in.name();
    const std::optional<DataType> type = ParseDataType(in.datatype());
    if (!type) {
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': unknown datatype '%s'", in.name(), in.datatype()));
    }
    t.datatype = *type;
    t.shape.assign(in.shape().begin(), in.shape().end());
    t.parameters = ParametersOf(in.parameters());
    if (InSharedMemory(t.parameters)) {
      continue;  // its bytes come from the region (oip::Inference)
    }
    if (raw) {
      t.data = m.raw_input_contents(next_raw++);
    } else if (t.datatype == DataType::kFp32) {
      const auto& v = in.contents().fp32_contents();
      t.data = {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
    } else if (t.datatype == DataType::kUint8) {
      const auto& v = in.contents().uint_contents();
      std::string& bytes = r->owned.emplace_back(v.size(), '\0');
      for (int k = 0; k < v.size(); ++k) {
        if (v[k] > 255) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "input '%s': element %d is %d, over 255 for UINT8", in.name(), k, v[k]));
        }
        bytes[k] = static_cast<char>(v[k]);
      }
      t.data = bytes;
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': %s contents must be sent raw (raw_input_contents)",
                          in.name(), in.datatype()));
    }
  }
  for (const auto& o : m.outputs()) {
    r->outputs.push_back(
        RequestedOutput{.name = o.name(), .parameters = ParametersOf(o.parameters())});
  }
  return absl::OkStatus();
}

void ToMessage(Response response, ModelInferResponse* m) {
  m->set_model_name(std::move(response.model));
  m->set_model_version(std::move(response.version));
  m->set_id(std::move(response.id));
  for (const auto& [key, value] : response.parameters) {
    SetParameter(value, &(*m->mutable_parameters())[key]);
  }
  for (Output& o : response.outputs) {
    auto* out = m->add_outputs();
    out->set_name(std::move(o.name));
    out->set_datatype(DataTypeName(o.datatype));
    for (int64_t d : o.shape) out->add_shape(d);
    for (const auto& [key, value] : o.parameters) {
      SetParameter(value, &(*out->mutable_parameters())[key]);
    }
    // (Empty for an output in shared memory: the entries stay one per output, in order.)
    *m->add_raw_output_contents() = std::move(o.data);
  }
}

}  // namespace zlpr::server::oip
