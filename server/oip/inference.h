// One Open Inference Protocol request through the core, for either binding: converted to its
// job (converter.h), queued on the request's admission, and its response's outputs filled.
// Requests of both bindings and of zlpr.v1 batch together.
//
//   Inference inference(&core);
//   inference.Run(&admission, control, &request, &response, [](absl::Status st) { ... });
#ifndef ZLPR_SERVER_OIP_INFERENCE_H_
#define ZLPR_SERVER_OIP_INFERENCE_H_

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "server/core/core.h"
#include "server/core/shared_memory.h"
#include "server/oip/request.h"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {

class Inference {
 public:
  // `shared_memory`: the regions clients registered (shared_tensors.h), or null when shared
  // memory is off.
  explicit Inference(InferenceCore* core, const SharedMemoryRegistry* shared_memory = nullptr)
      : core_(core), shared_memory_(shared_memory) {}

  // `done` runs once, from this thread (refused) or a worker, with the status, after
  // `response` is filled (its outputs only when OK); then `admission` holds only what the
  // response needs (twice its size: it and its serialized form). The request's "timeout"
  // shortens `control`'s deadline. Inputs and outputs in shared memory are used in place
  // (shared_tensors.h); a request whose shared inputs are bulk-sized is converted on the
  // background threads. `request`, `response` and `admission`
  // must outlive it.
  void Run(Admission* admission, CallControl control, Request* request, Response* response,
           absl::AnyInvocable<void(absl::Status)> done);

 private:
  // From conversion on, on the thread Run chose.
  void Continue(Admission* admission, CallControl control, Request* request, Response* response,
                SharedTensors shared, absl::AnyInvocable<void(absl::Status)> done);

  InferenceCore* const core_;
  const SharedMemoryRegistry* const shared_memory_;
};

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_INFERENCE_H_
