#!/usr/bin/env python3
"""The Python package's costs, measured side by side in one run against one zlpr-server:

1. a 1 x 1000 Predict at concurrency 1 from zlpr.Client (unary, and on a stream) against
   zlpr-bench (C++) on the same server: p50 latency of each and their ratio;
2. loss + gradient of 256 x 1000 fp32 logits through zlpr.torch.ZlprLoss against the package's
   local PyTorch reference: time per forward+backward, and the bytes the Python side allocates
   per call (tracemalloc: numpy arrays and bytes objects) in units of the logits' size;
3. where a remote loss call's time goes (ZlprLoss.stats): host copy, call, server queue and
   compute; serialization and parsing timed alone.

  build-pyvenv/bin/python bench/python_client.py --build build
"""
import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import tracemalloc

import numpy as np


def start(binary):
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=",
                             "--backend=cpu"], stdout=subprocess.PIPE, text=True)
    port = re.search(r"gRPC on port (\d+)", proc.stdout.readline()).group(1)
    return proc, f"127.0.0.1:{port}"


def p50(xs):
    return float(np.median(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    import torch
    import zlpr
    from zlpr import _client, _wire
    from zlpr.torch import ZlprLoss, ZlprLossReference
    proc, target = start(os.path.join(args.build, "server/zlpr-server"))
    try:
        client = zlpr.Client(target)
        scores = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
        for _ in range(200):
            client.predict(scores)
        lat, end = [], time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            client.predict(scores)
            lat.append(time.perf_counter() - t0)
        stream = client.predict_stream(window=1)
        for _ in range(200):
            stream.send(scores)
            stream.receive()
        slat, end = [], time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            stream.send(scores)
            stream.receive()
            slat.append(time.perf_counter() - t0)
        stream.close()
        out = os.path.join(tempfile.mkdtemp(), "bench.json")
        subprocess.run([os.path.join(args.build, "bench/zlpr-bench"), f"--target={target}",
                        "--rpc=predict", "--rows=1", "--cols=1000", "--concurrency=1",
                        f"--duration_s={args.seconds}", "--warmup_s=1", "--progress=false",
                        f"--json={out}"], check=True, capture_output=True)
        cpp = json.load(open(out))["runs"][0]["p50_s"]
        print("| 1 x 1000 Predict, concurrency 1 | p50 |")
        print("|---|---:|")
        print(f"| zlpr-bench (C++) | {cpp * 1e6:.0f} µs |")
        print(f"| zlpr.Client.predict (Python, unary) | {p50(lat) * 1e6:.0f} µs "
              f"({p50(lat) / cpp:.2f}x) |")
        print(f"| zlpr.Client.predict_stream (Python, one in flight) | {p50(slat) * 1e6:.0f} µs "
              f"({p50(slat) / cpp:.2f}x) |")

        torch.manual_seed(0)
        logits = torch.randn(256, 1000, requires_grad=True)
        targets = (torch.rand(256, 1000) < 0.05).float()
        remote, local = ZlprLoss(client), ZlprLossReference()

        def step(fn):
            logits.grad = None
            fn(logits, targets).backward()

        def timed(fn, n=50):
            for _ in range(5):
                step(fn)
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                step(fn)
                ts.append(time.perf_counter() - t0)
            return p50(ts)

        t_remote, t_local = timed(remote), timed(local)
        stats = []
        for _ in range(30):
            step(remote)
            stats.append(dict(remote.stats))
        tracemalloc.start()
        step(remote)  # the targets' bytes are sent too: count them apart
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        step(remote)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        mb = logits.numel() * 4
        msg, tensors = _client.loss_request(logits.detach().numpy(), targets.numpy(), None, True,
                                            None, "")
        t0 = time.perf_counter()
        for _ in range(20):
            data = _wire.join(msg, tensors)
        t_join = (time.perf_counter() - t0) / 20
        resp = client._call("ComputeLoss", data, None)
        t0 = time.perf_counter()
        for _ in range(20):
            _client.parse_loss(resp)
        t_parse = (time.perf_counter() - t0) / 20
        med = {k: p50([s[k] for s in stats]) for k in stats[0]}
        print()
        print("| 256 x 1000 fp32 loss + gradient, forward + backward | p50 |")
        print("|---|---:|")
        print(f"| local PyTorch reference | {t_local * 1e3:.2f} ms |")
        print(f"| zlpr.torch.ZlprLoss (remote) | {t_remote * 1e3:.2f} ms "
              f"({(t_remote - t_local) * 1e3:+.2f} ms) |")
        print(f"| of which: to host {med['to_host_s'] * 1e3:.3f} ms, call "
              f"{med['call_s'] * 1e3:.2f} ms (server queue {med['server_queue_s'] * 1e3:.3f} ms, "
              f"compute {med['server_compute_s'] * 1e3:.2f} ms); serializing the request "
              f"{t_join * 1e3:.3f} ms, parsing the response {t_parse * 1e3:.3f} ms | |")
        print(f"| Python-side allocation per call, peak over the steady state | "
              f"{(peak - base) / mb:.2f} x the logits ({(peak - base) / 1e6:.2f} MB; the request "
              f"carries logits and targets: 2 x) |")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
