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
#include "server/oip/http_codec.h"

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
  zlpr::server::oip::Request request;
  zlpr::server::oip::OutputFormat format;
  const absl::Status st =
      zlpr::server::oip::ParseInferRequest(body, header, "zlpr_predict", "", &request, &format);
  if (!st.ok()) {
    Check(st.code() == absl::StatusCode::kInvalidArgument, "only INVALID_ARGUMENT on bad input");
    Check(!st.message().empty(), "errors say what is wrong");
    return 0;
  }
  size_t tensor_bytes = 0;
  for (const auto& t : request.inputs) {
    tensor_bytes += t.data.size();
    // A tensor's bytes are a view of the body or of the request's own storage.
    const bool in_body =
        t.data.data() >= body.data() && t.data.data() + t.data.size() <= body.data() + body.size();
    bool owned = false;
    for (const std::string& o : request.owned) owned |= t.data.data() == o.data();
    Check(in_body || owned || t.data.empty(), "tensor bytes live in the body or the request");
  }
  // JSON numbers take at least one character each (4 bytes of FP32 at most), binary tensors
  // their own bytes: the tensors never outgrow 4 times the body.
  Check(tensor_bytes <= 4 * body.size() + 4, "tensor bytes bounded by the body");
  // Echo the inputs back as outputs (FP32, INT32 and UINT8 views of their bytes) through the
  // response writer: its JSON must parse.
  zlpr::server::oip::Response response;
  response.model = "zlpr_predict";
  response.id = request.id;
  for (size_t i = 0; i < request.inputs.size(); ++i) {
    using zlpr::server::oip::DataType;
    response.outputs.push_back(zlpr::server::oip::Output{
        .name = request.inputs[i].name,
        .datatype =
            i % 3 == 0 ? DataType::kFp32 : (i % 3 == 1 ? DataType::kInt32 : DataType::kUint8),
        .shape = {static_cast<int64_t>(request.inputs[i].data.size())},
        .data = std::string(request.inputs[i].data)});
  }
  size_t json_length = 0;
  const std::string out = zlpr::server::oip::FormatInferResponse(response, format, &json_length);
  Check(json_length <= out.size(), "the JSON is a prefix of the body");
  const std::string text = out.substr(0, json_length);
  // NaN and infinities are written as Python's json reads them; nlohmann reads no such tokens,
  // so check only responses without them.
  if (text.find("NaN") == std::string::npos && text.find("Infinity") == std::string::npos) {
    Check(nlohmann::json::accept(text), "the response is JSON");
  }
  return 0;
}
