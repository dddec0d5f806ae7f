#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses: valid inputs of every kind each harness reads.

    python3 fuzz/make_seeds.py        (rewrites fuzz/corpus/; the seeds are committed)

http_session: raw HTTP/1.1 sessions (every endpoint, pipelining, hostile framing and bytes).
oip_convert: a byte (0 or 1: the model when the request names none) then a serialized
ModelInferRequest of either model. oip_wire: the same requests after a byte that says how they
arrive (0: one buffer; n: buffers of n bytes).
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
    for name in ("zlpr/v1/zlpr.proto", "inference/grpc_service.proto"):
        if protoc.main(["protoc", f"-I{proto}", f"--python_out={out}",
                        os.path.join(proto, name)]) != 0:
            sys.exit("protoc failed")
    sys.path.insert(0, out)
    from zlpr.v1 import zlpr_pb2
    return zlpr_pb2


def inference_stubs():
    from inference import grpc_service_pb2
    return grpc_service_pb2


def http_session_seeds(s):
    """Whole HTTP sessions: valid requests of every endpoint, pipelined ones, and the hostile
    forms that once stopped or misled the server (bytes that are not UTF-8, odd framing)."""
    def post(path, body, extra=b""):
        return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"Content-Length: " +
                str(len(body)).encode() + b"\r\n\r\n" + body)
    predict = (b'{"id":"1","inputs":[{"name":"scores","datatype":"FP32","shape":[2,3],'
               b'"data":[1,-1,0.5,2,0,-3]}],"outputs":[{"name":"labels"},{"name":"probs",'
               b'"parameters":{"classification":2}}]}')
    loss = (b'{"inputs":[{"name":"scores","datatype":"FP32","shape":[1,3],"data":[1,-1,0.5]},'
            b'{"name":"labels","datatype":"FP32","shape":[1,3],"data":[1,0,0]}],'
            b'"parameters":{"binary_data_output":true}}')
    header = (b'{"inputs":[{"name":"scores","datatype":"FP32","shape":[1,7],'
              b'"parameters":{"binary_data_size":28}}]}')
    binary = header + s[0].tobytes()
    return {
        "health": b"GET /v2/health/live HTTP/1.1\r\n\r\nGET /v2/health/ready HTTP/1.1\r\n\r\n",
        "metadata": (b"GET /v2 HTTP/1.1\r\n\r\nGET /v2/models/zlpr_loss HTTP/1.1\r\n\r\n"
                     b"GET /v2/models/zlpr_predict/versions/1/config HTTP/1.1\r\n\r\n"
                     b"GET /v2/models/stats HTTP/1.1\r\n\r\nHEAD /v2 HTTP/1.1\r\n\r\n"),
        "predict_json": post(b"/v2/models/zlpr_predict/infer", predict),
        "loss_pipelined": post(b"/v2/models/zlpr_loss/infer", loss) * 2,
        "predict_binary": post(b"/v2/models/zlpr_predict/versions/1/infer", binary,
                               b"Inference-Header-Content-Length: " + str(len(header)).encode() +
                               b"\r\n"),
        "expect_continue": post(b"/v2/models/zlpr_predict/infer", predict,
                                b"Expect: 100-continue\r\n"),
        "not_utf8_path": b"GET /v2/health/\xff HTTP/1.1\r\n\r\nGET /v2/models/m\xc3\x28 HTTP/1.1\r\n\r\n",
        "not_utf8_headers": post(b"/v2/models/zlpr_predict/infer", b'{"id":"a\xff"}',
                                 b"Content-Encoding: gz\xffip\r\n"),
        "transfer_encoding": (b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\n"
                              b"Transfer-Encoding: xchunked\r\n\r\nGET /v2 HTTP/1.1\r\n\r\n"),
        "duplicate_key": post(b"/v2/models/zlpr_predict/infer",
                              b'{"inputs":[],"inputs":[{"name":"scores"}]}'),
    }


def oip_convert_seeds(s, t, mask):
    """ModelInferRequests of both models: raw and typed contents, every optional input, the
    parameters and outputs each model takes. The first byte picks the model when unnamed."""
    ip = inference_stubs()
    out = {}

    def request(name, model, inputs, raw, params=None, outputs=()):
        r = ip.ModelInferRequest(model_name=model, id="seed")
        for n, dt, array in inputs:
            r.inputs.add(name=n, datatype=dt, shape=list(array.shape))
        if raw:
            r.raw_input_contents.extend(a.tobytes() for _, _, a in inputs)
        else:
            for i, (_, dt, a) in enumerate(inputs):
                if dt == "FP32":
                    r.inputs[i].contents.fp32_contents.extend(float(v) for v in a.flat)
                else:
                    r.inputs[i].contents.uint_contents.extend(int(v) for v in a.flat)
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                r.parameters[k].bool_param = v
            elif isinstance(v, int):
                r.parameters[k].int64_param = v
            elif isinstance(v, float):
                r.parameters[k].double_param = v
            else:
                r.parameters[k].string_param = v
        for o in outputs:
            r.outputs.add(name=o)
        out[name] = b"\0" + r.SerializeToString()

    request("predict_raw", "zlpr_predict", [("scores", "FP32", s)], True,
            {"threshold": 0.3, "top_k": 2, "min_labels": 1}, ("labels", "probs", "label_count"))
    request("predict_typed_mask", "zlpr_predict",
            [("scores", "FP32", s), ("mask", "UINT8", mask)], False)
    request("predict_thresholds", "zlpr_predict",
            [("scores", "FP16", s.astype(np.float16)),
             ("label_thresholds", "FP32", np.full((3, 7), 0.4, np.float32))], True,
            {"timeout": 1000000})
    request("loss_raw", "zlpr_loss", [("scores", "FP32", s), ("labels", "FP32", t)], True,
            outputs=("loss", "grad"))
    request("loss_bf16_mask", "", [("scores", "BF16", s.astype(np.float16)),
                                   ("labels", "BF16", t.astype(np.float16)),
                                   ("mask", "UINT8", mask)], True)
    return out


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

    seeds["http_session"] = http_session_seeds(s)
    seeds["oip_convert"] = oip_convert_seeds(s, t, mask)
    seeds["oip_wire"] = {}
    for name, data in seeds["oip_convert"].items():
        seeds["oip_wire"][name] = b"\0" + data[1:]
        seeds["oip_wire"][name + "_blocks5"] = b"\5" + data[1:]

    for harness, files in seeds.items():
        d = os.path.join(ROOT, "fuzz", "corpus", harness)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{d}: {len(files)} seeds")


if __name__ == "__main__":
    main()
