// libFuzzer harness for zlpr-cli's input readers: bytes -> .npy or JSON matrix, mask or sparse
// labels. The first byte picks the reader and the format; any crash, hang or sanitizer report is
// a finding, and a reader that succeeds must return data that matches its own shape.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cli/cli_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 5) {
    case 0:
    case 1: {
      const auto m = zlpr::cli::ParseFloatMatrix(data[0] % 5 == 0 ? "in.npy" : "in.json", bytes);
      if (m.ok() && static_cast<int64_t>(m->data.size()) != m->rows * m->cols) std::abort();
      break;
    }
    case 2:
    case 3: {
      const auto m = zlpr::cli::ParseByteMatrix(data[0] % 5 == 2 ? "in.npy" : "in.json", bytes);
      if (m.ok() && static_cast<int64_t>(m->data.size()) != m->rows * m->cols) std::abort();
      break;
    }
    default:
      (void)zlpr::cli::ParseSparseLabels("in.json", bytes);
  }
  return 0;
}
