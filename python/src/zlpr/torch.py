"""PyTorch: the ZLPR loss computed by a zlpr-server, as a drop-in loss module, and a pure-PyTorch
reference of the same loss (for parity tests, and to run without a server).

    from zlpr.torch import ZlprLoss
    loss_fn = ZlprLoss("127.0.0.1:50051", reduction="mean")   # or a zlpr.Client
    loss = loss_fn(logits, targets)        # targets: soft or hard [rows, cols], or SparseLabels
    loss.backward()

Forward sends the logits (fp32, fp16 or bf16; CUDA tensors are copied to the host) and asks
for the gradient only when they require grad, in their own dtype; backward returns
grad_output times the server's gradient, on the logits' device. The per-row loss is float32.
"""
from __future__ import annotations

import time
from typing import Optional, Union

import numpy as np
import torch

from zlpr import _client, _wire
from zlpr._client import Client, SparseLabels
from zlpr.v1 import zlpr_pb2 as pb

_GRAD_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _matrix(t: torch.Tensor, field: str) -> _wire.Matrix:
    """A [rows, cols] tensor as wire bytes: one copy to the host when it is elsewhere, none
    when it is a contiguous CPU tensor."""
    t = t.detach()
    if t.dtype not in _GRAD_DTYPE:
        t = t.float()
    t = t.to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits travel as uint16
        return _wire.Matrix(t.view(torch.int16).numpy().view(np.uint16), pb.BFLOAT16, field)
    return _wire.Matrix(t.numpy(), _wire.wire_dtype(_GRAD_DTYPE[t.dtype]), field)


def _targets(targets, field="dense_labels"):
    if isinstance(targets, SparseLabels):
        return targets
    if isinstance(targets, torch.Tensor):
        return _matrix(targets, field)
    return targets


class ZlprFunction(torch.autograd.Function):
    """loss[rows] = ZLPR(logits, targets) computed by `client`; differentiable in the logits."""

    @staticmethod
    def forward(ctx, logits, targets, mask, client, stats):  # noqa: D102 - see the class
        if logits.dim() != 2:
            raise ValueError(f"logits: expected [rows, cols], got shape {tuple(logits.shape)}")
        want_grad = logits.requires_grad
        grad_dtype = _GRAD_DTYPE.get(logits.dtype, "float32")
        start = time.perf_counter()
        mask_np = None if mask is None else mask.detach().to("cpu", torch.uint8).contiguous().numpy()
        scores, labels = _matrix(logits, "scores"), _targets(targets)
        on_host = time.perf_counter()
        result = client.compute_loss(scores, labels, mask=mask_np, want_grad=want_grad,
                                     grad_dtype=grad_dtype, bf16_bits=True)
        if stats is not None:  # where the time went, for ZlprLoss.stats
            stats.update(to_host_s=on_host - start, call_s=time.perf_counter() - on_host,
                         server_queue_s=result.queue_seconds,
                         server_compute_s=result.compute_seconds)
        if want_grad:
            g = result.grad  # a view of the received bytes: no copy
            grad = (_shared(g.view(np.int16)).view(torch.bfloat16)
                    if logits.dtype == torch.bfloat16 else _shared(g))
            ctx.save_for_backward(grad.to(logits.device, logits.dtype))
        return torch.from_numpy(result.loss.copy()).to(logits.device)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return grad_output.to(grad.dtype).unsqueeze(1) * grad, None, None, None, None


def _shared(a: np.ndarray) -> torch.Tensor:
    # torch.from_numpy warns on read-only arrays (a view of the received bytes); the tensor is
    # only read, so share the memory rather than copy it.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _eager(fn):
    """torch.compile runs `fn` eagerly, with a graph break around it, rather than trace it:
    tracing into the client would gain nothing (it is a network call) and fails on the
    protobuf objects it touches (Dynamo's guards on their methods). No-op before PyTorch 2.1."""
    compiler = getattr(torch, "compiler", None)
    return compiler.disable(fn) if hasattr(compiler, "disable") else fn


@_eager
def zlpr_loss(logits, targets, client: Client, mask=None, reduction: str = "mean",
              stats: Optional[dict] = None):
    """The ZLPR loss computed by `client` (see ZlprLoss)."""
    return _reduce(ZlprFunction.apply(logits, targets, mask, client, stats), reduction)


def zlpr_loss_reference(logits: torch.Tensor, targets, mask: Optional[torch.Tensor] = None,
                        reduction: str = "mean") -> torch.Tensor:
    """The same loss in plain PyTorch (autograd gives the gradient): per row
    L = log(1 + Σ t·e^{−s}) + log(1 + Σ (1 − t)·e^{s}) over the entries that count (mask 1 and
    s ≠ −∞). Computed in float32 (float64 for float64 logits)."""
    s = logits if logits.dtype == torch.float64 else logits.float()
    if isinstance(targets, SparseLabels):
        targets = sparse_to_dense(targets, s.shape, s.dtype)
    t = targets.to(s.dtype)
    keep = s != float("-inf")
    if mask is not None:
        keep = keep & (mask != 0)
    neg_inf = torch.full_like(s, float("-inf"))
    x = torch.where(keep & (t > 0), -s + torch.log(t.clamp_min(torch.finfo(s.dtype).tiny)), neg_inf)
    y = torch.where(keep & (t < 1), s + torch.log1p(-t.clamp_max(1 - torch.finfo(s.dtype).eps)),
                    neg_inf)
    zero = torch.zeros(s.shape[0], 1, dtype=s.dtype, device=s.device)
    loss = torch.logsumexp(torch.cat([zero, x], 1), 1) + torch.logsumexp(torch.cat([zero, y], 1), 1)
    return _reduce(loss, reduction)


def sparse_to_dense(labels: SparseLabels, shape, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(shape, dtype=dtype)
    splits = list(labels.row_splits)
    for r in range(len(splits) - 1):
        cols = torch.as_tensor(list(labels.indices[splits[r]:splits[r + 1]]), dtype=torch.long)
        vals = (torch.ones(len(cols), dtype=dtype) if labels.values is None else
                torch.as_tensor(list(labels.values[splits[r]:splits[r + 1]]), dtype=dtype))
        out[r, cols] = vals
    return out


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction={reduction!r}: use 'none', 'mean' or 'sum'")


class ZlprLoss(torch.nn.Module):
    """The ZLPR multi-label loss computed by a zlpr-server.

    `client_or_target`: a zlpr.Client, or a target ("host:port") to make one with `client_kwargs`.
    Call it as loss_fn(logits [rows, cols], targets, mask=None): targets are soft or hard labels
    [rows, cols] in [0, 1], or zlpr.SparseLabels; mask (optional) is 1 to keep an entry, 0 to
    exclude it. `reduction`: "none" (per-row loss), "mean" (over rows) or "sum".
    """

    def __init__(self, client_or_target: Union[Client, str], reduction: str = "mean",
                 **client_kwargs):
        super().__init__()
        self.client = (client_or_target if isinstance(client_or_target, Client)
                       else Client(client_or_target, **client_kwargs))
        _reduce(torch.zeros(1), reduction)  # validates it
        self.reduction = reduction
        # The last forward's time: copying to the host, the call (serialization, network and
        # the server), and the server's queue and compute time within it.
        self.stats: dict = {}

    def forward(self, logits, targets, mask=None):
        return zlpr_loss(logits, targets, self.client, mask=mask, reduction=self.reduction,
                         stats=self.stats)


class ZlprLossReference(torch.nn.Module):
    """zlpr_loss_reference as a module: the same interface as ZlprLoss, no server."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits, targets, mask=None):
        return zlpr_loss_reference(logits, targets, mask=mask, reduction=self.reduction)
