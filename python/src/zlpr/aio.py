"""zlpr.aio.Client: the asyncio twin of zlpr.Client (grpc.aio), for async services.

    client = zlpr.aio.Client("127.0.0.1:50051")
    r = await client.compute_loss(scores, labels, want_grad=True)
    await client.close()
"""
from __future__ import annotations

import asyncio
from typing import Optional

import grpc
import grpc.aio

from zlpr import _client as c
from zlpr import _wire


class Client:
    """Same options and results as zlpr.Client; every call is a coroutine. Create it inside the
    event loop that will use it."""

    def __init__(self, target: str, **kwargs):
        kwargs.pop("max_parallel_chunks", None)
        if kwargs.pop("shared_memory", False):
            raise ValueError("shared_memory: zlpr.aio.Client sends its tensors over gRPC; "
                             "zlpr.Client(shared_memory=True) has the shared-memory path")
        self.settings = c.ChannelSettings(target=target, **kwargs)
        args = self.settings.channel_args()
        self._channel = (grpc.aio.secure_channel(target, self.settings.credentials(), options=args)
                         if self.settings.tls else grpc.aio.insecure_channel(target, options=args))
        self._calls = {m: self._channel.unary_unary(c._SERVICE + m, request_serializer=c._identity,
                                                    response_deserializer=c._identity)
                       for m in ("ComputeLoss", "Predict", "GetServerInfo")}
        self._limit = self.settings.max_message_bytes

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _call(self, method, data, deadline_s):
        timeout = self.settings.deadline_s if deadline_s is None else deadline_s
        try:
            return await self._calls[method](data, timeout=timeout,
                                             metadata=self.settings.metadata())
        except grpc.RpcError as e:
            raise c.ZlprError(e.code(), e.details() or "") from None

    async def message_limit(self) -> int:
        if self._limit is None:
            self._limit = (await self.server_info()).max_message_bytes
        return self._limit

    async def _run_chunks(self, method, msg, tensors, ranges, chunk, parse, deadline_s):
        if len(ranges) == 1:
            return [parse(await self._call(method, _wire.join(msg, tensors), deadline_s))[0]]

        async def one(b, e):
            return parse(await self._call(method, _wire.join(*chunk(msg, tensors, b, e)),
                                          deadline_s))[0]
        return list(await asyncio.gather(*(one(b, e) for b, e in ranges)))

    async def compute_loss(self, scores, labels, mask=None, want_grad=False, grad_dtype=None,
                           request_id="", deadline_s: Optional[float] = None, *,
                           priority: Optional[str] = None) -> c.LossResult:
        msg, tensors = c.loss_request(scores, labels, mask, want_grad, grad_dtype, request_id,
                                      priority)
        ranges = c.loss_ranges(msg, tensors, want_grad, grad_dtype, await self.message_limit())
        return c.merge_loss(await self._run_chunks("ComputeLoss", msg, tensors, ranges,
                                                   c.chunk_loss, c.parse_loss, deadline_s),
                            request_id)

    async def predict(self, scores, threshold=None, label_thresholds=None, top_k=0, min_labels=0,
                      want_probs=False, mask=None, request_id="",
                      deadline_s: Optional[float] = None, *,
                      priority: Optional[str] = None) -> c.PredictResult:
        msg, tensors = c.predict_request(scores, threshold, label_thresholds, top_k, min_labels,
                                         want_probs, mask, request_id, priority)
        ranges = c.predict_ranges(tensors, want_probs, await self.message_limit())
        return c.merge_predict(await self._run_chunks("Predict", msg, tensors, ranges,
                                                      c.chunk_predict, c.parse_predict,
                                                      deadline_s), request_id)

    async def server_info(self) -> c.ServerInfo:
        return c.parse_server_info(await self._call("GetServerInfo", b"", None))
