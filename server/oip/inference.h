// One Open Inference Protocol request through the core, for either binding: converted to its
// job (converter.h), queued on the request's admission, and its response's outputs filled.
// Requests of both bindings and of zlpr.v1 batch together.
//
//   Inference inference(&core);
//   inference.Run(&admission, control, request, &response, [](absl::Status st) { ... });
#ifndef ZLPR_SERVER_OIP_INFERENCE_H_
#define ZLPR_SERVER_OIP_INFERENCE_H_

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "server/core/core.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

class Inference {
 public:
  explicit Inference(InferenceCore* core) : core_(core) {}

  // `done` runs once, from this thread (refused) or a worker, with the status, after
  // `response` is filled (its outputs only when OK); then `admission` holds only what the
  // response needs (twice its size: it and its serialized form). The request's "timeout"
  // shortens `control`'s deadline. `request`, `response` and `admission` must outlive it.
  void Run(Admission* admission, CallControl control, const Request& request, Response* response,
           absl::AnyInvocable<void(absl::Status)> done);

 private:
  InferenceCore* const core_;
};

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_INFERENCE_H_
