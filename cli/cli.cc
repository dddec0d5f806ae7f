// zlpr-cli's flags and commands on top of zlpr::Client.
#include "cli/cli.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "cli/cli_io.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "zlpr/client.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051",
          "Server address: host:port, ipv4:a:p,b:p (balanced round_robin) or dns:///name:port");
ABSL_FLAG(int64_t, deadline_ms, 30000, "Deadline of each call, in milliseconds");
ABSL_FLAG(bool, tls, false, "Connect over TLS (the system's roots unless --tls_ca)");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of the CA bundle that signs the server's certificate");
ABSL_FLAG(std::string, tls_cert, "", "PEM file of the client certificate chain (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the client's private key (mutual TLS)");
ABSL_FLAG(std::string, tls_server_name, "", "Name to check in the server's certificate");
ABSL_FLAG(std::string, token_file, "",
          "File with a bearer token, sent as \"authorization: Bearer <token>\"");
ABSL_FLAG(std::string, service, "", "health: the service to check (\"\" = the whole server)");
ABSL_FLAG(double, wait_s, 0,
          "health: wait up to this many seconds for the server to answer SERVING (a server "
          "just started, in scripts); 0: ask once");
ABSL_FLAG(std::string, scores, "", "loss, predict: FILE of scores [rows, cols] (.npy or JSON)");
ABSL_FLAG(std::string, labels, "", "loss: FILE of dense labels [rows, cols] in [0, 1]");
ABSL_FLAG(std::string, sparse_labels, "",
          "loss: JSON FILE {\"row_splits\": [...], \"indices\": [...], \"values\": [...]}");
ABSL_FLAG(std::string, mask, "", "loss, predict: FILE of a [rows, cols] 0/1 mask");
ABSL_FLAG(bool, want_grad, false, "loss: also return the gradient");
ABSL_FLAG(std::string, grad_dtype, "float32", "loss: float32, float16 or bfloat16");
ABSL_FLAG(std::optional<float>, threshold, std::nullopt,
          "predict: probability threshold in (0, 1) (0.5 when unset)");
ABSL_FLAG(std::string, label_thresholds, "", "predict: FILE of one threshold per column");
ABSL_FLAG(uint32_t, top_k, 0, "predict: keep at most this many labels per row (0: no cap)");
ABSL_FLAG(uint32_t, min_labels, 0, "predict: top each row up to this many labels");
ABSL_FLAG(bool, want_probs, false, "predict: also return the dense probabilities");
ABSL_FLAG(std::string, priority, "",
          "loss, predict: interactive or bulk (empty: the operation's own, predict interactive "
          "and loss bulk); the server takes interactive work first");

namespace zlpr::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kUsage[] = R"(usage: zlpr-cli COMMAND [--flag=value ...]

commands:
  health    grpc.health.v1 Check of --service; exit 1 unless SERVING (--wait_s=S: within S s)
  info      server version, backend, devices, batcher settings, limits
  loss      --scores=FILE (--labels=FILE | --sparse_labels=FILE) [--mask=FILE] [--want_grad]
  predict   --scores=FILE [--threshold=P] [--label_thresholds=FILE] [--top_k=K] [--min_labels=N]
            [--want_probs] [--mask=FILE]

FILE: .npy (C order, 1-D or 2-D) or JSON (an array of rows; the strings "-inf", "inf" and "nan"
stand for those values). A .npy of any float, integer or bool dtype is read (what np.save writes
by default: float64 scores, int64 or bool labels); scores, labels and thresholds become float32
as the Python client converts them, and a mask keeps the entries that are not 0. Sparse labels:
JSON {"row_splits": [0, 2, 3], "indices": [4, 9, 1], "values": [...] or null (every label 1)}.
Output: JSON on stdout; errors on stderr. Exit status: 0 ok, 1 the server's error (or
NOT_SERVING), 2 usage or input file. `zlpr-cli --help` (or -h, or help) lists the flags.)";

// Marks a status as the server's answer (exit 1) rather than a local problem (exit 2).
constexpr char kServerPayload[] = "zlpr-cli/server-error";
constexpr char kNotServingPayload[] = "zlpr-cli/not-serving";

absl::Status ServerError(absl::Status st) {
  st.SetPayload(kServerPayload, absl::Cord("1"));
  return st;
}

// The flags defined in this file, for --help.
std::string FlagsHelp() {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "cli/cli.cc")) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::string out = "\nflags:\n";
  for (const absl::CommandLineFlag* f : flags) {
    absl::StrAppend(&out, "  --", f->Name(), "  ", f->Help(), " (default: \"", f->DefaultValue(),
                    "\")\n");
  }
  return out;
}

// Sets the flags in `args` through absl's registry and returns the positional arguments.
// "--name=value", "--name value" is not accepted (ambiguous with positionals); booleans also
// take "--name" and "--noname".
absl::StatusOr<std::vector<std::string>> ParseArgs(const std::vector<std::string>& args) {
  std::vector<std::string> positional;
  for (const std::string& arg : args) {
    if (!absl::StartsWith(arg, "--")) {
      positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && !has_value && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      if (flag != nullptr && flag->IsOfType<bool>()) value = "false";
    } else if (flag != nullptr && !has_value && flag->IsOfType<bool>()) {
      value = "true";
    }
    if (flag == nullptr || !absl::EndsWith(flag->Filename(), "cli/cli.cc")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (zlpr-cli --help lists the flags)"));
    }
    if (!has_value && !flag->IsOfType<bool>()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " needs a value: --", name, "=..."));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, ": ", error));
    }
  }
  return positional;
}

// The contents of the file `flag` names, whitespace trimmed (tokens, PEM files).
absl::StatusOr<std::string> FlagFile(const absl::Flag<std::string>& flag, const char* name) {
  absl::StatusOr<std::string> text = ReadFile(absl::GetFlag(flag));
  if (!text.ok())
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", text.status().message()));
  return std::string(absl::StripAsciiWhitespace(*text));
}

absl::StatusOr<std::unique_ptr<Client>> MakeClient() {
  ClientOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.default_deadline = std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms));
  if (absl::GetFlag(FLAGS_tls)) {
    o.tls = true;
    if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
      ZLPR_ASSIGN_OR_RETURN(o.tls_root_certs, FlagFile(FLAGS_tls_ca, "tls_ca"));
    }
    if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
      ZLPR_ASSIGN_OR_RETURN(o.tls_client_cert, FlagFile(FLAGS_tls_cert, "tls_cert"));
    }
    if (!absl::GetFlag(FLAGS_tls_key).empty()) {
      ZLPR_ASSIGN_OR_RETURN(o.tls_client_key, FlagFile(FLAGS_tls_key, "tls_key"));
    }
    o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  }
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    ZLPR_ASSIGN_OR_RETURN(o.auth_token, FlagFile(FLAGS_token_file, "token_file"));
  }
  return Client::Create(o);
}

Json Floats(const float* p, size_t n) {
  Json a = Json::array();
  for (size_t i = 0; i < n; ++i) a.push_back(JsonFloat(p[i]));
  return a;
}

Json Rows(const std::vector<float>& v, int64_t rows, int64_t cols) {
  Json a = Json::array();
  for (int64_t r = 0; r < rows; ++r)
    a.push_back(Floats(v.data() + r * cols, static_cast<size_t>(cols)));
  return a;
}

absl::Status SameShape(const std::string& what, int64_t r, int64_t c, const FloatMatrix& s) {
  if (r == s.rows && c == s.cols) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": shape [", r, ", ", c, "] does not match scores [", s.rows, ", ", s.cols, "]"));
}

absl::StatusOr<FloatMatrix> Scores(const char* command) {
  if (absl::GetFlag(FLAGS_scores).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(command, ": --scores=FILE is required"));
  }
  return ReadFloatMatrix(absl::GetFlag(FLAGS_scores));
}

// --mask=FILE, when given, into *mask, checked against the scores.
absl::Status ReadMask(const FloatMatrix& scores, ByteMatrix* mask) {
  const std::string path = absl::GetFlag(FLAGS_mask);
  if (path.empty()) return absl::OkStatus();
  ZLPR_ASSIGN_OR_RETURN(*mask, ReadByteMatrix(path));
  return SameShape(path, mask->rows, mask->cols, scores);
}

absl::Status Health(Client& client, std::ostream& out) {
  const std::string service = absl::GetFlag(FLAGS_service);
  const double wait_s = absl::GetFlag(FLAGS_wait_s);
  if (!(wait_s >= 0 && wait_s <= 86400)) {
    return absl::InvalidArgumentError("--wait_s: 0 to 86400 seconds");
  }
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000));
  absl::StatusOr<bool> healthy = client.Healthy(service);
  while ((!healthy.ok() || !*healthy) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    healthy = client.Healthy(service);
  }
  if (!healthy.ok()) return ServerError(healthy.status());
  out << Json{{"service", service}, {"status", *healthy ? "SERVING" : "NOT_SERVING"}}.dump()
      << "\n";
  if (!*healthy) {
    absl::Status st = ServerError(absl::UnavailableError("not serving"));
    st.SetPayload(kNotServingPayload, absl::Cord("1"));  // it answered: no hint about reaching it
    return st;
  }
  return absl::OkStatus();
}

absl::Status Info(Client& client, std::ostream& out) {
  absl::StatusOr<ServerInfo> info = client.GetServerInfo();
  if (!info.ok()) return ServerError(info.status());
  out << Json{{"version", info->version},
              {"backend", info->backend},
              {"devices", info->devices},
              {"max_batch_rows", info->max_batch_rows},
              {"max_queue_delay_us", info->max_queue_delay_us},
              {"max_queue_size", info->max_queue_size},
              {"max_message_bytes", info->max_message_bytes}}
             .dump()
      << "\n";
  return absl::OkStatus();
}

absl::StatusOr<Priority> PriorityFlag() {
  const std::string p = absl::GetFlag(FLAGS_priority);
  if (p.empty()) return Priority::kDefault;
  if (p == "interactive") return Priority::kInteractive;
  if (p == "bulk") return Priority::kBulk;
  return absl::InvalidArgumentError(
      absl::StrCat("--priority=", p, ": expected interactive or bulk (or nothing)"));
}

absl::StatusOr<DType> GradDType() {
  const std::string gd = absl::GetFlag(FLAGS_grad_dtype);
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (gd == DTypeName(d)) return d;
  }
  return absl::InvalidArgumentError("--grad_dtype: expected float32, float16 or bfloat16");
}

absl::Status Loss(Client& client, std::ostream& out) {
  const bool dense = !absl::GetFlag(FLAGS_labels).empty();
  if (dense == !absl::GetFlag(FLAGS_sparse_labels).empty()) {
    return absl::InvalidArgumentError(
        "loss: give exactly one of --labels=FILE and --sparse_labels=FILE");
  }
  ZLPR_ASSIGN_OR_RETURN(const FloatMatrix scores, Scores("loss"));
  LossCall call;
  call.rows = scores.rows;
  call.cols = scores.cols;
  call.scores = scores.data;
  FloatMatrix labels;
  SparseLabels sparse;
  if (dense) {
    ZLPR_ASSIGN_OR_RETURN(labels, ReadFloatMatrix(absl::GetFlag(FLAGS_labels)));
    ZLPR_RETURN_IF_ERROR(SameShape(absl::GetFlag(FLAGS_labels), labels.rows, labels.cols, scores));
    call.dense_labels = labels.data;
  } else {
    ZLPR_ASSIGN_OR_RETURN(sparse, ReadSparseLabels(absl::GetFlag(FLAGS_sparse_labels)));
    call.row_splits = sparse.row_splits;
    call.indices = sparse.indices;
    call.values = sparse.values;
  }
  ByteMatrix mask;
  ZLPR_RETURN_IF_ERROR(ReadMask(scores, &mask));
  call.mask = mask.data;
  call.want_grad = absl::GetFlag(FLAGS_want_grad);
  ZLPR_ASSIGN_OR_RETURN(call.grad_dtype, GradDType());
  ZLPR_ASSIGN_OR_RETURN(call.priority, PriorityFlag());
  absl::StatusOr<LossResult> r = client.ComputeLoss(call);
  if (!r.ok()) return ServerError(r.status());
  Json j;
  j["loss"] = Floats(r->loss.data(), r->loss.size());
  j["loss_sum"] = r->loss_sum;
  j["loss_mean"] = r->loss_mean;
  if (call.want_grad) j["grad"] = Rows(r->grad, call.rows, call.cols);
  j["queue_seconds"] = r->queue_seconds;
  j["compute_seconds"] = r->compute_seconds;
  out << j.dump() << "\n";
  return absl::OkStatus();
}

absl::Status Predict(Client& client, std::ostream& out) {
  ZLPR_ASSIGN_OR_RETURN(const FloatMatrix scores, Scores("predict"));
  PredictCall call;
  call.rows = scores.rows;
  call.cols = scores.cols;
  call.scores = scores.data;
  call.threshold = absl::GetFlag(FLAGS_threshold);
  FloatMatrix thresholds;
  if (!absl::GetFlag(FLAGS_label_thresholds).empty()) {
    ZLPR_ASSIGN_OR_RETURN(thresholds, ReadFloatMatrix(absl::GetFlag(FLAGS_label_thresholds)));
    call.label_thresholds = thresholds.data;
  }
  call.top_k = absl::GetFlag(FLAGS_top_k);
  call.min_labels = absl::GetFlag(FLAGS_min_labels);
  call.want_probs = absl::GetFlag(FLAGS_want_probs);
  ZLPR_ASSIGN_OR_RETURN(call.priority, PriorityFlag());
  ByteMatrix mask;
  ZLPR_RETURN_IF_ERROR(ReadMask(scores, &mask));
  call.mask = mask.data;
  absl::StatusOr<PredictResult> r = client.Predict(call);
  if (!r.ok()) return ServerError(r.status());
  Json rows = Json::array();
  for (size_t i = 0; i < r->labels.size(); ++i) {
    rows.push_back(
        Json{{"labels", r->labels[i]}, {"probs", Floats(r->probs[i].data(), r->probs[i].size())}});
  }
  Json j;
  j["rows"] = std::move(rows);
  if (call.want_probs) j["probs"] = Rows(r->dense_probs, call.rows, call.cols);
  out << j.dump() << "\n";
  return absl::OkStatus();
}

absl::Status Run(const std::string& command, std::ostream& out) {
  if (command != "health" && command != "info" && command != "loss" && command != "predict") {
    return absl::InvalidArgumentError(absl::StrCat("unknown command '", command, "'"));
  }
  ZLPR_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, MakeClient());
  if (command == "health") return Health(*client, out);
  if (command == "info") return Info(*client, out);
  if (command == "loss") return Loss(*client, out);
  return Predict(*client, out);
}

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  const auto asks_help = [](const std::string& a) {
    return a == "--help" || a == "-h" || a == "help";
  };
  if (std::any_of(args.begin(), args.end(), asks_help)) {
    out << kUsage << "\n" << FlagsHelp();
    return 0;
  }
  absl::StatusOr<std::vector<std::string>> positional = ParseArgs(args);
  absl::Status st = positional.status();
  if (st.ok() && positional->size() != 1) {
    st = absl::InvalidArgumentError(
        positional->empty()
            ? "no command"
            : absl::StrCat("one command at a time, got: ", absl::StrJoin(*positional, " ")));
  }
  if (st.ok()) st = Run(positional->front(), out);
  if (st.ok()) return 0;
  const bool server = st.GetPayload(kServerPayload).has_value();
  if (server) {
    err << "zlpr-cli: server error: " << absl::StatusCodeToString(st.code()) << ": " << st.message()
        << "\n";
    if (st.code() == absl::StatusCode::kUnavailable && !st.GetPayload(kNotServingPayload)) {
      // Usually nothing listens there: say where the CLI looked and how to change it.
      err << "zlpr-cli: no server answered at --target=" << absl::GetFlag(FLAGS_target)
          << " (is zlpr-server running there? start one with `make run`, or point --target at "
             "it)\n";
    }
    return 1;
  }
  err << "zlpr-cli: " << st.message() << "\n";
  if (!positional.ok() || positional->size() != 1 || absl::StartsWith(st.message(), "unknown")) {
    err << kUsage << "\n";
  }
  return 2;
}

}  // namespace zlpr::cli
