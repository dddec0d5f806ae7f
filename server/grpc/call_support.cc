// Conversions between gRPC and the core.
#include "server/grpc/call_support.h"

#include <chrono>
#include <functional>
#include <limits>
#include <string>

#include "absl/strings/str_format.h"
#include "grpc/slice.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "grpcpp/support/slice.h"

namespace zlpr::server {

CallControl ControlOf(grpc::CallbackServerContext* ctx, const Clock& clock) {
  CallControl control{.cancelled = [ctx] { return ctx->IsCancelled(); },
                      .caller = std::hash<std::string>{}(ctx->peer())};
  const auto deadline = ctx->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = deadline - std::chrono::system_clock::now();
    control.deadline =
        clock.Now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
  }
  return control;
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status ParseMessage(grpc::ByteBuffer* raw, google::protobuf::MessageLite* message) {
  const size_t bytes = raw->Length();
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(raw);
    parsed = reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
  }
  raw->Clear();
  if (parsed) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "the message (%d bytes) is not a valid %s: it does not parse (truncated or not protobuf, "
      "or a string field that is not UTF-8)",
      bytes, message->GetTypeName()));
}

grpc::Status SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* raw) {
  const size_t size = message.ByteSizeLong();
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "the response is too large to serialize");
  }
  if (size <= GRPC_SLICE_INLINED_SIZE) {
    grpc::Slice slice(size);
    message.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin()));
    grpc::ByteBuffer small(&slice, 1);
    raw->Swap(&small);
    return grpc::Status::OK;
  }
  grpc::ProtoBufferWriter writer(raw, grpc::kProtoBufferWriterMaxBufferLength,
                                 static_cast<int>(size));
  return message.SerializeToZeroCopyStream(&writer)
             ? grpc::Status::OK
             : grpc::Status(grpc::StatusCode::INTERNAL, "the response could not be serialized");
}

}  // namespace zlpr::server
