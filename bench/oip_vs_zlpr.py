#!/usr/bin/env python3
"""The Open Inference Protocol's cost against zlpr.v1's, on one server in one run: perf_analyzer
(Triton's load generator, ModelInfer on zlpr_predict, over gRPC and over HTTP) beside zlpr-bench
(Predict, with and without the dense probabilities: perf_analyzer asks for every output, probs
included; and ModelInfer from the same client, --rpc=oip_predict, the like-for-like comparison
of the two protocols' server paths), the same 1 x 1000 payload (perf_analyzer sends only
`scores`: it leaves out optional inputs its data file does not name), at concurrency 1 and 64;
throughput and p50, and perf_analyzer's server-side queue and compute figures (from
ModelStatistics), and the server's CPU time per request (its /proc CPU time over its
zlpr_requests_total, across the whole load run): what the server path costs, whichever client
drives it. The configurations take turns, --reps rounds of each; the table gives each one's
median, and the ratios are of medians.

  ZLPR_PERF_ANALYZER=build-oipvenv-pa/bin/perf_analyzer \\
  LD_LIBRARY_PATH=$(echo build-oipvenv-pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \\
  python3 bench/oip_vs_zlpr.py --build build

With --same-client only the like-for-like pair runs (zlpr-bench's Predict against its
ModelInfer; no perf_analyzer needed), for as many --reps as the machine's noise asks for:

  python3 bench/oip_vs_zlpr.py --build build --pin --same-client --reps 7
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

from perf_analyzer_common import cpu_seconds, predict_input


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pin", action="store_true",
                    help="the server on CPU 0 and the load generators on CPU 1 (taskset), so "
                         "that a client's own cost does not take the server's core")
    ap.add_argument("--same-client", action="store_true",
                    help="only zlpr.v1 and OIP gRPC from zlpr-bench, the like-for-like pair")
    args = ap.parse_args()
    pa = None if args.same_client else os.environ["ZLPR_PERF_ANALYZER"]
    on_server, on_client = ([], [])
    if args.pin:
        on_server, on_client = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    server = subprocess.Popen(on_server + [os.path.join(args.build, "server/zlpr-server"),
                               "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                               "--http_address=127.0.0.1:0"],
                              stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    target = "127.0.0.1:" + re.search(r"gRPC on port (\d+)", line).group(1)
    metrics = "http://127.0.0.1:%s/metrics" % re.search(r"metrics on port (\d+)", line).group(1)
    http = "127.0.0.1:" + re.search(r"on port (\d+)", server.stdout.readline()).group(1)
    tmp = tempfile.mkdtemp()
    data = predict_input(tmp)
    print("| Predict 1 x 1000 | concurrency | req/s | p50 | server CPU / request | server queue "
          "| server compute |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def served():
        """The server's CPU seconds so far, and the requests it has answered."""
        cpu = cpu_seconds(server.pid)
        text = urllib.request.urlopen(metrics).read().decode()
        n = sum(float(m.group(1)) for m in
                re.finditer(r"^zlpr_requests_total\{[^}]*\} (\S+)$", text, re.M))
        return cpu, n

    def cpu_per_request(run):
        """Runs `run`, returns its figures with the server's CPU µs per request first."""
        cpu0, n0 = served()
        figures = run()
        cpu1, n1 = served()
        return ((cpu1 - cpu0) / max(n1 - n0, 1) * 1e6,) + tuple(figures)

    def bench(c, probs, rpc="predict"):
        out = os.path.join(tmp, f"bench{c}{probs}{rpc}.json")
        subprocess.run(on_client + [
            os.path.join(args.build, "bench/zlpr-bench"), f"--target={target}", f"--rpc={rpc}",
            "--rows=1", "--cols=1000", f"--concurrency={c}", f"--duration_s={args.seconds}",
            "--warmup_s=1", "--progress=false", f"--want_probs={str(probs).lower()}",
            f"--json={out}"], check=True, capture_output=True)
        z = json.load(open(out))["runs"][0]
        return z["rps"], z["p50_s"] * 1e6

    def perf_analyzer(c, protocol):
        r = subprocess.run(on_client + [
            pa, "-m", "zlpr_predict", "-u", target if protocol == "grpc" else http,
            "-i", protocol, "-b", "1", "--shape", "scores:1000", "--input-data", data,
            "--concurrency-range", str(c), "--measurement-interval", str(args.seconds * 1000),
            "--stability-percentage", "100"], capture_output=True, text=True, check=True).stdout
        return (float(re.search(r"Throughput: ([\d.]+) infer/sec", r).group(1)),
                float(re.search(r"p50 latency: (\d+) usec", r).group(1)),
                float(re.search(r"queue (\d+) usec", r).group(1)),
                float(re.search(r"compute infer (\d+) usec", r).group(1)))

    def median(runs):
        return [statistics.median(column) for column in zip(*runs)]

    try:
        for c in (1, 64):
            runs = {k: [] for k in ("z", "o", "zp", "g", "h")}
            for _ in range(args.reps):
                runs["z"].append(cpu_per_request(lambda: bench(c, False)))
                runs["o"].append(cpu_per_request(lambda: bench(c, False, "oip_predict")))
                if args.same_client:
                    continue
                runs["zp"].append(cpu_per_request(lambda: bench(c, True)))
                runs["g"].append(cpu_per_request(lambda: perf_analyzer(c, "grpc")))
                runs["h"].append(cpu_per_request(lambda: perf_analyzer(c, "http")))
            z_cpu, z_rps, z_p50 = median(runs["z"])
            o_cpu, o_rps, o_p50 = median(runs["o"])
            print(f"| zlpr.v1 (zlpr-bench) | {c} | {z_rps:.0f} | {z_p50:.0f} µs | {z_cpu:.1f} µs "
                  f"| | |")
            print(f"| OIP gRPC, same client (zlpr-bench --rpc=oip_predict) | {c} | {o_rps:.0f} "
                  f"({o_rps / z_rps:.2f}x) | {o_p50:.0f} µs ({o_p50 / z_p50:.2f}x) | "
                  f"{o_cpu:.1f} µs ({o_cpu / z_cpu:.2f}x) | | |", flush=True)
            if args.same_client:
                for name in ("z", "o"):  # every round, for the spread
                    print(f"|   rounds of {name} | {c} | " + ", ".join(
                        f"{r[1]:.0f}" for r in runs[name]) + " | | " + ", ".join(
                        f"{r[0]:.1f}" for r in runs[name]) + " | | |")
                continue
            zp_cpu, zp_rps, zp_p50 = median(runs["zp"])
            g_cpu, g_rps, g_p50, g_queue, g_compute = median(runs["g"])
            h_cpu, h_rps, h_p50, h_queue, h_compute = median(runs["h"])
            print(f"| zlpr.v1 with probs (zlpr-bench --want_probs) | {c} | {zp_rps:.0f} | "
                  f"{zp_p50:.0f} µs | {zp_cpu:.1f} µs | | |")
            print(f"| OIP gRPC (perf_analyzer -i grpc) | {c} | {g_rps:.0f} "
                  f"({g_rps / z_rps:.2f}x / {g_rps / zp_rps:.2f}x) | {g_p50:.0f} µs "
                  f"({g_p50 / z_p50:.2f}x / {g_p50 / zp_p50:.2f}x) | {g_cpu:.1f} µs "
                  f"({g_cpu / zp_cpu:.2f}x of zlpr.v1 with probs) | {g_queue:.0f} µs | "
                  f"{g_compute:.0f} µs |")
            print(f"| OIP HTTP (perf_analyzer -i http) | {c} | {h_rps:.0f} "
                  f"({h_rps / g_rps:.2f}x of OIP gRPC) | {h_p50:.0f} µs "
                  f"({h_p50 / g_p50:.2f}x of OIP gRPC, {h_p50 / zp_p50:.2f}x of zlpr.v1 with "
                  f"probs) | {h_cpu:.1f} µs | {h_queue:.0f} µs | {h_compute:.0f} µs |",
                  flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
