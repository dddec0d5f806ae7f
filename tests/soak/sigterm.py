#!/usr/bin/env python3
"""SIGTERM under load, against the zlpr-server binary: 16 callers send unary requests, an idle
TCP connection and an open health Watch stay connected, and SIGTERM arrives mid-load. Over N
runs, counts the calls sent before the signal that ended other than OK or UNAVAILABLE (must be
0) and measures how long after the last such call the process exited (must be under 1 s).

  tests/soak/sigterm.py --server build/server/zlpr-server --runs 10
"""
import argparse
import signal
import socket
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np

import harness


def run_once(pb, binary, callers, load_s):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    server = harness.Server(binary, "--threads=2")
    stubs_mod = sys.modules["zlpr.v1.zlpr_pb2_grpc"]
    idle = socket.create_connection(("127.0.0.1", server.grpc_port))  # never sends a byte
    watch_channel = grpc.insecure_channel(server.target)
    watch = health_pb2_grpc.HealthStub(watch_channel).Watch(health_pb2.HealthCheckRequest())

    def follow_watch():  # ends when the server goes (UNAVAILABLE): expected
        try:
            for _ in watch:
                pass
        except grpc.RpcError:
            pass
    threading.Thread(target=follow_watch, daemon=True).start()

    rng = np.random.default_rng(7)
    scores = rng.standard_normal((16, 1000)).astype(np.float32)
    labels = (rng.random((16, 1000)) < .05).astype(np.float32)
    loss = pb.LossRequest(scores=harness.tensor(pb, scores), dense_labels=harness.tensor(pb, labels),
                          want_grad=True)
    predict = pb.PredictRequest(scores=harness.tensor(pb, scores), top_k=5)
    records, lock, stop = [], threading.Lock(), threading.Event()

    def caller(i):
        ch = grpc.insecure_channel(server.target, options=harness.channel_options())
        stub = stubs_mod.ZlprServiceStub(ch)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                if i % 2:
                    stub.ComputeLoss(loss, timeout=30)
                else:
                    stub.Predict(predict, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                records.append((sent, time.monotonic(), code))
            if code == grpc.StatusCode.UNAVAILABLE:
                time.sleep(0.01)
        ch.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    time.sleep(load_s)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    while server.proc.poll() is None:
        time.sleep(0.005)
    exited = time.monotonic()
    rc = server.proc.returncode
    stop.set()
    for t in threads:
        t.join()
    idle.close()
    watch_channel.close()
    before = [(s, e, c) for s, e, c in records if s < signalled]
    outcome = Counter(c.name for _, _, c in before)
    bad = sum(n for c, n in outcome.items() if c not in ("OK", "UNAVAILABLE"))
    ok_ends = [e for _, e, c in before if c == grpc.StatusCode.OK]
    last_ok = max(ok_ends) if ok_ends else signalled
    return {"rc": rc, "outcome": outcome, "bad": bad, "exit_after_last_s": exited - last_ok,
            "exit_after_signal_s": exited - signalled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=f"{harness.ROOT}/build/server/zlpr-server")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--load_s", type=float, default=1.5, help="load before the signal")
    args = ap.parse_args()
    pb, _ = harness.stubs()
    results = [run_once(pb, args.server, args.callers, args.load_s) for _ in range(args.runs)]
    print("| run | exit | calls sent before SIGTERM | neither OK nor UNAVAILABLE | "
          "exit after the last OK call | exit after the signal |")
    print("|---:|---:|---|---:|---:|---:|")
    for i, r in enumerate(results, 1):
        outcome = ", ".join(f"{c} {n}" for c, n in sorted(r["outcome"].items()))
        print(f"| {i} | {r['rc']} | {outcome} | {r['bad']} | {r['exit_after_last_s']:.3f} s | "
              f"{r['exit_after_signal_s']:.3f} s |")
    failures = []
    if any(r["rc"] != 0 for r in results):
        failures.append("zlpr-server did not exit 0")
    if sum(r["bad"] for r in results):
        failures.append("calls sent before the signal ended neither OK nor UNAVAILABLE")
    if max(r["exit_after_last_s"] for r in results) >= 1.0:
        failures.append("the exit came 1 s or more after the last call in flight")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
