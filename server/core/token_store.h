// The bearer token every front end checks: read from a file, reloadable for rotation (after a
// reload that changes it, the previous token stays valid for a grace period, so that clients
// can switch over). Tokens are compared in time independent of their contents.
//
//   auto tokens = TokenStore::FromFile("/run/secrets/token", absl::Minutes(5));
//   if (!(*tokens)->Accepts(authorization_header)) ... UNAUTHENTICATED
//   ... on SIGHUP or a change of the file: (*tokens)->Reload();
#ifndef ZLPR_SERVER_CORE_TOKEN_STORE_H_
#define ZLPR_SERVER_CORE_TOKEN_STORE_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

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

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_TOKEN_STORE_H_
