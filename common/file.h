// The project's one file reader: a whole file into a string, with an error that names it.
#ifndef ZLPR_COMMON_FILE_H_
#define ZLPR_COMMON_FILE_H_

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"

namespace zlpr {

// The bytes of `path`; NOT_FOUND "PATH: cannot open (reason)" when it cannot be opened.
inline absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(path + ": cannot open (" + std::strerror(errno) + ")");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

}  // namespace zlpr

#endif  // ZLPR_COMMON_FILE_H_
