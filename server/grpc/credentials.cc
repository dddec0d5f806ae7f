// The gRPC port's credentials. The token check runs in gRPC core's auth filter (a
// grpc_auth_metadata_processor on the server credentials), which sees a call's headers before
// anything reads its message. gRPC C++ 1.51 refuses a metadata processor on its plaintext
// credentials, so the credentials are made with the core API, for TLS and plaintext alike, and
// handed to ServerBuilder through a small grpc::ServerCredentials that adds the port with them.
#include "server/grpc/credentials.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"

namespace zlpr::server {
namespace {

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
