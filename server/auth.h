// Bearer-token authentication of gRPC calls: "authorization: Bearer <token>", compared in
// constant time. With no token configured every call passes.
//
//   BearerAuth auth(token);                       // "" disables it
//   if (absl::Status st = auth.Check(*ctx); !st.ok()) reactor->Finish(ToGrpc(st));
#ifndef ZLPR_SERVER_AUTH_H_
#define ZLPR_SERVER_AUTH_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"

namespace zlpr::server {

class BearerAuth {
 public:
  explicit BearerAuth(std::string token) : token_(std::move(token)) {}

  bool enabled() const { return !token_.empty(); }

  // OK when the call carries the token (or none is configured); else UNAUTHENTICATED.
  absl::Status Check(const grpc::CallbackServerContext& ctx) const;

 private:
  const std::string token_;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_AUTH_H_
