// libFuzzer harness: bytes -> an Open Inference Protocol HTTP inference body -> ParseInferRequest
// (nlohmann's SAX parser and our DOM-and-data builder) -> when it parses, the request's
// invariants, and the JSON response writer over outputs made from the parsed inputs. The first
// byte picks where the JSON header ends (0: the whole body is JSON; else that byte's value times
// the body's length over 256, as Inference-Header-Content-Length). Anything but a clean
// INVALID_ARGUMENT or a request that holds the invariants aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "nlohmann/json.hpp"
#include "server/oip_http.h"

namespace {

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "http_request_fuzzer: %s does not hold\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::optional<size_t> header;
  if (data[0] != 0) header = body.size() * data[0] / 256;
  inference::ModelInferRequest request;
  zlpr::server::HttpOutputFormat format;
  const absl::Status st =
      zlpr::server::ParseInferRequest(body, header, "zlpr_predict", "", &request, &format);
  if (!st.ok()) {
    Check(st.code() == absl::StatusCode::kInvalidArgument, "only INVALID_ARGUMENT on bad input");
    Check(!st.message().empty(), "errors say what is wrong");
    return 0;
  }
  Check(request.raw_input_contents_size() == request.inputs_size(), "one raw content per input");
  size_t raw_bytes = 0;
  for (const auto& r : request.raw_input_contents()) raw_bytes += r.size();
  // JSON numbers take at least one character each (4 bytes of FP32 at most), binary tensors
  // their own bytes: the tensors never outgrow 4 times the body.
  Check(raw_bytes <= 4 * body.size() + 4, "tensor bytes bounded by the body");
  // Echo the inputs back as outputs (FP32 views of their bytes) through the response writer: its
  // JSON must parse.
  inference::ModelInferResponse response;
  response.set_model_name("zlpr_predict");
  response.set_id(request.id());
  for (int i = 0; i < request.inputs_size(); ++i) {
    auto* o = response.add_outputs();
    o->set_name(request.inputs(i).name());
    o->set_datatype(i % 3 == 0 ? "FP32" : (i % 3 == 1 ? "INT32" : "UINT8"));
    o->add_shape(static_cast<int64_t>(request.raw_input_contents(i).size()));
    *response.add_raw_output_contents() = request.raw_input_contents(i);
  }
  size_t json_length = 0;
  const std::string out = zlpr::server::FormatInferResponse(response, format, &json_length);
  Check(json_length <= out.size(), "the JSON is a prefix of the body");
  const std::string text = out.substr(0, json_length);
  // NaN and infinities are written as Python's json reads them; nlohmann reads no such tokens,
  // so check only responses without them.
  if (text.find("NaN") == std::string::npos && text.find("Infinity") == std::string::npos) {
    Check(nlohmann::json::accept(text), "the response is JSON");
  }
  return 0;
}
