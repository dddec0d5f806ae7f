// The gRPC binding's two compute messages in their wire form, read and written without protobuf's
// message classes: a ModelInferRequest straight into a Request (request.h), and a Response
// straight into a ModelInferResponse's (or a ModelStreamInferResponse's) bytes. Building the
// message objects cost an OIP request about forty allocations and a copy of every tensor's bytes
// (the protobuf message, then the view of it); here a request's raw tensors are used where they
// arrived, and a large output's bytes are handed to the transport whole.
//
// The rules are protobuf's (proto3): fields in any order, the last of a singular field wins,
// packed or unpacked repeated numbers, unknown fields skipped, strings valid UTF-8. What the
// decoder then makes of the message is what ViewOf made of the parsed one (tests and the
// oip_wire fuzzer check both against protobuf's parser and message_reference.h).
#ifndef ZLPR_SERVER_OIP_WIRE_H_
#define ZLPR_SERVER_OIP_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/io/coded_stream.h"
#include "server/oip/request.h"

namespace zlpr::server::oip {

// Reads the ModelInferRequest of `total_bytes` that `in` holds into `request`.
// - INVALID_ARGUMENT when the bytes are not one (truncated, not protobuf, a string that is not
//   UTF-8): what protobuf's parser refuses.
// - A message that reads but cannot be a Request (an unknown datatype, typed contents other than
//   FP32 and UINT8, raw contents that do not match the inputs) sets `*invalid` and returns OK, so
//   that a stream can answer it in place.
// - `in_place`: `in` reads one buffer that outlives `request`. Raw tensor bytes are then views
//   into it when every one is 4-byte aligned (the kernels load whole elements); else all are
//   copied into request->buffers, so that the buffer need not be held beside the copies.
//   Without `in_place` they are always copied.
// Returns whether `request` views `in`'s buffer.
absl::StatusOr<bool> DecodeInferRequest(google::protobuf::io::CodedInputStream* in,
                                        int64_t total_bytes, bool in_place, Request* request,
                                        absl::Status* invalid);

// A response's wire form as a head of bytes with gaps: the large outputs' contents are not in the
// head, they go whole at their places (each one's own bytes, never copied).
class ResponseWire {
 public:
  // A large output's bytes belong at `offset` of the head.
  struct Gap {
    size_t offset;
    size_t output;  // its index in Response::outputs
  };

  // A ModelInferResponse. Outputs of `large_bytes` or more are left out of the head.
  static ResponseWire Infer(const Response& response, size_t large_bytes);
  // A ModelStreamInferResponse: `error_message` when not empty, and `response` (null: none) as
  // its infer_response.
  static ResponseWire Stream(const Response* response, std::string_view error_message,
                             size_t large_bytes);

  size_t head_bytes() const { return head_bytes_; }
  size_t total_bytes() const { return total_bytes_; }  // the head and the large outputs
  // Writes the head into `head` (head_bytes() of room); returns the gaps, in order.
  std::vector<Gap> Write(char* head) const;

 private:
  ResponseWire(const Response* response, bool stream, std::string_view error_message,
               size_t large_bytes);

  const Response* response_;
  bool stream_;
  std::string_view error_message_;
  size_t large_bytes_;
  size_t head_bytes_ = 0;
  size_t total_bytes_ = 0;
};

// Whether `bytes` are valid UTF-8 (no overlong forms, surrogates or code points over U+10FFFF),
// as protobuf requires of a proto3 string.
bool IsUtf8(std::string_view bytes);

}  // namespace zlpr::server::oip

#endif  // ZLPR_SERVER_OIP_WIRE_H_
