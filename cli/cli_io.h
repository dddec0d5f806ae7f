// Input and output of zlpr-cli: .npy (float32, float16, uint8; C order) and JSON matrices, a
// small JSON reader, and JSON writing of results.
#ifndef ZLPR_CLI_CLI_IO_H_
#define ZLPR_CLI_CLI_IO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace zlpr::cli {

// A row-major matrix read from a file. Vectors read as one row.
struct FloatMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
};
struct ByteMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> data;
};

// `path` ending in .npy: NumPy format, float32 or float16 (widened), C order, 1 or 2
// dimensions. Anything else: JSON, an array of rows of numbers (or one array of numbers).
// Errors name the file and what is wrong with it.
absl::StatusOr<FloatMatrix> ReadFloatMatrix(const std::string& path);
// As ReadFloatMatrix, for masks: .npy of uint8 or bool, or JSON of 0/1.
absl::StatusOr<ByteMatrix> ReadByteMatrix(const std::string& path);

struct SparseLabels {
  std::vector<int64_t> row_splits;
  std::vector<int32_t> indices;
  std::vector<float> values;
};
// JSON {"row_splits": [...], "indices": [...], "values": [...]} ("values" optional).
absl::StatusOr<SparseLabels> ReadSparseLabels(const std::string& path);

// A parsed JSON value.
struct Json {
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> v;
};
absl::StatusOr<Json> ParseJson(const std::string& text);

// JSON text of a string (quoted, escaped) and of a float (shortest round-trip form).
std::string JsonString(const std::string& s);
std::string JsonNumber(double x);

}  // namespace zlpr::cli

#endif  // ZLPR_CLI_CLI_IO_H_
