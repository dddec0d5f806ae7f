// zlpr-bench: load generator for zlpr-server that tells the truth about latency and throughput.
//
//   zlpr-bench --target=127.0.0.1:50051 --rpc=predict --rows=1 --cols=1000 --concurrency=64
//              --duration_s=10 [--baseline=echo --echo_target=127.0.0.1:50061] [--json=out.json]
//
// --rpc=oip_predict / oip_loss / oip_loss_grad send the same payloads as the Open Inference
// Protocol's ModelInfer (raw tensors; the same outputs as zlpr.v1's response carries), through
// the same client code, so the two protocols' server paths compare like for like.
//
// Closed loop (--concurrency callers, each sending its next request when the last returns) or
// open loop (--rate requests/s with Poisson arrivals; latency counted from the scheduled
// arrival, so a stalled server cannot hide its queueing). With --baseline=echo the same
// payloads run, in the same process and with the same channel settings, against a server
// started with --echo (the transport's ceiling), and every figure is also given as a ratio.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "inference/grpc_service.grpc.pb.h"
#include "kernels/test_util.h"
#include "zlpr/v1/tensor.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "zlpr-server address");
ABSL_FLAG(std::string, rpc, "predict",
          "loss | loss_grad | predict | stream_loss | stream_predict; oip_predict | oip_loss | "
          "oip_loss_grad (the same through the Open Inference Protocol's ModelInfer)");
ABSL_FLAG(int64_t, rows, 1, "rows per request");
ABSL_FLAG(int64_t, cols, 1000, "columns (labels) per row");
ABSL_FLAG(std::string, labels, "dense", "dense | sparse labels (loss RPCs)");
ABSL_FLAG(bool, want_probs, false, "predict RPCs: also ask for the dense probabilities");
ABSL_FLAG(int, concurrency, 1, "closed loop: callers (streams: open streams)");
ABSL_FLAG(int, channels, 1,
          "closed-loop unary calls: connections the callers share, caller i on connection "
          "i mod channels (perf_analyzer opens about one per six callers)");
ABSL_FLAG(double, rate, 0, "open loop: requests per second, Poisson arrivals (0: closed loop)");
ABSL_FLAG(double, duration_s, 10, "measured seconds");
ABSL_FLAG(double, warmup_s, 1, "seconds run before measuring");
ABSL_FLAG(std::string, baseline, "", "echo: also run against --echo_target and print ratios");
ABSL_FLAG(std::string, echo_target, "127.0.0.1:50061", "a zlpr-server --echo address");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(bool, progress, true, "print a live progress line to stderr");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "channel message limit (match the server)");

namespace zlpr::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Payload {
  v1::LossRequest loss;
  v1::PredictRequest predict;
  inference::ModelInferRequest oip;
  size_t request_bytes = 0;
};

bool IsOip(const std::string& rpc) { return absl::StartsWith(rpc, "oip_"); }

// The same request as zlpr.v1's for the Open Inference Protocol: raw FP32 inputs, and the
// outputs zlpr.v1's response carries (labels and their probabilities, top_k 5; the loss and,
// for oip_loss_grad, the gradient).
inference::ModelInferRequest OipRequest(const std::string& rpc, const testing::Problem& p,
                                        int64_t rows, int64_t cols, bool want_probs) {
  inference::ModelInferRequest r;
  auto add_input = [&](const char* name, const std::vector<float>& v) {
    auto* t = r.add_inputs();
    t->set_name(name);
    t->set_datatype("FP32");
    t->add_shape(rows);
    t->add_shape(cols);
    r.add_raw_input_contents(
        std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
  };
  add_input("scores", p.scores);
  if (rpc == "oip_predict") {
    r.set_model_name("zlpr_predict");
    (*r.mutable_parameters())["top_k"].set_int64_param(5);
    for (const char* o : {"labels", "label_probs", "label_count"}) r.add_outputs()->set_name(o);
    if (want_probs) r.add_outputs()->set_name("probs");
  } else {
    r.set_model_name("zlpr_loss");
    add_input("labels", p.dense);
    r.add_outputs()->set_name("loss");
    if (rpc == "oip_loss_grad") r.add_outputs()->set_name("grad");
  }
  return r;
}

Payload MakePayload(const std::string& rpc, int64_t rows, int64_t cols, bool sparse) {
  const testing::Problem p = testing::MakeProblem(
      {.rows = rows,
       .cols = cols,
       .labels = sparse ? testing::Labels::kSparseHard : testing::Labels::kHard,
       .seed = 1});
  Payload out;
  v1::EncodeMatrix(p.scores, rows, cols, DType::kFloat32, out.loss.mutable_scores());
  if (sparse) {
    auto* sp = out.loss.mutable_sparse_labels();
    sp->mutable_row_splits()->Add(p.row_splits.begin(), p.row_splits.end());
    sp->mutable_indices()->Add(p.indices.begin(), p.indices.end());
  } else {
    v1::EncodeMatrix(p.dense, rows, cols, DType::kFloat32, out.loss.mutable_dense_labels());
  }
  out.loss.set_want_grad(rpc == "loss_grad" || rpc == "stream_loss");
  *out.predict.mutable_scores() = out.loss.scores();
  out.predict.set_top_k(5);
  out.predict.set_want_probs(absl::GetFlag(FLAGS_want_probs));
  out.request_bytes = rpc.find("predict") != std::string::npos ? out.predict.ByteSizeLong()
                                                               : out.loss.ByteSizeLong();
  if (IsOip(rpc)) {
    out.oip = OipRequest(rpc, p, rows, cols, absl::GetFlag(FLAGS_want_probs));
    out.request_bytes = out.oip.ByteSizeLong();
  }
  return out;
}

struct Results {
  std::string target;
  double seconds = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;
  std::vector<double> latencies;  // seconds, successful requests
  double request_bytes = 0, response_bytes = 0;
  int64_t rows = 0;

  double Rps() const { return ok / seconds; }
  double RowsPerSecond() const { return static_cast<double>(rows) / seconds; }
  double MBps() const { return (request_bytes + response_bytes) / seconds / 1e6; }
  double Quantile(double q) const {
    if (latencies.empty()) return NAN;
    const size_t i = std::min(latencies.size() - 1, static_cast<size_t>(q * latencies.size()));
    return latencies[i];
  }
};

// Shared state of one run: counters while measuring, and the stop signal.
class Recorder {
 public:
  Recorder(Clock::time_point measure_from, Clock::time_point stop_at)
      : measure_from_(measure_from), stop_at_(stop_at) {}
  bool Done(Clock::time_point now) const { return now >= stop_at_; }
  void Record(Clock::time_point started, Clock::time_point ended, const grpc::Status& st,
              size_t req_bytes, size_t resp_bytes, int64_t rows) {
    if (started < measure_from_ || ended > stop_at_) return;
    absl::MutexLock lock(&mu_);
    if (st.ok()) {
      ++res_.ok;
      res_.latencies.push_back(std::chrono::duration<double>(ended - started).count());
      res_.request_bytes += static_cast<double>(req_bytes);
      res_.response_bytes += static_cast<double>(resp_bytes);
      res_.rows += rows;
    } else {
      ++res_.errors[absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code()))];
    }
  }
  int64_t ok() {
    absl::MutexLock lock(&mu_);
    return res_.ok;
  }
  Results Take(double seconds) {
    absl::MutexLock lock(&mu_);
    res_.seconds = seconds;
    std::sort(res_.latencies.begin(), res_.latencies.end());
    return std::move(res_);
  }

 private:
  const Clock::time_point measure_from_, stop_at_;
  absl::Mutex mu_;
  Results res_ ABSL_GUARDED_BY(mu_);
};

// `index`: channels with different indices get connections of their own (gRPC shares one
// between channels with equal arguments).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, int index = 0) {
  grpc::ChannelArguments args;
  args.SetInt("zlpr.bench_channel", index);
  const int max = static_cast<int>(absl::GetFlag(FLAGS_max_message_bytes));
  args.SetMaxReceiveMessageSize(max);
  args.SetMaxSendMessageSize(max);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// One unary call with the callback API; `done(status, response bytes)`.
void Call(v1::ZlprService::Stub* stub, inference::GRPCInferenceService::Stub* oip,
          const std::string& rpc, const Payload& payload,
          const std::function<void(grpc::Status, size_t)>& done) {
  struct State {
    grpc::ClientContext ctx;
    v1::LossResponse loss;
    v1::PredictResponse predict;
    inference::ModelInferResponse infer;
  };
  auto* s = new State;
  s->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (IsOip(rpc)) {
    oip->async()->ModelInfer(&s->ctx, &payload.oip, &s->infer, [s, done](grpc::Status st) {
      done(std::move(st), s->infer.ByteSizeLong());
      delete s;
    });
  } else if (rpc == "predict") {
    stub->async()->Predict(&s->ctx, &payload.predict, &s->predict, [s, done](grpc::Status st) {
      done(std::move(st), s->predict.ByteSizeLong());
      delete s;
    });
  } else {
    stub->async()->ComputeLoss(&s->ctx, &payload.loss, &s->loss, [s, done](grpc::Status st) {
      done(std::move(st), s->loss.ByteSizeLong());
      delete s;
    });
  }
}

Results RunOnce(const std::string& target, const std::string& label) {
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  const int64_t rows = absl::GetFlag(FLAGS_rows);
  const Payload payload =
      MakePayload(rpc, rows, absl::GetFlag(FLAGS_cols), absl::GetFlag(FLAGS_labels) == "sparse");
  auto channel = MakeChannel(target);
  auto stub = v1::ZlprService::NewStub(channel);
  auto oip = inference::GRPCInferenceService::NewStub(channel);
  const auto start = Clock::now();
  const auto measure_from =
      start + std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(absl::GetFlag(FLAGS_warmup_s)));
  const auto stop_at =
      measure_from + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(absl::GetFlag(FLAGS_duration_s)));
  Recorder rec(measure_from, stop_at);
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const double rate = absl::GetFlag(FLAGS_rate);
  // Open-loop calls in flight. Counted under the lock, so that RunOnce cannot return (and
  // destroy mu) while a callback is still inside.
  absl::Mutex mu;
  int outstanding = 0;
  auto finished = [&] {
    absl::MutexLock lock(&mu);
    --outstanding;
  };

  // The closed loop's stubs, one per connection (--channels), alive until the threads are joined.
  std::vector<std::unique_ptr<v1::ZlprService::Stub>> stubs;
  std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> oips;
  std::vector<std::thread> threads;
  if (rpc == "stream_loss" || rpc == "stream_predict") {
    // Each stream keeps one message in flight (a trainer's synchronous step loop).
    auto ping_pong = [&](auto open, const auto& request, auto response) {
      grpc::ClientContext ctx;
      auto stream = open(&ctx);
      while (!rec.Done(Clock::now())) {
        const auto t0 = Clock::now();
        if (!stream->Write(request) || !stream->Read(&response)) break;
        rec.Record(t0, Clock::now(), grpc::Status::OK, payload.request_bytes,
                   response.ByteSizeLong(), rows);
      }
      stream->WritesDone();
      const grpc::Status st = stream->Finish();
      if (!st.ok()) rec.Record(measure_from, measure_from, st, 0, 0, 0);
    };
    for (int i = 0; i < concurrency; ++i) {
      // By value: the threads outlive this block.
      threads.emplace_back([&, ping_pong] {
        if (rpc == "stream_loss") {
          ping_pong([&](grpc::ClientContext* c) { return stub->StreamLoss(c); }, payload.loss,
                    v1::LossResponse());
        } else {
          ping_pong([&](grpc::ClientContext* c) { return stub->StreamPredict(c); }, payload.predict,
                    v1::PredictResponse());
        }
      });
    }
  } else if (rate > 0) {
    // Open loop: arrivals at exponential intervals, latency from the scheduled time.
    threads.emplace_back([&] {
      std::mt19937_64 rng(42);
      std::exponential_distribution<double> gap(rate);
      auto next = Clock::now();
      while (!rec.Done(next)) {
        std::this_thread::sleep_until(next);
        const auto scheduled = next;
        {
          absl::MutexLock lock(&mu);
          ++outstanding;
        }
        Call(stub.get(), oip.get(), rpc, payload,
             [&, scheduled](const grpc::Status& st, size_t bytes) {
               rec.Record(scheduled, Clock::now(), st, payload.request_bytes, bytes, rows);
               finished();
             });
        next +=
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
      }
    });
  } else {
    // Closed loop: `concurrency` callers, each a thread making blocking calls back to back,
    // spread over `channels` connections.
    const int channels = std::clamp(absl::GetFlag(FLAGS_channels), 1, concurrency);
    for (int c = 0; c < channels; ++c) {
      auto ch = c == 0 ? channel : MakeChannel(target, c);
      stubs.push_back(v1::ZlprService::NewStub(ch));
      oips.push_back(inference::GRPCInferenceService::NewStub(ch));
    }
    for (int i = 0; i < concurrency; ++i) {
      auto* stub_i = stubs[i % channels].get();
      auto* oip_i = oips[i % channels].get();
      threads.emplace_back([&, stub_i, oip_i] {
        v1::LossResponse loss;
        v1::PredictResponse predict;
        inference::ModelInferResponse infer;
        while (!rec.Done(Clock::now())) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
          const auto t0 = Clock::now();
          grpc::Status st;
          size_t bytes = 0;
          if (IsOip(rpc)) {
            st = oip_i->ModelInfer(&ctx, payload.oip, &infer);
            bytes = st.ok() ? infer.ByteSizeLong() : 0;
          } else if (rpc == "predict") {
            st = stub_i->Predict(&ctx, payload.predict, &predict);
            bytes = st.ok() ? predict.ByteSizeLong() : 0;
          } else {
            st = stub_i->ComputeLoss(&ctx, payload.loss, &loss);
            bytes = st.ok() ? loss.ByteSizeLong() : 0;
          }
          rec.Record(t0, Clock::now(), st, payload.request_bytes, bytes, rows);
        }
      });
    }
  }

  // Progress line while the run lasts.
  while (!rec.Done(Clock::now())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (absl::GetFlag(FLAGS_progress)) {
      const double t = std::chrono::duration<double>(Clock::now() - start).count();
      std::fprintf(stderr, "\r%-6s %5.1f s  %8lld ok  %s   ", label.c_str(), t,
                   static_cast<long long>(rec.ok()),
                   Clock::now() < measure_from ? "(warm-up)" : "");
    }
  }
  for (auto& t : threads) t.join();
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &outstanding));
  }
  if (absl::GetFlag(FLAGS_progress)) std::fprintf(stderr, "\n");
  Results r = rec.Take(absl::GetFlag(FLAGS_duration_s));
  r.target = label;
  return r;
}

std::string Ms(double s) { return absl::StrFormat("%.3f", s * 1e3); }

void PrintTable(const std::vector<Results>& all) {
  std::printf("\n| run | req/s | rows/s | MB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const Results& r : all) {
    std::string errors;
    for (const auto& [code, n] : r.errors) absl::StrAppend(&errors, code, "=", n, " ");
    std::printf("| %s | %.0f | %.0f | %.1f | %s | %s | %s | %s | %s |\n", r.target.c_str(), r.Rps(),
                r.RowsPerSecond(), r.MBps(), Ms(r.Quantile(0.5)).c_str(),
                Ms(r.Quantile(0.9)).c_str(), Ms(r.Quantile(0.99)).c_str(),
                Ms(r.Quantile(0.999)).c_str(), errors.empty() ? "none" : errors.c_str());
  }
  if (all.size() == 2) {
    const Results &z = all[0], &e = all[1];
    std::printf(
        "\nzlpr / echo: throughput %.2fx, bytes/s %.2fx, p50 latency %.2fx, p99 latency %.2fx\n",
        z.Rps() / e.Rps(), z.MBps() / e.MBps(), z.Quantile(0.5) / e.Quantile(0.5),
        z.Quantile(0.99) / e.Quantile(0.99));
  }
}

// A JSON number, or null when there is none (a quantile of no answers is NaN, which JSON lacks).
std::string Json(double v) { return std::isfinite(v) ? absl::StrCat(v) : "null"; }

void WriteJson(const std::vector<Results>& all, const std::string& path) {
  std::ofstream f(path);
  f << "{\"rpc\":\"" << absl::GetFlag(FLAGS_rpc) << "\",\"rows\":" << absl::GetFlag(FLAGS_rows)
    << ",\"cols\":" << absl::GetFlag(FLAGS_cols)
    << ",\"concurrency\":" << absl::GetFlag(FLAGS_concurrency)
    << ",\"rate\":" << absl::GetFlag(FLAGS_rate) << ",\"runs\":[";
  for (size_t i = 0; i < all.size(); ++i) {
    const Results& r = all[i];
    f << (i ? "," : "") << "{\"target\":\"" << r.target << "\",\"ok\":" << r.ok
      << ",\"rps\":" << Json(r.Rps()) << ",\"rows_per_s\":" << Json(r.RowsPerSecond())
      << ",\"mb_per_s\":" << Json(r.MBps()) << ",\"p50_s\":" << Json(r.Quantile(0.5))
      << ",\"p90_s\":" << Json(r.Quantile(0.9)) << ",\"p99_s\":" << Json(r.Quantile(0.99))
      << ",\"p999_s\":" << Json(r.Quantile(0.999)) << ",\"errors\":{";
    size_t k = 0;
    for (const auto& [code, n] : r.errors) f << (k++ ? "," : "") << "\"" << code << "\":" << n;
    f << "}}";
  }
  f << "]}\n";
}

}  // namespace
}  // namespace zlpr::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Load generator for zlpr-server (closed or open loop, unary or streams, with an echo "
      "baseline).\nUsage: zlpr-bench [--flag=value ...]; --help lists the flags.");
  absl::FlagsUsageConfig usage;
  // --help lists this file's flags (absl's default matches the file name to the binary's, and
  // zlpr_bench.cc is not zlpr-bench).
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "bench/zlpr_bench.cc") || path == "zlpr-bench";
  };
  // The headers of --help name the program, not the path this binary was built from.
  usage.normalize_filename = [](absl::string_view path) -> std::string {
    return absl::EndsWith(path, "bench/zlpr_bench.cc") ? "zlpr-bench" : std::string(path);
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  using namespace zlpr::bench;
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  static const char* const kRpcs[] = {"loss",           "loss_grad",   "predict",  "stream_loss",
                                      "stream_predict", "oip_predict", "oip_loss", "oip_loss_grad"};
  if (std::find(std::begin(kRpcs), std::end(kRpcs), rpc) == std::end(kRpcs)) {
    std::fprintf(stderr, "zlpr-bench: --rpc=%s: expected one of %s\n", rpc.c_str(),
                 absl::StrJoin(kRpcs, ", ").c_str());
    return 2;
  }
  if (IsOip(rpc) && absl::GetFlag(FLAGS_labels) == "sparse") {
    std::fprintf(stderr,
                 "zlpr-bench: --labels=sparse: the Open Inference Protocol's zlpr_loss "
                 "takes dense labels\n");
    return 2;
  }
  std::vector<Results> all;
  all.push_back(RunOnce(absl::GetFlag(FLAGS_target), "zlpr"));
  if (absl::GetFlag(FLAGS_baseline) == "echo") {
    all.push_back(RunOnce(absl::GetFlag(FLAGS_echo_target), "echo"));
  }
  std::printf("rpc=%s rows=%lld cols=%lld labels=%s concurrency=%d rate=%.0f duration=%.0fs\n",
              absl::GetFlag(FLAGS_rpc).c_str(), static_cast<long long>(absl::GetFlag(FLAGS_rows)),
              static_cast<long long>(absl::GetFlag(FLAGS_cols)),
              absl::GetFlag(FLAGS_labels).c_str(), absl::GetFlag(FLAGS_concurrency),
              absl::GetFlag(FLAGS_rate), absl::GetFlag(FLAGS_duration_s));
  PrintTable(all);
  if (!absl::GetFlag(FLAGS_json).empty()) WriteJson(all, absl::GetFlag(FLAGS_json));
  int64_t errors = 0;
  for (const auto& r : all)
    for (const auto& [code, n] : r.errors) errors += n;
  return errors == 0 ? 0 : 1;
}
