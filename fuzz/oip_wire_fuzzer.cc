// libFuzzer harness, differential: the gRPC binding's wire codec (wire.h) against protobuf's
// parser and ViewOf (message_reference.h). The first byte picks how the message arrives (0: one
// buffer, read in place; n: buffers of n bytes, copied), the rest is the message. Both must
// accept the same messages and make the same Request of them, or refuse it with the same
// status; anything else aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/logging.h"
#include "inference/grpc_service.pb.h"
#include "server/oip/message_reference.h"
#include "server/oip/wire.h"

namespace {

namespace oip = zlpr::server::oip;

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "oip_wire_fuzzer: %s does not hold\n", what);
  std::abort();
}

bool SameRequest(const oip::Request& a, const oip::Request& b) {
  if (a.model != b.model || a.version != b.version || a.id != b.id ||
      a.parameters.size() != b.parameters.size() || a.inputs.size() != b.inputs.size() ||
      a.outputs.size() != b.outputs.size()) {
    return false;
  }
  // Parameters compare by their bytes: a double may be NaN.
  auto same_parameters = [](const oip::Parameters& x, const oip::Parameters& y) {
    if (x.size() != y.size()) return false;
    for (auto i = x.begin(), j = y.begin(); i != x.end(); ++i, ++j) {
      if (i->first != j->first || i->second.index() != j->second.index()) return false;
      if (const auto* d = std::get_if<double>(&i->second)) {
        if (std::memcmp(d, &std::get<double>(j->second), sizeof(double)) != 0) return false;
      } else if (i->second != j->second) {
        return false;
      }
    }
    return true;
  };
  if (!same_parameters(a.parameters, b.parameters)) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const oip::Tensor &x = a.inputs[i], &y = b.inputs[i];
    if (x.name != y.name || x.datatype != y.datatype || x.shape != y.shape || x.data != y.data ||
        !same_parameters(x.parameters, y.parameters)) {
      return false;
    }
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    if (a.outputs[i].name != b.outputs[i].name ||
        !same_parameters(a.outputs[i].parameters, b.outputs[i].parameters)) {
      return false;
    }
  }
  return true;
}

}  // namespace

// Protobuf logs a line for every string field that is not UTF-8, which random bytes often are.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int block = data[0];
  const auto* bytes = data + 1;
  const int n = static_cast<int>(size - 1);

  inference::ModelInferRequest message;
  const bool parsed = message.ParseFromArray(bytes, n);

  oip::Request request;
  absl::Status invalid;
  absl::StatusOr<bool> read;
  if (block == 0) {
    google::protobuf::io::CodedInputStream in(bytes, n);
    read = oip::DecodeInferRequest(&in, n, /*in_place=*/true, &request, &invalid);
  } else {
    google::protobuf::io::ArrayInputStream blocks(bytes, n, block);
    google::protobuf::io::CodedInputStream in(&blocks);
    read = oip::DecodeInferRequest(&in, n, /*in_place=*/false, &request, &invalid);
  }
  if (parsed != read.ok()) {
    std::fprintf(stderr, "protobuf %s; the codec: %s\n", parsed ? "parses" : "does not parse",
                 read.status().ToString().c_str());
  }
  Check(parsed == read.ok(), "the codec reads what protobuf parses, and only that");
  if (!parsed) {
    Check(read.status().code() == absl::StatusCode::kInvalidArgument, "refused: INVALID_ARGUMENT");
    return 0;
  }
  oip::Request want;
  const absl::Status want_invalid = oip::ViewOf(message, &want);
  Check(want_invalid == invalid, "the same request is invalid, for the same reason");
  if (invalid.ok()) Check(SameRequest(want, request), "the same request");
  if (*read) {
    for (const oip::Tensor& t : request.inputs) {
      Check(reinterpret_cast<uintptr_t>(t.data.data()) % alignof(float) == 0 || t.data.empty(),
            "tensors in place are aligned");
    }
  }
  return 0;
}
