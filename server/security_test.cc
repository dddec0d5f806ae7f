// TLS, mutual TLS and bearer tokens on the gRPC port, with certificates made at test time by
// the openssl command; the metrics port serves metrics only.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "server/test_support.h"
#include "zlpr/v1/zlpr.grpc.pb.h"

namespace zlpr::server {
namespace {

namespace fs = std::filesystem;

// A CA, a server certificate for localhost/127.0.0.1, a client certificate from the same CA
// and one from another ("rogue") CA.
class Certificates {
 public:
  Certificates() : dir_(fs::temp_directory_path() / ("zlpr_certs_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
    const std::string d = dir_.string();
    const std::string script = absl::StrCat(
        "set -e; cd ", d, "; exec >/dev/null 2>&1;",
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext;",
        "for ca in ca rogue; do openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=$ca "
        "-keyout $ca.key -out $ca.pem; done;",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out "
        "server.csr;",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile san.ext -out server.pem;",
        "for c in client:ca evil:rogue; do n=${c%%:*}; ca=${c##*:};"
        " openssl req -newkey rsa:2048 -nodes -subj /CN=$n -keyout $n.key -out $n.csr;"
        " openssl x509 -req -in $n.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -days 2 -out "
        "$n.pem;"
        " done");
    std::ofstream(dir_ / "make.sh") << script << "\n";
    ok_ = std::system(("bash " + (dir_ / "make.sh").string()).c_str()) == 0;
  }
  ~Certificates() { fs::remove_all(dir_); }
  bool ok() const { return ok_; }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string pem(const std::string& name) const {
    return ReadFile((dir_ / name).string()).value_or("");
  }

 private:
  fs::path dir_;
  bool ok_ = false;
};

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new Certificates(); }
  static void TearDownTestSuite() { delete certs_; }
  void SetUp() override { ASSERT_TRUE(certs_->ok()) << "openssl failed"; }

  void Start(bool mutual, const std::string& token = "") {
    ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";
    o.backend = "cpu";
    o.threads = 1;
    o.tls_cert_file = certs_->path("server.pem");
    o.tls_key_file = certs_->path("server.key");
    if (mutual) o.tls_client_ca_file = certs_->path("ca.pem");
    if (!token.empty()) {
      o.auth_token_file = certs_->path("token");
      std::ofstream(o.auth_token_file) << token << "\n";
    }
    auto s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  std::shared_ptr<grpc::Channel> Tls(const std::string& client = "") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = certs_->pem("ca.pem");
    if (!client.empty()) {
      ssl.pem_cert_chain = certs_->pem(client + ".pem");
      ssl.pem_private_key = certs_->pem(client + ".key");
    }
    return grpc::CreateChannel(absl::StrCat("localhost:", server_->grpc_port()),
                               grpc::SslCredentials(ssl));
  }
  std::shared_ptr<grpc::Channel> Plain() {
    return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->grpc_port()),
                               grpc::InsecureChannelCredentials());
  }
  static grpc::Status Info(const std::shared_ptr<grpc::Channel>& ch,
                           const std::string& token = "") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::ServerInfo info;
    return v1::ZlprService::NewStub(ch)->GetServerInfo(&ctx, v1::ServerInfoRequest(), &info);
  }

  static Certificates* certs_;
  std::unique_ptr<Server> server_;
};

Certificates* SecurityTest::certs_ = nullptr;

TEST_F(SecurityTest, TlsPortRefusesPlaintextAndServesTlsClients) {
  Start(/*mutual=*/false);
  EXPECT_EQ(Info(Plain()).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Info(Tls()).ok());
}

TEST_F(SecurityTest, MutualTlsRefusesMissingAndForeignClientCertificates) {
  Start(/*mutual=*/true);
  EXPECT_EQ(Info(Tls()).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Info(Tls("evil")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Info(Tls("client")).ok());
}

TEST_F(SecurityTest, BearerTokenIsRequiredButHealthIsExempt) {
  Start(/*mutual=*/false, "s3cret-token");
  auto ch = Tls();
  const grpc::Status none = Info(ch);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(none.error_message(),
            "missing or invalid credentials: send \"authorization: Bearer <token>\"");
  EXPECT_EQ(Info(ch, "s3cret-tokeN").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Info(ch, "s3cret").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Info(ch, "s3cret-token").ok());
  // Streams and predictions too.
  {
    grpc::ClientContext ctx;
    auto stream = v1::ZlprService::NewStub(ch)->StreamPredict(&ctx);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_TRUE(grpc::health::v1::Health::NewStub(ch)->Check(&ctx, {}, &resp).ok());
  EXPECT_EQ(MetricValue(HttpGet(server_->metrics_port(), "/metrics"),
                        "zlpr_rejected_requests_total{reason=\"unauthenticated\"}"),
            4);
}

// A plaintext server whose token is in a file the test can rewrite.
class TokenFileTest : public ::testing::Test {
 protected:
  void Start(const std::string& token, std::chrono::milliseconds grace,
             int64_t max_message_bytes = 64 << 20) {
    std::ofstream(path_) << token << "\n";
    ServerOptions o;
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";
    o.backend = "cpu";
    o.threads = 1;
    o.max_message_bytes = max_message_bytes;
    o.auth_token_file = path_.string();
    o.auth_token_grace = grace;
    auto s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ = v1::ZlprService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->grpc_port()), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { fs::remove(path_); }
  grpc::StatusCode Info(const std::string& token) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::ServerInfo info;
    return stub_->GetServerInfo(&ctx, {}, &info).error_code();
  }
  void Rotate(const std::string& token) {
    const fs::path next = path_.string() + ".next";
    std::ofstream(next) << token << "\n";
    fs::rename(next, path_);  // as a secret volume swaps it: atomically
  }

  const fs::path path_ = fs::temp_directory_path() / ("zlpr_token_" + std::to_string(::getpid()));
  std::unique_ptr<Server> server_;
  std::unique_ptr<v1::ZlprService::Stub> stub_;
};

TEST_F(TokenFileTest, TheTokenIsCheckedFromTheHeadersBeforeTheMessageIsRead) {
  Start("header-token", std::chrono::minutes(5), /*max_message_bytes=*/1 << 20);
  // 4 MiB, four times the message limit: were it read, it would be refused as too large.
  v1::PredictRequest req;
  req.mutable_scores()->set_data(std::string(4 << 20, '\0'));
  v1::PredictResponse resp;
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    const grpc::Status st = stub_->Predict(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer header-token");
  EXPECT_EQ(stub_->Predict(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const std::string m = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(m, "zlpr_rejected_requests_total{reason=\"unauthenticated\"}"), 3);
  EXPECT_EQ(MetricValue(m, "zlpr_request_bytes_total"), 0);  // nothing reached the service
}

TEST_F(TokenFileTest, ARotatedTokenIsPickedUpAndThePreviousOneHasAGracePeriod) {
  Start("first-token", std::chrono::minutes(5));
  EXPECT_EQ(Info("first-token"), grpc::StatusCode::OK);
  EXPECT_EQ(Info("second-token"), grpc::StatusCode::UNAUTHENTICATED);
  Rotate("second-token");
  EXPECT_TRUE(WaitUntil([&] { return Info("second-token") == grpc::StatusCode::OK; }));
  EXPECT_EQ(Info("first-token"), grpc::StatusCode::OK);  // within its grace
  // An empty file is an error that keeps the current token.
  std::ofstream(path_) << "\n";
  EXPECT_EQ(server_->ReloadAuthToken().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Info("second-token"), grpc::StatusCode::OK);
}

TEST_F(TokenFileTest, WithoutGraceTheRotatedTokenIsRefusedAtOnceAfterAReload) {
  Start("first-token", std::chrono::milliseconds(0));
  Rotate("second-token");
  ASSERT_TRUE(server_->ReloadAuthToken().ok());  // what SIGHUP does
  EXPECT_EQ(Info("second-token"), grpc::StatusCode::OK);
  EXPECT_EQ(Info("first-token"), grpc::StatusCode::UNAUTHENTICATED);
}

TEST(EchoSecurityTest, TheEchoBaselineAsksForTheTokenToo) {
  const fs::path token =
      fs::temp_directory_path() / ("zlpr_echo_token_" + std::to_string(::getpid()));
  std::ofstream(token) << "echo-token\n";
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.backend = "cpu";
  o.echo = true;
  o.auth_token_file = token.string();
  auto server = Server::Start(o);
  fs::remove(token);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::ZlprService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->grpc_port()), grpc::InsecureChannelCredentials()));
  v1::PredictRequest req;
  v1::PredictResponse resp;
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub->Predict(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    auto stream = stub->StreamLoss(&ctx);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer echo-token");
  EXPECT_TRUE(stub->Predict(&ctx, req, &resp).ok());
}

TEST(MetricsEndpointTest, IdleHalfSentRequestsCannotStarveTheScrape) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.threads = 1;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->metrics_port();
  // Eight clients that send half a request and then nothing.
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) {
    const int fd = ConnectLoopback(port);
    ASSERT_GE(fd, 0);
    const std::string half = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
    ASSERT_EQ(write(fd, half.data(), half.size()), static_cast<ssize_t>(half.size()));
    idle.push_back(fd);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string body = HttpGet(port, "/metrics");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_THAT(body, ::testing::HasSubstr("zlpr_build_info"));
  EXPECT_LT(seconds, 1.0);
  for (int fd : idle) close(fd);
}

TEST_F(SecurityTest, MetricsPortServesMetricsOnly) {
  Start(/*mutual=*/false);
  EXPECT_THAT(HttpGet(server_->metrics_port(), "/metrics"),
              ::testing::HasSubstr("zlpr_build_info"));
  const std::string other = HttpGet(server_->metrics_port(), "/zlpr.v1.ZlprService/GetServerInfo");
  EXPECT_THAT(other, ::testing::Not(::testing::HasSubstr("zlpr_")));
}

// Files that do not go together are named before anything listens (gRPC alone would only fail
// to open the port, and the message would blame the address).
TEST_F(SecurityTest, AKeyThatIsNotTheCertificatesIsNamed) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.backend = "cpu";
  o.tls_cert_file = certs_->path("server.pem");
  o.tls_key_file = certs_->path("client.key");
  auto s = Server::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message(),
            absl::StrCat("--tls_key=", certs_->path("client.key"),
                         ": this key does not belong to the certificate of --tls_cert=",
                         certs_->path("server.pem")));
  o.tls_key_file = certs_->path("server.pem");  // a certificate where the key should be
  EXPECT_THAT(std::string(Server::Start(o).status().message()),
              ::testing::HasSubstr(": no PEM private key in it"));
  o.tls_cert_file = certs_->path("server.key");  // and the other way round
  o.tls_key_file = certs_->path("server.key");
  EXPECT_EQ(Server::Start(o).status().message(),
            absl::StrCat("--tls_cert=", certs_->path("server.key"), ": no PEM certificate in it"));
  o.tls_cert_file = certs_->path("server.pem");
  o.tls_client_ca_file = certs_->path("ca.key");
  EXPECT_EQ(Server::Start(o).status().message(),
            absl::StrCat("--tls_client_ca=", certs_->path("ca.key"), ": no PEM certificate in it"));
}

// A port in use is named as such, for the metrics port too (CivetWeb says only "null context").
TEST(ListenTest, APortInUseIsSaidToBeInUse) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.threads = 1;
  auto first = Server::Start(o);
  ASSERT_TRUE(first.ok()) << first.status();
  ServerOptions again = o;
  again.metrics_address = absl::StrCat("127.0.0.1:", (*first)->metrics_port());
  auto s = Server::Start(again);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.status().message(),
            absl::StrCat("--metrics_address=", again.metrics_address,
                         ": could not listen there (port ", (*first)->metrics_port(),
                         " is in use (another zlpr-server? choose another port, or 0 for a free "
                         "one))"));
  again = o;
  again.grpc_address = absl::StrCat("127.0.0.1:", (*first)->grpc_port());
  s = Server::Start(again);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.status().message()),
              ::testing::HasSubstr(absl::StrCat("could not listen there (port ",
                                                (*first)->grpc_port(), " is in use")));
}

TEST(SecurityOptionsTest, HalfATlsConfigurationIsRefused) {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.backend = "cpu";
  o.tls_cert_file = "/nonexistent.pem";
  EXPECT_EQ(Server::Start(o).status().message(), "--tls_cert and --tls_key go together");
  o.tls_key_file = "/nonexistent.key";
  EXPECT_EQ(Server::Start(o).status().message(),
            "--tls_cert=/nonexistent.pem: cannot open (No such file or directory)");
}

TEST(TokenStoreTest, TheBearerSchemeIsCaseInsensitiveAndTheTokenIsNot) {
  const fs::path file = fs::temp_directory_path() / ("zlpr_token_" + std::to_string(::getpid()));
  std::ofstream(file) << "s3cret\n";
  auto tokens = TokenStore::FromFile(file.string(), absl::ZeroDuration());
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  for (const char* good : {"Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer   s3cret"}) {
    EXPECT_TRUE((*tokens)->Accepts(good)) << good;
  }
  for (const char* bad : {"Bearer S3CRET", "Bearers3cret", "Basic s3cret", "Bearer", "Bearer ",
                          "s3cret", "Bearer s3cret2", ""}) {
    EXPECT_FALSE((*tokens)->Accepts(bad)) << bad;
  }
  fs::remove(file);
}

}  // namespace
}  // namespace zlpr::server
