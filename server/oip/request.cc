// The protocol's datatypes: the one table of their names and sizes.
#include "server/oip/request.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zlpr::server::oip {
namespace {

struct DataTypeInfo {
  DataType type;
  const char* name;
  int size;
};

constexpr DataTypeInfo kDataTypes[] = {
    {DataType::kBool, "BOOL", 1},     {DataType::kUint8, "UINT8", 1},
    {DataType::kUint16, "UINT16", 2}, {DataType::kUint32, "UINT32", 4},
    {DataType::kUint64, "UINT64", 8}, {DataType::kInt8, "INT8", 1},
    {DataType::kInt16, "INT16", 2},   {DataType::kInt32, "INT32", 4},
    {DataType::kInt64, "INT64", 8},   {DataType::kFp16, "FP16", 2},
    {DataType::kBf16, "BF16", 2},     {DataType::kFp32, "FP32", 4},
    {DataType::kFp64, "FP64", 8},     {DataType::kBytes, "BYTES", 0},
};

const DataTypeInfo& Info(DataType type) {
  for (const DataTypeInfo& i : kDataTypes) {
    if (i.type == type) return i;
  }
  return kDataTypes[0];  // unreachable: every enumerator is in the table
}

}  // namespace

std::optional<DataType> ParseDataType(std::string_view name) {
  for (const DataTypeInfo& i : kDataTypes) {
    if (name == i.name) return i.type;
  }
  return std::nullopt;
}

const char* DataTypeName(DataType type) { return Info(type).name; }

int ElementSize(DataType type) { return Info(type).size; }

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace zlpr::server::oip
