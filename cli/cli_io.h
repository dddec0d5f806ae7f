// Input and output of zlpr-cli: .npy (float32, float16, uint8/bool; C order) and JSON matrices
// and sparse labels in, JSON out. JSON is read and written with nlohmann-json.
#ifndef ZLPR_CLI_CLI_IO_H_
#define ZLPR_CLI_CLI_IO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

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
// dimensions. Anything else: JSON, an array of rows of numbers (or one array of numbers); the
// strings "-inf", "inf" and "nan" (any case, also "-Infinity", "Infinity", "NaN") stand for
// the values JSON has no literal for. Errors name the file and what is wrong with it.
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

// The same readers on bytes already in memory; `name` decides the format (.npy or JSON) and
// names the input in errors.
absl::StatusOr<FloatMatrix> ParseFloatMatrix(const std::string& name, const std::string& bytes);
absl::StatusOr<ByteMatrix> ParseByteMatrix(const std::string& name, const std::string& bytes);
absl::StatusOr<SparseLabels> ParseSparseLabels(const std::string& name, const std::string& bytes);

// Parses JSON text; INVALID_ARGUMENT with the parser's position and reason.
absl::StatusOr<nlohmann::ordered_json> ParseJson(const std::string& text);

// A float as a JSON number with the shortest decimal form that reads back as the same float
// (0.1f prints as 0.1, not 0.10000000149011612).
nlohmann::ordered_json JsonFloat(float f);

}  // namespace zlpr::cli

#endif  // ZLPR_CLI_CLI_IO_H_
