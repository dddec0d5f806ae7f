// Server: assembly, start-up and graceful shutdown.
#include "server/server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/address.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "kernels/thread_pool.h"
#include "openssl/err.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "prometheus/text_serializer.h"
#include "server/grpc/credentials.h"
#include "server/zlpr_v1/echo_service.h"

#ifndef ZLPR_VERSION
#define ZLPR_VERSION "0.0.0-dev"
#endif

namespace zlpr::server {

const char* Version() { return ZLPR_VERSION; }

namespace {

// Shutdown, once every accepted call is done. gRPC's Shutdown cancels at once the calls it has
// read but not yet handed to a reactor, and gives no event for when there are none left: calls
// on their way in get kDispatchSettle to reach the core (which answers them UNAVAILABLE; without
// it about one call in a hundred sent just before SIGTERM ended CANCELLED, ShutdownTest). Then
// the HTTP binding's last answers and gRPC's last statuses get kStatusFlush; what is left after
// (health watches, reflection streams, idle connections) is cancelled.
constexpr std::chrono::milliseconds kDispatchSettle{100};
constexpr std::chrono::milliseconds kStatusFlush{100};

// How often the token file is checked for a new token, and the reclaimer's period and the
// freed bytes that make it trim (MemoryBudget's Reclaimer).
constexpr std::chrono::seconds kTokenPollPeriod{1};
constexpr std::chrono::seconds kReclaimPeriod{1};
constexpr int64_t kReclaimMinBytes = int64_t{64} << 20;

// The metrics endpoint's serving threads and its per-read/write timeout (see Server::Start).
constexpr int kMetricsThreads = 16;
constexpr int kMetricsTimeoutMs = 2000;

// "host:port" (or "[v6]:port"): the port, when there is a numeric one, must be 0 to 65535.
// Other forms gRPC accepts (unix:PATH) are left to gRPC.
absl::Status CheckAddress(const char* flag, const std::string& address, bool may_be_empty) {
  if (address.empty()) {
    if (may_be_empty) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": empty; use HOST:PORT"));
  }
  if (absl::StartsWith(address, "unix:")) return absl::OkStatus();
  const size_t colon = address.rfind(':');
  const std::string port = colon == std::string::npos ? "" : address.substr(colon + 1);
  int value = -1;
  if (port.empty() || port.size() > 5 || !absl::SimpleAtoi(port, &value) || value < 0 ||
      value > 65535 || port.find_first_not_of("0123456789") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", address, ": expected HOST:PORT with a port from 0 to 65535"));
  }
  return absl::OkStatus();
}

// Seconds as a flag takes them: whole seconds without a fraction.
std::string SecondsText(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return absl::StrCat(d.count() / 1000);
  return absl::StrCat(d.count() / 1000.0);
}

// A duration flag given in seconds (--NAME_s).
absl::Status CheckSeconds(const char* flag, std::chrono::milliseconds value,
                          std::chrono::milliseconds low, std::chrono::milliseconds high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", SecondsText(value), ": must be ",
                                                 SecondsText(low), " to ", SecondsText(high)));
}

template <typename T>
absl::Status CheckRange(const char* flag, T value, T low, T high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, "=", value, ": must be ", low, " to ", high));
}

// Protobuf logs a line for every message it cannot parse because a string field is not UTF-8,
// so a client could make the server write one line per request. Its lines are passed through
// at most kProtobufLogBurst per kProtobufLogWindow; the rest are counted and the count is
// reported with the next line that passes.
constexpr int kProtobufLogBurst = 5;
constexpr absl::Duration kProtobufLogWindow = absl::Seconds(10);

void RateLimitedProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                            const std::string& message) {
  static absl::Mutex mu(absl::kConstInit);
  static absl::Time window_start = absl::InfinitePast();
  static int in_window = 0;
  static int64_t suppressed = 0;
  int64_t report_suppressed = 0;
  {
    absl::MutexLock lock(&mu);
    const absl::Time now = absl::Now();
    if (now - window_start >= kProtobufLogWindow) {
      window_start = now;
      in_window = 0;
    }
    if (level < google::protobuf::LOGLEVEL_FATAL && ++in_window > kProtobufLogBurst) {
      ++suppressed;
      return;
    }
    report_suppressed = std::exchange(suppressed, 0);
  }
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s", kLevels[level], file, line, message.c_str());
  if (report_suppressed > 0) {
    std::fprintf(stderr, " (%lld similar lines suppressed)",
                 static_cast<long long>(report_suppressed));
  }
  std::fprintf(stderr, "\n");
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& o) {
  ZLPR_RETURN_IF_ERROR(CheckAddress("grpc_address", o.grpc_address, /*may_be_empty=*/false));
  ZLPR_RETURN_IF_ERROR(CheckAddress("metrics_address", o.metrics_address, /*may_be_empty=*/true));
  ZLPR_RETURN_IF_ERROR(CheckAddress("http_address", o.http_address, /*may_be_empty=*/true));
  if (absl::StartsWith(o.http_address, "unix:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address=", o.http_address, ": must be HOST:PORT"));
  }
  ZLPR_RETURN_IF_ERROR(CheckRange("http_threads", o.http_threads, 0, kMaxHttpThreads));
  ZLPR_RETURN_IF_ERROR(
      CheckRange("http_max_connections", o.http_max_connections, 1, kMaxHttpConnections));
  ZLPR_RETURN_IF_ERROR(
      CheckSeconds("http_timeout_s", o.http_timeout, kMinIoTimeout, kMaxIoTimeout));
  ZLPR_RETURN_IF_ERROR(
      CheckSeconds("write_timeout_s", o.write_timeout, kMinIoTimeout, kMaxIoTimeout));
  ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("min_transfer_bytes_per_s", o.min_transfer_rate,
                                           kMinTransferRate, int64_t{1} << 40));
  ZLPR_RETURN_IF_ERROR(CheckSeconds("http_budget_wait_s", o.http_budget_wait,
                                    std::chrono::milliseconds(0), kMaxBudgetWait));
  ZLPR_RETURN_IF_ERROR(CheckSeconds("grpc_keepalive_s", o.grpc_keepalive,
                                    std::chrono::milliseconds(1000), std::chrono::hours(24)));
  ZLPR_RETURN_IF_ERROR(CheckSeconds("grpc_keepalive_timeout_s", o.grpc_keepalive_timeout,
                                    std::chrono::milliseconds(1000), std::chrono::hours(1)));
  for (const auto& [flag, value] :
       {std::pair{"grpc_max_connection_idle_s", o.grpc_max_connection_idle},
        std::pair{"grpc_max_connection_age_s", o.grpc_max_connection_age},
        std::pair{"grpc_max_connection_age_grace_s", o.grpc_max_connection_age_grace}}) {
    ZLPR_RETURN_IF_ERROR(
        CheckSeconds(flag, value, std::chrono::milliseconds(0), std::chrono::hours(24 * 365)));
  }
  ZLPR_RETURN_IF_ERROR(CheckRange("threads", o.threads, 0, kMaxThreads));
  ZLPR_RETURN_IF_ERROR(
      CheckRange<int64_t>("max_batch_rows", o.batcher.max_batch_rows, 1, kMaxBatchRows));
  ZLPR_RETURN_IF_ERROR(
      CheckRange<int64_t>("max_queue_size", o.batcher.max_queue_size, 1, kMaxQueueSize));
  ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("max_queue_delay_us", o.batcher.max_queue_delay.count(),
                                           0, kMaxQueueDelay.count()));
  ZLPR_RETURN_IF_ERROR(
      CheckRange<int64_t>("bulk_chunk_us", o.bulk_chunk.count(), 0, kMaxBulkChunk.count()));
  ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("max_message_bytes", o.max_message_bytes,
                                           kMinMessageBytes, kMaxMessageBytes));
  ZLPR_RETURN_IF_ERROR(CheckRange("client_shm_max_regions", o.client_shm_max_regions, 1, 4096));
  ZLPR_RETURN_IF_ERROR(
      CheckRange<int64_t>("client_shm_max_bytes", o.client_shm_max_bytes, 4096, int64_t{1} << 46));
  if (o.shutdown_grace.count() < 0 || o.shutdown_grace > kMaxShutdownGrace) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shutdown_grace_s=", o.shutdown_grace.count() / 1000.0, ": must be 0 to ",
                     std::chrono::duration<double>(kMaxShutdownGrace).count()));
  }
  if (o.max_inflight_bytes != 0) {
    ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("max_inflight_bytes", o.max_inflight_bytes,
                                             kMinInflightBytes, int64_t{1} << 50));
  }
  if (o.transport_memory_bytes != 0) {
    ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("transport_memory_bytes", o.transport_memory_bytes,
                                             kMinTransportMemoryBytes, int64_t{1} << 50));
  }
  if (o.auth_token_grace.count() < 0 || o.auth_token_grace > kMaxAuthTokenGrace) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth_token_grace_s=", o.auth_token_grace.count() / 1000.0,
                     ": must be 0 to ", std::chrono::duration<double>(kMaxAuthTokenGrace).count()));
  }
  for (size_t i = 0; i < o.devices.size(); ++i) {
    ZLPR_RETURN_IF_ERROR(CheckRange("devices", o.devices[i], 0, 1023));
    // One backend per device: two would share its CUDA context (a fault that breaks one
    // breaks both) and its memory.
    for (size_t j = 0; j < i; ++j) {
      if (o.devices[j] == o.devices[i]) {
        return absl::InvalidArgumentError(
            absl::StrCat("--devices: device ", o.devices[i], " is listed twice"));
      }
    }
  }
  ZLPR_RETURN_IF_ERROR(CheckRange<int64_t>("cuda_memory_limit_bytes", o.cuda_memory_limit_bytes, 0,
                                           int64_t{1} << 50));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::unique_ptr<Backend>>> MakeBackends(const ServerOptions& options) {
  std::vector<std::unique_ptr<Backend>> backends;
  const std::string& kind = options.backend;
  if (kind != "auto" && kind != "cpu" && kind != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend=", kind, ": expected auto, cpu or cuda"));
  }
  const int visible = CudaDeviceCount();
  if (kind == "cuda" || (kind == "auto" && visible > 0)) {
    std::vector<int> devices = options.devices;
    if (devices.empty()) {
      for (int d = 0; d < visible; ++d) devices.push_back(d);
    }
    if (devices.empty()) {
      return absl::FailedPreconditionError(
          CudaBuilt() ? "--backend=cuda: no CUDA device is visible"
                      : "--backend=cuda: this build has no CUDA backend (ZLPR_CUDA=OFF)");
    }
    for (int d : devices) {
      ZLPR_ASSIGN_OR_RETURN(
          auto backend, NewCudaBackend(d, {.memory_limit_bytes = options.cuda_memory_limit_bytes}));
      backends.push_back(std::move(backend));
    }
    return backends;
  }
  CpuOptions cpu{.threads = options.threads};
  if (kind == "auto" && CudaBuilt()) {
    // A CUDA build (e.g. the CUDA image) on a machine without a usable GPU: say so, in the log
    // and in the devices GetServerInfo lists, rather than look like a CPU build.
    const std::string why = CudaUnavailableReason();
    cpu.note = absl::StrCat("CUDA fallback: ", why);
    std::fprintf(stderr,
                 "zlpr-server: this build has the CUDA backend, but no CUDA device can be used "
                 "(%s): serving on the CPU\n",
                 why.c_str());
  }
  backends.push_back(NewCpuBackend(cpu));
  return backends;
}

namespace {

// The contents of the file a flag names; the error names the flag.
absl::StatusOr<std::string> ReadFlagFile(const std::string& flag, const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFile(path);
  if (!contents.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(flag, "=", contents.status().message()));
  }
  return contents;
}

// The HTTP binding's I/O threads (and as many codec threads): few by default, they only parse
// and format, and more contend with the compute threads (measured: 1 thread answered a 1 x 1000
// Predict at concurrency 1 in 316 us, 2 in 430 us on 2 cores).
int HttpThreads(const ServerOptions& o) {
  return o.http_threads != 0 ? o.http_threads : std::max(1, zlpr::internal::UsableCpus() / 4);
}

// Why nothing can listen on `address` (HOST:PORT), found by trying it: "port 9464 is in use",
// or the system's reason. Empty when a listener could be opened there after all.
std::string ListenProblem(const std::string& address) {
  if (absl::StartsWith(address, "unix:")) return "";  // not a port to try
  const auto host_port = SplitHostPort(address);
  if (!host_port) return "use HOST:PORT";
  const auto& [host, port] = *host_port;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() || host == "*" ? nullptr : host.c_str(), port.c_str(),
                                 &hints, &found);
      rc != 0) {
    return absl::StrCat("cannot resolve it: ", gai_strerror(rc));
  }
  std::string problem;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      problem = errno == EADDRINUSE ? absl::StrCat("port ", port,
                                                   " is in use (another zlpr-server? choose "
                                                   "another port, or 0 for a free one)")
                                    : std::string(std::strerror(errno));
    }
    close(fd);
    if (!problem.empty()) break;
  }
  freeaddrinfo(found);
  return problem;
}

// The first certificate or key of a PEM text, parsed by OpenSSL; null when there is none.
X509* FirstCertificate(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return cert;
}

// The TLS files make sense together, checked before anything listens: otherwise gRPC only
// fails to open the port, and the message would blame the address.
absl::Status CheckTls(const TlsPem& tls, const ServerOptions& o) {
  X509* cert = FirstCertificate(tls.cert_chain);
  if (cert == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert=", o.tls_cert_file, ": no PEM certificate in it"));
  }
  BIO* bio = BIO_new_mem_buf(tls.private_key.data(), static_cast<int>(tls.private_key.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  absl::Status st;
  if (key == nullptr) {
    st = absl::InvalidArgumentError(absl::StrCat(
        "--tls_key=", o.tls_key_file, ": no PEM private key in it (or it is encrypted)"));
  } else if (X509_check_private_key(cert, key) != 1) {
    st = absl::InvalidArgumentError(absl::StrCat("--tls_key=", o.tls_key_file,
                                                 ": this key does not belong to the certificate "
                                                 "of --tls_cert=",
                                                 o.tls_cert_file));
  }
  EVP_PKEY_free(key);
  X509_free(cert);
  if (st.ok() && !tls.client_ca.empty()) {
    X509* ca = FirstCertificate(tls.client_ca);
    if (ca == nullptr) {
      st = absl::InvalidArgumentError(
          absl::StrCat("--tls_client_ca=", o.tls_client_ca_file, ": no PEM certificate in it"));
    }
    X509_free(ca);
  }
  ERR_clear_error();
  return st;
}

absl::StatusOr<TlsPem> ReadTls(const ServerOptions& o) {
  TlsPem tls;
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (o.tls_cert_file.empty()) {
    if (!o.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    }
    return tls;
  }
  ZLPR_ASSIGN_OR_RETURN(tls.cert_chain, ReadFlagFile("--tls_cert", o.tls_cert_file));
  ZLPR_ASSIGN_OR_RETURN(tls.private_key, ReadFlagFile("--tls_key", o.tls_key_file));
  if (!o.tls_client_ca_file.empty()) {
    ZLPR_ASSIGN_OR_RETURN(tls.client_ca, ReadFlagFile("--tls_client_ca", o.tls_client_ca_file));
  }
  ZLPR_RETURN_IF_ERROR(CheckTls(tls, o));
  return tls;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  ZLPR_RETURN_IF_ERROR(ValidateServerOptions(options));
  ZLPR_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Backend>> backends, MakeBackends(options));
  return Start(options, std::move(backends));
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, std::vector<std::unique_ptr<Backend>> backends) {
  ZLPR_RETURN_IF_ERROR(ValidateServerOptions(options));
  if (backends.empty()) return absl::InvalidArgumentError("no backend to serve with");
  google::protobuf::SetLogHandler(RateLimitedProtobufLog);
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  s->backend_name_ = BackendKindName(backends.front()->kind());
  std::vector<int> cuda_devices;
  for (size_t i = 0; i < backends.size(); ++i) {
    s->devices_.push_back(backends[i]->Describe());
    if (backends[i]->kind() == BackendKind::kCuda) {
      cuda_devices.push_back(options.devices.empty() ? static_cast<int>(i) : options.devices[i]);
    }
  }

  s->registry_ = std::make_shared<prometheus::Registry>();
  s->metrics_ = std::make_unique<Metrics>(*s->registry_, Version(), s->backend_name_, cuda_devices);
  CoreOptions core_options{.batcher = options.batcher,
                           .chunks = {.bulk_chunk = options.bulk_chunk},
                           .background_policy = options.bulk_threads,
                           .max_message_bytes = options.max_message_bytes,
                           .max_inflight_bytes = options.max_inflight_bytes != 0
                                                     ? options.max_inflight_bytes
                                                     : DefaultMemoryShare(),
                           .write_timeout = options.write_timeout,
                           .min_transfer_rate = options.min_transfer_rate};
  if (!options.auth_token_file.empty()) {
    ZLPR_ASSIGN_OR_RETURN(
        s->tokens_,
        TokenStore::FromFile(options.auth_token_file, absl::FromChrono(options.auth_token_grace)));
  }
  ZLPR_ASSIGN_OR_RETURN(const TlsPem tls, ReadTls(options));
  Metrics* metrics = s->metrics_.get();
  auto credentials = ServerCredentials(
      tls, s->tokens_.get(), [metrics] { metrics->OnRejected(Reject::kUnauthenticated); });
  s->core_ = std::make_unique<InferenceCore>(core_options, std::move(backends), metrics);
  // Freed request memory goes back to the system once the load has gone (see Reclaimer).
  s->reclaimer_ =
      std::make_unique<Reclaimer>(&s->core_->budget(), kReclaimPeriod, kReclaimMinBytes);

  if (!options.metrics_address.empty()) {
    try {
      // CivetWeb serves one connection per thread and waits 30 s on a silent one by default,
      // so two idle, half-sent requests would blind the scrapes: more threads, and a read or
      // write that stalls for kMetricsTimeoutMs closes its connection.
      s->exposer_ = std::make_unique<prometheus::Exposer>(
          std::vector<std::string>{"listening_ports", options.metrics_address, "num_threads",
                                   std::to_string(kMetricsThreads), "request_timeout_ms",
                                   std::to_string(kMetricsTimeoutMs)});
    } catch (const std::exception& e) {
      // CivetWeb's own message ("null context when constructing CivetServer") says nothing of
      // the cause: find it by trying the address.
      std::string why = ListenProblem(options.metrics_address);
      return absl::UnavailableError(absl::StrCat("--metrics_address=", options.metrics_address,
                                                 ": could not listen there (",
                                                 why.empty() ? e.what() : why, ")"));
    }
    s->exposer_->RegisterCollectable(s->registry_);
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? 0 : ports.front();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Two servers on one port would split traffic silently: make the second fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A peer that vanished (no answer to a ping) is dropped with its calls; clients may ping
  // every 10 s themselves (their keepalive) without being cut off for it.
  const auto ms = [](std::chrono::milliseconds d) {
    return static_cast<int>(std::min<int64_t>(d.count(), std::numeric_limits<int>::max()));
  };
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ms(options.grpc_keepalive));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms(options.grpc_keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  if (options.grpc_max_connection_idle.count() > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               ms(options.grpc_max_connection_idle));
  }
  if (options.grpc_max_connection_age.count() > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, ms(options.grpc_max_connection_age));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               ms(options.grpc_max_connection_age_grace));
  }
  builder.AddListeningPort(options.grpc_address, credentials, &s->grpc_port_);
  // The transport's own memory (connections, messages being received or sent) is bounded too:
  // under pressure gRPC shrinks its flow-control windows, so clients send more slowly.
  grpc::ResourceQuota quota("zlpr-server");
  quota.Resize(static_cast<size_t>(
      options.transport_memory_bytes != 0 ? options.transport_memory_bytes : DefaultMemoryShare()));
  builder.SetResourceQuota(quota);
  if (options.echo) {
    s->echo_ = std::make_unique<EchoService>();
    builder.RegisterService(s->echo_.get());
    s->backend_name_ = "echo";
    s->devices_ = {"echo (no compute)"};
  } else {
    s->zlpr_v1_ =
        std::make_unique<ZlprV1Service>(s->core_.get(), ZlprV1Options{.version = Version()});
    builder.RegisterService(s->zlpr_v1_.get());
    // The Open Inference Protocol on the same port, over the same core.
    if (options.allow_client_shm) {
      s->shared_memory_ = std::make_unique<SharedMemoryRegistry>(
          SharedMemoryLimits{.max_regions = options.client_shm_max_regions,
                             .max_bytes = options.client_shm_max_bytes});
    }
    s->inference_ = std::make_unique<oip::InferenceService>(
        s->core_.get(), oip::GrpcOptions{.version = Version(),
                                         .shared_memory = s->shared_memory_.get(),
                                         .cuda_backend = s->backend_name_ == "cuda"});
    builder.RegisterService(s->inference_.get());
  }
  const int max_bytes = static_cast<int>(options.max_message_bytes);  // validated <= INT32_MAX
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  s->core_->OnUnusable([server = s.get()](const absl::Status& why) {
    // No backend can compute any more: health checks say so (NOT_SERVING; the Open Inference
    // Protocol's readiness too), so that load balancers and Kubernetes send traffic elsewhere
    // and restart the process; requests meanwhile get UNAVAILABLE.
    std::fprintf(stderr, "zlpr-server: no backend can compute (%s): NOT_SERVING\n",
                 std::string(why.message()).c_str());
    if (grpc::Server* grpc = server->serving_.load(std::memory_order_acquire); grpc != nullptr) {
      grpc->GetHealthCheckService()->SetServingStatus(false);
    }
  });
  if (!options.http_address.empty() && !options.echo) {
    oip::HttpRoutesOptions routes{.version = Version(),
                                  .codec_threads = HttpThreads(options),
                                  .shared_memory = s->shared_memory_.get(),
                                  .cuda_backend = s->backend_name_ == "cuda"};
    if (options.http_metrics) {
      routes.metrics_text = [registry = s->registry_] {
        return prometheus::TextSerializer().Serialize(registry->Collect());
      };
    }
    s->http_routes_ = std::make_unique<oip::HttpRoutes>(s->core_.get(), std::move(routes));
  }
  s->core_->Start();
  s->grpc_server_ = builder.BuildAndStart();
  s->serving_.store(s->grpc_server_.get(), std::memory_order_release);
  if (s->grpc_server_ == nullptr || s->grpc_port_ == 0) {
    s->core_->Stop();
    const std::string why = ListenProblem(options.grpc_address);
    return absl::UnavailableError(absl::StrCat("--grpc_address=", options.grpc_address,
                                               ": could not listen there",
                                               why.empty() ? "" : absl::StrCat(" (", why, ")")));
  }
  if (s->http_routes_ != nullptr) {
    http::Options http{.address = options.http_address,
                       .threads = HttpThreads(options),
                       .max_connections = options.http_max_connections,
                       .io_timeout = options.http_timeout,
                       .body_timeout = options.http_timeout,
                       .write_timeout = options.write_timeout,
                       .min_bytes_per_second = options.min_transfer_rate,
                       .budget_wait = options.http_budget_wait,
                       .max_message_bytes = options.max_message_bytes,
                       .tls_cert_file = options.tls_cert_file,
                       .tls_key_file = options.tls_key_file,
                       .tls_client_ca_file = options.tls_client_ca_file,
                       .tokens = s->tokens_.get()};
    auto front = http::FrontEnd::Start(http, s->core_.get(), s->http_routes_.get());
    // On failure ~Server shuts down what has started (Shutdown() does it in order).
    if (!front.ok()) return front.status();
    s->http_ = *std::move(front);
    s->http_port_ = s->http_->port();
  }
  grpc::HealthCheckServiceInterface* health = s->grpc_server_->GetHealthCheckService();
  health->SetServingStatus("zlpr.v1.ZlprService", true);
  health->SetServingStatus(true);
  if (s->tokens_ != nullptr) {
    Server* server = s.get();
    s->token_watcher_ = std::thread([server] { server->WatchTokenFile(); });
  }
  return s;
}

absl::Status Server::ReloadAuthToken() {
  if (tokens_ == nullptr) return absl::OkStatus();
  absl::StatusOr<bool> changed = tokens_->Reload();
  if (!changed.ok()) {
    std::fprintf(stderr, "zlpr-server: keeping the current token: %s\n",
                 std::string(changed.status().message()).c_str());
    return changed.status();
  }
  if (*changed) {
    std::fprintf(
        stderr, "zlpr-server: new bearer token from %s; the previous one is accepted for %.0f s\n",
        tokens_->path().c_str(), std::chrono::duration<double>(options_.auth_token_grace).count());
  }
  return absl::OkStatus();
}

void Server::WatchTokenFile() {
  while (!stop_watching_.WaitForNotificationWithTimeout(absl::FromChrono(kTokenPollPeriod))) {
    ReloadAuthToken().IgnoreError();
  }
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (token_watcher_.joinable()) {
    stop_watching_.Notify();
    token_watcher_.join();
  }
  if (grpc_server_ != nullptr) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    const absl::Time deadline = absl::Now() + absl::FromChrono(options_.shutdown_grace);
    // The service refuses new work itself (UNAVAILABLE) while gRPC keeps serving, so nothing
    // gRPC has received is cancelled; the work in flight finishes (the workers still run).
    core_->BeginShutdown();
    core_->WaitForAcceptedCalls(deadline);
    absl::SleepFor(std::min(absl::FromChrono(kDispatchSettle), deadline - absl::Now()));
    // The HTTP binding's last responses get kStatusFlush to be written; then its connections
    // close (its requests were counted with the calls above; new ones got 503 meanwhile).
    if (http_ != nullptr) http_->Stop(kStatusFlush);
    // Only then does gRPC stop, so the exit takes as long as the work in flight, not as long
    // as the grace.
    grpc_server_->Shutdown(std::chrono::system_clock::now() + kStatusFlush);
    grpc_server_->Wait();
  }
  if (core_ != nullptr) core_->Stop();  // also when start-up failed half-way
}

Server::~Server() { Shutdown(); }

}  // namespace zlpr::server
