"""numpy arrays to and from zlpr.v1 messages with at most one copy of the large tensors.

Requests: the small fields are serialized by protobuf; each tensor field is appended as its
wire bytes (tag, length, the Tensor's shape and dtype, then the array's own buffer), and the
pieces are joined once. Protobuf merges repeated occurrences of a message's fields, so the
result is the message protobuf would have written, without protobuf copying the arrays first.

Responses: the large tensor (gradient or probabilities) is located in the received bytes and
viewed in place (np.frombuffer); only the rest of the message is parsed by protobuf.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import numpy as np

from zlpr.v1 import zlpr_pb2 as pb

_LEN = 2  # protobuf wire type of length-delimited fields

# numpy dtype (or name) -> wire dtype; bfloat16 has no numpy type: it travels as uint16 bits.
_WIRE = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}
_ITEMSIZE = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.BFLOAT16: 2, pb.UINT8: 1}
# The same for numpy dtypes (looked up per call: cheaper than dtype.name).
_WIRE_OF_DTYPE = {np.dtype(np.float32): pb.FLOAT32, np.dtype(np.float16): pb.FLOAT16}


def wire_dtype(name) -> int:
    """The wire dtype for "float32" / "float16" / "bfloat16" (or a numpy dtype)."""
    key = name if isinstance(name, str) else np.dtype(name).name
    if key not in _WIRE:
        raise ValueError(f"dtype {name!r}: use float32, float16 or bfloat16")
    return _WIRE[key]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, i: int) -> Tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


class Matrix:
    """A row-major matrix ready for the wire: its bytes (a view, not a copy, when the array is
    already C-contiguous), shape and wire dtype."""

    def __init__(self, array: np.ndarray, dtype: int, field: str):
        if array.ndim != 2:
            raise ValueError(f"{field}: expected a [rows, cols] matrix, got shape {array.shape}")
        self.rows, self.cols = int(array.shape[0]), int(array.shape[1])
        self.dtype = dtype
        self.data = memoryview(np.ascontiguousarray(array)).cast("B")

    @classmethod
    def of(cls, array, field: str) -> "Matrix":
        """float32 and float16 arrays travel as they are; any other array as float32."""
        if isinstance(array, Matrix):
            return array
        a = np.asarray(array)
        wire = _WIRE_OF_DTYPE.get(a.dtype)
        if wire is None:
            a, wire = a.astype(np.float32), pb.FLOAT32
        return cls(a, wire, field)

    def slice_rows(self, begin: int, end: int) -> "Matrix":
        m = object.__new__(Matrix)
        m.rows, m.cols, m.dtype = end - begin, self.cols, self.dtype
        row = self.cols * _ITEMSIZE[self.dtype]
        m.data = self.data[begin * row:end * row]
        return m

    def pieces(self, field_number: int) -> Sequence:
        """The wire pieces of this matrix as field `field_number` of its message."""
        return [_tensor_prefix(field_number, self.rows, self.cols, self.dtype, len(self.data)),
                self.data]


@functools.lru_cache(maxsize=256)
def _tensor_prefix(field_number: int, rows: int, cols: int, dtype: int, nbytes: int) -> bytes:
    """Everything of a Tensor field before its data: the field's tag and length, the Tensor's
    shape and dtype, its data's tag and length (kept: a caller sends the same shapes again)."""
    header = pb.Tensor(shape=[rows, cols], dtype=dtype).SerializeToString()
    header += _varint(3 << 3 | _LEN) + _varint(nbytes)
    return _varint(field_number << 3 | _LEN) + _varint(len(header) + nbytes) + header


def join(message, tensors: Sequence[Tuple[int, Optional[Matrix]]]) -> bytes:
    """`message` (the small fields) serialized, with each (field number, matrix) appended."""
    parts = [message.SerializeToString()]
    for number, m in tensors:
        if m is not None:
            parts.extend(m.pieces(number))
    return b"".join(parts)


def split(data: bytes, field_number: int):
    """(the message without its last occurrence of length-delimited field `field_number`,
    that field's bytes as a memoryview of `data`, or None)."""
    buf = memoryview(data)
    i, found = 0, None
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == _LEN:
            n, i = _read_varint(buf, i)
            if key >> 3 == field_number:
                found = (start, i, i + n)
            i += n
        else:
            raise ValueError(f"unexpected wire type {wire} in a response")
    if found is None:
        return data, None
    start, body, end = found
    rest = bytes(buf[:start]) + bytes(buf[end:])
    return rest, buf[body:end]


def decode_matrix(field: Optional[memoryview], widen_bf16: bool = True) -> Optional[np.ndarray]:
    """The [rows, cols] array a Tensor's bytes hold, viewing its data in place. FLOAT16 stays
    float16; BFLOAT16 becomes float32 (widened) unless `widen_bf16` is False, then uint16 bits."""
    if field is None:
        return None
    rest, data = split(field, 3)
    t = pb.Tensor.FromString(rest)
    rows, cols = t.shape
    data = data if data is not None else memoryview(b"")
    if t.dtype == pb.FLOAT32:
        a = np.frombuffer(data, dtype="<f4")
    elif t.dtype == pb.FLOAT16:
        a = np.frombuffer(data, dtype="<f2")
    elif t.dtype == pb.BFLOAT16:
        bits = np.frombuffer(data, dtype="<u2")
        a = (bits.astype(np.uint32) << 16).view(np.float32) if widen_bf16 else bits
    else:
        raise ValueError(f"unexpected tensor dtype {t.dtype}")
    return a.reshape(rows, cols)
