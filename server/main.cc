// zlpr-server: flags in, Server out; SIGTERM or SIGINT shut it down gracefully (exit 0), SIGHUP
// reads --auth_token_file again.
#include <malloc.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "server/server.h"

ABSL_FLAG(std::string, grpc_address, "0.0.0.0:50051",
          "Address for the gRPC API (zlpr.v1.ZlprService, grpc.health.v1.Health, reflection); "
          "port 0 picks a free port");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "Address of the Prometheus endpoint (GET /metrics); empty disables it");
ABSL_FLAG(std::string, http_address, "",
          "Address for the Open Inference Protocol's HTTP/REST binding (KServe v2: /v2/...), "
          "with the same TLS and bearer token as gRPC; empty (the default) disables it");
ABSL_FLAG(int, http_threads, 0,
          "I/O threads of the HTTP binding (connections are served asynchronously; a request "
          "being computed holds none); 0: one per 4 usable CPUs (affinity and cgroup CPU limit), "
          "at least 1");
ABSL_FLAG(int, http_max_connections, 1024,
          "HTTP connections open at once; more are closed when accepted");
ABSL_FLAG(bool, http_metrics, false,
          "Also serve GET /metrics on the HTTP port, behind its TLS and bearer token (then "
          "--metrics_address= turns the plaintext metrics port off)");
ABSL_FLAG(double, http_timeout_s, 10,
          "HTTP: seconds for a request's header, for an idle keep-alive connection, and for a "
          "body's first bytes; a body must then arrive at --min_transfer_bytes_per_s or faster");
ABSL_FLAG(double, http_budget_wait_s, 30,
          "HTTP: seconds a body waits, unread and in turn, for the memory for requests in "
          "flight (--max_inflight_bytes) before it is answered 429 with Retry-After (a waiting "
          "body costs the server a connection; a refused one costs the client its resending)");
ABSL_FLAG(double, write_timeout_s, 20,
          "Seconds a response may take to be written, plus its size at "
          "--min_transfer_bytes_per_s: a call (gRPC or HTTP) whose client does not read its "
          "response in that time is cancelled, and the memory it held is returned");
ABSL_FLAG(double, grpc_keepalive_s, 60,
          "gRPC: seconds a connection may be idle before the server pings it; one that does not "
          "answer within --grpc_keepalive_timeout_s is closed with its calls");
ABSL_FLAG(double, grpc_keepalive_timeout_s, 20, "gRPC: seconds to wait for a ping's answer");
ABSL_FLAG(double, grpc_max_connection_idle_s, 1800,
          "gRPC: a connection without calls for this long is closed (clients reconnect when "
          "they need to); 0: never");
ABSL_FLAG(double, grpc_max_connection_age_s, 0,
          "gRPC: every connection is asked to reconnect after this long (spreads clients over "
          "new replicas), its calls ended --grpc_max_connection_age_grace_s later; 0: never "
          "(long-lived training streams would be ended too)");
ABSL_FLAG(double, grpc_max_connection_age_grace_s, 60,
          "gRPC: seconds the calls of a connection past --grpc_max_connection_age_s may take");
ABSL_FLAG(int64_t, min_transfer_bytes_per_s, 1 << 20,
          "The slowest rate at which a client may send an HTTP body or read a response");
ABSL_FLAG(std::string, backend, "auto",
          "auto (CUDA when a device is visible, else CPU), cpu or cuda");
ABSL_FLAG(std::string, devices, "",
          "Comma-separated CUDA device ids, one worker each; empty: every visible device");
ABSL_FLAG(int64_t, max_batch_rows, 256,
          "A batch is cut once this many rows wait; a larger request runs alone; 1 turns "
          "batching off");
ABSL_FLAG(int64_t, max_queue_delay_us, 250,
          "Longest time the oldest queued request waits for a batch to fill, in microseconds");
ABSL_FLAG(bool, adaptive_queue_delay, true,
          "Wait max_queue_delay_us only while the load makes it pay off (the previous batch "
          "merged several requests); a lone caller's request is cut at once. false: always wait");
ABSL_FLAG(int64_t, max_queue_size, 1024,
          "Queued requests per operation and class (interactive, bulk) before new ones get "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, bulk_chunk_us, 1000,
          "Kernel time of one chunk of a bulk batch, in microseconds, where one worker computes "
          "both classes (a GPU; on the CPU, a bulk batch the interactive worker stands in for): "
          "interactive requests run between chunks, so they wait for one chunk at most, never a "
          "whole bulk batch. 0: bulk batches are computed whole");
ABSL_FLAG(std::string, bulk_threads, "idle",
          "OS priority of the bulk work's threads: the CPU backend's bulk worker, the threads "
          "that parse requests of 1 MiB or more and serialize bulk responses: idle (SCHED_IDLE: "
          "only when nothing else wants the CPU), nice (nice 19) or normal (the server's own; no "
          "isolation)");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20,
          "Largest request or response message in bytes (clients must allow the same)");
ABSL_FLAG(int64_t, max_inflight_bytes, 0,
          "Bytes all requests in flight may hold together (each about twice its message plus "
          "twice its response); a request that does not fit gets RESOURCE_EXHAUSTED. 0: a "
          "sixteenth of the memory available (the cgroup limit in a container), at least 256 MiB");
ABSL_FLAG(int64_t, transport_memory_bytes, 0,
          "gRPC's resource quota: memory for connections and messages being received or sent "
          "(under pressure it slows senders down); 0: same default as --max_inflight_bytes");
ABSL_FLAG(double, shutdown_grace_s, 10.0,
          "On SIGTERM/SIGINT, seconds to finish accepted requests before cancelling the rest");
ABSL_FLAG(int64_t, cuda_memory_limit_bytes, 0,
          "Device memory each CUDA backend may hold for its buffers; 0: no limit but the "
          "device's. A batch that needs more is split into its requests, and a request that "
          "needs more by itself gets RESOURCE_EXHAUSTED");
ABSL_FLAG(int, threads, 0,
          "Threads of the CPU backend; 0: one per CPU this process may use (its affinity and "
          "its cgroup's CPU limit)");
ABSL_FLAG(bool, allow_client_shm, false,
          "Serve the Open Inference Protocol's system shared-memory extension: callers on the "
          "same host register POSIX shared-memory regions and pass tensors through them instead "
          "of the message (for a trainer beside its loss server). They need the bearer token "
          "when one is set; run the server as the callers' user");
ABSL_FLAG(int, client_shm_max_regions, 64, "Shared-memory regions registered at once");
ABSL_FLAG(int64_t, client_shm_max_bytes, int64_t{16} << 30,
          "Bytes of the shared-memory regions registered at once (mapped address space; the "
          "memory budget charges only the server's own copies)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mutual TLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "File with a bearer token that calls must send as \"authorization: Bearer <token>\" "
          "(UNAUTHENTICATED from the headers otherwise; health checks and reflection are exempt). "
          "Read again when it changes and on SIGHUP");
ABSL_FLAG(double, auth_token_grace_s, 300,
          "After the token file changes, seconds the previous token is still accepted");
ABSL_FLAG(bool, echo, false,
          "Benchmark baseline: answer every call with an equally sized response without "
          "validating, batching or computing (zlpr-bench --baseline=echo)");

namespace {

// Every flag defined in this file (taken from the flag registry, so none is forgotten).
std::vector<std::string> ServerFlagNames() {
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    // (Filename() is normalized by the usage config set in main, to "zlpr-server".)
    if (absl::EndsWith(flag->Filename(), "server/main.cc") || flag->Filename() == "zlpr-server") {
      names.emplace_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string EnvName(const std::string& flag) {
  std::string env = "ZLPR_";
  for (char c : flag) env += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return env;
}

// Variables Kubernetes sets for every Service of the namespace (a Service "zlpr-server" gives
// ZLPR_SERVER_SERVICE_HOST, ZLPR_SERVER_PORT_50051_TCP_ADDR, ...): not misspelled flags.
bool IsServiceLink(const std::string& name) {
  static const std::regex kLink(
      R"(.*_(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?))");
  return std::regex_match(name, kLink);
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The flags whose value came from the environment: (flag, variable).
std::vector<std::pair<std::string, std::string>>& EnvironmentFlags() {
  static std::vector<std::pair<std::string, std::string>> flags;
  return flags;
}

// Every flag can also come from the environment as ZLPR_<FLAG> (e.g. ZLPR_MAX_BATCH_ROWS=64),
// for containers; a flag on the command line wins (it is parsed after these are set). A value
// that does not parse is an error naming the variable; a ZLPR_ variable that is no flag's is
// named in a warning (with the closest flag's variable), since it was most likely misspelled.
bool SetFlagsFromEnvironment() {
  const std::vector<std::string> names = ServerFlagNames();
  std::vector<std::string> known;
  for (const std::string& flag : names) {
    const std::string env = EnvName(flag);
    known.push_back(env);
    const char* value = std::getenv(env.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!absl::FindCommandLineFlag(flag)->ParseFrom(value, &error)) {
      std::fprintf(stderr, "zlpr-server: %s=%s (the environment's --%s): %s\n", env.c_str(), value,
                   flag.c_str(), error.c_str());
      return false;
    }
    EnvironmentFlags().emplace_back(flag, env);
  }
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    if (known.empty() || !absl::StartsWith(name, "ZLPR_") || IsServiceLink(name) ||
        std::find(known.begin(), known.end(), name) != known.end()) {
      continue;
    }
    const std::string* closest = &known.front();
    for (const std::string& k : known) {
      if (EditDistance(name, k) < EditDistance(name, *closest)) closest = &k;
    }
    std::fprintf(stderr,
                 "zlpr-server: warning: %s is set but is no flag's variable (ZLPR_<FLAG> sets "
                 "--flag)%s\n",
                 name.c_str(),
                 EditDistance(name, *closest) <= 2
                     ? absl::StrCat("; did you mean ", *closest, "?").c_str()
                     : "; it is ignored");
  }
  return true;
}

// An error about a flag's value, with where the value came from when that was the environment
// and not the command line (which wins): "--max_batch_rows=0: ..." is then also said to be
// ZLPR_MAX_BATCH_ROWS's.
void PrintError(const std::string& message, int argc, char** argv) {
  std::string note;
  for (const auto& [flag, env] : EnvironmentFlags()) {
    if (!absl::StrContains(message, "--" + flag + "=")) continue;
    bool on_command_line = false;
    for (int i = 1; i < argc; ++i) {
      const absl::string_view arg = absl::StripPrefix(absl::StripPrefix(argv[i], "-"), "-");
      on_command_line |= arg == flag || absl::StartsWith(arg, flag + "=");
    }
    if (!on_command_line) note = absl::StrCat(" (the value of ", env, " in the environment)");
  }
  std::fprintf(stderr, "zlpr-server: %s%s\n", message.c_str(), note.c_str());
}

// Seconds as milliseconds, for the bounds check (ValidateServerOptions), which names the flag;
// what is not a finite number of seconds becomes -1 ms, which it refuses.
std::chrono::milliseconds Milliseconds(double seconds) {
  if (!std::isfinite(seconds) || std::abs(seconds) > 1e9) return std::chrono::milliseconds(-1);
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

absl::StatusOr<std::vector<int>> ParseDevices(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) {
      return absl::InvalidArgumentError("--devices: not a device id: " + std::string(part));
    }
    out.push_back(d);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves the ZLPR multi-label loss and multi-label decoding over gRPC.\n"
      "Usage: zlpr-server [--flag=value ...]; --help lists every flag. Each flag can also be\n"
      "set in the environment as ZLPR_<FLAG>, e.g. ZLPR_MAX_BATCH_ROWS=64 (flags win).");
  // Messages of megabytes are allocated and freed on every call: keep them in the heap for
  // reuse instead of fresh mmap()s, whose page faults and zeroing cost more than the copy. The
  // server gives the heap back to the system once the load has gone (MemoryBudget's Reclaimer).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  // Debian builds abseil without NDEBUG, which leaves absl::Mutex's deadlock detector on: every
  // lock of every mutex (gRPC's included) records the lock order in one global graph, under one
  // global lock. The tests keep it (they link the server library, not this file); the server
  // turns it off (bench/RESULTS.md: the server's CPU per request with and without it).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  absl::FlagsUsageConfig usage;
  // --help lists this file's flags (absl's default matches the file name to the binary's).
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "server/main.cc") || path == "zlpr-server";
  };
  // The headers of --help name the program, not the path this binary was built from.
  usage.normalize_filename = [](absl::string_view path) -> std::string {
    return absl::EndsWith(path, "server/main.cc") ? "zlpr-server" : std::string(path);
  };
  usage.version_string = [] {
    return std::string("zlpr-server ") + zlpr::server::Version() + "\n";
  };
  absl::SetFlagsUsageConfig(usage);
  if (!SetFlagsFromEnvironment()) return 2;
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::fprintf(stderr, "zlpr-server: unexpected argument '%s': flags are --name=value\n",
                 positional[1]);
    return 2;
  }
  const double grace_s = absl::GetFlag(FLAGS_shutdown_grace_s);
  if (!std::isfinite(grace_s) || grace_s < 0 || grace_s > 3600) {
    PrintError(absl::StrFormat("--shutdown_grace_s=%g: must be 0 to 3600", grace_s), argc, argv);
    return 2;
  }
  const double token_grace_s = absl::GetFlag(FLAGS_auth_token_grace_s);
  if (!std::isfinite(token_grace_s) || token_grace_s < 0 || token_grace_s > 86400) {
    PrintError(absl::StrFormat("--auth_token_grace_s=%g: must be 0 to 86400", token_grace_s), argc,
               argv);
    return 2;
  }

  // Signals are taken by sigwait() below, never by a handler in another thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  zlpr::server::ServerOptions options;
  options.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.http_address = absl::GetFlag(FLAGS_http_address);
  options.http_threads = absl::GetFlag(FLAGS_http_threads);
  options.http_max_connections = absl::GetFlag(FLAGS_http_max_connections);
  options.http_metrics = absl::GetFlag(FLAGS_http_metrics);
  options.http_timeout = Milliseconds(absl::GetFlag(FLAGS_http_timeout_s));
  options.http_budget_wait = Milliseconds(absl::GetFlag(FLAGS_http_budget_wait_s));
  options.write_timeout = Milliseconds(absl::GetFlag(FLAGS_write_timeout_s));
  options.min_transfer_rate = absl::GetFlag(FLAGS_min_transfer_bytes_per_s);
  options.grpc_keepalive = Milliseconds(absl::GetFlag(FLAGS_grpc_keepalive_s));
  options.grpc_keepalive_timeout = Milliseconds(absl::GetFlag(FLAGS_grpc_keepalive_timeout_s));
  options.grpc_max_connection_idle = Milliseconds(absl::GetFlag(FLAGS_grpc_max_connection_idle_s));
  options.grpc_max_connection_age = Milliseconds(absl::GetFlag(FLAGS_grpc_max_connection_age_s));
  options.grpc_max_connection_age_grace =
      Milliseconds(absl::GetFlag(FLAGS_grpc_max_connection_age_grace_s));
  options.backend = absl::GetFlag(FLAGS_backend);
  auto devices = ParseDevices(absl::GetFlag(FLAGS_devices));
  if (!devices.ok()) {
    PrintError(devices.status().ToString(), argc, argv);
    return 2;
  }
  options.devices = *devices;
  options.cuda_memory_limit_bytes = absl::GetFlag(FLAGS_cuda_memory_limit_bytes);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.batcher.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  options.batcher.max_queue_delay =
      std::chrono::microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  options.batcher.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  options.batcher.adaptive_delay = absl::GetFlag(FLAGS_adaptive_queue_delay);
  options.bulk_chunk = std::chrono::microseconds(absl::GetFlag(FLAGS_bulk_chunk_us));
  absl::StatusOr<zlpr::server::BackgroundPolicy> bulk_threads =
      zlpr::server::ParseBackgroundPolicy(absl::GetFlag(FLAGS_bulk_threads));
  if (!bulk_threads.ok()) {
    PrintError(absl::StrCat("--bulk_threads=", absl::GetFlag(FLAGS_bulk_threads), ": ",
                            bulk_threads.status().message()),
               argc, argv);
    return 2;
  }
  options.bulk_threads = *bulk_threads;
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_inflight_bytes = absl::GetFlag(FLAGS_max_inflight_bytes);
  options.transport_memory_bytes = absl::GetFlag(FLAGS_transport_memory_bytes);
  options.echo = absl::GetFlag(FLAGS_echo);
  options.allow_client_shm = absl::GetFlag(FLAGS_allow_client_shm);
  options.client_shm_max_regions = absl::GetFlag(FLAGS_client_shm_max_regions);
  options.client_shm_max_bytes = absl::GetFlag(FLAGS_client_shm_max_bytes);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.auth_token_grace = std::chrono::milliseconds(static_cast<int64_t>(token_grace_s * 1000));
  options.shutdown_grace = std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));

  auto server = zlpr::server::Server::Start(options);
  if (!server.ok()) {
    PrintError(server.status().ToString(), argc, argv);
    // A flag out of range is a usage error (2); a port in use or a missing device is not (1).
    return server.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  const std::string metrics = options.metrics_address.empty()
                                  ? std::string("metrics off (--metrics_address is empty)")
                                  : absl::StrCat("metrics on port ", (*server)->metrics_port(),
                                                 " (", options.metrics_address, ")");
  std::printf("zlpr-server %s listening: gRPC on port %d (%s), %s; backend %s: %s\n",
              zlpr::server::Version(), (*server)->grpc_port(), options.grpc_address.c_str(),
              metrics.c_str(), (*server)->backend_name().c_str(),
              absl::StrJoin((*server)->devices(), "; ").c_str());
  if ((*server)->http_port() != 0) {
    std::printf("zlpr-server: HTTP (Open Inference Protocol) on port %d (%s)\n",
                (*server)->http_port(), options.http_address.c_str());
  }
  std::fflush(stdout);

  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    (*server)->ReloadAuthToken().IgnoreError();  // an error is logged; the old token stays
  }
  std::printf("zlpr-server: signal %d, shutting down (grace %.1f s)\n", sig,
              absl::GetFlag(FLAGS_shutdown_grace_s));
  std::fflush(stdout);
  (*server)->Shutdown();
  std::printf("zlpr-server: stopped\n");
  return 0;
}
