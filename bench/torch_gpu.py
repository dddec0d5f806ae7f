#!/usr/bin/env python3
"""PyTorch on the GPU, for bench/RESULTS.md beside build/bench/zlpr_cuda_bench on the same card:
the plain ZLPR loss and its autograd gradient, eager and torch.compile, and torch.topk (k=5, 64),
at the shapes of the CUDA benchmark. Prints GB/s with the same byte counts (loss: 8 B/element
read; loss+grad: 8 read + 4 written) and ms per call.

    python3 bench/torch_gpu.py [--iters 50]
"""
import argparse

import torch

SHAPES = [(32, 1000), (8192, 1024), (256, 131072), (160, 65536)]


def zlpr_soft(s, t):
    zeros = torch.zeros_like(s[..., :1])
    p = torch.logsumexp(torch.cat([zeros, -s + torch.log(t)], dim=-1), dim=-1)
    n = torch.logsumexp(torch.cat([zeros, s + torch.log1p(-t)], dim=-1), dim=-1)
    return p + n


def loss_and_grad(fn):
    def run(s, t):
        x = s.detach().requires_grad_(True)
        loss = fn(x, t)
        loss.sum().backward()
        return loss, x.grad
    return run


def time_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, median of {args.iters}")
    # The compiled loss inside the same autograd step as eager's: AOTAutograd compiles its
    # forward and backward graphs.
    compiled = torch.compile(zlpr_soft, dynamic=False)
    compiled_grad = loss_and_grad(compiled)
    print("| shape | op | ms | GB/s |")
    print("|---|---|---:|---:|")
    for rows, cols in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(3)
        s = torch.rand(rows, cols, device="cuda", generator=g) * 6 - 3
        t = (torch.rand(rows, cols, device="cuda", generator=g) < 0.1).float()
        n = rows * cols
        ops = [
            ("loss eager", lambda: zlpr_soft(s, t), 8 * n),
            ("loss torch.compile", lambda: compiled(s, t), 8 * n),
            ("loss+grad eager", lambda: loss_and_grad(zlpr_soft)(s, t), 12 * n),
            ("loss+grad torch.compile", lambda: compiled_grad(s, t), 12 * n),
            ("torch.topk k=5", lambda: torch.topk(s, 5, dim=-1), 4 * n),
            ("torch.topk k=64", lambda: torch.topk(s, min(64, cols), dim=-1), 4 * n),
        ]
        for name, fn, nbytes in ops:
            ms = time_ms(fn, args.iters)
            print(f"| {rows}x{cols} | {name} | {ms:.3f} | {nbytes / ms / 1e6:.0f} |")


if __name__ == "__main__":
    main()
