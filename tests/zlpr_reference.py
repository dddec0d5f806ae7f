"""The ZLPR loss and gradient in float64 (numpy), the one oracle of the Python test suites (the
package's, python/tests, and the Open Inference Protocol's, tests/oip; each conftest.py puts
this directory on the path): loss = log(1 + sum_{t>0} t e^{-s}) + log(1 + sum_{t<1} (1-t) e^{s})
per row, with masked-out and -inf scores left out (docs/MATH.md)."""
import numpy as np


def reference(scores, labels, mask=None):
    """Per-row loss and gradient, both float64."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(labels, dtype=np.float64)
    keep = s != -np.inf
    if mask is not None:
        keep &= np.asarray(mask) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(keep & (t > 0), -s + np.log(np.where(t > 0, t, 1)), -np.inf)
        y = np.where(keep & (t < 1), s + np.log1p(-np.where(t < 1, t, 0)), -np.inf)
    z = np.zeros((s.shape[0], 1))
    p = np.logaddexp.reduce(np.concatenate([z, x], 1), 1)
    n = np.logaddexp.reduce(np.concatenate([z, y], 1), 1)
    return p + n, np.where(keep, -np.exp(x - p[:, None]) + np.exp(y - n[:, None]), 0)
