// Inference: convert, queue, fill.
#include "server/oip/inference.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <variant>

#include "server/oip/converter.h"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {

void Inference::Run(Admission* admission, CallControl control, Request* request, Response* response,
                    absl::AnyInvocable<void(absl::Status)> done) {
  response->model = request->model;
  response->version = "1";
  response->id = request->id;
  absl::StatusOr<SharedTensors> shared = TakeSharedTensors(shared_memory_, admission, request);
  if (!shared.ok()) {
    core_->Rejected(shared.status().code() == absl::StatusCode::kResourceExhausted
                        ? Reject::kMemory
                        : Reject::kInvalid);
    return done(shared.status());
  }
  // Bulk tensors in shared memory arrive in a small message, on the thread that reads messages:
  // their conversion (the validators' pass over every element) goes to the background threads,
  // as a large message's parse does, so that it never holds up interactive work.
  int64_t shared_bytes = 0;
  for (const SharedPlace& in : shared->inputs) shared_bytes += static_cast<int64_t>(in.byte_size);
  if (core_->IsBulkMessage(shared_bytes)) {
    core_->background().Post([this, admission, control = std::move(control), request, response,
                              shared = *std::move(shared), done = std::move(done)]() mutable {
      Continue(admission, std::move(control), request, response, std::move(shared),
               std::move(done));
    });
    return;
  }
  Continue(admission, std::move(control), request, response, *std::move(shared), std::move(done));
}

void Inference::Continue(Admission* admission, CallControl control, Request* request,
                         Response* response, SharedTensors shared,
                         absl::AnyInvocable<void(absl::Status)> done) {
  absl::StatusOr<Plan> plan = Convert(*request);
  if (plan.ok()) {
    if (absl::Status st = PlaceSharedOutputs(shared, &*plan); !st.ok()) plan = std::move(st);
  }
  if (!plan.ok()) {
    core_->Rejected(Reject::kInvalid);
    return done(plan.status());
  }
  control.priority = plan->priority;
  if (plan->timeout_us > 0) {
    // Triton's per-request timeout: the earlier of it and the call's own deadline.
    control.deadline = std::min(control.deadline,
                                admission->start() + std::chrono::microseconds(plan->timeout_us));
  }
  auto answer = [this, admission, response, shared = std::move(shared),
                 done = std::move(done)](absl::Status st) mutable {
    if (st.ok()) st = FinishSharedTensors(shared, response);
    if (st.ok()) {
      const int64_t bytes = WireBytes(*response);
      st = core_->CheckResponseSize(bytes);
      if (st.ok()) {
        admission->ShrinkTo(2 * bytes);  // the inputs are no longer needed
      } else {
        response->outputs.clear();
      }
    }
    done(std::move(st));
  };
  const int64_t response_bytes = plan->response_bytes;
  std::visit(
      [&](auto& planned) {
        if constexpr (std::is_same_v<std::decay_t<decltype(planned)>, std::monostate>) {
          answer(absl::InternalError("the request was converted to no job"));
          return;
        } else {
          auto job = std::move(planned);  // out of the plan, which moves into the completion
          using Result = typename decltype(job)::Result;
          core_->Enqueue(admission, std::move(control), std::move(job), response_bytes,
                         [plan = std::move(*plan), response,
                          answer = std::move(answer)](absl::StatusOr<Result> r) mutable {
                           absl::Status status = r.status();
                           if (r.ok()) Fill(*std::move(r), plan, response);
                           answer(std::move(status));
                         });
        }
      },
      plan->job);
}

}  // namespace zlpr::server::oip
