// zlpr::Client: the C++ client of zlpr.v1.ZlprService. Callers pass plain spans and shapes and
// get plain vectors back; no protobuf code of their own (the generated types stay available in
// <zlpr/v1/zlpr.grpc.pb.h>, and their Tensor codec in <zlpr/v1/tensor.h>, for those who want
// them).
//
//   #include <zlpr/client.h>      // find_package(zlpr) + target_link_libraries(app zlpr::client)
//
//   zlpr::ClientOptions options;
//   options.target = "dns:///zlpr.example.internal:50051";   // or "host:port", "ipv4:a:p,b:p"
//   auto client = zlpr::Client::Create(options);              // StatusOr<std::unique_ptr<Client>>
//
//   zlpr::LossCall call;
//   call.scores = logits;  call.rows = batch;  call.cols = labels_per_row;
//   call.dense_labels = targets;  call.want_grad = true;
//   absl::StatusOr<zlpr::LossResult> r = (*client)->ComputeLoss(call);
//
//   // A trainer's epoch on one stream, at most `window` requests in flight:
//   auto stream = (*client)->OpenLossStream(/*window=*/32);
//   stream->Send(call);  ...  absl::StatusOr<zlpr::LossResult> next = stream->Receive();
//
// Every call is idempotent: UNAVAILABLE (and CANCELLED from a server shutting down) is retried
// (gRPC service config, exponential backoff),
// several addresses or a dns:/// name are balanced round_robin, and each call has a default
// deadline. Errors are the server's status (INVALID_ARGUMENT naming field, row and column, ...).
#ifndef ZLPR_CLIENT_H_
#define ZLPR_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zlpr/dtype.h"

namespace grpc {
class Channel;
}

namespace zlpr {

struct ClientOptions {
  // gRPC target: "host:port", "ipv4:10.0.0.1:50051,10.0.0.2:50051", "dns:///name:port", ...
  std::string target = "127.0.0.1:50051";
  // Deadline of each unary call unless the call sets its own (streams have none: an epoch can
  // take hours).
  std::chrono::milliseconds default_deadline{30000};
  // Attempts per call on UNAVAILABLE or a server-side CANCELLED (1 = no retry), with
  // exponential backoff.
  int max_attempts = 5;
  // Largest message either way. 0 (the default): the server's --max_message_bytes, asked once
  // with GetServerInfo before the first ComputeLoss or Predict and kept. A blocking ComputeLoss
  // or Predict whose request or response would be larger is split by rows into requests under
  // it, sent concurrently and reassembled in order: the result is the one a single call gives
  // (the server computes each row independently of its batch). Async calls and streams are
  // sent as they are.
  int64_t max_message_bytes = 0;
  // Load-balancing policy across the target's addresses.
  std::string load_balancing = "round_robin";
  // TLS: on when `tls` is true. PEM contents (not paths); empty roots use the system's.
  bool tls = false;
  std::string tls_root_certs;
  std::string tls_client_cert;  // mutual TLS: the client's certificate chain
  std::string tls_client_key;   // and its private key
  std::string tls_server_name;  // override of the name checked in the server's certificate
  // Sent as "authorization: Bearer <token>" on every call when not empty.
  std::string auth_token;
};

// A request's class on the server: interactive work (online predictions) is taken before bulk
// work (trainers' loss calls), which yields to it. kDefault: the operation's own, Predict
// interactive and the loss bulk.
enum class Priority { kDefault = 0, kInteractive = 1, kBulk = 2 };

// A loss request. Spans point at the caller's memory, which must stay alive during the call
// (for async calls: until the request is sent, i.e. until the call returns).
struct LossCall {
  std::string request_id;
  int64_t rows = 0;
  int64_t cols = 0;
  std::span<const float> scores;        // rows * cols, row-major
  std::span<const float> dense_labels;  // rows * cols; or sparse below
  std::span<const int64_t> row_splits;  // sparse labels: rows + 1 offsets
  std::span<const int32_t> indices;     // sparse labels: column of each non-zero label
  std::span<const float> values;        // sparse labels: values (empty: all 1)
  std::span<const uint8_t> mask;        // optional rows * cols, 1 keeps, 0 excludes
  bool want_grad = false;
  DType grad_dtype = DType::kFloat32;
  Priority priority = Priority::kDefault;
  std::optional<std::chrono::milliseconds> deadline;  // unset: ClientOptions::default_deadline
};

struct LossResult {
  std::string request_id;
  std::vector<float> loss;  // one per row
  double loss_sum = 0;
  double loss_mean = 0;
  std::vector<float> grad;  // rows * cols when asked (widened to fp32 if sent narrower)
  double queue_seconds = 0;
  double compute_seconds = 0;
  uint32_t batch_rows = 0;  // rows of the server batch this request was computed in
};

struct PredictCall {
  std::string request_id;
  int64_t rows = 0;
  int64_t cols = 0;
  std::span<const float> scores;
  std::optional<float> threshold;           // unset: 0.5
  std::span<const float> label_thresholds;  // optional, cols entries
  uint32_t top_k = 0;
  uint32_t min_labels = 0;
  bool want_probs = false;
  std::span<const uint8_t> mask;
  Priority priority = Priority::kDefault;
  std::optional<std::chrono::milliseconds> deadline;
};

struct PredictResult {
  std::string request_id;
  std::vector<std::vector<int32_t>> labels;  // per row, in the server's order
  std::vector<std::vector<float>> probs;     // per row, the labels' probabilities
  std::vector<float> dense_probs;            // rows * cols when want_probs
  double queue_seconds = 0;
  double compute_seconds = 0;
  uint32_t batch_rows = 0;
};

struct ServerInfo {
  std::string version;
  std::string backend;
  std::vector<std::string> devices;
  int64_t max_batch_rows = 0;
  int64_t max_queue_delay_us = 0;
  int64_t max_queue_size = 0;
  int64_t max_message_bytes = 0;
};

// A StreamLoss session: Send() requests and Receive() their results, in order. At most
// `window` requests are in flight: Send() blocks while the window is full (backpressure).
// A bad request gets its error from Receive() and the stream goes on. Thread-safe for one
// sender and one receiver.
class LossStream {
 public:
  virtual ~LossStream() = default;
  virtual absl::Status Send(const LossCall& call) = 0;
  // The next result; OUT_OF_RANGE after Finish() once every result was received.
  virtual absl::StatusOr<LossResult> Receive() = 0;
  // Closes the sending side; returns the stream's final status once everything was received.
  virtual absl::Status Finish() = 0;
};

class PredictStream {
 public:
  virtual ~PredictStream() = default;
  virtual absl::Status Send(const PredictCall& call) = 0;
  virtual absl::StatusOr<PredictResult> Receive() = 0;
  virtual absl::Status Finish() = 0;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  virtual ~Client() = default;

  virtual absl::StatusOr<LossResult> ComputeLoss(const LossCall& call) = 0;
  virtual void ComputeLossAsync(const LossCall& call,
                                std::function<void(absl::StatusOr<LossResult>)> done) = 0;
  std::future<absl::StatusOr<LossResult>> ComputeLossFuture(const LossCall& call);

  virtual absl::StatusOr<PredictResult> Predict(const PredictCall& call) = 0;
  virtual void PredictAsync(const PredictCall& call,
                            std::function<void(absl::StatusOr<PredictResult>)> done) = 0;
  std::future<absl::StatusOr<PredictResult>> PredictFuture(const PredictCall& call);

  virtual std::unique_ptr<LossStream> OpenLossStream(int window = 32) = 0;
  virtual std::unique_ptr<PredictStream> OpenPredictStream(int window = 32) = 0;

  virtual absl::StatusOr<ServerInfo> GetServerInfo() = 0;
  // The message limit calls are split under: ClientOptions::max_message_bytes, or the server's
  // (asked once; an error when it cannot be asked, and asked again next time).
  virtual absl::StatusOr<int64_t> MessageLimit() = 0;
  // grpc.health.v1 Check of `service` ("" for the whole server): true when SERVING.
  virtual absl::StatusOr<bool> Healthy(const std::string& service = "") = 0;

  // The underlying channel, for generated stubs (zlpr/v1/zlpr.grpc.pb.h).
  virtual std::shared_ptr<grpc::Channel> channel() = 0;
};

// The gRPC service config the client uses: round_robin and retries on UNAVAILABLE/CANCELLED.
std::string ServiceConfigJson(const ClientOptions& options);

}  // namespace zlpr

#endif  // ZLPR_CLIENT_H_
