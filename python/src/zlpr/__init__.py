"""zlpr: the Python client of zlpr-serve (the ZLPR multi-label loss and multi-label decoding as a
gRPC service).

    import zlpr
    client = zlpr.Client("127.0.0.1:50051")
    r = client.compute_loss(scores, labels, want_grad=True)   # r.loss, r.loss_sum, r.grad
    p = client.predict(scores, top_k=5)                         # p.labels, p.label_probs

zlpr.aio.Client is the asyncio twin; zlpr.torch has the autograd function, the ZlprLoss module
and a pure-PyTorch reference of the loss.
"""
from zlpr._client import (Client, LossResult, LossStream, PredictResult, PredictStream,
                          ServerInfo, SparseLabels, ZlprError, native_available)

from zlpr import aio  # noqa: E402  (zlpr.aio.Client after a plain `import zlpr`)

__all__ = ["aio", "Client", "LossResult", "LossStream", "PredictResult", "PredictStream", "ServerInfo",
           "SparseLabels", "ZlprError", "native_available"]
__version__ = "0.1.0"
