// The zlpr-server process in one object: the inference core (backends, workers, budget), its
// front ends (zlpr.v1 and the Open Inference Protocol on the gRPC port, the protocol's HTTP
// binding), health and reflection, and the Prometheus metrics (a listener of the core); started
// and shut down gracefully. main.cc only parses flags and waits for a signal; tests start it on
// port 0.
//
//   ServerOptions options;
//   options.grpc_address = "127.0.0.1:0";
//   auto server = Server::Start(options);          // StatusOr<std::unique_ptr<Server>>
//   ... (*server)->grpc_port() ...
//   (*server)->Shutdown();                        // NOT_SERVING, drain, answer all accepted
#ifndef ZLPR_SERVER_SERVER_H_
#define ZLPR_SERVER_SERVER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/core/core.h"
#include "server/core/memory_budget.h"
#include "server/core/shared_memory.h"
#include "server/core/token_store.h"
#include "server/http/front_end.h"
#include "server/metrics/metrics.h"
#include "server/oip/grpc_service.h"
#include "server/oip/http_routes.h"
#include "server/zlpr_v1/service.h"

namespace zlpr::server {

struct ServerOptions {
  std::string grpc_address = "0.0.0.0:50051";
  std::string metrics_address = "0.0.0.0:9464";  // empty: no metrics endpoint
  // The Open Inference Protocol's HTTP binding (oip_http.h); empty: none. Same TLS and token as
  // the gRPC port.
  std::string http_address;
  int http_threads = 0;             // its I/O threads; 0: one per 4 usable CPUs, at least 1
  int http_max_connections = 1024;  // its connections open at once (and 8 for health checks)
  // Serve GET /metrics on the HTTP port too, behind its TLS and token.
  bool http_metrics = false;
  // HTTP: a request's header, an idle keep-alive connection, and the start of a body get
  // http_timeout; a body then arrives at min_transfer_rate or faster, or is cut off.
  std::chrono::milliseconds http_timeout{10000};
  // A response (gRPC or HTTP) not written after write_timeout plus its size at
  // min_transfer_rate cancels its call, and what the call held is returned.
  std::chrono::milliseconds write_timeout{20000};
  int64_t min_transfer_rate = 1 << 20;  // bytes per second
  // How long an HTTP body waits, unread, for the memory budget before 429.
  std::chrono::milliseconds http_budget_wait{30000};
  // gRPC connections: the server pings a connection idle for grpc_keepalive and closes it when
  // the ping is not answered within grpc_keepalive_timeout (a peer that vanished); a
  // connection without calls for grpc_max_connection_idle is closed (0: never); with
  // grpc_max_connection_age (0: never) every connection is asked to reconnect after that long,
  // and its calls are ended after grpc_max_connection_age_grace more.
  std::chrono::milliseconds grpc_keepalive{60000};
  std::chrono::milliseconds grpc_keepalive_timeout{20000};
  std::chrono::milliseconds grpc_max_connection_idle{std::chrono::minutes(30)};
  std::chrono::milliseconds grpc_max_connection_age{0};
  std::chrono::milliseconds grpc_max_connection_age_grace{std::chrono::minutes(1)};
  std::string backend = "auto";  // auto | cpu | cuda
  std::vector<int> devices;      // CUDA devices; empty: all visible
  // Device memory each CUDA backend's buffers may hold; 0: no limit of ours (CudaOptions).
  int64_t cuda_memory_limit_bytes = 0;
  int threads = 0;  // CPU backend threads; 0: all cores
  BatcherOptions batcher;
  // Kernel time of one chunk of a bulk batch (interactive work runs between chunks); 0: whole.
  std::chrono::microseconds bulk_chunk{1000};
  // The OS priority of the threads that parse large requests and serialize bulk responses.
  BackgroundPolicy bulk_threads = BackgroundPolicy::kIdle;
  int64_t max_message_bytes = 64 << 20;
  // Bytes all requests in flight may hold together (MemoryBudget); 0: DefaultMemoryShare().
  int64_t max_inflight_bytes = 0;
  // gRPC's resource quota: the memory its transport may use for connections and messages being
  // received or sent; 0: DefaultMemoryShare().
  int64_t transport_memory_bytes = 0;
  std::chrono::milliseconds shutdown_grace{10000};
  // Benchmark baseline: serve EchoService (no validation, batching or compute) instead.
  bool echo = false;
  // The Open Inference Protocol's system shared-memory extension (callers on the same host
  // register regions of POSIX shared memory and pass tensors through them): off unless set,
  // with limits on the regions registered at once and their bytes together.
  bool allow_client_shm = false;
  int client_shm_max_regions = 64;
  int64_t client_shm_max_bytes = int64_t{16} << 30;
  // TLS on the gRPC port when both are set (PEM files); with tls_client_ca also mutual TLS:
  // clients must present a certificate signed by that CA.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // When set, every call needs "authorization: Bearer <token>" with the file's token
  // (surrounding whitespace ignored); health checks and reflection are exempt. The file is read
  // again when it changes (checked every second) and on ReloadAuthToken() (SIGHUP); the
  // previous token stays valid for auth_token_grace after a change.
  std::string auth_token_file;
  std::chrono::milliseconds auth_token_grace{std::chrono::minutes(5)};
};

// The version this build reports (project version from CMake).
const char* Version();

// Bounds of the options a server accepts (Server::Start refuses anything outside them).
inline constexpr int kMaxThreads = 1024;
inline constexpr int kMaxHttpThreads = 256;
inline constexpr int kMaxHttpConnections = 1 << 20;
inline constexpr int64_t kMaxBatchRows = int64_t{1} << 20;
inline constexpr int64_t kMaxQueueSize = int64_t{1} << 20;
inline constexpr std::chrono::microseconds kMaxQueueDelay = std::chrono::seconds(60);
inline constexpr std::chrono::microseconds kMaxBulkChunk = std::chrono::seconds(10);
inline constexpr int64_t kMinMessageBytes = 1024;
inline constexpr int64_t kMaxMessageBytes = 2147483647;  // gRPC's limits are ints
inline constexpr std::chrono::milliseconds kMaxShutdownGrace = std::chrono::hours(1);
inline constexpr int64_t kMinInflightBytes = int64_t{1} << 20;
inline constexpr int64_t kMinTransportMemoryBytes = int64_t{16} << 20;
inline constexpr std::chrono::milliseconds kMaxAuthTokenGrace = std::chrono::hours(24);
inline constexpr std::chrono::milliseconds kMinIoTimeout{100};
inline constexpr std::chrono::milliseconds kMaxIoTimeout = std::chrono::hours(1);
inline constexpr int64_t kMinTransferRate = 1024;
inline constexpr std::chrono::milliseconds kMaxBudgetWait = std::chrono::minutes(10);

// OK when every option is within its bounds; else INVALID_ARGUMENT naming the flag, the value
// and what is allowed, e.g. "--max_batch_rows=0: must be 1 to 1048576".
absl::Status ValidateServerOptions(const ServerOptions& options);

class Server {
 public:
  // With the backends `options` asks for (MakeBackends).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  // With `backends` made by the caller (an application that embeds the server and brings its
  // own Backend); `options.backend` and `options.devices` are not used.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, std::vector<std::unique_ptr<Backend>> backends);
  ~Server();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }  // 0 without a metrics endpoint
  int http_port() const { return http_port_; }        // 0 without the HTTP binding
  const std::string& backend_name() const { return backend_name_; }
  const std::vector<std::string>& devices() const { return devices_; }

  // Graceful and idempotent: health turns NOT_SERVING, new calls get UNAVAILABLE from the
  // service, streams end after answering what they sent, every accepted request is answered
  // (within the grace period, after which what is left is cancelled); then gRPC stops, ending
  // health watches, reflection streams and idle connections at once, and the workers stop.
  void Shutdown();

  // Reads --auth_token_file again now (SIGHUP); OK and nothing else without one. An unreadable
  // or empty file keeps the current token and is returned as the error.
  absl::Status ReloadAuthToken();

 private:
  Server() = default;
  void WatchTokenFile();

  ServerOptions options_;
  std::unique_ptr<TokenStore> tokens_;  // outlives grpc_server_, whose credentials use it
  std::thread token_watcher_;
  absl::Notification stop_watching_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<InferenceCore> core_;
  std::unique_ptr<ZlprV1Service> zlpr_v1_;
  std::unique_ptr<v1::ZlprService::CallbackService> echo_;
  std::unique_ptr<SharedMemoryRegistry> shared_memory_;  // outlives the services that use it
  std::unique_ptr<oip::InferenceService> inference_;
  std::unique_ptr<grpc::Server> grpc_server_;
  // grpc_server_ for the workers, which turn its health NOT_SERVING when no backend can
  // compute (published once it is built; it lives until the workers are joined).
  std::atomic<grpc::Server*> serving_{nullptr};
  std::unique_ptr<oip::HttpRoutes> http_routes_;  // outlives http_, which calls it
  std::unique_ptr<http::FrontEnd> http_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<Reclaimer> reclaimer_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  int http_port_ = 0;
  std::string backend_name_;
  std::vector<std::string> devices_;
  bool shut_down_ = false;
};

// The backends `options` asks for: CUDA (one per device) or one CPU backend.
absl::StatusOr<std::vector<std::unique_ptr<Backend>>> MakeBackends(const ServerOptions& options);

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_SERVER_H_
