// libFuzzer harness: bytes -> an Open Inference Protocol ModelInferRequest (the gRPC binding's
// message) -> the binding-free view (ViewOf) -> the converter (Convert) -> when it converts, the
// CPU kernels on its job, the outputs filled (Fill) and moved into a ModelInferResponse
// (ToMessage), whose every output must hold exactly the bytes its shape and datatype say. The
// first byte picks the model (even: zlpr_predict, odd: zlpr_loss) when the message names none.
// Anything but a clean INVALID_ARGUMENT (or NOT_FOUND for a model or version the message names)
// aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <variant>

#include "google/protobuf/stubs/logging.h"
#include "inference/grpc_service.pb.h"
#include "kernels/zlpr.h"
#include "server/oip/converter.h"
#include "server/oip/grpc_service.h"
#include "server/oip/shared_tensors.h"

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

// Protobuf logs a line for every string field that is not UTF-8, which random bytes often are.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  inference::ModelInferRequest message;
  if (!message.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
  const bool named = !message.model_name().empty() || !message.model_version().empty();
  if (!named) message.set_model_name((data[0] & 1) != 0 ? oip::kLossModel : oip::kPredictModel);
  oip::Request request;
  if (absl::Status st = oip::ViewOf(message, &request); !st.ok()) {
    Check(st.code() == absl::StatusCode::kInvalidArgument, "ViewOf: only INVALID_ARGUMENT", st);
    Check(!st.message().empty(), "errors say what is wrong");
    return 0;
  }
  Check(request.inputs.size() == static_cast<size_t>(message.inputs_size()), "one view per input");
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
  inference::ModelInferResponse out;
  oip::ToMessage(std::move(response), &out);
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
