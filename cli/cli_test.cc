// zlpr-cli end to end against a server on loopback, and its file readers.
#include "cli/cli.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"

namespace zlpr::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Writes a .npy file of `descr` with the given shape and raw data.
void WriteNpy(const std::string& path, const std::string& descr, const std::string& shape,
              const void* data, size_t bytes) {
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << header;
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

void WriteText(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// The tests' server: on the CPU, no metrics port, at `address`.
server::ServerOptions ServerAt(const std::string& address) {
  server::ServerOptions o;
  o.grpc_address = address;
  o.metrics_address = "";
  o.backend = "cpu";
  o.threads = 1;
  return o;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("zlpr_cli_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    auto s = server::Server::Start(ServerAt("127.0.0.1:0"));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    target_ = absl::StrCat("--target=127.0.0.1:", server_->grpc_port());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  int Run(std::vector<std::string> args) {
    args.insert(args.begin(), target_);
    out_.str("");
    err_.str("");
    const absl::FlagSaver defaults_after_each_run;
    return RunCli(args, out_, err_);
  }

  std::filesystem::path dir_;
  std::unique_ptr<server::Server> server_;
  std::string target_;
  std::ostringstream out_, err_;
};

TEST_F(CliTest, HealthAndInfoPrintJson) {
  EXPECT_EQ(Run({"health"}), 0);
  EXPECT_EQ(out_.str(), "{\"service\":\"\",\"status\":\"SERVING\"}\n");
  EXPECT_EQ(Run({"info"}), 0);
  EXPECT_THAT(out_.str(), StartsWith(absl::StrCat("{\"version\":\"", server::Version(),
                                                  "\",\"backend\":\"cpu\"")));
}

TEST_F(CliTest, LossFromNpyAndJsonFiles) {
  const float scores[6] = {2.0f, -1.0f, 0.5f, -3.0f, 1.5f, 0.0f};
  WriteNpy(Path("s.npy"), "<f4", "(2, 3)", scores, sizeof(scores));
  WriteText(Path("t.json"), "[[1, 0, 1], [0, 0, 0]]");
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s.npy"), "--labels=" + Path("t.json"), "--want_grad"}),
            0)
      << err_.str();
  auto json = ParseJson(out_.str());
  ASSERT_TRUE(json.ok()) << out_.str();
  const auto& loss = json->at("loss");
  ASSERT_EQ(loss.size(), 2u);
  // Row 0: log(1 + e^{-1}) + log(1 + e^{-2} + e^{-0.5}); row 1: log(1 + e^{-3} + e^{1.5} + 1).
  EXPECT_NEAR(loss[0].get<double>(),
              std::log(1 + std::exp(-1.0)) + std::log(1 + std::exp(-2.0) + std::exp(-0.5)), 1e-5);
  EXPECT_NEAR(loss[1].get<double>(), std::log(2 + std::exp(-3.0) + std::exp(1.5)), 1e-5);
  EXPECT_EQ(json->at("grad").size(), 2u);

  WriteText(Path("sp.json"), R"({"row_splits": [0, 2, 2], "indices": [0, 2]})");
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s.npy"), "--sparse_labels=" + Path("sp.json")}), 0)
      << err_.str();
  auto sparse = ParseJson(out_.str());
  ASSERT_TRUE(sparse.ok());
  EXPECT_EQ(sparse->at("loss")[0].get<float>(), loss[0].get<float>());
  EXPECT_FALSE(sparse->contains("grad"));  // --want_grad of the previous run does not stick
}

TEST_F(CliTest, PredictWithFloat16NpyAndTopK) {
  const uint16_t half[4] = {0x4000, 0xBC00, 0x3C00, 0x0000};  // 2, -1, 1, 0
  WriteNpy(Path("s16.npy"), "<f2", "(1, 4)", half, sizeof(half));
  ASSERT_EQ(Run({"predict", "--scores=" + Path("s16.npy"), "--top_k=1", "--min_labels=2"}), 0)
      << err_.str();
  EXPECT_THAT(out_.str(), StartsWith("{\"rows\":[{\"labels\":[0,2],\"probs\":["));
  auto json = ParseJson(out_.str());
  ASSERT_TRUE(json.ok());
  const auto& probs = json->at("rows")[0].at("probs");
  EXPECT_NEAR(probs[0].get<double>(), 1 / (1 + std::exp(-4.0)), 1e-7);  // σ(2·2)
  EXPECT_NEAR(probs[1].get<double>(), 1 / (1 + std::exp(-2.0)), 1e-7);  // σ(2·1)
  // Floats print in their shortest form that reads back as the same float.
  EXPECT_EQ(JsonFloat(0.1f).dump(), "0.1");
  EXPECT_EQ(JsonFloat(-3.0f).dump(), "-3.0");
}

// np.save writes float64 scores and int64 or bool labels unless told otherwise: they are
// converted as the Python client converts them (to float32; masks: non-zero keeps an entry), so
// every file gives the float32 file's answer.
TEST_F(CliTest, WhatNumpyWritesByDefaultIsConverted) {
  const float s32[6] = {2.0f, -1.0f, 0.5f, -3.0f, 1.5f, 0.0f};
  const double s64[6] = {2.0, -1.0, 0.5, -3.0, 1.5, 0.0};
  const float t32[6] = {1, 0, 1, 0, 0, 1};
  const int64_t t64[6] = {1, 0, 1, 0, 0, 1};
  const bool tbool[6] = {true, false, true, false, false, true};
  const uint8_t m8[6] = {1, 1, 0, 1, 1, 1};
  const int32_t m32[6] = {7, -1, 0, 1, 1, 1};
  const double s64be_src[6] = {2.0, -1.0, 0.5, -3.0, 1.5, 0.0};
  unsigned char s64be[48];
  for (int i = 0; i < 6; ++i) {
    unsigned char b[8];
    std::memcpy(b, &s64be_src[i], 8);
    for (int k = 0; k < 8; ++k) s64be[i * 8 + k] = b[7 - k];
  }
  WriteNpy(Path("s32.npy"), "<f4", "(2, 3)", s32, sizeof(s32));
  WriteNpy(Path("s64.npy"), "<f8", "(2, 3)", s64, sizeof(s64));
  WriteNpy(Path("s64be.npy"), ">f8", "(2, 3)", s64be, sizeof(s64be));
  WriteNpy(Path("t32.npy"), "<f4", "(2, 3)", t32, sizeof(t32));
  WriteNpy(Path("t64.npy"), "<i8", "(2, 3)", t64, sizeof(t64));
  WriteNpy(Path("tbool.npy"), "|b1", "(2, 3)", tbool, sizeof(tbool));
  WriteNpy(Path("m8.npy"), "|u1", "(2, 3)", m8, sizeof(m8));
  WriteNpy(Path("m32.npy"), "<i4", "(2, 3)", m32, sizeof(m32));
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s32.npy"), "--labels=" + Path("t32.npy"),
                 "--mask=" + Path("m8.npy"), "--want_grad"}),
            0)
      << err_.str();
  // The answer without its timing.
  auto answer = [this] {
    auto j = ParseJson(out_.str());
    EXPECT_TRUE(j.ok()) << out_.str();
    j->erase("queue_seconds");
    j->erase("compute_seconds");
    return j->dump();
  };
  const std::string want = answer();
  for (const char* scores : {"s64.npy", "s64be.npy"}) {
    for (const char* labels : {"t64.npy", "tbool.npy"}) {
      ASSERT_EQ(Run({"loss", "--scores=" + Path(scores), "--labels=" + Path(labels),
                     "--mask=" + Path("m32.npy"), "--want_grad"}),
                0)
          << scores << " " << labels << ": " << err_.str();
      EXPECT_EQ(answer(), want) << scores << " " << labels;
    }
  }
  ASSERT_EQ(Run({"predict", "--scores=" + Path("s32.npy"), "--top_k=2"}), 0) << err_.str();
  const std::string want_predict = out_.str();
  ASSERT_EQ(Run({"predict", "--scores=" + Path("s64.npy"), "--top_k=2"}), 0) << err_.str();
  EXPECT_EQ(out_.str(), want_predict);
  // Sparse labels in JSON: "values": null is "every label 1", as values=None in Python.
  WriteText(Path("sp.json"), R"({"row_splits": [0, 2, 3], "indices": [0, 2, 2]})");
  WriteText(Path("spnull.json"),
            R"({"row_splits": [0, 2, 3], "indices": [0, 2, 2], "values": null})");
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s32.npy"), "--sparse_labels=" + Path("sp.json")}), 0);
  const std::string sparse = answer();
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s32.npy"), "--sparse_labels=" + Path("spnull.json")}),
            0)
      << err_.str();
  EXPECT_EQ(answer(), sparse);
}

TEST_F(CliTest, MinusInfinityInJsonScoresExcludesAnEntry) {
  WriteText(Path("s.json"), R"([[3.0, "-inf", -1.0]])");
  WriteText(Path("t.json"), "[[1, 1, 0]]");
  ASSERT_EQ(Run({"loss", "--scores=" + Path("s.json"), "--labels=" + Path("t.json")}), 0)
      << err_.str();
  auto json = ParseJson(out_.str());
  ASSERT_TRUE(json.ok());
  // Only columns 0 and 2 count: log(1 + e^{-3}) + log(1 + e^{-1}).
  EXPECT_NEAR(json->at("loss")[0].get<double>(),
              std::log(1 + std::exp(-3.0)) + std::log(1 + std::exp(-1.0)), 1e-6);
}

TEST_F(CliTest, APriorityIsAskedForByName) {
  WriteText(Path("s.json"), "[[3.0, -1.0]]");
  WriteText(Path("t.json"), "[[1, 0]]");
  for (const char* p : {"--priority=interactive", "--priority=bulk"}) {
    EXPECT_EQ(Run({"loss", "--scores=" + Path("s.json"), "--labels=" + Path("t.json"), p}), 0)
        << err_.str();
    EXPECT_EQ(Run({"predict", "--scores=" + Path("s.json"), p}), 0) << err_.str();
  }
  EXPECT_EQ(Run({"predict", "--scores=" + Path("s.json"), "--priority=urgent"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("--priority=urgent: expected interactive or bulk"));
}

TEST_F(CliTest, ClearErrorsForFilesShapesAndServerErrors) {
  EXPECT_EQ(Run({"loss", "--scores=" + Path("missing.npy"), "--labels=x"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("missing.npy: cannot open"));

  const float scores[4] = {1.0f, std::nanf(""), 0.0f, 0.0f};
  WriteNpy(Path("nan.npy"), "<f4", "(2, 2)", scores, sizeof(scores));
  WriteText(Path("t3.json"), "[[0, 1, 0], [1, 0, 0]]");
  EXPECT_EQ(Run({"loss", "--scores=" + Path("nan.npy"), "--labels=" + Path("t3.json")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("t3.json: shape [2, 3] does not match scores [2, 2]"));

  WriteText(Path("t2.json"), "[[0, 1], [1, 0]]");
  EXPECT_EQ(Run({"loss", "--scores=" + Path("nan.npy"), "--labels=" + Path("t2.json")}), 1);
  EXPECT_EQ(err_.str(), "zlpr-cli: server error: INVALID_ARGUMENT: scores[0, 1] is NaN\n");

  WriteNpy(Path("c16.npy"), "<c16", "(1,)", scores, 16);
  EXPECT_EQ(Run({"predict", "--scores=" + Path("c16.npy")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("dtype '<c16' is not supported"));
  WriteNpy(Path("short.npy"), "<f8", "(2,)", scores, 8);
  EXPECT_EQ(Run({"predict", "--scores=" + Path("short.npy")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("short.npy: 8 data bytes for 2 values of '<f8'"));

  WriteText(Path("ragged.json"), "[[1, 2], [3]]");
  EXPECT_EQ(Run({"predict", "--scores=" + Path("ragged.json")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("row 1 has 1 values, row 0 has 2"));

  EXPECT_EQ(Run({"frobnicate"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("unknown command 'frobnicate'"));

  WriteText(Path("bad.json"), "[[1, 2], [3, ");
  EXPECT_EQ(Run({"predict", "--scores=" + Path("bad.json")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("bad.json: invalid JSON: "));

  // Found by fuzz/cli_readers_fuzzer: a number too large for a double made the JSON library
  // throw out_of_range, which was not caught, and zlpr-cli died in std::terminate.
  WriteText(Path("huge.json"), "[[1e999, 2]]");
  EXPECT_EQ(Run({"predict", "--scores=" + Path("huge.json")}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("huge.json: invalid JSON: "));
}

TEST_F(CliTest, UnknownFlagsAndBadValuesAreUsageErrors) {
  EXPECT_EQ(Run({"health", "--colour=blue"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("unknown flag --colour (zlpr-cli --help lists the flags)"));
  EXPECT_EQ(Run({"predict", "--top_k=-3", "--scores=x.json"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("--top_k=-3: "));
  EXPECT_EQ(Run({"predict", "--top_k"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("--top_k needs a value"));
  EXPECT_EQ(Run({"health", "info"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("one command at a time, got: health info"));
  EXPECT_EQ(Run({"--helpfull"}), 2);  // only this program's flags exist here
}

TEST_F(CliTest, HelpListsEveryFlag) {
  EXPECT_EQ(Run({"--help"}), 0);
  for (const char* flag :
       {"--target", "--deadline_ms", "--scores", "--labels", "--sparse_labels", "--mask",
        "--want_grad", "--grad_dtype", "--threshold", "--top_k", "--min_labels", "--want_probs",
        "--token_file", "--tls", "--priority", "--wait_s"}) {
    EXPECT_THAT(out_.str(), HasSubstr(std::string("\n  ") + flag + "  ")) << flag;
  }
  const std::string help = out_.str();
  for (const char* ask : {"-h", "help"}) {
    EXPECT_EQ(Run({ask}), 0) << ask;
    EXPECT_EQ(out_.str(), help) << ask;
    EXPECT_EQ(err_.str(), "") << ask;
  }
}

TEST_F(CliTest, NoServerThereSaysWhereItLookedAndWhatToDo) {
  out_.str("");
  err_.str("");
  const absl::FlagSaver defaults_after_this_run;
  EXPECT_EQ(RunCli({"--target=127.0.0.1:1", "--deadline_ms=3000", "health"}, out_, err_), 1);
  EXPECT_THAT(err_.str(), HasSubstr("server error: UNAVAILABLE"));
  EXPECT_THAT(err_.str(), HasSubstr("no server answered at --target=127.0.0.1:1 (is zlpr-server "
                                    "running there? start one with `make run`"));
}

// health --wait_s: a script that has just started a server waits for it to serve.
TEST_F(CliTest, HealthWaitsForAServerThatIsStillStarting) {
  const int port = server_->grpc_port();
  server_.reset();  // nothing listens there now
  std::unique_ptr<server::Server> later;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    auto s = server::Server::Start(ServerAt(absl::StrCat("127.0.0.1:", port)));
    ASSERT_TRUE(s.ok()) << s.status();
    later = *std::move(s);
  });
  out_.str("");
  err_.str("");
  {
    const absl::FlagSaver defaults_after_this_run;
    EXPECT_EQ(
        RunCli({absl::StrCat("--target=127.0.0.1:", port), "--wait_s=60", "health"}, out_, err_), 0)
        << err_.str();
  }
  starter.join();
  EXPECT_EQ(out_.str(), "{\"service\":\"\",\"status\":\"SERVING\"}\n");
}

TEST_F(CliTest, JsonKeepsEscapesBothWaysAndUnknownServicesAreServerErrors) {
  // A service name with a quote, a backslash and a newline: printed escaped, read back whole.
  const std::string name = "a\"b\\c\nd";
  EXPECT_EQ(Run({"health", "--service=" + name}), 1);  // no such service: the server says so
  EXPECT_THAT(err_.str(), HasSubstr("server error: NOT_FOUND"));
  auto j = ParseJson(R"({"a": [1, -2.5e3, true, null, "x\"y\u00e9"]})");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->at("a")[4].get<std::string>(), "x\"y\xc3\xa9");
  EXPECT_EQ(nlohmann::ordered_json(name).dump(), R"("a\"b\\c\nd")");
  EXPECT_EQ(ParseJson("[1, 2").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace zlpr::cli
