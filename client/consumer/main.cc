// Builds against the installed zlpr package and makes one call to a server that is not there.
#include <cstdio>

#include "client/zlpr_client.h"

int main() {
  zlpr::ClientOptions options;
  options.target = "127.0.0.1:1";
  options.default_deadline = std::chrono::milliseconds(500);
  options.max_attempts = 1;
  auto client = zlpr::Client::Create(options);
  if (!client.ok()) return 1;
  const auto info = (*client)->GetServerInfo();
  std::printf("consumer: GetServerInfo -> %s\n", info.status().ToString().c_str());
  return info.status().code() == absl::StatusCode::kUnavailable ||
                 info.status().code() == absl::StatusCode::kDeadlineExceeded
             ? 0
             : 1;
}
