// Bearer tokens and the port's credentials. The token check runs in gRPC core's auth filter (a
// grpc_auth_metadata_processor on the server credentials), which sees a call's headers before
// anything reads its message. gRPC C++ 1.51 refuses a metadata processor on its plaintext
// credentials, so the credentials are made with the core API, for TLS and plaintext alike, and
// handed to ServerBuilder through a small grpc::ServerCredentials that adds the port with them.
#include "server/auth.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"

namespace zlpr::server {
namespace {

// Compares every byte of `token` whatever `got` holds: the time depends on the token's length
// only.
bool ConstantTimeEquals(std::string_view got, std::string_view token) {
  unsigned diff = got.size() == token.size() ? 0u : 1u;
  for (size_t i = 0; i < token.size(); ++i) {
    diff |= static_cast<unsigned char>(token[i]) ^
            static_cast<unsigned char>(i < got.size() ? got[i] : 0);
  }
  return diff == 0 && !token.empty();
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFile(path);
  if (!contents.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--auth_token_file=", contents.status().message()));
  }
  std::string token(absl::StripAsciiWhitespace(*contents));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--auth_token_file=", path, ": empty"));
  }
  return token;
}

// The state of the core metadata processor; the core destroys it with the credentials.
struct Processor {
  const TokenStore* tokens;
  std::function<void()> on_refused;
};

std::string_view SliceView(const grpc_slice& s) {
  return {reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)), GRPC_SLICE_LENGTH(s)};
}

void Process(void* state, grpc_auth_context*, const grpc_metadata* md, size_t num_md,
             grpc_process_auth_metadata_done_cb done, void* user_data) {
  const auto* p = static_cast<const Processor*>(state);
  std::string_view path, authorization;
  for (size_t i = 0; i < num_md; ++i) {
    const std::string_view key = SliceView(md[i].key);
    if (key == ":path") path = SliceView(md[i].value);
    if (key == "authorization") authorization = SliceView(md[i].value);
  }
  if (ExemptFromAuth(path) || p->tokens->Accepts(authorization)) {
    done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
    return;
  }
  if (p->on_refused) p->on_refused();
  done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
       "missing or invalid credentials: send \"authorization: Bearer <token>\"");
}

// grpc::ServerCredentials over core credentials (owned).
class CoreCredentials final : public grpc::ServerCredentials {
 public:
  explicit CoreCredentials(grpc_server_credentials* creds) : creds_(creds) {}
  ~CoreCredentials() override { grpc_server_credentials_release(creds_); }

  // The processor is installed on the core credentials by ServerCredentials(); C++ processors
  // are not used.
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* const creds_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::FromFile(std::string path,
                                                                 absl::Duration grace) {
  absl::StatusOr<std::string> token = ReadToken(path);
  if (!token.ok()) return token.status();
  return std::unique_ptr<TokenStore>(new TokenStore(std::move(path), grace, *std::move(token)));
}

absl::StatusOr<bool> TokenStore::Reload() {
  absl::StatusOr<std::string> token = ReadToken(path_);
  if (!token.ok()) return token.status();
  absl::MutexLock lock(&mu_);
  if (*token == current_) return false;
  previous_ = std::exchange(current_, *std::move(token));
  previous_until_ = absl::Now() + grace_;
  return true;
}

bool TokenStore::Accepts(std::string_view authorization) const {
  // The scheme's name is case-insensitive (RFC 9110, section 11.1); one or more spaces follow it.
  constexpr std::string_view kBearer = "bearer";
  if (authorization.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(authorization.data(), kBearer.size()),
                               absl::string_view(kBearer.data(), kBearer.size())) ||
      authorization[kBearer.size()] != ' ') {
    return false;
  }
  authorization.remove_prefix(kBearer.size());
  while (!authorization.empty() && authorization.front() == ' ') authorization.remove_prefix(1);
  absl::MutexLock lock(&mu_);
  // Both comparisons always run, so the time does not say which token matched.
  const bool current = ConstantTimeEquals(authorization, current_);
  const bool previous =
      ConstantTimeEquals(authorization, previous_) && absl::Now() < previous_until_;
  return current || previous;
}

bool ExemptFromAuth(std::string_view path) {
  return path.starts_with("/grpc.health.v1.Health/") ||
         path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") ||
         path.starts_with("/grpc.reflection.v1.ServerReflection/");
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TlsPem& tls,
                                                           const TokenStore* tokens,
                                                           std::function<void()> on_refused) {
  grpc_server_credentials* creds = nullptr;
  if (tls.cert_chain.empty()) {
    creds = grpc_insecure_server_credentials_create();
  } else {
    const grpc_ssl_pem_key_cert_pair pair{tls.private_key.c_str(), tls.cert_chain.c_str()};
    grpc_ssl_server_certificate_config* config = grpc_ssl_server_certificate_config_create(
        tls.client_ca.empty() ? nullptr : tls.client_ca.c_str(), &pair, 1);
    creds = grpc_ssl_server_credentials_create_with_options(
        grpc_ssl_server_credentials_create_options_using_config(
            tls.client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                  : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
            config));
  }
  if (tokens != nullptr) {
    grpc_server_credentials_set_auth_metadata_processor(
        creds, {Process, [](void* state) { delete static_cast<Processor*>(state); },
                new Processor{tokens, std::move(on_refused)}});
  }
  return std::make_shared<CoreCredentials>(creds);
}

}  // namespace zlpr::server
