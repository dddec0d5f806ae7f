#!/usr/bin/env python3
"""Is the server steady under many callers? perf_analyzer (Triton's load generator, ModelInfer
on zlpr_predict over gRPC, 1 x 1000 scores) at concurrency 1, 16 and 64 with its default
stability settings (5 s windows, at most 10 of them, the last three within 10%), the server on
CPU 0 and perf_analyzer on CPU 1. For each server binary and concurrency: whether
perf_analyzer found a stable measurement, its throughput, p50 and p99, and the
share of its CPU that the server and perf_analyzer each used (a client at 100% of its CPU
measures itself as much as the server). The
binaries take turns, --reps rounds, so that a before/after comparison shares the machine's
state.

  ZLPR_PERF_ANALYZER=build-oipvenv-pa/bin/perf_analyzer \\
  LD_LIBRARY_PATH=$(echo build-oipvenv-pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \\
  python3 bench/steady.py --server after=build/server/zlpr-server \\
      --server "before=/path/to/old/build/server/zlpr-server --threads=2"
"""
import argparse
import json
import os
import re
import resource
import signal
import subprocess
import tempfile
import time

from perf_analyzer_common import cpu_seconds, predict_input


def start(command):
    binary, *flags = command.split()
    # ZLPR_PERF_ANALYZER is this script's: the server would warn that no flag of its has it.
    env = {k: v for k, v in os.environ.items() if k != "ZLPR_PERF_ANALYZER"}
    server = subprocess.Popen(["taskset", "-c", "0", binary, "--grpc_address=127.0.0.1:0",
                               "--metrics_address=127.0.0.1:0"] + flags,
                              stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    return server, "127.0.0.1:" + re.search(r"gRPC on port (\d+)", line).group(1)


def perf_analyzer(pa, server, target, data, c):
    """One perf_analyzer run, with the share of its CPU that it and the server used."""
    t0, s0 = time.monotonic(), cpu_seconds(server.pid)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(["taskset", "-c", "1", pa, "-m", "zlpr_predict", "-u", target, "-i",
                        "grpc", "-b", "1", "--shape", "scores:1000", "--input-data", data,
                        "--concurrency-range", str(c)],
                       capture_output=True, text=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, s1 = time.monotonic() - t0, cpu_seconds(server.pid)
    out = r.stdout + r.stderr
    stable = r.returncode == 0 and "Failed to obtain stable measurement" not in out

    def figure(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    return {
        "stable": stable,
        "rps": figure(r"Throughput: ([\d.]+) infer/sec"),
        "p50_us": figure(r"p50 latency: (\d+) usec"),
        "p99_us": figure(r"p99 latency: (\d+) usec"),
        "server_cpu": (s1 - s0) / wall,
        "client_cpu": (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", action="append", required=True, metavar="LABEL=BINARY [FLAGS]",
                    help="a server to measure (its flags after the binary, space-separated)")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", help="also write every run here")
    args = ap.parse_args()
    pa = os.environ["ZLPR_PERF_ANALYZER"]
    servers = [s.split("=", 1) for s in args.server]
    data = predict_input(tempfile.mkdtemp())
    print("| server | concurrency | stable | infer/s | p50 | p99 | p99/p50 | server CPU | "
          "perf_analyzer CPU |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|", flush=True)
    runs = []
    for _ in range(args.reps):
        for label, binary in servers:
            server, target = start(binary)
            try:
                for c in (int(x) for x in args.concurrency.split(",")):
                    r = perf_analyzer(pa, server, target, data, c)
                    r.update(server=label, concurrency=c)
                    runs.append(r)
                    print(f"| {label} | {c} | {'yes' if r['stable'] else 'no'} | "
                          f"{r['rps']:.0f} | {r['p50_us']:.0f} µs | "
                          f"{r['p99_us']:.0f} µs | {r['p99_us'] / r['p50_us']:.2f} | "
                          f"{r['server_cpu']:.0%} | {r['client_cpu']:.0%} |", flush=True)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
