// Authentication on the gRPC port: TLS (optionally mutual) and bearer tokens, both enforced by
// the transport, so that a call without a valid token is refused (UNAUTHENTICATED) from its
// headers, before its message is read: an unauthenticated caller costs the server nothing but
// its headers.
//
//   auto tokens = TokenStore::FromFile("/run/secrets/token", absl::Minutes(5));
//   auto creds = ServerCredentials(tls, tokens->get(), [&] { ++refused; });
//   builder.AddListeningPort(address, *creds);
//   ... on SIGHUP or a change of the file: (*tokens)->Reload();
//
// Every method needs the token except gRPC's health checks and server reflection, so that
// probes and tools work without it. Tokens are compared in time independent of their contents.
#ifndef ZLPR_SERVER_AUTH_H_
#define ZLPR_SERVER_AUTH_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"

namespace zlpr::server {

// The bearer token read from a file, reloadable for rotation: after a reload that changes it,
// the previous token stays valid for `grace`, so that clients can switch over.
class TokenStore {
 public:
  // The token in `path` (surrounding whitespace ignored). FAILED_PRECONDITION when the file
  // cannot be read, INVALID_ARGUMENT when it holds no token.
  static absl::StatusOr<std::unique_ptr<TokenStore>> FromFile(std::string path,
                                                              absl::Duration grace);

  // Reads the file again: true when the token changed (the old one is then accepted until the
  // grace period ends), false when it is the same. An unreadable or empty file is an error and
  // keeps the current token.
  absl::StatusOr<bool> Reload() ABSL_LOCKS_EXCLUDED(mu_);

  // Whether an "authorization" header value is "Bearer <a valid token>".
  bool Accepts(std::string_view authorization) const ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& path() const { return path_; }

 private:
  TokenStore(std::string path, absl::Duration grace, std::string token)
      : path_(std::move(path)), grace_(grace), current_(std::move(token)) {}

  const std::string path_;
  const absl::Duration grace_;
  mutable absl::Mutex mu_;
  std::string current_ ABSL_GUARDED_BY(mu_);
  std::string previous_ ABSL_GUARDED_BY(mu_);  // valid until previous_until_
  absl::Time previous_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// PEM contents for TLS on the gRPC port; no certificate: plaintext.
struct TlsPem {
  std::string cert_chain;
  std::string private_key;
  std::string client_ca;  // not empty: mutual TLS, clients must present a certificate it signed
};

// The gRPC port's credentials: TLS when `tls` has a certificate, else plaintext; with `tokens`
// (may be null: no token needed) the transport refuses every call but health checks and
// reflection that lacks a valid token, calling `on_refused` for each. `tokens` must outlive the
// server.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TlsPem& tls,
                                                           const TokenStore* tokens,
                                                           std::function<void()> on_refused);

// Whether a method (its HTTP/2 :path) is served without a token: health checks and reflection.
bool ExemptFromAuth(std::string_view path);

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_AUTH_H_
