// Three zlpr-server processes behind one round_robin client: load spreads over all three, and
// when one is stopped with SIGTERM mid-run the client finishes with no failed request.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

#include <atomic>
#include <cstdio>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/test_support.h"
#include "zlpr/client.h"

extern char** environ;

namespace zlpr {
namespace {

// A zlpr-server child process; its ports are read from its start-up line.
class ServerProcess {
 public:
  ServerProcess() {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<std::string> args = {ZLPR_SERVER_BINARY,
                                     "--grpc_address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0",
                                     "--backend=cpu",
                                     "--threads=1",
                                     "--shutdown_grace_s=10"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
    char line[1024] = {};
    if (fgets(line, sizeof(line), out_) != nullptr) {
      std::cmatch m;
      if (std::regex_search(line, m, std::regex(R"(gRPC on port (\d+).*metrics on port (\d+))"))) {
        grpc_port = std::stoi(m[1]);
        metrics_port = std::stoi(m[2]);
      }
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) fclose(out_);
  }
  void Terminate() { kill(pid_, SIGTERM); }
  // The exit status after Terminate(); -1 if it did not exit normally.
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  double PredictsServed() const {
    return server::MetricValue(
        server::HttpGet(metrics_port, "/metrics"),
        "zlpr_requests_total{code=\"OK\",method=\"Predict\",protocol=\"zlpr_v1\"}");
  }

  int grpc_port = 0;
  int metrics_port = 0;

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
};

TEST(FailoverTest, RoundRobinSpreadsLoadAndSurvivesASigtermedServer) {
  ServerProcess a, b, c;
  ASSERT_TRUE(a.grpc_port && b.grpc_port && c.grpc_port);
  ClientOptions o;
  o.target = absl::StrCat("ipv4:127.0.0.1:", a.grpc_port, ",127.0.0.1:", b.grpc_port,
                          ",127.0.0.1:", c.grpc_port);
  o.default_deadline = std::chrono::seconds(20);
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());

  std::vector<float> scores(100);
  for (int i = 0; i < 100; ++i) scores[i] = static_cast<float>(i % 7) - 3.0f;
  PredictCall call;
  call.rows = 1;
  call.cols = 100;
  call.scores = scores;

  constexpr int kThreads = 4, kCallsPerThread = 150;
  std::atomic<int> done{0}, failed{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        auto r = (*client)->Predict(call);
        if (!r.ok()) {
          ++failed;
          std::fprintf(stderr, "call failed: %s\n", r.status().ToString().c_str());
        }
        ++done;
      }
    });
  }
  ASSERT_TRUE(server::WaitUntil([&] { return done.load() >= 200; }));
  // Every server has taken a share before one goes away.
  const double on_a = a.PredictsServed(), on_b = b.PredictsServed(), on_c = c.PredictsServed();
  EXPECT_GT(on_a, 20);
  EXPECT_GT(on_b, 20);
  EXPECT_GT(on_c, 20);
  b.Terminate();
  for (auto& t : callers) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(done.load(), kThreads * kCallsPerThread);
  EXPECT_EQ(b.Wait(), 0) << "SIGTERM must end the server with status 0";
  EXPECT_GT(a.PredictsServed() + c.PredictsServed(), on_a + on_c);
}

}  // namespace
}  // namespace zlpr
