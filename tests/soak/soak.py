#!/usr/bin/env python3
"""Soak test: mixed unary and stream load on a real zlpr-server, with a share of bad and
hostile requests, for a bounded time. Checks that every call got an answer with an expected
code (no call hangs, none ends with an odd code), that valid answers have the right shape, that
protobuf's log lines stay rate-limited, and that resident memory and open file descriptors
return to their baseline once the load is gone.

  tests/soak/soak.py --server build/server/zlpr-server --duration_s 300   # by hand
  make test runs it for 20 s (ctest: soak.Short)
"""
import argparse
import random
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np

import harness

ODD = "odd"


def unary_kinds(pb, stubs, raw_calls, rng):
    """(name, call, allowed codes) for one random unary request."""
    rows, cols = rng.randint(1, 48), rng.choice([3, 17, 100, 1000, 2049])
    scores = rng_np(rng).standard_normal((rows, cols)).astype(np.float32)
    labels = (rng_np(rng).random((rows, cols)) < 0.1).astype(np.float32)
    ok = {grpc.StatusCode.OK}
    invalid = {grpc.StatusCode.INVALID_ARGUMENT}
    kind = rng.choices(["loss", "predict", "bad_value", "unparseable", "bad_utf8", "huge_shape",
                        "hostile_topk", "tiny_deadline"],
                       weights=[30, 30, 8, 5, 5, 5, 7, 10])[0]
    if kind == "loss":
        req = pb.LossRequest(request_id="l", scores=harness.tensor(pb, scores),
                             dense_labels=harness.tensor(pb, labels), want_grad=rng.random() < .5)
        return kind, lambda: check_loss(stubs.ComputeLoss(req, timeout=30), req, rows, cols), ok
    if kind == "predict":
        req = pb.PredictRequest(request_id="p", scores=harness.tensor(pb, scores),
                                top_k=rng.choice([0, 1, 5]), want_probs=rng.random() < .3)
        return kind, lambda: check_predict(stubs.Predict(req, timeout=30), rows), ok
    if kind == "bad_value":
        scores[rng.randrange(rows), rng.randrange(cols)] = np.nan
        req = pb.LossRequest(scores=harness.tensor(pb, scores),
                             dense_labels=harness.tensor(pb, labels))
        return kind, lambda: stubs.ComputeLoss(req, timeout=30), invalid
    if kind == "unparseable":
        method = rng.choice(["ComputeLoss", "Predict"])
        return kind, lambda: raw_calls[method](b"\x0a\x7f\x01\x02", timeout=30), invalid
    if kind == "bad_utf8":
        method = rng.choice(["ComputeLoss", "Predict"])
        return kind, lambda: raw_calls[method](b"\x0a\x02\xff\xfe", timeout=30), invalid
    if kind == "huge_shape":
        t = pb.Tensor(dtype=pb.FLOAT32, shape=[2**31 - 1, 2**31 - 1], data=b"\0" * 16)
        req = pb.PredictRequest(scores=t)
        return kind, lambda: stubs.Predict(req, timeout=30), invalid
    if kind == "hostile_topk":
        req = pb.PredictRequest(scores=harness.tensor(pb, scores), top_k=2**32 - 1,
                                min_labels=2**32 - 1)
        return kind, lambda: check_predict(stubs.Predict(req, timeout=30), rows), ok
    # A deadline that may pass while queued or computing: either answer is right.
    req = pb.LossRequest(scores=harness.tensor(pb, scores), dense_labels=harness.tensor(pb, labels),
                         want_grad=True)
    return kind, lambda: stubs.ComputeLoss(req, timeout=0.002), ok | {
        grpc.StatusCode.DEADLINE_EXCEEDED}


_np_rngs = threading.local()


def rng_np(rng):
    if not hasattr(_np_rngs, "g"):
        _np_rngs.g = np.random.default_rng(rng.randrange(2**32))
    return _np_rngs.g


def check_loss(resp, req, rows, cols):
    assert len(resp.loss) == rows, "loss rows"
    if req.want_grad:
        assert list(resp.grad.shape) == [rows, cols], "grad shape"
    return resp


def check_predict(resp, rows):
    assert len(resp.rows) == rows, "predict rows"
    return resp


def unary_worker(pb, channel, seed, stop, outcomes, lock):
    rng = random.Random(seed)
    stubs = harness_stub(pb, channel)
    raw_calls = {m: channel.unary_unary(f"/zlpr.v1.ZlprService/{m}") for m in
                 ("ComputeLoss", "Predict")}
    while not stop.is_set():
        kind, call, allowed = unary_kinds(pb, stubs, raw_calls, rng)
        code = run(call)
        with lock:
            outcomes[(kind, "ok" if code in allowed else ODD, str(code))] += 1


def stream_worker(pb, channel, seed, stop, outcomes, lock):
    rng = random.Random(seed)
    stubs = harness_stub(pb, channel)
    while not stop.is_set():
        n = rng.randint(1, 40)
        bad = {i for i in range(n) if rng.random() < 0.15}
        msgs = []
        for i in range(n):
            scores = rng_np(rng).standard_normal((rng.randint(1, 8), 64)).astype(np.float32)
            if i in bad:
                scores[0, 0] = np.inf
            msgs.append(pb.PredictRequest(request_id=str(i), scores=harness.tensor(pb, scores)))

        def call():
            got = list(stubs.StreamPredict(iter(msgs), timeout=30))
            assert [r.request_id for r in got] == [str(i) for i in range(n)], "stream order"
            for i, r in enumerate(got):
                assert (r.error.code == 3) == (i in bad), f"stream message {i}"
        code = run(call)
        with lock:
            outcomes[("stream", "ok" if code == grpc.StatusCode.OK else ODD, str(code))] += 1


def harness_stub(pb, channel):
    return sys.modules["zlpr.v1.zlpr_pb2_grpc"].ZlprServiceStub(channel)


def run(call):
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    except AssertionError as e:
        return f"wrong answer: {e}"
    except Exception as e:  # noqa: BLE001 - anything else is an unanswered call
        return f"no answer: {type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=f"{harness.ROOT}/build/server/zlpr-server")
    ap.add_argument("--duration_s", type=float, default=300)
    ap.add_argument("--unary", type=int, default=6, help="unary callers")
    ap.add_argument("--streams", type=int, default=2, help="stream callers")
    ap.add_argument("--rss_slack_mib", type=float, default=64,
                    help="how far above its baseline RSS may stay after the load")
    args = ap.parse_args()
    pb, _ = harness.stubs()
    server = harness.Server(args.server, "--threads=2")
    failures = []
    try:
        # Warm-up, then the baseline: threads, pools and the first allocations exist.
        warm = grpc.insecure_channel(server.target, options=harness.channel_options())
        stop, lock, outcomes = threading.Event(), threading.Lock(), Counter()
        t = threading.Thread(target=unary_worker, args=(pb, warm, 1, stop, Counter(), lock))
        t.start()
        time.sleep(2)
        stop.set()
        t.join()
        warm.close()
        time.sleep(1.5)
        base_rss, base_fds = server.rss_mib(), server.open_fds()

        stop = threading.Event()
        channels = [grpc.insecure_channel(server.target, options=harness.channel_options())
                    for _ in range(args.unary + args.streams)]
        workers = [threading.Thread(target=unary_worker, args=(pb, channels[i], 100 + i, stop,
                                                                 outcomes, lock))
                   for i in range(args.unary)]
        workers += [threading.Thread(target=stream_worker, args=(pb, channels[args.unary + i],
                                                                  200 + i, stop, outcomes, lock))
                    for i in range(args.streams)]
        peak = base_rss
        start = time.time()
        for w in workers:
            w.start()
        while time.time() - start < args.duration_s:
            time.sleep(0.5)
            peak = max(peak, server.rss_mib())
        stop.set()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                failures.append("a caller is stuck: a call got no answer within its deadline")
        for c in channels:
            c.close()

        # Back to the baseline (the reclaimer runs every second).
        deadline = time.time() + 15
        while time.time() < deadline:
            rss, fds = server.rss_mib(), server.open_fds()
            if rss <= base_rss + args.rss_slack_mib and fds <= base_fds:
                break
            time.sleep(0.5)
        rss, fds = server.rss_mib(), server.open_fds()
        # Of the calls whose deadline passed, how many the server dropped unseen (never
        # computed) and how many it computed anyway, the expiry not yet seen at the cut.
        metrics = server.metrics()

        def sample(name):
            return sum(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith(name + " "))
        dropped = sample('zlpr_rejected_requests_total{reason="deadline"}')
        late = sample("zlpr_late_results_total")
        expired = sum(n for (kind, _, code), n in outcomes.items()
                      if code == str(grpc.StatusCode.DEADLINE_EXCEEDED))
        calls = sum(outcomes.values())
        odd = {k: v for k, v in outcomes.items() if k[1] == ODD}
        proto_lines = sum("libprotobuf" in line for line in server.stderr_lines)
        print(f"soak: {args.duration_s:.0f} s, {args.unary} unary + {args.streams} stream callers, "
              f"{calls} calls")
        for (kind, _, code), n in sorted(outcomes.items()):
            print(f"  {kind:14s} {code:40s} {n}")
        print(f"  RSS baseline {base_rss:.1f} MiB, peak {peak:.1f} MiB, after {rss:.1f} MiB; "
              f"open fds baseline {base_fds}, after {fds}; protobuf log lines {proto_lines}")
        print(f"  deadlines passed: {expired} calls (client side); the server dropped "
              f"{dropped:.0f} before computing them and computed {late:.0f} whose deadline "
              f"passed during their batch (the rest expired before reaching it)")
        if calls == 0:
            failures.append("no calls were made")
        if odd:
            failures.append(f"calls with odd outcomes: {odd}")
        if rss > base_rss + args.rss_slack_mib:
            failures.append(f"RSS {rss:.1f} MiB stayed over baseline {base_rss:.1f} + "
                            f"{args.rss_slack_mib} MiB")
        if fds > base_fds:
            failures.append(f"open fds {fds} > baseline {base_fds}")
        # Five lines per 10 s window at most (server.cc), plus the window in progress.
        if proto_lines > 5 * (args.duration_s / 10 + 3):
            failures.append(f"{proto_lines} protobuf log lines: not rate-limited")
    finally:
        rc = server.stop()
        if rc != 0:
            failures.append(f"zlpr-server exited {rc} on SIGTERM")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
