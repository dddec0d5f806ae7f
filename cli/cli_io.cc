// .npy and JSON readers for zlpr-cli.
#include "cli/cli_io.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "zlpr/dtype.h"

namespace zlpr::cli {
namespace {

using Json = nlohmann::ordered_json;

struct Npy {
  std::string descr;
  std::vector<int64_t> shape;
  std::string_view payload;
};

// Parses the header, a Python dict literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
absl::StatusOr<Npy> ParseNpy(const std::string& path, const std::string& bytes) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a .npy file (bad magic)"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
    }
    header_len = 0;
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    }
    offset = 12;
  }
  if (bytes.size() < offset + header_len) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
  }
  const std::string header = bytes.substr(offset, header_len);
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) return "";
    const size_t colon = header.find(':', k);
    if (colon == std::string::npos) return "";
    size_t p = colon + 1;
    while (p < header.size() && header[p] == ' ') ++p;
    if (p >= header.size()) return "";
    size_t e = p;
    if (header[p] == '(') {
      e = header.find(')', p);
    } else if (header[p] == '\'') {
      e = header.find('\'', p + 1);
    } else {
      while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
      return header.substr(p, e - p);
    }
    return e == std::string::npos ? "" : header.substr(p, e + 1 - p);
  };
  Npy npy;
  npy.descr = std::string(absl::StripSuffix(absl::StripPrefix(field("descr"), "'"), "'"));
  if (field("fortran_order") == "True") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": Fortran-order arrays are not supported; save in C order"));
  }
  const std::string shape =
      std::string(absl::StripSuffix(absl::StripPrefix(field("shape"), "("), ")"));
  for (absl::string_view d : absl::StrSplit(shape, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad shape (", shape, ")"));
    }
    npy.shape.push_back(v);
  }
  npy.payload = std::string_view(bytes).substr(offset + header_len);
  return npy;
}

// The element type of a .npy file, from its descr ('<f8', '|u1', '>i4', '|b1', ...).
struct NpyType {
  char kind = 0;  // 'f' float, 'i' signed, 'u' unsigned, 'b' bool
  size_t size = 0;
  bool swap = false;  // big-endian data on this little-endian host
};

absl::StatusOr<NpyType> ParseDescr(const std::string& path, const std::string& descr) {
  NpyType t;
  if (descr.size() >= 3 &&
      (descr[0] == '<' || descr[0] == '>' || descr[0] == '|' || descr[0] == '=')) {
    t.kind = descr[1];
    t.swap = descr[0] == '>';
    if (!absl::SimpleAtoi(descr.substr(2), &t.size)) t.size = 0;
  }
  const bool known = (t.kind == 'f' && (t.size == 2 || t.size == 4 || t.size == 8)) ||
                     ((t.kind == 'i' || t.kind == 'u') &&
                      (t.size == 1 || t.size == 2 || t.size == 4 || t.size == 8)) ||
                     (t.kind == 'b' && t.size == 1);
  if (!known) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": dtype '", descr,
                     "' is not supported: save floats (float16/32/64), integers or bools"));
  }
  return t;
}

// Element i of `payload` as a double (what numpy's astype does, then narrowed by the caller).
double NpyElement(const NpyType& t, const char* payload, size_t i) {
  unsigned char b[8];
  std::memcpy(b, payload + i * t.size, t.size);
  if (t.swap) std::reverse(b, b + t.size);
  auto get = [&](auto v) {
    std::memcpy(&v, b, sizeof v);
    return static_cast<double>(v);
  };
  switch (t.kind) {
    case 'f':
      if (t.size == 8) return get(double{});
      if (t.size == 4) return get(float{});
      {
        float f;
        WidenToFloat(b, 1, DType::kFloat16, &f);
        return f;
      }
    case 'i':
      if (t.size == 1) return get(int8_t{});
      if (t.size == 2) return get(int16_t{});
      if (t.size == 4) return get(int32_t{});
      return get(int64_t{});
    case 'u':
      if (t.size == 1) return get(uint8_t{});
      if (t.size == 2) return get(uint16_t{});
      if (t.size == 4) return get(uint32_t{});
      return get(uint64_t{});
    default:  // 'b'
      return b[0] != 0 ? 1.0 : 0.0;
  }
}

absl::Status Dims(const std::string& path, const std::vector<int64_t>& shape, int64_t* rows,
                  int64_t* cols) {
  if (shape.size() == 1) {
    *rows = 1;
    *cols = shape[0];
  } else if (shape.size() == 2) {
    *rows = shape[0];
    *cols = shape[1];
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected a 1-D or 2-D array, got %d dimensions", path, shape.size()));
  }
  if (*cols > 0 && *rows > std::numeric_limits<int64_t>::max() / 8 / *cols) {  // 8: float64
    return absl::InvalidArgumentError(absl::StrCat(path, ": array too large"));
  }
  return absl::OkStatus();
}

// A JSON number, or one of the strings that stand for the values JSON cannot write.
bool JsonToFloat(const Json& j, float* out) {
  if (j.is_number()) {
    *out = j.get<float>();
    return true;
  }
  if (!j.is_string()) return false;
  const std::string s = absl::AsciiStrToLower(j.get<std::string>());
  if (s == "nan") {
    *out = std::numeric_limits<float>::quiet_NaN();
  } else if (s == "inf" || s == "infinity") {
    *out = std::numeric_limits<float>::infinity();
  } else if (s == "-inf" || s == "-infinity") {
    *out = -std::numeric_limits<float>::infinity();
  } else {
    return false;
  }
  return true;
}

// JSON: a number array, or an array of equally long number arrays.
absl::StatusOr<FloatMatrix> JsonMatrix(const std::string& path, const std::string& text) {
  absl::StatusOr<Json> json = ParseJson(text);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  if (!json->is_array())
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON array"));
  FloatMatrix m;
  auto row_of = [&](const Json& row, size_t r) -> absl::Status {
    for (size_t c = 0; c < row.size(); ++c) {
      float x;
      if (!JsonToFloat(row[c], &x)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: [%d][%d] is not a number", path, r, c));
      }
      m.data.push_back(x);
    }
    return absl::OkStatus();
  };
  if (!json->empty() && !(*json)[0].is_array()) {
    m.rows = 1;
    m.cols = static_cast<int64_t>(json->size());
    ZLPR_RETURN_IF_ERROR(row_of(*json, 0));
    return m;
  }
  m.rows = static_cast<int64_t>(json->size());
  for (size_t r = 0; r < json->size(); ++r) {
    const Json& row = (*json)[r];
    if (!row.is_array()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: row %d is not an array", path, r));
    }
    if (r == 0) m.cols = static_cast<int64_t>(row.size());
    if (static_cast<int64_t>(row.size()) != m.cols) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: row %d has %d values, row 0 has %d", path, r, row.size(), m.cols));
    }
    ZLPR_RETURN_IF_ERROR(row_of(row, r));
  }
  return m;
}

}  // namespace

absl::StatusOr<Json> ParseJson(const std::string& text) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    // nlohmann reports errors by exception (parse_error, and out_of_range for a number too
    // large for a double); this is the only place they are caught.
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
}

Json JsonFloat(float f) {
  if (!std::isfinite(f)) return nullptr;  // JSON has no literal for them
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  *end = '\0';
  return std::strtod(buf, nullptr);
}

absl::StatusOr<FloatMatrix> ReadFloatMatrix(const std::string& path) {
  ZLPR_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  return ParseFloatMatrix(path, bytes);
}

absl::StatusOr<ByteMatrix> ReadByteMatrix(const std::string& path) {
  ZLPR_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  return ParseByteMatrix(path, bytes);
}

absl::StatusOr<SparseLabels> ReadSparseLabels(const std::string& path) {
  ZLPR_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  return ParseSparseLabels(path, bytes);
}

absl::StatusOr<FloatMatrix> ParseFloatMatrix(const std::string& path, const std::string& bytes) {
  if (!absl::EndsWith(path, ".npy")) return JsonMatrix(path, bytes);
  ZLPR_ASSIGN_OR_RETURN(const Npy npy, ParseNpy(path, bytes));
  FloatMatrix m;
  ZLPR_RETURN_IF_ERROR(Dims(path, npy.shape, &m.rows, &m.cols));
  const size_t n = static_cast<size_t>(m.rows * m.cols);
  ZLPR_ASSIGN_OR_RETURN(const NpyType type, ParseDescr(path, npy.descr));
  if (npy.payload.size() != n * type.size) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d data bytes for %d values of '%s'",
                                                      path, npy.payload.size(), n, npy.descr));
  }
  m.data.resize(n);
  if (!type.swap && type.kind == 'f' && type.size <= 4) {  // what the server takes: widened only
    WidenToFloat(npy.payload.data(), static_cast<int64_t>(n),
                 type.size == 4 ? DType::kFloat32 : DType::kFloat16, m.data.data());
  } else {  // any other number type, converted to float32 as numpy's astype would
    for (size_t i = 0; i < n; ++i)
      m.data[i] = static_cast<float>(NpyElement(type, npy.payload.data(), i));
  }
  return m;
}

absl::StatusOr<ByteMatrix> ParseByteMatrix(const std::string& path, const std::string& bytes) {
  ByteMatrix m;
  if (!absl::EndsWith(path, ".npy")) {
    ZLPR_ASSIGN_OR_RETURN(const FloatMatrix f, JsonMatrix(path, bytes));
    m.rows = f.rows;
    m.cols = f.cols;
    for (float x : f.data) m.data.push_back(x != 0.0f ? 1 : 0);
    return m;
  }
  ZLPR_ASSIGN_OR_RETURN(const Npy npy, ParseNpy(path, bytes));
  ZLPR_ASSIGN_OR_RETURN(const NpyType type, ParseDescr(path, npy.descr));
  ZLPR_RETURN_IF_ERROR(Dims(path, npy.shape, &m.rows, &m.cols));
  const auto n = static_cast<size_t>(m.rows * m.cols);
  if (npy.payload.size() != n * type.size) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d data bytes for %d values of '%s'",
                                                      path, npy.payload.size(), n, npy.descr));
  }
  if (type.size == 1 && type.kind != 'i') {
    m.data.assign(npy.payload.begin(), npy.payload.end());
  } else {  // any number type: non-zero keeps an entry, as in a JSON mask
    m.data.resize(n);
    for (size_t i = 0; i < n; ++i) m.data[i] = NpyElement(type, npy.payload.data(), i) != 0;
  }
  return m;
}

absl::StatusOr<SparseLabels> ParseSparseLabels(const std::string& path, const std::string& bytes) {
  absl::StatusOr<Json> json = ParseJson(bytes);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  if (!json->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a JSON object with row_splits, indices and values"));
  }
  SparseLabels out;
  auto numbers = [&](const char* key, bool required, auto& dst) -> absl::Status {
    using T = typename std::decay_t<decltype(dst)>::value_type;
    const auto it = json->find(key);
    // null is "not given", as values=None is in the Python client.
    if (it == json->end() || (!required && it->is_null())) {
      return required ? absl::InvalidArgumentError(absl::StrCat(path, ": missing \"", key, "\""))
                      : absl::OkStatus();
    }
    if (!it->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not an array"));
    }
    for (const Json& x : *it) {
      if constexpr (std::is_integral_v<T>) {
        if (!x.is_number_integer()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": \"", key, "\" holds something other than an integer"));
        }
        const int64_t v = x.get<int64_t>();
        if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": \"", key, "\" holds ", v, ", out of range"));
        }
        dst.push_back(static_cast<T>(v));
      } else {
        float f;
        if (!JsonToFloat(x, &f)) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": \"", key, "\" holds a non-number"));
        }
        dst.push_back(f);
      }
    }
    return absl::OkStatus();
  };
  ZLPR_RETURN_IF_ERROR(numbers("row_splits", true, out.row_splits));
  ZLPR_RETURN_IF_ERROR(numbers("indices", true, out.indices));
  ZLPR_RETURN_IF_ERROR(numbers("values", false, out.values));
  return out;
}

}  // namespace zlpr::cli
