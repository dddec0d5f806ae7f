// .npy and JSON readers for zlpr-cli.
#include "cli/cli_io.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "kernels/zlpr.h"

namespace zlpr::cli {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat(path, ": cannot open (", std::strerror(errno), ")"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Npy {
  std::string descr;
  std::vector<int64_t> shape;
  std::string_view payload;
};

// Parses the header dict, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
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
    if (bytes.size() < 12)
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
    header_len = 0;
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  }
  if (bytes.size() < offset + header_len) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
  }
  const std::string header = bytes.substr(offset, header_len);
  Npy npy;
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) return "";
    size_t p = header.find(':', k) + 1;
    while (p < header.size() && header[p] == ' ') ++p;
    size_t e = p;
    if (header[p] == '(') {
      e = header.find(')', p) + 1;
    } else if (header[p] == '\'') {
      e = header.find('\'', p + 1) + 1;
    } else {
      while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
    }
    return header.substr(p, e - p);
  };
  npy.descr = std::string(absl::StripSuffix(absl::StripPrefix(field("descr"), "'"), "'"));
  if (field("fortran_order") == "True") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": Fortran-order arrays are not supported; save in C order"));
  }
  const std::string shape =
      std::string(absl::StripSuffix(absl::StripPrefix(field("shape"), "("), ")"));
  for (absl::string_view d : absl::StrSplit(shape, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad shape (", shape, ")"));
    }
    npy.shape.push_back(v);
  }
  npy.payload = std::string_view(bytes).substr(offset + header_len);
  return npy;
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
  return absl::OkStatus();
}

// JSON: a number array, or an array of equally long number arrays.
absl::StatusOr<FloatMatrix> JsonMatrix(const std::string& path, const std::string& text) {
  auto json = ParseJson(text);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  const auto* outer = std::get_if<Json::Array>(&json->v);
  if (outer == nullptr)
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON array"));
  FloatMatrix m;
  auto row_of = [&](const Json::Array& row, int64_t r) -> absl::Status {
    for (size_t c = 0; c < row.size(); ++c) {
      const double* x = std::get_if<double>(&row[c].v);
      if (x == nullptr)
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: [%d][%d] is not a number", path, r, c));
      m.data.push_back(static_cast<float>(*x));
    }
    return absl::OkStatus();
  };
  if (!outer->empty() && std::holds_alternative<double>((*outer)[0].v)) {
    m.rows = 1;
    m.cols = static_cast<int64_t>(outer->size());
    if (auto st = row_of(*outer, 0); !st.ok()) return st;
    return m;
  }
  m.rows = static_cast<int64_t>(outer->size());
  for (size_t r = 0; r < outer->size(); ++r) {
    const auto* row = std::get_if<Json::Array>(&(*outer)[r].v);
    if (row == nullptr)
      return absl::InvalidArgumentError(absl::StrFormat("%s: row %d is not an array", path, r));
    if (r == 0) m.cols = static_cast<int64_t>(row->size());
    if (static_cast<int64_t>(row->size()) != m.cols) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: row %d has %d values, row 0 has %d", path, r, row->size(), m.cols));
    }
    if (auto st = row_of(*row, static_cast<int64_t>(r)); !st.ok()) return st;
  }
  return m;
}

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  absl::StatusOr<Json> Parse() {
    auto v = Value();
    if (!v.ok()) return v;
    Skip();
    if (i_ != s_.size()) return Error("trailing characters");
    return v;
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrFormat("invalid JSON at offset %d: %s", i_, what));
  }
  void Skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  absl::StatusOr<Json> Value() {
    Skip();
    if (i_ >= s_.size()) return Error("unexpected end");
    const char c = s_[i_];
    if (c == '[') {
      ++i_;
      Json::Array a;
      Skip();
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return Json{a};
      }
      for (;;) {
        auto v = Value();
        if (!v.ok()) return v;
        a.push_back(*std::move(v));
        Skip();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
        } else if (i_ < s_.size() && s_[i_] == ']') {
          ++i_;
          return Json{std::move(a)};
        } else {
          return Error("expected ',' or ']'");
        }
      }
    }
    if (c == '{') {
      ++i_;
      Json::Object o;
      Skip();
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return Json{o};
      }
      for (;;) {
        Skip();
        auto key = String();
        if (!key.ok()) return key.status();
        Skip();
        if (i_ >= s_.size() || s_[i_] != ':') return Error("expected ':'");
        ++i_;
        auto v = Value();
        if (!v.ok()) return v;
        o[*key] = *std::move(v);
        Skip();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
        } else if (i_ < s_.size() && s_[i_] == '}') {
          ++i_;
          return Json{std::move(o)};
        } else {
          return Error("expected ',' or '}'");
        }
      }
    }
    if (c == '"') {
      auto str = String();
      if (!str.ok()) return str.status();
      return Json{*std::move(str)};
    }
    for (const auto& [word, value] : {std::pair<const char*, Json>{"true", Json{true}},
                                      {"false", Json{false}},
                                      {"null", Json{nullptr}},
                                      {"NaN", Json{std::nan("")}},
                                      {"Infinity", Json{HUGE_VAL}},
                                      {"-Infinity", Json{-HUGE_VAL}}}) {
      if (s_.compare(i_, std::strlen(word), word) == 0) {
        i_ += std::strlen(word);
        return value;
      }
    }
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    const double x = std::strtod(begin, &end);
    if (end == begin) return Error("expected a value");
    i_ += static_cast<size_t>(end - begin);
    return Json{x};
  }
  absl::StatusOr<std::string> String() {
    if (i_ >= s_.size() || s_[i_] != '"') return Error("expected a string");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
      out.push_back(s_[i_++]);
    }
    if (i_ >= s_.size()) return Error("unterminated string");
    ++i_;
    return out;
  }

  const std::string& s_;
  size_t i_ = 0;
};

}  // namespace

absl::StatusOr<Json> ParseJson(const std::string& text) { return JsonParser(text).Parse(); }

absl::StatusOr<FloatMatrix> ReadFloatMatrix(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  if (!absl::EndsWith(path, ".npy")) return JsonMatrix(path, *bytes);
  auto npy = ParseNpy(path, *bytes);
  if (!npy.ok()) return npy.status();
  FloatMatrix m;
  if (auto st = Dims(path, npy->shape, &m.rows, &m.cols); !st.ok()) return st;
  const size_t n = static_cast<size_t>(m.rows * m.cols);
  if (npy->descr == "<f4") {
    if (npy->payload.size() != n * 4)
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %d data bytes for %d float32 values", path, npy->payload.size(), n));
    m.data.resize(n);
    std::memcpy(m.data.data(), npy->payload.data(), n * 4);
  } else if (npy->descr == "<f2") {
    if (npy->payload.size() != n * 2)
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %d data bytes for %d float16 values", path, npy->payload.size(), n));
    m.data.resize(n);
    WidenToFloat(npy->payload.data(), static_cast<int64_t>(n), DType::kFloat16, m.data.data());
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": dtype '", npy->descr,
                     "' is not supported: save as float32 ('<f4') or float16 ('<f2')"));
  }
  return m;
}

absl::StatusOr<ByteMatrix> ReadByteMatrix(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  ByteMatrix m;
  if (!absl::EndsWith(path, ".npy")) {
    auto f = JsonMatrix(path, *bytes);
    if (!f.ok()) return f.status();
    m.rows = f->rows;
    m.cols = f->cols;
    for (float x : f->data) m.data.push_back(x != 0.0f ? 1 : 0);
    return m;
  }
  auto npy = ParseNpy(path, *bytes);
  if (!npy.ok()) return npy.status();
  if (npy->descr != "|u1" && npy->descr != "<u1" && npy->descr != "|b1") {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": dtype '", npy->descr, "' is not supported for a mask: save as uint8 or bool"));
  }
  if (auto st = Dims(path, npy->shape, &m.rows, &m.cols); !st.ok()) return st;
  if (npy->payload.size() != static_cast<size_t>(m.rows * m.cols)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d data bytes for %d values", path,
                                                      npy->payload.size(), m.rows * m.cols));
  }
  m.data.assign(npy->payload.begin(), npy->payload.end());
  return m;
}

absl::StatusOr<SparseLabels> ReadSparseLabels(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  auto json = ParseJson(*bytes);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  const auto* obj = std::get_if<Json::Object>(&json->v);
  if (obj == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a JSON object with row_splits, indices and values"));
  SparseLabels out;
  auto numbers = [&](const char* key, bool required, auto& dst) -> absl::Status {
    auto it = obj->find(key);
    if (it == obj->end()) {
      return required ? absl::InvalidArgumentError(absl::StrCat(path, ": missing \"", key, "\""))
                      : absl::OkStatus();
    }
    const auto* arr = std::get_if<Json::Array>(&it->second.v);
    if (arr == nullptr)
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not an array"));
    for (const Json& x : *arr) {
      const double* d = std::get_if<double>(&x.v);
      if (d == nullptr)
        return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" holds a non-number"));
      dst.push_back(static_cast<typename std::decay_t<decltype(dst)>::value_type>(*d));
    }
    return absl::OkStatus();
  };
  if (auto st = numbers("row_splits", true, out.row_splits); !st.ok()) return st;
  if (auto st = numbers("indices", true, out.indices); !st.ok()) return st;
  if (auto st = numbers("values", false, out.values); !st.ok()) return st;
  return out;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  return absl::StrFormat("%.9g", x);
}

}  // namespace zlpr::cli
