// TokenStore: the token file, read and reloaded.
#include "server/core/token_store.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file.h"

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

}  // namespace zlpr::server
