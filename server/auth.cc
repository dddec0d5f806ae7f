// BearerAuth: the token check, in time independent of the token's contents.
#include "server/auth.h"

#include <string_view>

namespace zlpr::server {

absl::Status BearerAuth::Check(const grpc::CallbackServerContext& ctx) const {
  if (token_.empty()) return absl::OkStatus();
  const auto& md = ctx.client_metadata();
  const auto it = md.find("authorization");
  std::string_view got =
      it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  const bool bearer = got.substr(0, kBearer.size()) == kBearer;
  if (bearer) got.remove_prefix(kBearer.size());
  // Constant time in the token's contents: every byte of the expected token is compared.
  unsigned diff = bearer && got.size() == token_.size() ? 0u : 1u;
  for (size_t i = 0; i < token_.size(); ++i) {
    diff |= static_cast<unsigned char>(token_[i]) ^
            static_cast<unsigned char>(i < got.size() ? got[i] : 0);
  }
  if (diff != 0) {
    return absl::UnauthenticatedError(
        "missing or invalid credentials: send \"authorization: Bearer <token>\"");
  }
  return absl::OkStatus();
}

}  // namespace zlpr::server
