// zlpr-cli's commands on top of zlpr::Client.
#include "cli/cli.h"

#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "cli/cli_io.h"
#include "zlpr/client.h"

namespace zlpr::cli {
namespace {

constexpr char kUsage[] = R"(usage: zlpr-cli [connection flags] COMMAND [command flags]

commands:
  health   [--service=NAME]            grpc.health.v1 Check ("" = whole server); exit 1 unless SERVING
  info                                 server version, backend, devices, batcher settings, limits
  loss     --scores=FILE (--labels=FILE | --sparse_labels=FILE) [--mask=FILE]
           [--want_grad] [--grad_dtype=float32|float16|bfloat16]
  predict  --scores=FILE [--threshold=P] [--label_thresholds=FILE] [--top_k=K]
           [--min_labels=N] [--want_probs] [--mask=FILE]

connection flags:
  --target=HOST:PORT   (default 127.0.0.1:50051; also ipv4:a:p,b:p or dns:///name:port)
  --deadline_ms=N      (default 30000)
  --tls --tls_ca=PEM --tls_cert=PEM --tls_key=PEM --tls_server_name=NAME
  --token_file=FILE    bearer token sent as "authorization: Bearer <token>"

FILE: .npy (float32 or float16, C order; masks uint8 or bool) or JSON (an array of rows).
Sparse labels: JSON {"row_splits": [...], "indices": [...], "values": [...]}.
Output: JSON on stdout; errors on stderr (exit 1: the server's error, 2: usage or input).)";

struct Args {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;
  bool Has(const std::string& k) const { return flags.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
};

Args Parse(const std::vector<std::string>& args) {
  Args a;
  for (const std::string& s : args) {
    if (absl::StartsWith(s, "--")) {
      const size_t eq = s.find('=');
      if (eq == std::string::npos) {
        a.flags[s.substr(2)] = "true";
      } else {
        a.flags[s.substr(2, eq - 2)] = s.substr(eq + 1);
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

// An error to report: its exit code and message.
struct Failure {
  int code;
  std::string message;
};

std::optional<Failure> ReadText(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return Failure{2, absl::StrCat(path, ": cannot open")};
  std::stringstream ss;
  ss << in.rdbuf();
  *out = std::string(absl::StripAsciiWhitespace(ss.str()));
  return std::nullopt;
}

std::optional<Failure> MakeClient(const Args& a, std::unique_ptr<Client>* client) {
  ClientOptions o;
  o.target = a.Get("target", "127.0.0.1:50051");
  int64_t ms = 30000;
  if (a.Has("deadline_ms") && !absl::SimpleAtoi(a.Get("deadline_ms"), &ms)) {
    return Failure{2, "--deadline_ms: not a number"};
  }
  o.default_deadline = std::chrono::milliseconds(ms);
  if (a.Has("tls")) {
    o.tls = true;
    for (const auto& [flag, field] :
         {std::pair<const char*, std::string*>{"tls_ca", &o.tls_root_certs},
          {"tls_cert", &o.tls_client_cert},
          {"tls_key", &o.tls_client_key}}) {
      if (a.Has(flag)) {
        if (auto f = ReadText(a.Get(flag), field)) return f;
        *field += "\n";
      }
    }
    o.tls_server_name = a.Get("tls_server_name");
  }
  if (a.Has("token_file")) {
    if (auto f = ReadText(a.Get("token_file"), &o.auth_token)) return f;
  }
  auto c = Client::Create(o);
  if (!c.ok()) return Failure{2, c.status().ToString()};
  *client = *std::move(c);
  return std::nullopt;
}

Failure ServerError(const absl::Status& st) {
  return Failure{
      1, absl::StrCat("server error: ", absl::StatusCodeToString(st.code()), ": ", st.message())};
}

std::string FloatArray(const float* p, size_t n) {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) absl::StrAppend(&s, i ? "," : "", JsonNumber(p[i]));
  return s + "]";
}

std::string Rows(const std::vector<float>& v, int64_t rows, int64_t cols) {
  std::string s = "[";
  for (int64_t r = 0; r < rows; ++r) {
    absl::StrAppend(&s, r ? "," : "", FloatArray(v.data() + r * cols, static_cast<size_t>(cols)));
  }
  return s + "]";
}

std::optional<Failure> SameShape(const std::string& what, int64_t r, int64_t c,
                                 const FloatMatrix& s) {
  if (r == s.rows && c == s.cols) return std::nullopt;
  return Failure{2, absl::StrCat(what, ": shape [", r, ", ", c, "] does not match scores [", s.rows,
                                 ", ", s.cols, "]")};
}

// --mask=FILE, when given, into *mask (which *view then points to), checked against scores.
std::optional<Failure> ReadMask(const Args& a, const FloatMatrix& scores, ByteMatrix* mask,
                                std::span<const uint8_t>* view) {
  if (!a.Has("mask")) return std::nullopt;
  auto m = ReadByteMatrix(a.Get("mask"));
  if (!m.ok()) return Failure{2, std::string(m.status().message())};
  if (auto f = SameShape(a.Get("mask"), m->rows, m->cols, scores)) return f;
  *mask = *std::move(m);
  *view = mask->data;
  return std::nullopt;
}

std::optional<Failure> Health(const Args& a, Client& client, std::ostream& out) {
  const std::string service = a.Get("service");
  auto healthy = client.Healthy(service);
  if (!healthy.ok()) return ServerError(healthy.status());
  out << "{\"service\":" << JsonString(service) << ",\"status\":\""
      << (*healthy ? "SERVING" : "NOT_SERVING") << "\"}\n";
  if (!*healthy) return Failure{1, "not serving"};
  return std::nullopt;
}

std::optional<Failure> Info(Client& client, std::ostream& out) {
  auto info = client.GetServerInfo();
  if (!info.ok()) return ServerError(info.status());
  std::string devices = "[";
  for (size_t i = 0; i < info->devices.size(); ++i)
    absl::StrAppend(&devices, i ? "," : "", JsonString(info->devices[i]));
  out << "{\"version\":" << JsonString(info->version)
      << ",\"backend\":" << JsonString(info->backend) << ",\"devices\":" << devices
      << "],\"max_batch_rows\":" << info->max_batch_rows
      << ",\"max_queue_delay_us\":" << info->max_queue_delay_us
      << ",\"max_queue_size\":" << info->max_queue_size
      << ",\"max_message_bytes\":" << info->max_message_bytes << "}\n";
  return std::nullopt;
}

std::optional<Failure> Loss(const Args& a, Client& client, std::ostream& out) {
  if (!a.Has("scores")) return Failure{2, "loss: --scores=FILE is required"};
  if (a.Has("labels") == a.Has("sparse_labels")) {
    return Failure{2, "loss: give exactly one of --labels=FILE and --sparse_labels=FILE"};
  }
  auto scores = ReadFloatMatrix(a.Get("scores"));
  if (!scores.ok()) return Failure{2, std::string(scores.status().message())};
  LossCall call;
  call.rows = scores->rows;
  call.cols = scores->cols;
  call.scores = scores->data;
  absl::StatusOr<FloatMatrix> labels;
  absl::StatusOr<SparseLabels> sparse;
  if (a.Has("labels")) {
    labels = ReadFloatMatrix(a.Get("labels"));
    if (!labels.ok()) return Failure{2, std::string(labels.status().message())};
    if (auto f = SameShape(a.Get("labels"), labels->rows, labels->cols, *scores)) return f;
    call.dense_labels = labels->data;
  } else {
    sparse = ReadSparseLabels(a.Get("sparse_labels"));
    if (!sparse.ok()) return Failure{2, std::string(sparse.status().message())};
    call.row_splits = sparse->row_splits;
    call.indices = sparse->indices;
    call.values = sparse->values;
  }
  ByteMatrix mask;
  if (auto f = ReadMask(a, *scores, &mask, &call.mask)) return f;
  call.want_grad = a.Has("want_grad");
  const std::string gd = a.Get("grad_dtype", "float32");
  if (gd == "float16") {
    call.grad_dtype = DType::kFloat16;
  } else if (gd == "bfloat16") {
    call.grad_dtype = DType::kBFloat16;
  } else if (gd != "float32") {
    return Failure{2, "--grad_dtype: expected float32, float16 or bfloat16"};
  }
  auto r = client.ComputeLoss(call);
  if (!r.ok()) return ServerError(r.status());
  out << "{\"loss\":" << FloatArray(r->loss.data(), r->loss.size())
      << ",\"loss_sum\":" << JsonNumber(r->loss_sum)
      << ",\"loss_mean\":" << JsonNumber(r->loss_mean);
  if (call.want_grad) out << ",\"grad\":" << Rows(r->grad, call.rows, call.cols);
  out << ",\"queue_seconds\":" << JsonNumber(r->queue_seconds)
      << ",\"compute_seconds\":" << JsonNumber(r->compute_seconds) << "}\n";
  return std::nullopt;
}

std::optional<Failure> Predict(const Args& a, Client& client, std::ostream& out) {
  if (!a.Has("scores")) return Failure{2, "predict: --scores=FILE is required"};
  auto scores = ReadFloatMatrix(a.Get("scores"));
  if (!scores.ok()) return Failure{2, std::string(scores.status().message())};
  PredictCall call;
  call.rows = scores->rows;
  call.cols = scores->cols;
  call.scores = scores->data;
  if (a.Has("threshold")) {
    float t;
    if (!absl::SimpleAtof(a.Get("threshold"), &t)) return Failure{2, "--threshold: not a number"};
    call.threshold = t;
  }
  absl::StatusOr<FloatMatrix> thresholds;
  if (a.Has("label_thresholds")) {
    thresholds = ReadFloatMatrix(a.Get("label_thresholds"));
    if (!thresholds.ok()) return Failure{2, std::string(thresholds.status().message())};
    call.label_thresholds = thresholds->data;
  }
  for (const auto& [flag, field] : {std::pair<const char*, uint32_t*>{"top_k", &call.top_k},
                                    {"min_labels", &call.min_labels}}) {
    if (a.Has(flag) && !absl::SimpleAtoi(a.Get(flag), field)) {
      return Failure{2, absl::StrCat("--", flag, ": not a non-negative integer")};
    }
  }
  call.want_probs = a.Has("want_probs");
  ByteMatrix mask;
  if (auto f = ReadMask(a, *scores, &mask, &call.mask)) return f;
  auto r = client.Predict(call);
  if (!r.ok()) return ServerError(r.status());
  out << "{\"rows\":[";
  for (size_t i = 0; i < r->labels.size(); ++i) {
    out << (i ? "," : "") << "{\"labels\":[";
    for (size_t k = 0; k < r->labels[i].size(); ++k) out << (k ? "," : "") << r->labels[i][k];
    out << "],\"probs\":" << FloatArray(r->probs[i].data(), r->probs[i].size()) << "}";
  }
  out << "]";
  if (call.want_probs) out << ",\"probs\":" << Rows(r->dense_probs, call.rows, call.cols);
  out << "}\n";
  return std::nullopt;
}

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  const Args a = Parse(args);
  if (a.Has("help") || a.positional.empty()) {
    (a.Has("help") ? out : err) << kUsage << "\n";
    return a.Has("help") ? 0 : 2;
  }
  const std::string& command = a.positional[0];
  if (command != "health" && command != "info" && command != "loss" && command != "predict") {
    err << "zlpr-cli: unknown command '" << command << "'\n" << kUsage << "\n";
    return 2;
  }
  std::unique_ptr<Client> client;
  std::optional<Failure> failure = MakeClient(a, &client);
  if (!failure) {
    if (command == "health") failure = Health(a, *client, out);
    if (command == "info") failure = Info(*client, out);
    if (command == "loss") failure = Loss(a, *client, out);
    if (command == "predict") failure = Predict(a, *client, out);
  }
  if (failure) {
    err << "zlpr-cli: " << failure->message << "\n";
    return failure->code;
  }
  return 0;
}

}  // namespace zlpr::cli
