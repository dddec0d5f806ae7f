#!/usr/bin/env python3
"""The Python package's costs, measured side by side in one run against one zlpr-server:

1. a 1 x 1000 Predict at concurrency 1 from zlpr.Client (unary on each transport, and on a
   stream) against zlpr-bench (C++) on the same server, taking turns for --rounds rounds: p50
   latency of each and their ratio;
2. loss + gradient of 256 x 1000 fp32 logits through zlpr.torch.ZlprLoss against the package's
   local PyTorch reference: time per forward+backward, and the bytes the Python side allocates
   per call (tracemalloc: numpy arrays and bytes objects) in units of the logits' size;
3. where a remote loss call's time goes (ZlprLoss.stats): host copy, call, server queue and
   compute; serialization and parsing timed alone.

  build-pyvenv/bin/python bench/python_client.py --build build
"""
import argparse
import functools
import json
import os
import re
import signal
import subprocess
import sys
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


def latency(target, kind, seconds):
    """p50 of a 1 x 1000 Predict at concurrency 1 from this process's only client."""
    import zlpr
    transport, how = kind.split("-")
    client = zlpr.Client(target, transport=transport)
    scores = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
    if how == "stream":
        stream = client.predict_stream(window=1)

        def call():
            stream.send(scores)
            stream.receive()
    else:
        def call():
            client.predict(scores)
    for _ in range(200):
        call()
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
    return p50(lat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency", help=argparse.SUPPRESS)  # TRANSPORT-unary|stream, in a child
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.latency:
        print(latency(args.target, args.latency, args.seconds))
        return
    import torch
    import zlpr
    from zlpr import _client, _wire
    from zlpr.torch import ZlprLoss, ZlprLossReference
    proc, target = start(os.path.join(args.build, "server/zlpr-server"))
    try:
        clients = {t: zlpr.Client(target, transport=t) for t in ("native", "grpcio")
                   if t == "grpcio" or zlpr.native_available()}

        def python(kind):
            # Each client in a process of its own, as an application holds one.
            out = subprocess.run([sys.executable, __file__, f"--latency={kind}",
                                  f"--target={target}", f"--seconds={args.seconds}"],
                                 check=True, capture_output=True, text=True).stdout
            return float(out)

        def cpp():
            out = os.path.join(tempfile.mkdtemp(), "bench.json")
            subprocess.run([os.path.join(args.build, "bench/zlpr-bench"), f"--target={target}",
                            "--rpc=predict", "--rows=1", "--cols=1000", "--concurrency=1",
                            f"--duration_s={args.seconds}", "--warmup_s=1", "--progress=false",
                            f"--json={out}"], check=True, capture_output=True)
            with open(out) as f:
                return json.load(f)["runs"][0]["p50_s"]

        # Taking turns, args.rounds times; the medians of the rounds' p50s are reported.
        runs = {"zlpr-bench (C++)": cpp,
                **{f"zlpr.Client.predict (Python, unary, transport={t})":
                   functools.partial(python, f"{t}-unary") for t in clients},
                "zlpr.Client.predict_stream (Python, grpcio, one in flight)":
                    functools.partial(python, "grpcio-stream")}
        rounds = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                rounds[name].append(run())
        base = p50(rounds["zlpr-bench (C++)"])
        print(f"| 1 x 1000 Predict, concurrency 1 | p50 (median of {args.rounds} rounds) | "
              "each round |")
        print("|---|---:|---|")
        for name, xs in rounds.items():
            ratio = "" if name.startswith("zlpr-bench") else f" ({p50(xs) / base:.2f}x)"
            print(f"| {name} | {p50(xs) * 1e6:.0f} µs{ratio} | "
                  f"{', '.join(f'{x * 1e6:.0f}' for x in xs)} |")
        client = clients.get("native", clients["grpcio"])

        torch.manual_seed(0)
        logits = torch.randn(256, 1000, requires_grad=True)
        targets = (torch.rand(256, 1000) < 0.05).float()
        remote, local = ZlprLoss(client), ZlprLossReference()
        remotes = {t: ZlprLoss(c) for t, c in clients.items()}

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

        t_local = timed(local)
        t_remote = {t: timed(fn) for t, fn in remotes.items()}
        stats = []
        for _ in range(30):
            step(remote)
            stats.append(dict(remote.stats))
        tracemalloc.start()
        step(remote)  # the targets' bytes are sent too: count them apart
        held, _ = tracemalloc.get_traced_memory()
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
        for t, x in t_remote.items():
            print(f"| zlpr.torch.ZlprLoss (remote, transport={t}) | {x * 1e3:.2f} ms "
                  f"({(x - t_local) * 1e3:+.2f} ms) |")
        print(f"| of which ({client.transport}): to host {med['to_host_s'] * 1e3:.3f} ms, call "
              f"{med['call_s'] * 1e3:.2f} ms (server queue {med['server_queue_s'] * 1e3:.3f} ms, "
              f"compute {med['server_compute_s'] * 1e3:.2f} ms); serializing the request "
              f"{t_join * 1e3:.3f} ms, parsing the response {t_parse * 1e3:.3f} ms | |")
        print(f"| Python-side allocation per call, peak over the steady state | "
              f"{(peak - held) / mb:.2f} x the logits ({(peak - held) / 1e6:.2f} MB; the request "
              f"carries logits and targets: 2 x) |")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
