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
#ifndef ZLPR_SERVER_GRPC_CREDENTIALS_H_
#define ZLPR_SERVER_GRPC_CREDENTIALS_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "grpcpp/security/server_credentials.h"
#include "server/core/token_store.h"

namespace zlpr::server {

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

#endif  // ZLPR_SERVER_GRPC_CREDENTIALS_H_
