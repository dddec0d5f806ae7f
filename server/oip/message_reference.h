// The gRPC binding's messages through protobuf's message classes: what the binding's wire codec
// (wire.h) must agree with, for its tests and fuzzers. Not linked into the server.
#ifndef ZLPR_SERVER_OIP_MESSAGE_REFERENCE_H_
#define ZLPR_SERVER_OIP_MESSAGE_REFERENCE_H_

#include "absl/status/status.h"
#include "inference/grpc_service.pb.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

// `message` as a Request: its tensors view its raw_input_contents (or typed FP32 contents), or
// bytes narrowed into request->owned (UINT8 contents). INVALID_ARGUMENT naming the input when
// its datatype is unknown or its contents cannot be read. `message` must outlive `request`.
absl::Status ViewOf(const inference::ModelInferRequest& message, Request* request);
// Moves `response` into `message` (outputs as raw_output_contents).
void ToMessage(Response response, inference::ModelInferResponse* message);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_MESSAGE_REFERENCE_H_
