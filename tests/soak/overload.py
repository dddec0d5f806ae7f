#!/usr/bin/env python3
"""Overload of large requests against the zlpr-server binary: C callers (default 128) of
R x C loss+gradient (default 256 x 16384, 32 MiB each) for D seconds through one front end, with
the server's resident memory sampled every 0.2 s. Checks that every call was answered (OK or
RESOURCE_EXHAUSTED; HTTP: 200 or 429, never a broken connection), that the peak stays under
--max_peak_mib, and that 10 s after the load the server is at most --max_after_mib above its
idle baseline. With several front ends (--protocols), each gets a fresh server, and HTTP must
complete at least half as many calls as the Open Inference Protocol over gRPC.

  tests/soak/overload.py --build build                                   # zlpr.v1 (zlpr-bench)
  tests/soak/overload.py --build build --protocols oip_grpc,oip_http     # docs/RELIABILITY.md

zlpr_v1 and oip_grpc are driven by zlpr-bench (--rpc=loss_grad, --rpc=oip_loss_grad); oip_http by
Python http.client callers with binary tensors (the binary tensor extension), one connection
each, as a Python trainer would.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import harness


def bench(args, server, rpc):
    """zlpr-bench against `server`: (calls OK, {code: count})."""
    out = os.path.join(tempfile.mkdtemp(prefix="zlpr_overload_"), "bench.json")
    run = subprocess.run(
        [os.path.join(args.build, "bench/zlpr-bench"), f"--target={server.target}",
         f"--rpc={rpc}", f"--rows={args.rows}", f"--cols={args.cols}",
         f"--concurrency={args.callers}", f"--duration_s={args.duration_s}", "--warmup_s=0",
         "--progress=false", f"--json={out}"],
        capture_output=True, text=True, timeout=args.duration_s + 300)
    # zlpr-bench exits 1 when any call failed; its JSON says with which codes.
    if not os.path.exists(out):
        raise RuntimeError(f"zlpr-bench failed ({run.returncode}): {run.stderr[-2000:]}")
    with open(out) as f:
        result = json.load(f)["runs"][0]
    return result["ok"], result["errors"]


def http_load(args, server):
    """Python callers of binary loss+gradient over HTTP: (calls OK, {outcome: count})."""
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((args.rows, args.cols), dtype=np.float32)
    labels = (rng.random((args.rows, args.cols)) < 0.01).astype(np.float32)
    header = json.dumps({
        "inputs": [
            {"name": "scores", "datatype": "FP32", "shape": [args.rows, args.cols],
             "parameters": {"binary_data_size": scores.nbytes}},
            {"name": "labels", "datatype": "FP32", "shape": [args.rows, args.cols],
             "parameters": {"binary_data_size": labels.nbytes}}],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}},
                    {"name": "grad", "parameters": {"binary_data": True}}]}).encode()
    body = header + scores.tobytes() + labels.tobytes()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}
    outcomes, lock = {}, threading.Lock()
    deadline = time.monotonic() + args.duration_s

    def count(key):
        with lock:
            outcomes[key] = outcomes.get(key, 0) + 1

    def caller():
        conn = None
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
                conn.request("POST", "/v2/models/zlpr_loss/infer", body, headers)
                res = conn.getresponse()
                res.read()
                count(res.status)
                if res.status == 429:
                    # As a client should: after the answer's Retry-After.
                    time.sleep(float(res.getheader("Retry-After", "1")))
            except (OSError, http.client.HTTPException) as e:
                count(type(e).__name__)
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=caller) for _ in range(args.callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = outcomes.pop(200, 0)
    return ok, {str(k): v for k, v in outcomes.items()}


def run(args, protocol):
    """One front end against a fresh server: (calls OK, failures)."""
    flags = list(args.server_flags)
    if protocol == "oip_http":
        flags.append("--http_address=127.0.0.1:0")
    server = harness.Server(os.path.join(args.build, "server/zlpr-server"), *flags)
    failures = []
    ok = 0
    try:
        time.sleep(1)
        idle = server.rss_mib()
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(server.rss_mib())
                time.sleep(0.2)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            if protocol == "oip_http":
                ok, errors = http_load(args, server)
                allowed = {"429"}
            else:
                ok, errors = bench(args, server,
                                   "oip_loss_grad" if protocol == "oip_grpc" else "loss_grad")
                allowed = {"RESOURCE_EXHAUSTED"}
        except RuntimeError as e:
            failures.append(str(e))
            ok, errors, allowed = 0, {}, set()
        time.sleep(10)
        stop.set()
        sampler.join()
        after = server.rss_mib()
        peak = max(samples + [after])
        print(f"overload [{protocol}]: {args.callers} callers of {args.rows} x {args.cols} "
              f"loss+gradient for {args.duration_s:.0f} s; server flags: "
              f"{' '.join(flags) or 'defaults'}")
        print(f"  answered OK {ok}, others {errors or 'none'}")
        print(f"  RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB, 10 s after {after:.0f} MiB "
              f"({after - idle:+.0f} MiB)")
        if set(errors) - allowed:
            failures.append(f"calls ended other than OK or {sorted(allowed)}: {errors}")
        if ok == 0:
            failures.append("no call was answered OK")
        if peak > args.max_peak_mib:
            failures.append(f"peak RSS {peak:.0f} MiB > {args.max_peak_mib:.0f} MiB")
        if after - idle > args.max_after_mib:
            failures.append(f"RSS 10 s after the load is {after - idle:.0f} MiB above idle "
                            f"(> {args.max_after_mib:.0f} MiB)")
    finally:
        if server.stop(timeout=60) != 0:
            failures.append("zlpr-server did not exit 0 on SIGTERM")
    return ok, [f"[{protocol}] {f}" for f in failures]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=f"{harness.ROOT}/build")
    ap.add_argument("--protocols", default="zlpr_v1",
                    help="comma-separated: zlpr_v1, oip_grpc, oip_http")
    ap.add_argument("--callers", type=int, default=128)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=16384)
    ap.add_argument("--duration_s", type=float, default=20)
    ap.add_argument("--max_peak_mib", type=float, default=3072)
    ap.add_argument("--max_after_mib", type=float, default=512)
    ap.add_argument("server_flags", nargs="*", help="extra zlpr-server flags (after --)")
    args = ap.parse_args()
    completed, failures = {}, []
    for protocol in args.protocols.split(","):
        completed[protocol], f = run(args, protocol)
        failures += f
    if "oip_grpc" in completed and "oip_http" in completed:
        ratio = completed["oip_http"] / max(1, completed["oip_grpc"])
        print(f"HTTP completed {completed['oip_http']} calls, gRPC {completed['oip_grpc']}: "
              f"{ratio:.2f}x")
        if ratio < 0.5:
            failures.append(f"HTTP completed {ratio:.2f}x the calls of gRPC (< 0.5x)")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
