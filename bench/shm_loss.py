#!/usr/bin/env python3
"""A trainer's remote loss on the server's host, four ways, one server, one run: 256 x 16384
fp32 loss+gradient (soft labels) through gRPC bytes (zlpr.Client), through system shared memory
(zlpr.Client(shared_memory=True): the client copies the arrays into its regions and the gradient
out), with the arrays already in shared memory (client.shared_tensors: no copy on either side),
and through tritonclient's own shared-memory utilities (their copies in and out); beside the CPU
kernel's own time for that shape (zlpr_kernels_bench, the server's thread count).

For each: a call's median time at concurrency 1, and calls/s at concurrency 2 (two threads on
one client; tritonclient: a client and regions per thread).

  python3 bench/shm_loss.py --build build --python-triton build-oipvenv/bin/python
  [--server OTHER/zlpr-server]   # another server binary against the same clients
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS, COLS = 256, 16384

TRITON = r'''
import json, os, statistics, sys, threading, time
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
target, rows, cols, duration, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(seed)
s = rng.standard_normal((rows, cols)).astype(np.float32)
t = rng.random((rows, cols)).astype(np.float32)
n = s.nbytes

class Caller:
    def __init__(self, tag):
        self.c = grpcclient.InferenceServerClient(target)
        self.names = [f"tc_{os.getpid()}_{tag}_in", f"tc_{os.getpid()}_{tag}_out"]
        self.hin = shm.create_shared_memory_region(self.names[0], "/" + self.names[0], 2 * n)
        self.hout = shm.create_shared_memory_region(self.names[1], "/" + self.names[1], n)
        self.c.register_system_shared_memory(self.names[0], "/" + self.names[0], 2 * n)
        self.c.register_system_shared_memory(self.names[1], "/" + self.names[1], n)
    def call(self):
        shm.set_shared_memory_region(self.hin, [s, t])  # the step's new tensors
        a = grpcclient.InferInput("scores", [rows, cols], "FP32"); a.set_shared_memory(self.names[0], n)
        b = grpcclient.InferInput("labels", [rows, cols], "FP32"); b.set_shared_memory(self.names[0], n, offset=n)
        g = grpcclient.InferRequestedOutput("grad"); g.set_shared_memory(self.names[1], n)
        r = self.c.infer("zlpr_loss", [a, b], outputs=[grpcclient.InferRequestedOutput("loss"), g])
        return r.as_numpy("loss"), shm.get_contents_as_numpy(self.hout, np.float32, [rows, cols]).copy()
    def close(self):
        for name in self.names: self.c.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(self.hin); shm.destroy_shared_memory_region(self.hout)

one = Caller("a")
for _ in range(3): one.call()
lat = []
for _ in range(15):
    t0 = time.perf_counter(); one.call(); lat.append(time.perf_counter() - t0)
loss, grad = one.call()
callers = [one, Caller("b")]
count = [0, 0]; stop = time.perf_counter() + duration
def run(i):
    while time.perf_counter() < stop:
        callers[i].call(); count[i] += 1
threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
t0 = time.perf_counter()
for th in threads: th.start()
for th in threads: th.join()
elapsed = time.perf_counter() - t0
for c in callers: c.close()
print(json.dumps({"median_ms": statistics.median(lat) * 1e3, "calls_per_s": sum(count) / elapsed,
                  "loss_sum": float(np.sum(loss, dtype=np.float64)), "grad_sum": float(np.sum(grad, dtype=np.float64))}))
'''


def usable_cpus():
    return len(os.sched_getaffinity(0))


def kernel_ms(build, threads):
    out = subprocess.run([os.path.join(build, "bench", "zlpr_kernels_bench"),
                          "--benchmark_filter=BM_Loss/trainer_soft_grad/256/16384",
                          "--benchmark_format=json", "--benchmark_repetitions=5",
                          "--benchmark_report_aggregates_only=true"],
                         env={**os.environ, "ZLPR_BENCH_THREADS": str(threads)},
                         capture_output=True, text=True, check=True).stdout
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            assert b["time_unit"] == "ms"
            return b["real_time"]
    raise RuntimeError("no median in the kernel benchmark's output")


def measure(call, duration, concurrency_calls):
    for _ in range(3):
        call(0)
    lat = []
    for _ in range(15):
        t0 = time.perf_counter()
        call(0)
        lat.append(time.perf_counter() - t0)
    count = [0, 0]
    stop = time.perf_counter() + duration

    def run(i):
        while time.perf_counter() < stop:
            concurrency_calls(i)
            count[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"median_ms": statistics.median(lat) * 1e3,
            "calls_per_s": sum(count) / (time.perf_counter() - t0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--python-triton", help="a python with tritonclient (its shared memory row)")
    ap.add_argument("--duration_s", type=float, default=10)
    ap.add_argument("--transport", default="auto", help="zlpr.Client's transport")
    ap.add_argument("--server", help="the server binary (default: the build's)")
    args = ap.parse_args()
    import zlpr

    server = subprocess.Popen([args.server or os.path.join(args.build, "server", "zlpr-server"),
                               "--grpc_address=127.0.0.1:0", "--metrics_address=",
                               "--backend=cpu", "--allow_client_shm"],
                              stdout=subprocess.PIPE, text=True)
    target = "127.0.0.1:" + re.search(r"gRPC on port (\d+)", server.stdout.readline()).group(1)
    rng = np.random.default_rng(0)
    s = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    t = rng.random((ROWS, COLS)).astype(np.float32)
    rows = {}
    try:
        results = {}
        for mode in ("grpc", "shm"):
            client = zlpr.Client(target, shared_memory=mode == "shm", transport=args.transport,
                                 max_parallel_chunks=2)

            def call(_):
                return client.compute_loss(s, t, want_grad=True)
            rows[mode] = measure(call, args.duration_s, call)
            results[mode] = call(0)
            client.close()
        # The arrays where the trainer would compute them: in shared memory (one set per
        # caller), so that a call copies nothing.
        client = zlpr.Client(target, shared_memory=True, transport=args.transport)
        sets = [client.shared_tensors(ROWS, COLS) for _ in range(2)]
        for ts in sets:
            ts.scores[:] = s
            ts.labels[:] = t

        def in_place(i):
            return client.compute_loss(sets[i].scores, sets[i].labels, want_grad=True)
        rows["shm_tensors_in_place"] = measure(in_place, args.duration_s, in_place)
        r = in_place(0)
        results["shm_tensors_in_place"] = zlpr.LossResult(loss=r.loss, loss_sum=r.loss_sum,
                                                          loss_mean=r.loss_mean,
                                                          grad=r.grad.copy())
        client.close()
        same = all(np.array_equal(results["grpc"].loss, results[m].loss) and
                   np.array_equal(results["grpc"].grad, results[m].grad)
                   for m in ("shm", "shm_tensors_in_place"))
        if args.python_triton:
            out = subprocess.run([args.python_triton, "-c", TRITON, target, str(ROWS), str(COLS),
                                  str(args.duration_s), "0"], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            rows["tritonclient_shm"] = json.loads(out.stdout.strip().split("\n")[-1])
        threads = usable_cpus()
        kernel = kernel_ms(args.build, threads)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"256 x 16384 fp32 loss+gradient, CPU server ({threads} threads), one run")
    print(f"{'path':24} {'call p50 ms':>12} {'x kernel':>9} {'calls/s c=2':>12} {'x gRPC':>7}")
    base = rows["grpc"]["calls_per_s"]
    for name, r in rows.items():
        print(f"{name:24} {r['median_ms']:12.2f} {r['median_ms'] / kernel:9.2f} "
              f"{r['calls_per_s']:12.1f} {r['calls_per_s'] / base:7.2f}")
    print(f"{'CPU kernel (median)':24} {kernel:12.2f}")
    print(f"shared memory bit-identical to gRPC bytes: {same}")
    print(json.dumps({"kernel_ms": kernel, "rows": rows, "bit_identical": same}))


if __name__ == "__main__":
    sys.exit(main())
