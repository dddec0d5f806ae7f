#!/usr/bin/env python3
"""p50 of a 1 x 1000 Predict over the Open Inference Protocol's HTTP binding (JSON, one
keep-alive connection, concurrency 1) on two zlpr-server binaries, taking turns for --rounds
rounds: a change to the HTTP path measured beside its baseline in one run.

  build-pyvenv/bin/python bench/http_before_after.py --before OLD/zlpr-server --after build/server/zlpr-server
"""
import argparse
import http.client
import json
import time

import numpy as np

from http_server import http_server

BODY = json.dumps({"inputs": [{
    "name": "scores", "datatype": "FP32", "shape": [1, 1000],
    "data": np.random.default_rng(0).standard_normal(1000).round(4).tolist()}]})


def p50_us(binary, seconds):
    with http_server(binary) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def call():
            conn.request("POST", "/v2/models/zlpr_predict/infer", BODY,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
        for _ in range(200):
            call()
        lat, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            call()
            lat.append(time.perf_counter() - t0)
        return float(np.median(lat)) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    runs = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name in runs:
            runs[name].append(p50_us(getattr(args, name), args.seconds))
    for name, xs in runs.items():
        print(f"{name}: p50 {np.median(xs):.0f} µs (rounds: {', '.join(f'{x:.0f}' for x in xs)})")
    print(f"after / before: {np.median(runs['after']) / np.median(runs['before']):.3f}")


if __name__ == "__main__":
    main()
