"""The loss through system shared memory, for a client on the server's host
(zlpr.Client(..., shared_memory=True)).

The scores, labels and mask are written into a region of POSIX shared memory that the client
registered with the server once (the Open Inference Protocol's system shared-memory extension),
the gradient comes back in a second region, and only a small ModelInfer message of the
`zlpr_loss` model crosses the socket. Regions are made on first use, sized for the call, and
kept for the next ones (one pair per call in flight; a larger call replaces a pair); close()
unregisters them. Each object's name is removed as soon as the server has mapped it, so no
object outlives the client and the server, however either ends.

The few protobuf messages involved are written and read here by hand: the package carries no
generated code for the `inference` package, whose names would collide in protobuf's descriptor
pool with those of tritonclient when both are imported.
"""
from __future__ import annotations

import mmap
import os
import secrets
import struct
import threading
from typing import List, Optional, Tuple

import numpy as np

from zlpr import _wire

_OIP = "/inference.GRPCInferenceService/"
_SHM_DIR = "/dev/shm"
_ALIGN = 64  # each tensor starts at a multiple of this in its region


# -- protobuf, by hand ----------------------------------------------------------------------------

def _tag(field: int, wire: int) -> bytes:
    return _wire._varint(field << 3 | wire)


def _len(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _wire._varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _len(field, s.encode())


def _uint(field: int, n: int) -> bytes:
    return _tag(field, 0) + _wire._varint(n)


def _parameters(field: int, params: dict) -> bytes:
    """A map<string, InferParameter> field: strings as string_param, ints as int64_param."""
    out = []
    for key, value in params.items():
        v = _str(3, value) if isinstance(value, str) else _uint(2, int(value))
        out.append(_len(field, _str(1, key) + _len(2, v)))
    return b"".join(out)


def _fields(buf: memoryview):
    """(field number, wire type, value) of a message: ints for varints, memoryviews otherwise."""
    i = 0
    while i < len(buf):
        key, i = _wire._read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _wire._read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _wire._read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unexpected wire type {wire} in a response")
        yield field, wire, value


def _parameter_value(entry: memoryview):
    key, value = "", None
    for f, _, v in _fields(entry):
        if f == 1:
            key = bytes(v).decode()
        elif f == 2:
            for pf, pw, pv in _fields(v):
                if pf == 4 and pw == 1:
                    value = struct.unpack("<d", pv)[0]
                elif pf in (2, 5) and pw == 0:
                    value = pv
                elif pf == 3:
                    value = bytes(pv).decode()
    return key, value


def _tensor(name: str, datatype: str, shape, region: str, offset: int, nbytes: int) -> bytes:
    """An InferInputTensor whose bytes are in `region`."""
    shape_bytes = b"".join(_wire._varint(int(d)) for d in shape)
    return (_str(1, name) + _str(2, datatype) + _len(3, shape_bytes) +
            _parameters(4, {"shared_memory_region": region, "shared_memory_byte_size": nbytes,
                            "shared_memory_offset": offset}))


def registered_regions(data: bytes) -> int:
    """How many regions a SystemSharedMemoryStatusResponse lists."""
    return sum(1 for field, _, _ in _fields(memoryview(data)) if field == 1)


def parse_infer_response(data: bytes) -> Tuple[dict, dict]:
    """(outputs by name: (datatype, shape, raw bytes as a memoryview), response parameters)."""
    buf = memoryview(data)
    outputs: List[Tuple[str, str, list]] = []
    raw: List[memoryview] = []
    params = {}
    for field, _, value in _fields(buf):
        if field == 5:
            name, datatype, shape = "", "", []
            for f, w, v in _fields(value):
                if f == 1:
                    name = bytes(v).decode()
                elif f == 2:
                    datatype = bytes(v).decode()
                elif f == 3 and w == 2:
                    i = 0
                    while i < len(v):
                        d, i = _wire._read_varint(v, i)
                        shape.append(d)
                elif f == 3:
                    shape.append(v)
            outputs.append((name, datatype, shape))
        elif field == 6:
            raw.append(value)
        elif field == 4:
            k, v = _parameter_value(value)
            params[k] = v
    return ({name: (dt, shape, raw[i] if i < len(raw) else memoryview(b""))
             for i, (name, dt, shape) in enumerate(outputs)}, params)


# -- regions --------------------------------------------------------------------------------------

class Region:
    """A POSIX shared-memory object of `size` bytes, mapped here and registered with the server
    under the object's own name."""

    def __init__(self, call, size: int):
        self.name = f"zlpr_{os.getpid()}_{secrets.token_hex(6)}"
        self.size = size
        path = os.path.join(_SHM_DIR, self.name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Allocated now, not on first touch: a full /dev/shm is an OSError here rather than a
            # SIGBUS in the middle of a later copy.
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        try:
            call("SystemSharedMemoryRegister",
                 _str(1, self.name) + _str(2, "/" + self.name) + _uint(4, size))
        except BaseException:
            self.map.close()
            raise
        finally:
            # Both sides have it mapped now: the name is not needed any more, and without it
            # nothing is left in /dev/shm however this process ends (the pages go when the last
            # mapping does).
            os.unlink(path)

    def view(self, offset: int, shape, dtype) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self.map, offset=offset)

    def address(self) -> int:
        """Where the mapping starts in this process (to tell whether an array lives in it)."""
        probe = np.frombuffer(self.map, dtype=np.uint8, count=1)
        try:
            return probe.__array_interface__["data"][0]
        finally:
            del probe  # (an exported buffer would keep the map from closing)

    def close(self, call) -> None:
        try:
            call("SystemSharedMemoryUnregister", _str(1, self.name))
        finally:
            try:
                self.map.close()
            except BufferError:  # arrays still view it: unmapped when the last one goes
                pass


class SharedTensors:
    """The scores, labels and gradient (and mask) of one call's shape, as numpy arrays that live
    in a region of shared memory registered with the server: a call given these arrays sends no
    tensor bytes at all, neither through the socket nor through a copy. The server's kernels
    read the scores and labels where they are and write the gradient into `grad`, which the
    result returns (the same memory: read it, or copy it, before the next call with this set).

        t = client.shared_tensors(rows, cols)
        t.scores[:] = logits; t.labels[:] = targets     # or compute them there
        r = client.compute_loss(t.scores, t.labels, want_grad=True)   # r.grad is t.grad

    A block of rows (t.scores[a:b], t.labels[a:b]) works too; its gradient is t.grad[a:b]. Arrays
    elsewhere, or scores that are not a block of this set's `scores`, take the copying path.
    One set per call in flight.
    close() unregisters it (the client's close() does too); the memory goes with the last array
    that views it.
    """

    def __init__(self, region: "Region", rows: int, cols: int, dtype, mask: bool):
        self.region = region
        n = rows * cols
        dtype = np.dtype(dtype)
        self._offsets = {"scores": 0, "labels": _aligned(n * dtype.itemsize)}
        self._offsets["grad"] = _aligned(self._offsets["labels"] + n * dtype.itemsize)
        self.scores = region.view(self._offsets["scores"], (rows, cols), dtype)
        self.labels = region.view(self._offsets["labels"], (rows, cols), dtype)
        self.grad = region.view(self._offsets["grad"], (rows, cols), np.float32)
        self.mask = None
        if mask:
            self._offsets["mask"] = _aligned(self._offsets["grad"] + n * 4)
            self.mask = region.view(self._offsets["mask"], (rows, cols), np.uint8)
        self.base = region.address()
        self._owner = None  # the SharedMemoryLoss that made it

    def close(self) -> None:
        if self._owner is not None:
            self._owner._forget(self)
            self._owner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def bytes_for(rows: int, cols: int, dtype, mask: bool) -> int:
        n, size = rows * cols, np.dtype(dtype).itemsize
        return _aligned(_aligned(n * size) + n * size) + _aligned(n * 4) + (n if mask else 0)

    def place(self, a: np.ndarray) -> Optional[int]:
        """`a`'s offset in the region when it lies there whole and contiguous, else None."""
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            return None
        at = a.__array_interface__["data"][0] - self.base
        return at if 0 <= at and at + a.nbytes <= self.region.size else None

    def grad_for(self, s: np.ndarray, at: int):
        """(offset, array) of the gradient for scores `s` at `at` (the same rows of `grad`), or
        None when `s` is not a block of rows of `scores`."""
        cols = self.scores.shape[1]
        if s.ndim != 2 or s.shape[1] != cols or at < 0 or s.dtype != self.scores.dtype:
            return None
        start = at - self._offsets["scores"]
        row_bytes = cols * s.dtype.itemsize
        if start % row_bytes or start // row_bytes + s.shape[0] > self.scores.shape[0]:
            return None
        first = start // row_bytes
        g = self.grad[first:first + s.shape[0]]
        return self._offsets["grad"] + first * cols * 4, g


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


_DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}


class SharedMemoryLoss:
    """compute_loss through two regions per call in flight (inputs, gradient)."""

    def __init__(self, unary):
        # unary(method, request bytes, deadline_s) -> response bytes, on the client's channel
        self._unary = unary
        self._lock = threading.Lock()
        self._free: List[Tuple[Region, Region]] = []  # pairs not in use
        self._sets: List[SharedTensors] = []  # made by tensors(), closed with the client
        self._closed = False

    def tensors(self, rows: int, cols: int, dtype, mask: bool) -> SharedTensors:
        if rows < 1 or cols < 1:
            raise ValueError(f"shared_tensors: rows and cols must be 1 or more, got {rows}, {cols}")
        if np.dtype(dtype) not in _DATATYPE:
            raise ValueError(f"shared_tensors: dtype {np.dtype(dtype)} is not float32 or float16")
        with self._lock:
            if self._closed:
                raise ValueError("the client is closed")
        region = Region(self._call, SharedTensors.bytes_for(rows, cols, dtype, mask))
        t = SharedTensors(region, rows, cols, dtype, mask)
        t._owner = self
        with self._lock:
            self._sets.append(t)
        return t

    def _forget(self, ts: SharedTensors) -> None:
        with self._lock:
            if ts not in self._sets:
                return
            self._sets.remove(ts)
        ts.region.close(self._call)

    def _in_place(self, s, t, mask):
        """(set, offsets of scores, labels, mask) when every input lies in one of the sets."""
        for ts in self._sets:
            at = [ts.place(a) for a in (s, t)] + [ts.place(mask) if mask is not None else 0]
            if all(x is not None for x in at):
                return ts, at
        return None, None

    def _call(self, method: str, data: bytes, deadline_s: Optional[float] = None) -> bytes:
        return self._unary(_OIP + method, data, deadline_s)

    def _take(self, in_bytes: int, out_bytes: int) -> Tuple[Region, Region]:
        with self._lock:
            if self._closed:
                raise ValueError("the client is closed")
            for i, (a, b) in enumerate(self._free):
                if a.size >= in_bytes and b.size >= out_bytes:
                    return self._free.pop(i)
            old = self._free.pop() if self._free else None
        if old is not None:  # too small: replaced by a pair for this size
            for r in old:
                r.close(self._call)
        # Made outside the lock (registration is a call); sized for this call, at least 1 MiB.
        inputs = Region(self._call, max(in_bytes, 1 << 20))
        try:
            return inputs, Region(self._call, max(out_bytes, 1 << 20))
        except BaseException:
            inputs.close(self._call)
            raise

    def _give_back(self, pair) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(pair)
                return
        for r in pair:
            r.close(self._call)

    def loss(self, scores, labels, mask, want_grad: bool, request_id: str,
             deadline_s: Optional[float], priority: Optional[int]):
        """(loss float32 [rows], loss_sum, loss_mean, grad float32 [rows, cols] or None)."""
        s = np.asarray(scores)
        if s.ndim != 2:
            raise ValueError(f"scores: expected a [rows, cols] matrix, got shape {s.shape}")
        sdt = s.dtype if s.dtype in _DATATYPE else np.dtype(np.float32)
        t = np.asarray(labels)
        if t.shape != s.shape:
            raise ValueError(f"dense_labels: shape {t.shape} does not match scores {s.shape}")
        tdt = t.dtype if t.dtype in _DATATYPE else np.dtype(np.float32)
        rows, cols = s.shape
        if s.dtype in _DATATYPE and t.dtype in _DATATYPE and (
                mask is None or np.asarray(mask).dtype == np.uint8):
            ts, at = self._in_place(s, t, None if mask is None else np.asarray(mask))
            grad_place = ts.grad_for(s, at[0]) if ts is not None and want_grad else None
            if ts is not None and (not want_grad or grad_place is not None):
                return self._loss_in_place(ts, at, grad_place, s, t, mask, request_id,
                                           deadline_s, priority)
        s_bytes, t_bytes = rows * cols * sdt.itemsize, rows * cols * tdt.itemsize
        t_at = _aligned(s_bytes)
        m_at = _aligned(t_at + t_bytes)
        in_bytes = m_at + (rows * cols if mask is not None else 0)
        g_bytes = rows * cols * 4
        pair = self._take(max(in_bytes, 1), max(g_bytes, 1))
        try:
            inputs, outputs = pair
            np.copyto(inputs.view(0, s.shape, sdt), s, casting="unsafe")
            np.copyto(inputs.view(t_at, t.shape, tdt), t, casting="unsafe")
            tensors = [("scores", _DATATYPE[sdt], inputs.name, 0, s_bytes),
                       ("labels", _DATATYPE[tdt], inputs.name, t_at, t_bytes)]
            if mask is not None:
                np.copyto(inputs.view(m_at, s.shape, np.uint8), np.asarray(mask, dtype=np.uint8))
                tensors.append(("mask", "UINT8", inputs.name, m_at, rows * cols))
            grad_at = (outputs.name, 0, g_bytes) if want_grad else None
            loss, total, mean = self._infer(s.shape, tensors, grad_at, request_id, deadline_s,
                                            priority)
            grad = outputs.view(0, (rows, cols), np.float32).copy() if want_grad else None
            return loss, total, mean, grad
        finally:
            self._give_back(pair)

    def _loss_in_place(self, ts: SharedTensors, at, grad_place, s, t, mask, request_id,
                       deadline_s, priority):
        """The loss of arrays that lie in `ts` at offsets `at`; the gradient into `grad_place`
        (ts.grad_for's (offset, array)) when not None."""
        name = ts.region.name
        tensors = [("scores", _DATATYPE[s.dtype], name, at[0], s.nbytes),
                   ("labels", _DATATYPE[t.dtype], name, at[1], t.nbytes)]
        if mask is not None:
            tensors.append(("mask", "UINT8", name, at[2], s.size))
        grad, grad_at = None, None
        if grad_place is not None:
            g_at, grad = grad_place
            grad_at = (name, g_at, grad.nbytes)
        loss, total, mean = self._infer(s.shape, tensors, grad_at, request_id, deadline_s,
                                        priority)
        return loss, total, mean, grad

    def _infer(self, shape, tensors, grad_at, request_id: str, deadline_s: Optional[float],
               priority: Optional[int]):
        """One zlpr_loss ModelInfer whose inputs are in regions: `tensors` are (name, datatype,
        region, offset, bytes); `grad_at` is where the gradient goes, (region, offset, bytes), or
        None. (loss float32 [rows], loss_sum, loss_mean)."""
        request = [_str(1, "zlpr_loss"), _str(3, request_id)]
        if priority:
            request.append(_parameters(4, {"priority": priority}))
        for name, datatype, region, offset, nbytes in tensors:
            request.append(_len(5, _tensor(name, datatype, shape, region, offset, nbytes)))
        request.append(_len(6, _str(1, "loss")))
        if grad_at is not None:
            region, offset, nbytes = grad_at
            where = {"shared_memory_region": region, "shared_memory_byte_size": nbytes}
            if offset:
                where["shared_memory_offset"] = offset
            request.append(_len(6, _str(1, "grad") + _parameters(2, where)))
        outs, params = parse_infer_response(self._call("ModelInfer", b"".join(request),
                                                       deadline_s))
        loss = np.frombuffer(outs["loss"][2], dtype="<f4").copy()
        return loss, float(params.get("loss_sum", 0.0)), float(params.get("loss_mean", 0.0))

    def close(self) -> None:
        """Unregisters and removes the regions not in use; those in use go when their call
        returns."""
        with self._lock:
            self._closed = True
            pairs, self._free = self._free, []
            sets, self._sets = self._sets, []
        for ts in sets:
            try:
                ts.region.close(self._call)
            except Exception:
                pass
        for pair in pairs:
            for r in pair:
                try:
                    r.close(self._call)
                except Exception:  # the server may be gone: the local object is removed anyway
                    pass
