#!/usr/bin/env python3
"""Two zlpr-server binaries side by side in one run, through the same client (zlpr-bench from
--bench): Predict 1 x 1000 at concurrency 1 and 64, loss+gradient 256 x 16384 at concurrency 2,
and the same through the Open Inference Protocol's ModelInfer (--rpc=oip_predict at concurrency 1
and 64, --rpc=oip_loss_grad at 2);
throughput, p50, p99 and the server's CPU time per request (its /proc CPU time over its
zlpr_requests_total). The binaries take turns, --rounds rounds of each configuration; the table
gives medians. With --pin the server runs on CPU 0 and zlpr-bench on CPU 1.

  python3 bench/before_after.py --before OLD/server/zlpr-server --after build/server/zlpr-server \\
      --bench build/bench/zlpr-bench --pin
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import urllib.request

from perf_analyzer_common import cpu_seconds

CONFIGS = [  # (label, rpc, rows, cols, concurrency)
    ("Predict 1 x 1000", "predict", 1, 1000, 1),
    ("Predict 1 x 1000", "predict", 1, 1000, 64),
    ("OIP ModelInfer 1 x 1000 (oip_predict)", "oip_predict", 1, 1000, 1),
    ("OIP ModelInfer 1 x 1000 (oip_predict)", "oip_predict", 1, 1000, 64),
    ("loss+gradient 256 x 16384", "loss_grad", 256, 16384, 2),
    ("OIP loss+gradient 256 x 16384 (oip_loss_grad)", "oip_loss_grad", 256, 16384, 2),
]


class Server:
    def __init__(self, binary, pin):
        self.proc = subprocess.Popen(pin + [binary, "--grpc_address=127.0.0.1:0",
                                            "--metrics_address=127.0.0.1:0", "--backend=cpu"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        self.target = "127.0.0.1:" + re.search(r"gRPC on port (\d+)", line).group(1)
        self.metrics = "http://127.0.0.1:%s/metrics" % re.search(r"metrics on port (\d+)",
                                                                 line).group(1)

    def served(self):
        """The server's CPU seconds so far, and the requests it has answered."""
        text = urllib.request.urlopen(self.metrics).read().decode()
        n = sum(float(m.group(1)) for m in
                re.finditer(r"^zlpr_requests_total\{[^}]*\} (\S+)$", text, re.M))
        return cpu_seconds(self.proc.pid), n

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--bench", default="build/bench/zlpr-bench")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pin", action="store_true")
    args = ap.parse_args()
    on_server, on_client = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if args.pin else ([], [])
    tmp = tempfile.mkdtemp()
    servers = {"before": Server(args.before, on_server), "after": Server(args.after, on_server)}

    def run(server, rpc, rows, cols, c):
        out = os.path.join(tmp, "run.json")
        cpu0, n0 = server.served()
        subprocess.run(on_client + [
            args.bench, f"--target={server.target}", f"--rpc={rpc}", f"--rows={rows}",
            f"--cols={cols}", f"--concurrency={c}", f"--duration_s={args.seconds}",
            "--warmup_s=1", "--progress=false", f"--json={out}"], check=True, capture_output=True)
        cpu1, n1 = server.served()
        r = json.load(open(out))["runs"][0]
        errors = sum(r["errors"].values()) if r.get("errors") else 0
        return (r["rps"], r["p50_s"] * 1e3, r["p99_s"] * 1e3,
                (cpu1 - cpu0) / max(n1 - n0, 1) * 1e6, errors)

    try:
        print("| configuration | concurrency | binary | req/s | p50 ms | p99 ms | server CPU / "
              "request | errors |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for label, rpc, rows, cols, c in CONFIGS:
            runs = {"before": [], "after": []}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    runs[name].append(run(server, rpc, rows, cols, c))
            med = {k: [statistics.median(col) for col in zip(*v)] for k, v in runs.items()}
            for name in ("before", "after"):
                rps, p50, p99, cpu, err = med[name]
                ratio = ""
                if name == "after":
                    b = med["before"]
                    ratio = (f" ({rps / b[0]:.2f}x / {p50 / b[1]:.2f}x / {p99 / b[2]:.2f}x / "
                             f"{cpu / b[3]:.2f}x)")
                print(f"| {label} | {c} | {name}{ratio} | {rps:.0f} | {p50:.3f} | {p99:.3f} | "
                      f"{cpu:.1f} µs | {err:.0f} |", flush=True)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
