#!/usr/bin/env python3
"""Distributed training with the loss on a zlpr-server: torch.distributed (gloo), N processes
on this machine, each training the same small multi-label model on its shard of a synthetic
multi-label task with soft targets (mixup and label smoothing), under DistributedDataParallel.

  examples/train_ddp.py --loss remote --target 127.0.0.1:50051 --out remote.json
  examples/train_ddp.py --loss local --out local.json      # the package's PyTorch reference

Needs the zlpr package with PyTorch (pip install './python[torch]') and, for --loss remote, a
server at --target (make run). Prints a summary line when done and writes (rank 0) the per-step
losses, the final weights, the held-out accuracy and the step times to --out as JSON.
python/tests/test_train_ddp.py runs both and checks that their losses agree.
"""
import argparse
import gc
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

FEATURES, LABELS, HIDDEN = 32, 24, 64


def task(seed=1234, n=4096):
    """Features and hard multi-label targets from a fixed random teacher (the same in every
    process)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(FEATURES, LABELS, generator=g)
    bias = torch.full((LABELS,), -1.5)  # a few positive labels per example
    x = torch.randn(n, FEATURES, generator=g)
    y = ((x @ teacher) / FEATURES ** 0.5 + bias > 0).float()
    return x, y


def soft_targets(x, y, g, smoothing=0.1, alpha=0.4):
    """Mixup of the batch with a shuffled copy of itself, then label smoothing: the soft
    targets the soft-label ZLPR loss exists for."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], generator=g)
    xm = lam * x + (1 - lam) * x[perm]
    ym = lam * y + (1 - lam) * y[perm]
    return xm, ym * (1 - smoothing) + 0.5 * smoothing


def worker(rank, world, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    train(rank, world, args)
    # The model (DDP holds the process group, in reference cycles) and the step's tensors are
    # collected here, so destroying the group joins gloo's threads while Python runs: a gloo
    # thread that drops the last reference to a tensor during the interpreter's exit aborts the
    # process ("terminate called without an active exception").
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train(rank, world, args):
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts them)
    torch.set_num_threads(1)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(),
                                    torch.nn.Linear(HIDDEN, LABELS)))
    if args.loss == "remote":
        from zlpr.torch import ZlprLoss
        loss_fn = ZlprLoss(args.target, reduction="mean", transport=args.transport,
                           shared_memory=args.shared_memory)
    else:
        from zlpr.torch import ZlprLossReference
        loss_fn = ZlprLossReference(reduction="mean")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = task()
    train_x, train_y = x[:3072], y[:3072]
    shard = slice(rank, None, world)  # this process's examples
    sx, sy = train_x[shard], train_y[shard]
    g = torch.Generator().manual_seed(100 + rank)
    torch.manual_seed(100 + rank)  # mixup's Beta draws, per process
    losses, step_s, loss_s, stats = [], [], [], []
    for step in range(args.steps):
        idx = torch.randint(0, sx.shape[0], (args.batch,), generator=g)
        bx, by = soft_targets(sx[idx], sy[idx], g)
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(bx)
        t1 = time.perf_counter()
        loss = loss_fn(logits, by)
        t2 = time.perf_counter()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        # The global mean loss of this step, for the record.
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / world)
        step_s.append(t3 - t0)
        loss_s.append(t2 - t1)
        if args.loss == "remote":
            stats.append(dict(loss_fn.stats))
    with torch.no_grad():
        scores = model.module(x[3072:])
        accuracy = float(((scores > 0).float() == y[3072:]).float().mean())
    if rank == 0:
        weights = {k: v.flatten().tolist() for k, v in model.module.state_dict().items()}
        with open(args.out, "w") as f:
            json.dump({"loss": args.loss, "losses": losses, "weights": weights,
                       "accuracy": accuracy, "step_s": step_s, "loss_forward_s": loss_s,
                       "stats": stats, "world": world, "batch": args.batch}, f)
        step_ms = sorted(step_s)[len(step_s) // 2] * 1e3
        print(f"{args.loss} loss, {world} processes, {args.steps} steps: loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f}, held-out accuracy {accuracy:.3f}, median step {step_ms:.1f} ms; "
              f"written to {args.out}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss", choices=["remote", "local"], default="remote")
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--transport", choices=["auto", "native", "grpcio"], default="auto",
                    help="zlpr.Client's transport for the remote loss")
    ap.add_argument("--shared_memory", action="store_true",
                    help="the remote loss through system shared memory (the server on this "
                         "host, started with --allow_client_shm)")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--out", default="train_ddp.json")
    args = ap.parse_args()
    mp.spawn(worker, args=(args.world, args, args.port), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
