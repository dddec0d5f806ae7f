#!/usr/bin/env python3
"""Overload of large requests against the zlpr-server binary: C callers (default 128) of
R x C loss+gradient (default 256 x 16384, 32 MiB each) through zlpr-bench for D seconds, with
the server's resident memory sampled every 0.2 s. Checks that every call was answered OK or
RESOURCE_EXHAUSTED, that the peak stays under --max_peak_mib, and that 10 s after the load the
server is at most --max_after_mib above its idle baseline.

  tests/soak/overload.py --build build            # the figures in docs/RELIABILITY.md
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import harness


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=f"{harness.ROOT}/build")
    ap.add_argument("--callers", type=int, default=128)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=16384)
    ap.add_argument("--duration_s", type=float, default=20)
    ap.add_argument("--max_peak_mib", type=float, default=3072)
    ap.add_argument("--max_after_mib", type=float, default=512)
    ap.add_argument("server_flags", nargs="*", help="extra zlpr-server flags (after --)")
    args = ap.parse_args()
    server = harness.Server(os.path.join(args.build, "server/zlpr-server"), *args.server_flags)
    failures = []
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
        out = os.path.join(tempfile.mkdtemp(prefix="zlpr_overload_"), "bench.json")
        bench = subprocess.run(
            [os.path.join(args.build, "bench/zlpr-bench"), f"--target={server.target}",
             "--rpc=loss_grad", f"--rows={args.rows}", f"--cols={args.cols}",
             f"--concurrency={args.callers}", f"--duration_s={args.duration_s}", "--warmup_s=0",
             "--progress=false", f"--json={out}"],
            capture_output=True, text=True, timeout=args.duration_s + 300)
        time.sleep(10)
        stop.set()
        sampler.join()
        after = server.rss_mib()
        peak = max(samples + [after])
        # zlpr-bench exits 1 when any call failed; its JSON says with which codes.
        if not os.path.exists(out):
            failures.append(f"zlpr-bench failed ({bench.returncode}): {bench.stderr[-2000:]}")
            result = {"ok": 0, "errors": {}}
        else:
            with open(out) as f:
                result = json.load(f)["runs"][0]
        errors = result["errors"]
        print(f"overload: {args.callers} callers of {args.rows} x {args.cols} loss+gradient for "
              f"{args.duration_s:.0f} s; server flags: {' '.join(args.server_flags) or 'defaults'}")
        print(f"  answered OK {result['ok']}, errors {errors or 'none'}")
        print(f"  RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB, 10 s after {after:.0f} MiB "
              f"({after - idle:+.0f} MiB)")
        if set(errors) - {"RESOURCE_EXHAUSTED"}:
            failures.append(f"calls ended other than OK or RESOURCE_EXHAUSTED: {errors}")
        if result["ok"] == 0:
            failures.append("no call was answered OK")
        if peak > args.max_peak_mib:
            failures.append(f"peak RSS {peak:.0f} MiB > {args.max_peak_mib:.0f} MiB")
        if after - idle > args.max_after_mib:
            failures.append(f"RSS 10 s after the load is {after - idle:.0f} MiB above idle "
                            f"(> {args.max_after_mib:.0f} MiB)")
    finally:
        if server.stop(timeout=60) != 0:
            failures.append("zlpr-server did not exit 0 on SIGTERM")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
