// ModelInferRequest in, ModelInferResponse out, in protobuf's wire format.
#include "server/oip/wire.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "server/oip/shared_tensors.h"

namespace zlpr::server::oip {

bool IsUtf8(std::string_view bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int more;
    unsigned char lo = 0x80, hi = 0xbf;  // the bounds of the byte after the first
    if (c >= 0xc2 && c <= 0xdf) {
      more = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      more = 2;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      more = 3;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // over U+10FFFF
    } else {
      return false;
    }
    if (n - i <= static_cast<size_t>(more)) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (int k = 2; k <= more; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
    }
    i += static_cast<size_t>(more) + 1;
  }
  return true;
}

namespace {

using google::protobuf::io::CodedInputStream;

enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

constexpr uint32_t TagOf(uint32_t field, WireType type) { return field << 3 | type; }

// Unknown groups nest at most this deep (protobuf's default recursion limit).
constexpr int kMaxGroupDepth = 100;

// One message being read: the stream and where the message ends. Every read checks its
// lengths against the bytes left, so that a length the message does not hold allocates nothing.
class Reader {
 public:
  Reader(CodedInputStream* in, int64_t total) : in_(in), total_(total) {}

  CodedInputStream& in() { return *in_; }
  // Bytes left in the message, or in the submessage being read.
  int64_t left() const {
    const int64_t in_message = total_ - in_->CurrentPosition();
    const int in_limit = in_->BytesUntilLimit();  // -1: no submessage
    return in_limit < 0 ? in_message : std::min<int64_t>(in_message, in_limit);
  }

  // The next field's tag into `tag`; false at the end of the message (or of the submessage
  // being read). Sets `error_` for a tag that cannot be (field 0).
  bool NextTag(uint32_t* tag) {
    if (in_->BytesUntilLimit() == 0 || in_->CurrentPosition() >= total_) return false;
    // A tag is a varint of at most 5 bytes, of which protobuf's parser keeps the low 32 bits.
    const int at = in_->CurrentPosition();
    uint64_t v;
    if (!in_->ReadVarint64(&v) || in_->CurrentPosition() - at > 5) {
      return Fail("a tag that is truncated or too long");
    }
    *tag = static_cast<uint32_t>(v);
    if ((*tag >> 3) == 0) return Fail("a field numbered 0");
    return true;
  }

  // A length-delimited field's length, checked against what is left.
  bool Length(int* n) {
    uint64_t v;
    if (!in_->ReadVarint64(&v)) return Fail("truncated");
    if (v > static_cast<uint64_t>(left()) || v > INT_MAX) {
      return Fail("a field is longer than the message");
    }
    *n = static_cast<int>(v);
    return true;
  }

  bool String(std::string* out, const char* field) {
    int n;
    if (!Length(&n)) return false;
    if (!in_->ReadString(out, n)) return Fail("truncated");
    if (!IsUtf8(*out)) {
      return Fail(absl::StrFormat("string field %s is not UTF-8", field).c_str());
    }
    return true;
  }

  bool Varint(uint64_t* v) { return in_->ReadVarint64(v) || Fail("truncated"); }

  // Reads fields until the message (or the submessage being read) ends: `field(tag)` reads
  // one, false on an error.
  template <typename Field>
  bool Fields(Field&& field) {
    uint32_t tag;
    while (NextTag(&tag)) {
      if (!field(tag)) return false;
    }
    return error_.empty();
  }

  // Reads a submessage: `body` reads its fields, as a Reader limited to it.
  template <typename Body>
  bool Message(Body&& body) {
    int n;
    if (!Length(&n)) return false;
    const CodedInputStream::Limit limit = in_->PushLimit(n);
    const bool ok = body() && in_->BytesUntilLimit() == 0;
    in_->PopLimit(limit);
    return ok || Fail("truncated");
  }

  // Packed (length-delimited) or one unpacked varint, into `add`.
  template <typename Add>
  bool Varints(uint32_t tag, Add&& add) {
    uint64_t v;
    if ((tag & 7) == kVarint) {
      if (!Varint(&v)) return false;
      add(v);
      return true;
    }
    int n;
    if (!Length(&n)) return false;
    const CodedInputStream::Limit limit = in_->PushLimit(n);
    bool ok = true;
    while (ok && in_->BytesUntilLimit() > 0) {
      ok = in_->ReadVarint64(&v);
      if (ok) add(v);
    }
    in_->PopLimit(limit);
    return ok || Fail("truncated");
  }

  bool Skip(uint32_t tag, int depth = 0) {
    switch (tag & 7) {
      case kVarint: {
        uint64_t v;
        return Varint(&v);
      }
      case kFixed64:
        return (left() >= 8 && in_->Skip(8)) || Fail("truncated");
      case kLengthDelimited: {
        int n;
        return Length(&n) && (in_->Skip(n) || Fail("truncated"));
      }
      case kStartGroup:
        if (depth >= kMaxGroupDepth) return Fail("groups nested too deeply");
        for (;;) {
          uint32_t inner;
          if (!NextTag(&inner)) return Fail("a group that does not end");
          if ((inner & 7) == kEndGroup) {
            return (inner >> 3) == (tag >> 3) || Fail("a group ends with another's tag");
          }
          if (!Skip(inner, depth + 1)) return false;
        }
      case kFixed32:
        return (left() >= 4 && in_->Skip(4)) || Fail("truncated");
      default:
        return Fail("a field of an unknown wire type");
    }
  }

  bool Fail(const char* why) {
    if (error_.empty()) error_ = why;
    return false;
  }
  const std::string& error() const { return error_; }

 private:
  CodedInputStream* const in_;
  const int64_t total_;
  std::string error_;
};

// InferParameter: the oneof's last value; a parameter without one is an empty string (what
// needs a value refuses it).
bool ReadParameter(Reader& r, Parameter* p) {
  return r.Fields([&](uint32_t tag) {
    uint64_t v;
    switch (tag) {
      case TagOf(1, kVarint):  // bool_param
        if (!r.Varint(&v)) return false;
        *p = v != 0;
        return true;
      case TagOf(2, kVarint):  // int64_param
        if (!r.Varint(&v)) return false;
        *p = static_cast<int64_t>(v);
        return true;
      case TagOf(3, kLengthDelimited): {  // string_param
        std::string s;
        if (!r.String(&s, "InferParameter.string_param")) return false;
        *p = std::move(s);
        return true;
      }
      case TagOf(4, kFixed64): {  // double_param
        if (!r.in().ReadLittleEndian64(&v)) return r.Fail("truncated");
        double d;
        std::memcpy(&d, &v, sizeof(d));
        *p = d;
        return true;
      }
      case TagOf(5, kVarint):  // uint64_param
        if (!r.Varint(&v)) return false;
        *p = v;
        return true;
      default:
        return r.Skip(tag);
    }
  });
}

// One entry of a map<string, InferParameter> (the last entry of a key wins).
bool ReadParameterEntry(Reader& r, Parameters* out) {
  return r.Message([&] {
    std::string key;
    Parameter value = std::string();
    const bool ok = r.Fields([&](uint32_t tag) {
      switch (tag) {
        case TagOf(1, kLengthDelimited):
          return r.String(&key, "a parameter's key");
        case TagOf(2, kLengthDelimited):
          return r.Message([&] { return ReadParameter(r, &value); });
        default:
          return r.Skip(tag);
      }
    });
    if (ok) out->insert_or_assign(std::move(key), std::move(value));
    return ok;
  });
}

// What an input's message says beyond the Tensor's fields, until the request is assembled.
struct PendingInput {
  std::string datatype;
  std::string fp32;             // InferTensorContents.fp32_contents, little-endian
  std::vector<uint32_t> uints;  // InferTensorContents.uint_contents
};

// A packed field of fixed-size elements: its length, a multiple of `element` bytes.
bool PackedLength(Reader& r, int element, const char* field, int* n) {
  if (!r.Length(n)) return false;
  if (*n % element == 0) return true;
  return r.Fail(
      absl::StrFormat("packed %s of a length not a multiple of %d", field, element).c_str());
}

bool ReadContents(Reader& r, PendingInput* p) {
  return r.Message([&] {
    return r.Fields([&](uint32_t tag) {
      int n;
      switch (tag) {
        case TagOf(4, kVarint):  // uint_contents
        case TagOf(4, kLengthDelimited):
          return r.Varints(tag, [p](uint64_t v) { p->uints.push_back(static_cast<uint32_t>(v)); });
        case TagOf(6, kFixed32): {  // fp32_contents, unpacked
          uint32_t v;
          if (!r.in().ReadLittleEndian32(&v)) return r.Fail("truncated");
          p->fp32.append(reinterpret_cast<const char*>(&v), sizeof(v));
          return true;
        }
        case TagOf(6, kLengthDelimited): {  // fp32_contents, packed
          if (!PackedLength(r, 4, "fp32_contents", &n)) return false;
          const size_t at = p->fp32.size();
          p->fp32.resize(at + static_cast<size_t>(n));
          return r.in().ReadRaw(p->fp32.data() + at, n) || r.Fail("truncated");
        }
        case TagOf(1, kLengthDelimited):
        case TagOf(2, kLengthDelimited):
        case TagOf(3, kLengthDelimited):
        case TagOf(5, kLengthDelimited):
          // bool, int, int64 and uint64 contents, packed: refused once the datatype is known,
          // but read as protobuf reads them (it refuses a truncated varint among them).
          return r.Varints(tag, [](uint64_t) {});
        case TagOf(7, kLengthDelimited):  // fp64_contents, packed
          return PackedLength(r, 8, "fp64_contents", &n) && (r.in().Skip(n) || r.Fail("truncated"));
        default:
          return r.Skip(tag);  // other contents are refused once the datatype is known
      }
    });
  });
}

bool ReadInput(Reader& r, Tensor* t, PendingInput* p) {
  return r.Message([&] {
    return r.Fields([&](uint32_t tag) {
      switch (tag) {
        case TagOf(1, kLengthDelimited):
          return r.String(&t->name, "InferInputTensor.name");
        case TagOf(2, kLengthDelimited):
          return r.String(&p->datatype, "InferInputTensor.datatype");
        case TagOf(3, kVarint):
        case TagOf(3, kLengthDelimited):
          return r.Varints(tag, [t](uint64_t v) { t->shape.push_back(static_cast<int64_t>(v)); });
        case TagOf(4, kLengthDelimited):
          return ReadParameterEntry(r, &t->parameters);
        case TagOf(5, kLengthDelimited):
          return ReadContents(r, p);
        default:
          return r.Skip(tag);
      }
    });
  });
}

bool ReadOutput(Reader& r, RequestedOutput* o) {
  return r.Message([&] {
    return r.Fields([&](uint32_t tag) {
      switch (tag) {
        case TagOf(1, kLengthDelimited):
          return r.String(&o->name, "InferRequestedOutputTensor.name");
        case TagOf(2, kLengthDelimited):
          return ReadParameterEntry(r, &o->parameters);
        default:
          return r.Skip(tag);
      }
    });
  });
}

struct RawContent {
  std::string_view bytes;
  bool in_message;  // a view into the stream's buffer
};

// The message's inputs as tensors with their bytes: ViewOf's rules.
absl::Status Assemble(absl::InlinedVector<PendingInput, 3>& pending,
                      const absl::InlinedVector<RawContent, 3>& raws, Request* r) {
  // Raw contents come for the inputs that are not in shared memory, in order.
  int in_messages = 0;
  for (const Tensor& t : r->inputs) in_messages += t.parameters.count(kShmRegion) == 0 ? 1 : 0;
  const bool raw = !raws.empty();
  if (raw && static_cast<int>(raws.size()) != in_messages) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "raw_input_contents has %d entries for %d inputs (not counting those in shared memory): "
        "send one per input, in order",
        raws.size(), in_messages));
  }
  size_t next_raw = 0;
  for (size_t i = 0; i < r->inputs.size(); ++i) {
    Tensor& t = r->inputs[i];
    PendingInput& p = pending[i];
    const std::optional<DataType> type = ParseDataType(p.datatype);
    if (!type) {
      return absl::InvalidArgumentError(
          absl::StrFormat("input '%s': unknown datatype '%s'", t.name, p.datatype));
    }
    t.datatype = *type;
    if (InSharedMemory(t.parameters)) continue;  // its bytes come from the region
    if (raw) {
      t.data = raws[next_raw++].bytes;
    } else if (t.datatype == DataType::kFp32) {
      t.data = r->owned.emplace_back(std::move(p.fp32));
    } else if (t.datatype == DataType::kUint8) {
      std::string& bytes = r->owned.emplace_back(p.uints.size(), '\0');
      for (size_t k = 0; k < p.uints.size(); ++k) {
        if (p.uints[k] > 255) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "input '%s': element %d is %d, over 255 for UINT8", t.name, k, p.uints[k]));
        }
        bytes[k] = static_cast<char>(p.uints[k]);
      }
      t.data = bytes;
    } else {
      return absl::InvalidArgumentError(absl::StrFormat(
          "input '%s': %s contents must be sent raw (raw_input_contents)", t.name, p.datatype));
    }
  }
  return absl::OkStatus();
}

std::string_view CopyInto(Request* r, std::string_view bytes) {
  if (bytes.empty()) return {};
  auto& buffer = r->buffers.emplace_back(std::make_unique_for_overwrite<char[]>(bytes.size()));
  std::memcpy(buffer.get(), bytes.data(), bytes.size());
  return {buffer.get(), bytes.size()};
}

}  // namespace

absl::StatusOr<bool> DecodeInferRequest(CodedInputStream* in, int64_t total_bytes, bool in_place,
                                        Request* request, absl::Status* invalid) {
  Reader r(in, total_bytes);
  Request& q = *request;
  absl::InlinedVector<PendingInput, 3> pending;
  absl::InlinedVector<RawContent, 3> raws;
  bool copied = false;  // a raw content that could not be a view
  // A raw content: a view into the message where it may be, else a copy.
  auto read_raw = [&] {
    int n;
    if (!r.Length(&n)) return false;
    if (n == 0) {
      raws.push_back({{}, false});
      return true;
    }
    const void* data;
    int size;
    if (in_place && in->GetDirectBufferPointer(&data, &size) && size >= n &&
        reinterpret_cast<uintptr_t>(data) % alignof(float) == 0) {
      raws.push_back({{static_cast<const char*>(data), static_cast<size_t>(n)}, true});
      return in->Skip(n) || r.Fail("truncated");
    }
    copied = true;
    auto& buffer = q.buffers.emplace_back(std::make_unique_for_overwrite<char[]>(n));
    raws.push_back({{buffer.get(), static_cast<size_t>(n)}, false});
    return in->ReadRaw(buffer.get(), n) || r.Fail("truncated");
  };
  r.Fields([&](uint32_t tag) {
    switch (tag) {
      case TagOf(1, kLengthDelimited):
        return r.String(&q.model, "model_name");
      case TagOf(2, kLengthDelimited):
        return r.String(&q.version, "model_version");
      case TagOf(3, kLengthDelimited):
        return r.String(&q.id, "id");
      case TagOf(4, kLengthDelimited):
        return ReadParameterEntry(r, &q.parameters);
      case TagOf(5, kLengthDelimited):
        return ReadInput(r, &q.inputs.emplace_back(), &pending.emplace_back());
      case TagOf(6, kLengthDelimited):
        return ReadOutput(r, &q.outputs.emplace_back());
      case TagOf(7, kLengthDelimited):
        return read_raw();
      default:
        return r.Skip(tag);
    }
  });
  if (!r.error().empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the message (%d bytes) is not a valid inference.ModelInferRequest: %s",
                        total_bytes, r.error()));
  }
  // Once one raw content had to be copied, all are: the message's buffer can then go.
  bool views = false;
  for (RawContent& raw : raws) {
    if (!raw.in_message) continue;
    if (copied) {
      raw = {CopyInto(&q, raw.bytes), false};
    } else {
      views = true;
    }
  }
  *invalid = Assemble(pending, raws, &q);
  return views;
}

namespace {

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Counts a message's bytes: all of them, and those of the head (without the large outputs).
struct Counter {
  size_t total = 0;
  size_t head = 0;
  void Add(size_t n) {
    total += n;
    head += n;
  }
  void Varint(uint64_t v) { Add(VarintSize(v)); }
  void Tag(uint32_t field, WireType type) { Varint(TagOf(field, type)); }
  void Fixed64(uint64_t) { Add(8); }
  void Bytes(uint32_t field, std::string_view bytes) {
    Tag(field, kLengthDelimited);
    Varint(bytes.size());
    Add(bytes.size());
  }
  // A large output's bytes: in the message, not in the head.
  void Large(uint32_t field, size_t bytes, size_t) {
    Tag(field, kLengthDelimited);
    Varint(bytes);
    total += bytes;
  }
  template <typename Body>
  void Message(uint32_t field, Body&& body) {
    Counter inner;
    body(inner);
    Tag(field, kLengthDelimited);
    Varint(inner.total);
    total += inner.total;
    head += inner.head;
  }
};

// Writes a message's head; records where the large outputs go.
struct Writer {
  char* const begin;
  char* at;
  std::vector<ResponseWire::Gap>* gaps;

  void Varint(uint64_t v) {
    while (v >= 0x80) {
      *at++ = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    *at++ = static_cast<char>(v);
  }
  void Tag(uint32_t field, WireType type) { Varint(TagOf(field, type)); }
  void Fixed64(uint64_t v) {
    for (int i = 0; i < 8; ++i) *at++ = static_cast<char>(v >> (8 * i));
  }
  void Bytes(uint32_t field, std::string_view bytes) {
    Tag(field, kLengthDelimited);
    Varint(bytes.size());
    if (!bytes.empty()) std::memcpy(at, bytes.data(), bytes.size());
    at += bytes.size();
  }
  void Large(uint32_t field, size_t bytes, size_t output) {
    Tag(field, kLengthDelimited);
    Varint(bytes);
    gaps->push_back({static_cast<size_t>(at - begin), output});
  }
  template <typename Body>
  void Message(uint32_t field, Body&& body) {
    Counter inner;
    body(inner);
    Tag(field, kLengthDelimited);
    Varint(inner.total);
    body(*this);
  }
};

// InferParameter.
template <typename W>
void PutParameter(W& w, const Parameter& value) {
  std::visit(
      [&w](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          w.Tag(1, kVarint);
          w.Varint(v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          w.Tag(2, kVarint);
          w.Varint(static_cast<uint64_t>(v));
        } else if constexpr (std::is_same_v<T, std::string>) {
          w.Bytes(3, v);
        } else if constexpr (std::is_same_v<T, double>) {
          uint64_t bits;
          std::memcpy(&bits, &v, sizeof(bits));
          w.Tag(4, kFixed64);
          w.Fixed64(bits);
        } else {
          w.Tag(5, kVarint);
          w.Varint(v);
        }
      },
      value);
}

template <typename W>
void PutParameters(W& w, uint32_t field, const Parameters& parameters) {
  for (const auto& parameter : parameters) {
    w.Message(field, [&parameter](auto& entry) {
      entry.Bytes(1, parameter.first);
      entry.Message(2, [&parameter](auto& p) { PutParameter(p, parameter.second); });
    });
  }
}

// ModelInferResponse.
template <typename W>
void PutInfer(W& w, const Response& r, size_t large_bytes) {
  if (!r.model.empty()) w.Bytes(1, r.model);
  if (!r.version.empty()) w.Bytes(2, r.version);
  if (!r.id.empty()) w.Bytes(3, r.id);
  PutParameters(w, 4, r.parameters);
  for (const Output& o : r.outputs) {
    w.Message(5, [&](auto& t) {
      t.Bytes(1, o.name);
      t.Bytes(2, DataTypeName(o.datatype));
      if (!o.shape.empty()) {
        size_t dims = 0;
        for (int64_t d : o.shape) dims += VarintSize(static_cast<uint64_t>(d));
        t.Tag(3, kLengthDelimited);
        t.Varint(dims);
        for (int64_t d : o.shape) t.Varint(static_cast<uint64_t>(d));
      }
      PutParameters(t, 4, o.parameters);
    });
  }
  // One content per output, in order (empty for an output in shared memory).
  for (size_t i = 0; i < r.outputs.size(); ++i) {
    const std::string& data = r.outputs[i].data;
    if (large_bytes > 0 && data.size() >= large_bytes) {
      w.Large(6, data.size(), i);
    } else {
      w.Bytes(6, data);
    }
  }
}

// ModelStreamInferResponse.
template <typename W>
void PutStream(W& w, const Response* r, std::string_view error_message, size_t large_bytes) {
  if (!error_message.empty()) w.Bytes(1, error_message);
  if (r != nullptr) w.Message(2, [&](auto& inner) { PutInfer(inner, *r, large_bytes); });
}

}  // namespace

ResponseWire::ResponseWire(const Response* response, bool stream, std::string_view error_message,
                           size_t large_bytes)
    : response_(response),
      stream_(stream),
      error_message_(error_message),
      large_bytes_(large_bytes) {
  Counter c;
  if (stream_) {
    PutStream(c, response_, error_message_, large_bytes_);
  } else {
    PutInfer(c, *response_, large_bytes_);
  }
  head_bytes_ = c.head;
  total_bytes_ = c.total;
}

ResponseWire ResponseWire::Infer(const Response& response, size_t large_bytes) {
  return ResponseWire(&response, false, {}, large_bytes);
}

ResponseWire ResponseWire::Stream(const Response* response, std::string_view error_message,
                                  size_t large_bytes) {
  return ResponseWire(response, true, error_message, large_bytes);
}

std::vector<ResponseWire::Gap> ResponseWire::Write(char* head) const {
  std::vector<Gap> gaps;
  Writer w{head, head, &gaps};
  if (stream_) {
    PutStream(w, response_, error_message_, large_bytes_);
  } else {
    PutInfer(w, *response_, large_bytes_);
  }
  return gaps;
}

}  // namespace zlpr::server::oip
