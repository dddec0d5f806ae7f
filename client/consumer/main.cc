// Builds against the installed zlpr package (its public headers under <zlpr/...>) and makes one
// call to a server that is not there.
#include <zlpr/client.h>
#include <zlpr/dtype.h>
#include <zlpr/v1/tensor.h>

#include <cstdio>

int main() {
  // The codec and the fp16 conversion ship with the client.
  const float values[2] = {0.5f, -2.0f};
  zlpr::v1::Tensor t;
  zlpr::v1::EncodeMatrix(values, 1, 2, zlpr::DType::kFloat16, &t);
  const auto back = zlpr::v1::DecodeFloats(t, "t");
  if (!back.ok() || (*back)[1] != -2.0f) return 1;

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
