#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses: valid inputs of every kind each harness reads.

    python3 fuzz/make_seeds.py        (rewrites fuzz/corpus/; the seeds are committed)

convert: a type byte (0 LossRequest, 1 PredictRequest) then the serialized request, for dense
fp32/fp16/bf16 labels, sparse hard and soft labels, masks, -inf scores, the gradient in each
dtype, thresholds, per-label thresholds, top_k and min_labels. cli_readers: a selector byte
(0 .npy matrix, 1 JSON matrix, 2 .npy mask, 3 JSON mask, 4 sparse labels JSON) then the file.
"""
import io
import os
import struct
import sys
import tempfile

import numpy as np
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stubs():
    out = tempfile.mkdtemp(prefix="zlpr_seed_stubs_")
    proto = os.path.join(ROOT, "proto")
    if protoc.main(["protoc", f"-I{proto}", f"--python_out={out}",
                    os.path.join(proto, "zlpr/v1/zlpr.proto")]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from zlpr.v1 import zlpr_pb2
    return zlpr_pb2


def tensor(pb, array, dtype):
    t = pb.Tensor(shape=list(array.shape), dtype=dtype)
    t.data = array.tobytes()
    return t


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def main():
    pb = stubs()
    rng = np.random.default_rng(7)
    seeds = {"convert": {}, "cli_readers": {}}
    s = rng.uniform(-3, 3, (3, 7)).astype(np.float32)
    s[1, 2] = -np.inf
    t = (rng.uniform(0, 1, (3, 7)) < 0.3).astype(np.float32)
    soft = np.where(t > 0, rng.uniform(0.1, 0.9, t.shape), 0).astype(np.float32)
    mask = (rng.uniform(0, 1, (3, 7)) < 0.8).astype(np.uint8)
    splits, idx = [0], []
    for r in range(3):
        idx += [int(c) for c in np.nonzero(t[r])[0]]
        splits.append(len(idx))
    dtypes = {pb.FLOAT32: np.float32, pb.FLOAT16: np.float16}

    def loss(name, **kw):
        seeds["convert"][name] = b"\0" + pb.LossRequest(**kw).SerializeToString()

    def predict(name, **kw):
        seeds["convert"][name] = b"\1" + pb.PredictRequest(**kw).SerializeToString()

    for wire, np_type in dtypes.items():
        loss(f"loss_dense_{pb.DType.Name(wire).lower()}", request_id="a",
             scores=tensor(pb, s.astype(np_type), wire), dense_labels=tensor(pb, soft.astype(np_type), wire),
             want_grad=True)
    bf16 = (s.view(np.uint32) >> 16).astype(np.uint16)
    loss("loss_bf16_grad_fp16", scores=tensor(pb, bf16, pb.BFLOAT16),
         dense_labels=tensor(pb, t, pb.FLOAT32), want_grad=True, grad_dtype=pb.FLOAT16)
    loss("loss_sparse_hard_mask", scores=tensor(pb, s, pb.FLOAT32),
         sparse_labels=pb.SparseLabels(row_splits=splits, indices=idx), mask=tensor(pb, mask, pb.UINT8),
         want_grad=True, grad_dtype=pb.BFLOAT16)
    loss("loss_sparse_soft", scores=tensor(pb, s, pb.FLOAT32),
         sparse_labels=pb.SparseLabels(row_splits=splits, indices=idx,
                                       values=[float(soft.flat[r * 7 + c]) for r in range(3)
                                               for c in idx[splits[r]:splits[r + 1]]]))
    predict("predict_threshold_topk", scores=tensor(pb, s, pb.FLOAT32), threshold=0.3, top_k=2,
            min_labels=1, want_probs=True)
    predict("predict_per_label_mask", scores=tensor(pb, s.astype(np.float16), pb.FLOAT16),
            label_thresholds=tensor(pb, rng.uniform(0.1, 0.9, 7).astype(np.float32), pb.FLOAT32),
            mask=tensor(pb, mask, pb.UINT8), min_labels=3)
    predict("predict_all_above", scores=tensor(pb, s, pb.FLOAT32), threshold=0.01)

    seeds["cli_readers"]["npy_f4"] = b"\0" + npy(s)
    seeds["cli_readers"]["npy_f2"] = b"\0" + npy(s.astype(np.float16))
    seeds["cli_readers"]["json_matrix"] = b"\1" + b'[[1.5, -2, "-inf"], [0, 3e-2, 7]]'
    seeds["cli_readers"]["json_vector"] = b"\1" + b'[0.25, -1, "nan", "Infinity"]'
    seeds["cli_readers"]["npy_mask"] = b"\2" + npy(mask)
    seeds["cli_readers"]["npy_bool"] = b"\2" + npy(mask.astype(bool))
    seeds["cli_readers"]["json_mask"] = b"\3" + b"[[1, 0, 1], [0, 1, 1]]"
    seeds["cli_readers"]["sparse"] = b"\4" + b'{"row_splits": [0, 2, 2], "indices": [0, 3], "values": [1, 0.5]}'

    for harness, files in seeds.items():
        d = os.path.join(ROOT, "fuzz", "corpus", harness)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{d}: {len(files)} seeds")


if __name__ == "__main__":
    main()
