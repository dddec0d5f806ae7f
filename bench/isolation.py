#!/usr/bin/env python3
"""Online predictions beside a trainers' flood, on one server (docs/ARCHITECTURE.md, "Request
classes"): Predict 1 x 1000 sent open-loop at --rate requests/s (Poisson arrivals), alone and
beside a flood of --flood closed-loop callers of a 256 x 16384 loss+gradient (zlpr.v1); the
Predicts over zlpr.v1 (zlpr-bench) and over the Open Inference Protocol's HTTP binding (JSON, this
script's own open-loop client, latency from each request's scheduled time). Prints the Predicts'
p50 / p99 / p99.9 as their client saw them, the server's own (arrival to answer, from its
zlpr_request_duration_seconds histogram: the bucket bounds that hold them), and the flood's
calls/s, alone and together. With --pin (the default) the
server runs on CPU 0 and every load generator on CPU 1.

With --flood-shm PYTHON the trainers are on the server's host and send their arrays through
shared memory (zlpr.Client(shared_memory=True) with client.shared_tensors, run by PYTHON, which
has the zlpr package): the flood's calls carry no tensor bytes through a socket.

With --flood-server idle (or normal) the flood goes to a second server process on the same core,
started at SCHED_IDLE (or the default priority): a bound on what any thread priority inside the
server could do, since none of that process's threads (gRPC's included) competes at the
Predicts' priority.

  python3 bench/isolation.py --build build [--server-flag=--bulk_chunk_us=0 ...] [--flood-idle]
  python3 bench/isolation.py --build build --flood-shm build-pyvenv/bin/python
  python3 bench/isolation.py --build build --flood-server idle --flood-idle --skip-http
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

# The flood through shared memory: --flood callers, one set of shared tensors each (filled once,
# as a trainer's arrays would be), closed loop; prints {"rps": ..., "errors": {...}}.
SHM_FLOOD = r'''
import json, sys, threading, time
import numpy as np
import zlpr
target, callers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client = zlpr.Client(target, shared_memory=True)
rng = np.random.default_rng(0)
scores = rng.standard_normal((256, 16384)).astype(np.float32)
labels = rng.random((256, 16384)).astype(np.float32)
sets = [client.shared_tensors(256, 16384) for _ in range(callers)]
for ts in sets:
    ts.scores[:] = scores
    ts.labels[:] = labels
start = time.perf_counter()
warm, stop = start + 1.0, start + seconds
done, errors = [0] * callers, {}
def caller(i):
    while time.perf_counter() < stop:
        try:
            client.compute_loss(sets[i].scores, sets[i].labels, want_grad=True)
            if time.perf_counter() > warm:
                done[i] += 1
        except zlpr.ZlprError as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"rps": sum(done) / (seconds - 1.0), "errors": errors}))
'''

_ROW = random.Random(0)
PREDICT_BODY = json.dumps({"inputs": [{
    "name": "scores", "datatype": "FP32", "shape": [1, 1000],
    "data": [round(_ROW.gauss(0, 1), 4) for _ in range(1000)]}]})


def quantiles(lat):
    lat = sorted(lat)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3
    return q(0.5), q(0.99), q(0.999)


def http_open_loop(port, rate, seconds, pin):
    """Predicts over HTTP at `rate` per second (Poisson), each on a kept-alive connection of a
    pool; latency counted from the scheduled send time, so a stall is not hidden."""
    if pin:
        os.sched_setaffinity(0, {1})
    local = threading.local()
    lat, errors = [], [0]

    def call(scheduled):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v2/models/zlpr_predict/infer", PREDICT_BODY,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors[0] += 1
                return
        except OSError:
            local.conn = None
            errors[0] += 1
            return
        lat.append(time.perf_counter() - scheduled)

    rng = random.Random(1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        t = time.perf_counter() + 0.5
        end = t + seconds
        warm_end = t + 1.0
        while t < end:
            t += rng.expovariate(rate)
            delay = t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if t >= warm_end:
                pool.submit(call, t)
    return lat, errors[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--server", default=None, help="zlpr-server binary (default: BUILD's)")
    ap.add_argument("--server-flag", action="append", default=[])
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--flood", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--flood-nice", type=int, default=0,
                    help="the flood's load generator at this nice value, so that it does not "
                         "take the CPU from the Predicts' client it shares a core with")
    ap.add_argument("--flood-idle", action="store_true",
                    help="the flood's load generator at SCHED_IDLE (chrt --idle), which the "
                         "Predicts' client preempts at once: as if the trainers ran elsewhere "
                         "(a nice value still lets it finish its time slice first)")
    ap.add_argument("--flood-shm", metavar="PYTHON", default=None,
                    help="the flood through shared memory, by this Python (with the zlpr "
                         "package); the server gets --allow_client_shm")
    ap.add_argument("--flood-server", choices=["same", "normal", "idle"], default="same",
                    help="the server the flood goes to: the Predicts' own (same), or a second "
                         "one on the same core at the default priority or at SCHED_IDLE")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the `finally` below stops the servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.flood_shm:
        args.server_flag.append("--allow_client_shm")
    on_server, on_client = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if args.pin else ([], [])
    server_bin = args.server or os.path.join(args.build, "server/zlpr-server")
    bench = os.path.join(args.build, "bench/zlpr-bench")
    server = subprocess.Popen(on_server + [server_bin, "--grpc_address=127.0.0.1:0",
                                           "--metrics_address=127.0.0.1:0", "--backend=cpu",
                                           "--http_address=127.0.0.1:0", *args.server_flag],
                              stdout=subprocess.PIPE, text=True)
    servers, generators = [server], []
    line = server.stdout.readline()
    target = flood_target = "127.0.0.1:" + re.search(r"gRPC on port (\d+)", line).group(1)
    metrics = "http://127.0.0.1:%s/metrics" % re.search(r"metrics on port (\d+)", line).group(1)
    http_port = int(re.search(r"on port (\d+)", server.stdout.readline()).group(1))
    if args.flood_server != "same":
        second = subprocess.Popen(
            on_server + (["chrt", "--idle", "0"] if args.flood_server == "idle" else []) +
            [server_bin, "--grpc_address=127.0.0.1:0", "--metrics_address=", "--backend=cpu",
             *args.server_flag], stdout=subprocess.PIPE, text=True)
        servers.append(second)
        port = re.search(r"gRPC on port (\d+)", second.stdout.readline())
        if port is None:
            for proc in servers:
                proc.kill()
            raise RuntimeError("the flood's server did not start (its stderr is above)")
        flood_target = "127.0.0.1:" + port.group(1)

    def predict_buckets():
        """The server's own Predict latency histogram (arrival to answer), cumulative: zlpr.v1's
        Predict and the HTTP binding's ModelInfer (a shared-memory flood's calls are ModelInfer
        over gRPC)."""
        text = urllib.request.urlopen(metrics).read().decode()
        out = {}
        for m in re.finditer(r'^zlpr_request_duration_seconds_bucket\{method="(?:Predict",'
                             r'protocol="zlpr_v1|ModelInfer",protocol="oip_http)",'
                             r'le="([^"]+)"\} (\S+)$', text, re.M):
            out[float(m.group(1))] = out.get(float(m.group(1)), 0) + float(m.group(2))
        return out

    def server_side(before, after):
        """Upper bounds of the histogram buckets holding the p50 and p99 of the requests
        answered between two readings."""
        total = after[float("inf")] - before.get(float("inf"), 0)
        def bound(q):
            for le in sorted(after):
                if after[le] - before.get(le, 0) >= q * total:
                    return le * 1e3
        return f"≤ {bound(0.5):g}", f"≤ {bound(0.99):g}"
    tmp = tempfile.mkdtemp()

    def on_client_at(nice, idle):
        """A load generator's command prefix: its CPU, its nice value, SCHED_IDLE or not."""
        return on_client + ["nice", "-n", str(nice)] + (["chrt", "--idle", "0"] if idle else [])

    def zlpr_bench(name, *flags, nice=0, idle=False, to=target):
        out = os.path.join(tmp, name + ".json")
        proc = subprocess.Popen(on_client_at(nice, idle) + [
            bench, f"--target={to}", f"--duration_s={args.seconds}", "--warmup_s=1",
            "--progress=false", f"--json={out}", *flags], stdout=subprocess.DEVNULL)
        generators.append(proc)
        return lambda: (proc.wait(), json.load(open(out))["runs"][0])[1]

    def predicts():
        return zlpr_bench("predict", "--rpc=predict", "--rows=1", "--cols=1000",
                          f"--rate={args.rate}")

    def flood():
        if args.flood_shm:
            proc = subprocess.Popen(on_client_at(args.flood_nice, args.flood_idle) + [
                args.flood_shm, "-c", SHM_FLOOD, flood_target, str(args.flood), str(args.seconds)],
                stdout=subprocess.PIPE, text=True)
            generators.append(proc)

            def wait():
                out = proc.communicate()[0].strip().splitlines()
                if proc.returncode != 0 or not out:
                    raise RuntimeError(f"the shared-memory flood ({args.flood_shm}) failed: "
                                       f"exit status {proc.returncode}, its stderr is above")
                return json.loads(out[-1])
            return wait
        return zlpr_bench("flood", "--rpc=loss_grad", "--rows=256", "--cols=16384",
                          f"--concurrency={args.flood}", nice=args.flood_nice,
                          idle=args.flood_idle, to=flood_target)

    def errors(run):
        return sum(run.get("errors", {}).values())

    rows = []

    def http_row(label):
        """Predicts over HTTP for --seconds: a row of the client's and the server's figures."""
        b0 = predict_buckets()
        lat, err = http_open_loop(http_port, args.rate, args.seconds, args.pin)
        p50, p99, p999 = quantiles(lat)
        s50, s99 = server_side(b0, predict_buckets())
        rows.append(f"| {label} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {s50} | {s99} | {err} |")

    def predict_row(label, run, server):
        rows.append(f"| {label} | {run['p50_s'] * 1e3:.2f} | {run['p99_s'] * 1e3:.2f} | "
                    f"{run['p999_s'] * 1e3:.2f} | {server[0]} | {server[1]} | {errors(run)} |")

    try:
        b0 = predict_buckets()
        alone = predicts()()
        predict_row("zlpr.v1 Predict alone", alone, server_side(b0, predict_buckets()))
        flood_alone = flood()()
        b0 = predict_buckets()
        wait_flood, wait_predicts = flood(), predicts()
        beside = wait_predicts()
        predict_row("zlpr.v1 Predict beside the flood", beside, server_side(b0, predict_buckets()))
        flood_beside = wait_flood()
        if not args.skip_http:
            http_row("OIP HTTP Predict alone")
            wait_flood = flood()
            http_row("OIP HTTP Predict beside the flood")
            flood_beside_http = wait_flood()
        print(f"\nPredict 1 x 1000 at {args.rate:.0f}/s open loop; flood: {args.flood} callers "
              f"of loss+gradient 256 x 16384"
              f"{' through shared memory' if args.flood_shm else ''}"
              f"{' (generator at SCHED_IDLE)' if args.flood_idle else ''}"
              f"{'' if args.flood_server == 'same' else ' to a second server (' + args.flood_server + ')'}; "
              f"server flags: {' '.join(args.server_flag) or '-'}")
        print("| Predict | p50 ms | p99 ms | p99.9 ms | server p50 ms | server p99 ms | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
        print("\n| flood | calls/s | errors |")
        print("|---|---:|---:|")
        print(f"| alone | {flood_alone['rps']:.1f} | {errors(flood_alone)} |")
        print(f"| beside zlpr.v1 Predicts | {flood_beside['rps']:.1f} "
              f"({flood_beside['rps'] / flood_alone['rps']:.2f}x) | {errors(flood_beside)} |")
        if not args.skip_http:
            print(f"| beside OIP HTTP Predicts | {flood_beside_http['rps']:.1f} "
                  f"({flood_beside_http['rps'] / flood_alone['rps']:.2f}x) | "
                  f"{errors(flood_beside_http)} |")
    finally:
        for proc in generators:
            if proc.poll() is None:
                proc.kill()
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        for proc in servers:
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
