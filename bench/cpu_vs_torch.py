#!/usr/bin/env python3
"""The CPU kernels beside plain PyTorch (eager, CPU) on the same shapes and thread count.

Runs build/bench/zlpr_kernels_bench (Google Benchmark, JSON) and the PyTorch baselines in one
run, both pinned to the same core, and prints one Markdown table of ns per element.

    /usr/bin/python3 bench/cpu_vs_torch.py --bench build/bench/zlpr_kernels_bench [--core 1]
        [--before OTHER_BUILD/bench/zlpr_kernels_bench --rounds 3]

Debian's python3-torch (CPU build) is the baseline: `scripts/install-deps.sh --bench`. With
--before, an earlier build's benchmark runs in the same invocation, alternating with this one
for --rounds rounds (medians), and the table gains a before/after column.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch

SHAPES = [(32, 1000), (2048, 1024), (16, 131072)]


def zlpr_hard(y_pred, y_true):
    """The author's published hard-label implementation (large-constant masking)."""
    y_pred = (1 - 2 * y_true) * y_pred
    y_pred_neg = y_pred - y_true * 1e12
    y_pred_pos = y_pred - (1 - y_true) * 1e12
    zeros = torch.zeros_like(y_pred[..., :1])
    y_pred_neg = torch.cat([y_pred_neg, zeros], dim=-1)
    y_pred_pos = torch.cat([y_pred_pos, zeros], dim=-1)
    return torch.logsumexp(y_pred_neg, dim=-1) + torch.logsumexp(y_pred_pos, dim=-1)


def zlpr_soft(s, t):
    """Soft labels, the stable form of docs/MATH.md: P = LSE(0, -s + log t), N = LSE(0, s + log1p(-t))."""
    zeros = torch.zeros_like(s[..., :1])
    p = torch.logsumexp(torch.cat([zeros, -s + torch.log(t)], dim=-1), dim=-1)
    n = torch.logsumexp(torch.cat([zeros, s + torch.log1p(-t)], dim=-1), dim=-1)
    return p + n


def time_ns_per_elem(fn, elems, min_time=0.5, warmup=0.3):
    start = time.perf_counter()
    while time.perf_counter() - start < warmup:
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        n += 1
    return (time.perf_counter() - start) / n / elems * 1e9


def torch_rows(rows, cols):
    g = torch.Generator().manual_seed(7)
    s = torch.rand(rows, cols, generator=g) * 6 - 3
    hard = (torch.rand(rows, cols, generator=g) < 0.1).float()
    soft = hard * (torch.rand(rows, cols, generator=g) * 0.98 + 0.01)
    elems = rows * cols

    def loss_grad(fn, t):
        x = s.clone().requires_grad_(True)
        fn(x, t).sum().backward()
        return x.grad

    return {
        "hard": time_ns_per_elem(lambda: zlpr_hard(s, hard), elems),
        "hard_grad": time_ns_per_elem(lambda: loss_grad(zlpr_hard, hard), elems),
        "soft": time_ns_per_elem(lambda: zlpr_soft(s, soft), elems),
        "soft_grad": time_ns_per_elem(lambda: loss_grad(zlpr_soft, soft), elems),
        "probs": time_ns_per_elem(lambda: torch.sigmoid(2 * s), elems),
        "threshold": time_ns_per_elem(lambda: torch.sigmoid(2 * s) > 0.5, elems),
        "topk5": time_ns_per_elem(lambda: torch.topk(s, 5, dim=-1), elems),
    }


def ours(bench, core):
    out = subprocess.run(
        ["taskset", "-c", str(core), bench, "--benchmark_format=json", "--benchmark_min_time=0.5",
         "--benchmark_min_warmup_time=0.3"],
        check=True, capture_output=True, text=True, env={**os.environ, "ZLPR_BENCH_THREADS": "1"},
    ).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        # e.g. BM_Loss/hard_grad/2048/1024 or BM_LabelTop5/32/1000
        parts = b["name"].split("/")
        key = parts[1] if parts[0] == "BM_Loss" else {"BM_Probabilities": "probs", "BM_LabelTop5": "label_top5"}[parts[0]]
        rows, cols = int(parts[-2]), int(parts[-1])
        res[(key, rows, cols)] = 1e9 / b["items_per_second"]
    return res


def medians(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/bench/zlpr_kernels_bench")
    ap.add_argument("--before", default="", help="an earlier build's zlpr_kernels_bench")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each, medians")
    ap.add_argument("--core", type=int, default=1)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    now_runs, before_runs = [], []
    for _ in range(max(1, args.rounds)):
        if args.before:
            before_runs.append(ours(args.before, args.core))
        now_runs.append(ours(args.bench, args.core))
    mine = medians(now_runs)
    before = medians(before_runs) if before_runs else None
    pairs = [
        ("loss, hard labels", "hard", "hard", 6.0),
        ("loss+grad, hard labels", "hard_grad", "hard_grad", 5.0),
        ("loss, soft labels", "soft", "soft", 6.0),
        ("loss+grad, soft labels", "soft_grad", "soft_grad", 5.0),
        ("probabilities σ(2s)", "probs", "probs", None),
        ("labeler θ=0.5 + top-5 vs torch.topk alone", "label_top5", "topk5", 2.0),
    ]
    print(f"CPU: {platform.processor() or platform.machine()}, 1 thread pinned to core {args.core}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    rounds = f" (medians of {args.rounds} alternating rounds)" if args.rounds > 1 else ""
    if before:
        print(f"before: {args.before}; after: {args.bench}{rounds}")
        print("\n| shape | op | zlpr before ns/elem | zlpr after ns/elem | after/before | PyTorch ns/elem "
              "| speed-up (after) | target |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
    else:
        print("\n| shape | op | zlpr ns/elem | PyTorch ns/elem | speed-up | target |")
        print("|---|---|---:|---:|---:|---:|")
    for rows, cols in SHAPES:
        t = torch_rows(rows, cols)
        for label, ours_key, torch_key, target in pairs:
            a, b = mine[(ours_key, rows, cols)], t[torch_key]
            verdict = "" if target is None else (f"≥{target:g}× " + ("met" if b / a >= target else "MISSED"))
            if before:
                p = before[(ours_key, rows, cols)]
                print(f"| {rows}×{cols} | {label} | {p:.2f} | {a:.2f} | {a / p:.2f} | {b:.2f} | {b / a:.1f}× | {verdict} |")
            else:
                print(f"| {rows}×{cols} | {label} | {a:.2f} | {b:.2f} | {b / a:.1f}× | {verdict} |")


if __name__ == "__main__":
    main()
