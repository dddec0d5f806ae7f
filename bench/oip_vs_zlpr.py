#!/usr/bin/env python3
"""The Open Inference Protocol's cost against zlpr.v1's, on one server in one run: perf_analyzer
(Triton's load generator, ModelInfer on zlpr_predict) beside zlpr-bench (Predict), the same
1 x 1000 payload, at concurrency 1 and 64; throughput and p50, and perf_analyzer's server-side
queue and compute figures (from ModelStatistics).

  ZLPR_PERF_ANALYZER=build-oipvenv-pa/bin/perf_analyzer \\
  LD_LIBRARY_PATH=$(echo build-oipvenv-pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \\
  python3 bench/oip_vs_zlpr.py --build build
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    pa = os.environ["ZLPR_PERF_ANALYZER"]
    server = subprocess.Popen([os.path.join(args.build, "server/zlpr-server"),
                               "--grpc_address=127.0.0.1:0", "--metrics_address="],
                              stdout=subprocess.PIPE, text=True)
    target = "127.0.0.1:" + re.search(r"gRPC on port (\d+)", server.stdout.readline()).group(1)
    tmp = tempfile.mkdtemp()
    random.seed(0)
    data = os.path.join(tmp, "input.json")
    with open(data, "w") as f:
        json.dump({"data": [{"scores": [random.gauss(0, 1) for _ in range(1000)]}]}, f)
    print("| Predict 1 x 1000 | concurrency | req/s | p50 | server queue | server compute |")
    print("|---|---:|---:|---:|---:|---:|")
    try:
        for c in (1, 64):
            out = os.path.join(tmp, f"bench{c}.json")
            subprocess.run([os.path.join(args.build, "bench/zlpr-bench"), f"--target={target}",
                            "--rpc=predict", "--rows=1", "--cols=1000", f"--concurrency={c}",
                            f"--duration_s={args.seconds}", "--warmup_s=1", "--progress=false",
                            f"--json={out}"], check=True, capture_output=True)
            z = json.load(open(out))["runs"][0]
            r = subprocess.run([pa, "-m", "zlpr_predict", "-u", target, "-i", "grpc", "-b", "1",
                                "--shape", "scores:1000", "--shape", "label_thresholds:1000",
                                "--shape", "mask:1000", "--input-data", data,
                                "--concurrency-range", str(c), "--measurement-interval",
                                str(args.seconds * 1000), "--stability-percentage", "100"],
                               capture_output=True, text=True, check=True).stdout
            thr = float(re.search(r"Throughput: ([\d.]+) infer/sec", r).group(1))
            p50 = float(re.search(r"p50 latency: (\d+) usec", r).group(1))
            queue = re.search(r"queue (\d+) usec", r).group(1)
            compute = re.search(r"compute infer (\d+) usec", r).group(1)
            print(f"| zlpr.v1 (zlpr-bench) | {c} | {z['rps']:.0f} | {z['p50_s'] * 1e6:.0f} µs | | |")
            print(f"| Open Inference Protocol (perf_analyzer) | {c} | {thr:.0f} "
                  f"({thr / z['rps']:.2f}x) | {p50:.0f} µs ({p50 / (z['p50_s'] * 1e6):.2f}x) | "
                  f"{queue} µs | {compute} µs |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
