// libFuzzer harness: bytes -> an Open Inference Protocol ModelInferRequest read by the gRPC
// binding's wire codec (wire.h) into the binding-free Request -> the converter (Convert) -> when
// it converts, the CPU kernels on its job, the outputs filled (Fill) and written as a
// ModelInferResponse (ResponseWire), which must parse, and whose every output must hold exactly
// the bytes its shape and datatype say. The first byte picks the model (even: zlpr_predict, odd:
// zlpr_loss) when the message names none. Anything but a clean INVALID_ARGUMENT (or NOT_FOUND for
// a model or version the message names) aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <variant>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/stubs/logging.h"
#include "inference/grpc_service.pb.h"
#include "kernels/zlpr.h"
#include "server/oip/converter.h"
#include "server/oip/shared_tensors.h"
#include "server/oip/wire.h"

namespace {

namespace oip = zlpr::server::oip;

// Work per input is bounded by the input (every tensor's data is in the message); this only
// keeps one input from taking seconds.
constexpr int64_t kMaxElements = int64_t{1} << 20;

zlpr::Backend& Cpu() {
  static const std::unique_ptr<zlpr::Backend> backend = zlpr::NewCpuBackend({.threads = 1});
  return *backend;
}

void Check(bool ok, const char* what, const absl::Status& status = absl::OkStatus()) {
  if (ok) return;
  std::fprintf(stderr, "oip_convert_fuzzer: %s does not hold (%s)\n", what,
               status.ToString().c_str());
  std::abort();
}

// The kernels on the job, as the executor would run it alone.
template <typename Job>
absl::StatusOr<typename Job::Result> Run(const Job& job);

template <>
absl::StatusOr<zlpr::server::LossResult> Run(const zlpr::server::LossJob& job) {
  zlpr::server::LossResult r;
  r.cols = job.input.cols();
  r.loss.resize(job.rows());
  std::vector<float> grad(job.want_grad ? job.rows() * job.input.cols() : 0);
  if (absl::Status st =
          Cpu().Loss(job.input, {r.loss.data(), job.want_grad ? grad.data() : nullptr});
      !st.ok()) {
    return st;
  }
  r.grad.assign(reinterpret_cast<const char*>(grad.data()), grad.size() * sizeof(float));
  for (float l : r.loss) r.loss_sum += l;
  return r;
}

template <>
absl::StatusOr<zlpr::server::PredictResult> Run(const zlpr::server::PredictJob& job) {
  zlpr::server::PredictResult r;
  r.cols = job.input.cols();
  std::vector<float> probs(job.want_probs ? job.rows() * job.input.cols() : 0);
  if (absl::Status st = Cpu().Label(job.input, &r.labels, job.want_probs ? probs.data() : nullptr);
      !st.ok()) {
    return st;
  }
  r.probs.assign(reinterpret_cast<const char*>(probs.data()), probs.size() * sizeof(float));
  return r;
}

}  // namespace

// Protobuf logs a line for every string field that is not UTF-8 (the response's check parses).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  google::protobuf::io::CodedInputStream in(data + 1, static_cast<int>(size - 1));
  oip::Request request;
  absl::Status invalid;
  const absl::StatusOr<bool> read = oip::DecodeInferRequest(&in, static_cast<int64_t>(size - 1),
                                                            /*in_place=*/true, &request, &invalid);
  if (!read.ok()) {
    Check(read.status().code() == absl::StatusCode::kInvalidArgument,
          "a message that does not read: INVALID_ARGUMENT", read.status());
    return 0;
  }
  const bool named = !request.model.empty() || !request.version.empty();
  if (!named) request.model = (data[0] & 1) != 0 ? oip::kLossModel : oip::kPredictModel;
  if (!invalid.ok()) {
    Check(invalid.code() == absl::StatusCode::kInvalidArgument, "invalid: only INVALID_ARGUMENT",
          invalid);
    Check(!invalid.message().empty(), "errors say what is wrong");
    return 0;
  }
  // Shared memory is off here: a tensor that names a region is refused before anything else.
  if (auto shared = oip::TakeSharedTensors(nullptr, nullptr, &request); !shared.ok()) {
    Check(shared.status().code() == absl::StatusCode::kInvalidArgument,
          "shared memory off: only INVALID_ARGUMENT", shared.status());
    return 0;
  }
  absl::StatusOr<oip::Plan> plan = oip::Convert(request);
  if (!plan.ok()) {
    const absl::StatusCode code = plan.status().code();
    Check(code == absl::StatusCode::kInvalidArgument ||
              (code == absl::StatusCode::kNotFound && named),
          "Convert: only INVALID_ARGUMENT, or NOT_FOUND for a model or version the message names",
          plan.status());
    Check(!plan.status().message().empty(), "errors say what is wrong");
    return 0;
  }
  Check(plan->response_bytes > 0 && !plan->want.empty(), "a plan answers something");
  oip::Response response;
  bool ran = false;
  std::visit(
      [&](const auto& job) {
        using Job = std::decay_t<decltype(job)>;
        if constexpr (!std::is_same_v<Job, std::monostate>) {
          if (job.rows() * job.input.cols() > kMaxElements) return;
          auto result = Run(job);
          Check(result.ok(), "a converted job computes");
          oip::Fill(*std::move(result), *plan, &response);
          ran = true;
        }
      },
      plan->job);
  if (!ran) return 0;
  const oip::ResponseWire wire = oip::ResponseWire::Infer(response, 1024);
  std::string head(wire.head_bytes(), '\0');
  std::string bytes;
  size_t at = 0;
  for (const oip::ResponseWire::Gap& gap : wire.Write(head.data())) {
    bytes.append(head, at, gap.offset - at);
    bytes += response.outputs[gap.output].data;
    at = gap.offset;
  }
  bytes.append(head, at);
  Check(bytes.size() == wire.total_bytes(), "the response is as long as counted");
  inference::ModelInferResponse out;
  Check(out.ParseFromString(bytes), "the response parses");
  Check(out.outputs_size() == out.raw_output_contents_size(), "one content per output");
  for (int i = 0; i < out.outputs_size(); ++i) {
    const auto& o = out.outputs(i);
    Check(plan->want.count(o.name()) > 0, "only requested outputs");
    const std::optional<oip::DataType> type = oip::ParseDataType(o.datatype());
    Check(type.has_value(), "outputs have a known datatype");
    if (*type == oip::DataType::kBytes) continue;
    uint64_t elements = 1;
    for (int64_t d : o.shape()) {
      Check(d >= 0, "dimensions are not negative");
      elements *= static_cast<uint64_t>(d);
    }
    Check(out.raw_output_contents(i).size() == elements * oip::ElementSize(*type),
          "an output holds exactly its shape's bytes");
  }
  return 0;
}
