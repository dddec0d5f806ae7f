#!/usr/bin/env python3
"""How long a small HTTP request waits while another client sends large JSON bodies, on two
zlpr-server binaries with one HTTP I/O thread (--http_threads=1), taking turns for --rounds
rounds. One client posts a --rows x --cols JSON Predict (about 6 bytes a number) in a loop; a
second asks GET /v2/health/ready every 20 ms on its own connection and records how long each
answer took. Before the codec pool, the I/O thread parsed (and formatted) every JSON text
itself, and the second client waited for it.

  python3 bench/http_large_json.py --before OLD/zlpr-server --after build/server/zlpr-server
"""
import argparse
import http.client
import json
import threading
import time

import numpy as np

from http_server import http_server


def run(binary, body, seconds):
    with http_server(binary, "--threads=1", "--http_threads=1") as port:
        stop = time.monotonic() + seconds
        big_done = []

        def big():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while time.monotonic() < stop:
                conn.request("POST", "/v2/models/zlpr_predict/infer", body,
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status
                big_done.append(1)

        t = threading.Thread(target=big)
        t.start()
        small = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        waits = []
        time.sleep(0.2)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            small.request("GET", "/v2/health/ready")
            r = small.getresponse()
            r.read()
            waits.append(time.perf_counter() - t0)
            time.sleep(0.02)
        t.join()
        w = np.array(waits) * 1e3
        return np.percentile(w, 50), np.percentile(w, 99), w.max(), len(big_done) / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--cols", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    scores = np.random.default_rng(0).standard_normal(args.rows * args.cols).round(4)
    body = json.dumps({"inputs": [{"name": "scores", "datatype": "FP32",
                                   "shape": [args.rows, args.cols], "data": scores.tolist()}],
                       "outputs": [{"name": "label_count"}]})
    print(f"JSON body: {len(body) / 1e6:.1f} MB; small request: GET /v2/health/ready")
    print("| binary | round | health p50 ms | p99 ms | max ms | large requests/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for rnd in range(args.rounds):
        for name, binary in (("before", args.before), ("after", args.after)):
            p50, p99, mx, rate = run(binary, body, args.seconds)
            print(f"| {name} | {rnd + 1} | {p50:.2f} | {p99:.2f} | {mx:.2f} | {rate:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
