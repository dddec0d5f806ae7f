// What every gRPC front end needs around the core: reactors made and armed in a way
// ThreadSanitizer can follow, a call's deadline and cancellation as the core's CallControl,
// statuses converted, and messages parsed from and serialized to raw bytes with gRPC's public
// buffer streams (the methods are raw, so that a message is charged before it is parsed).
#ifndef ZLPR_SERVER_GRPC_CALL_SUPPORT_H_
#define ZLPR_SERVER_GRPC_CALL_SUPPORT_H_

#include <utility>

#include "absl/base/dynamic_annotations.h"
#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"
#include "server/core/core.h"

namespace zlpr::server {

// Creates a reactor for gRPC. gRPC hands a reactor to its completion threads through its own
// queues and relaxed loads, which ThreadSanitizer cannot order after the construction, so the
// construction is hidden from TSan: constructors of reactors only store their arguments, and
// the reactors' logic runs in methods TSan sees. No effect outside TSan builds.
template <typename Reactor, typename... Args>
Reactor* NewReactor(Args&&... args) {
  ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_BEGIN();
  Reactor* reactor = new Reactor(std::forward<Args>(args)...);
  ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_END();
  return reactor;
}

// Runs `op`, a reactor's Finish, StartWrite or StartRead, with its writes hidden from
// ThreadSanitizer. gRPC arms the operation's completion tag there (CallbackWithSuccessTag::Set,
// CallOpSet) and runs the tag on a completion thread, ordered by gRPC core, which TSan cannot
// see. tests/tsan.supp names those frames, but a suppression only matches a stack TSan can
// restore, and TSan cannot always restore an old access of a busy (or since finished) worker
// thread. Reads stay checked, and so does everything our reactions do. No effect outside TSan
// builds.
template <typename Op>
void HandToGrpc(Op&& op) {
  ABSL_ANNOTATE_IGNORE_WRITES_BEGIN();
  std::forward<Op>(op)();
  ABSL_ANNOTATE_IGNORE_WRITES_END();
}

// A gRPC call's deadline (on `clock`) and cancellation.
CallControl ControlOf(grpc::CallbackServerContext* ctx, const Clock& clock);

// grpc::Status from absl::Status (the codes are the same numbers).
grpc::Status ToGrpc(const absl::Status& status);

// Parses `raw` into `message` and frees `raw`'s bytes (also on failure); INVALID_ARGUMENT when
// they are not a valid message.
absl::Status ParseMessage(grpc::ByteBuffer* raw, google::protobuf::MessageLite* message);

// Serializes `message` into `raw`, as a typed method would.
grpc::Status SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* raw);

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_GRPC_CALL_SUPPORT_H_
