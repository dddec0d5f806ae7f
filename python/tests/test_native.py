"""zlpr._native's PredictResponse decoder against protobuf's own parser: seeded random responses
(rows of every length, dense probabilities, an error, timing), the encodings a proto3 parser
must accept (unpacked repeated fields, interleaved occurrences, negative varints, unknown
fields), and malformed bytes (ValueError, never a crash or a wrong answer)."""
import numpy as np
import pytest

from conftest import native_or_skip
from zlpr.v1 import zlpr_pb2 as pb


@pytest.fixture(scope="module")
def native(request):
    native_or_skip(request.config)
    from zlpr import _native
    return _native


def check(native, data: bytes):
    """split_predict(data) says what protobuf says."""
    want = pb.PredictResponse.FromString(data)
    labels, label_probs, rest, dense = native.split_predict(data)
    assert [l.tolist() for l in labels] == [list(r.labels) for r in want.rows]
    assert all(l.dtype == np.int32 for l in labels)
    assert len(label_probs) == len(want.rows)
    for got, row in zip(label_probs, want.rows):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(row.probs, dtype=np.float32))
    others = pb.PredictResponse()
    others.CopyFrom(want)
    del others.rows[:]
    others.ClearField("probs")
    assert pb.PredictResponse.FromString(rest) == others
    if want.HasField("probs"):
        assert pb.Tensor.FromString(bytes(dense)) == want.probs
    else:
        assert dense is None


def random_response(rng, rows, cols):
    r = pb.PredictResponse(request_id=f"req-{rows}-{cols}" if rng.random() < 0.5 else "")
    for _ in range(rows):
        n = int(rng.integers(0, cols + 1))
        row = r.rows.add()
        row.labels.extend(rng.permutation(cols)[:n].tolist())
        row.probs.extend(rng.random(n).astype(np.float32).tolist())
    if rng.random() < 0.5:
        probs = rng.random((rows, cols)).astype(np.float32)
        r.probs.shape.extend([rows, cols])
        r.probs.dtype = pb.FLOAT32
        r.probs.data = probs.tobytes()
    if rng.random() < 0.3:
        r.error.code = 3
        r.error.message = "scores[0, 1] is NaN"
    r.timing.queue_seconds = float(rng.random())
    r.timing.compute_seconds = float(rng.random())
    r.timing.batch_rows = rows
    return r


@pytest.mark.parametrize("seed", range(40))
def test_random_responses_decode_as_protobuf_parses_them(native, seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(0, 9)), int(rng.choice([1, 3, 130, 1000]))
    check(native, random_response(rng, rows, cols).SerializeToString())


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire, payload):
    if wire == 2:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    return varint(number << 3 | wire) + payload


def test_unpacked_interleaved_negative_and_unknown_fields(native):
    f32 = lambda x: np.float32(x).tobytes()  # noqa: E731
    row = (field(1, 0, varint(7)) + field(2, 5, f32(0.75)) + field(9, 0, varint(1))  # unknown
           + field(1, 2, varint(3) + varint(2**31 - 1)) + field(1, 0, varint(-5))
           + field(2, 2, f32(0.5) + f32(0.25)) + field(2, 5, f32(0.125))
           + field(15, 1, b"\0" * 8) + field(14, 5, b"\0" * 4) + field(13, 2, b"xyz"))
    data = (field(5, 2, field(1, 1, np.float64(0.5).tobytes())) + field(2, 2, row)
            + field(1, 2, b"id") + field(2, 2, b"") + field(20, 0, varint(99)) + field(2, 2, row))
    check(native, data)
    labels, _, _, _ = native.split_predict(data)
    assert labels[0].tolist() == [7, 3, 2**31 - 1, -5] and labels[1].tolist() == []


def test_the_dense_probabilities_are_a_view_not_a_copy(native):
    r = random_response(np.random.default_rng(3), 4, 1000)
    r.probs.shape[:] = [4, 1000]
    r.probs.dtype = pb.FLOAT32
    r.probs.data = np.arange(4000, dtype=np.float32).tobytes()
    data = r.SerializeToString()
    _, _, _, dense = native.split_predict(data)
    assert isinstance(dense, memoryview) and dense.obj is data


def test_malformed_bytes_raise_value_error(native):
    good = random_response(np.random.default_rng(4), 3, 130).SerializeToString()
    for cut in range(len(good)):  # every truncation: protobuf's verdict, or ValueError
        data = good[:cut]
        try:
            pb.PredictResponse.FromString(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError
            with pytest.raises(ValueError, match="PredictResponse"):
                native.split_predict(data)
            continue
        check(native, data)
    for bad in (b"\x12\x05\x0a", b"\x12\x02\x12\x03", b"\xff" * 11, b"\x13", b"\x12\x01\x0b",
                field(2, 2, field(2, 2, b"\0\0\0"))):
        with pytest.raises(ValueError, match="PredictResponse"):
            native.split_predict(bad)
    rng = np.random.default_rng(5)
    for _ in range(300):  # flipped bytes: whatever the outcome, no crash
        data = bytearray(good)
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
        try:
            native.split_predict(bytes(data))
        except ValueError:
            pass
