"""The errors both bindings must name the same way, for their tests' tables: (model, inputs,
parameters, the message's words), with the inputs made by the binding's own `tensor(name,
array, datatype)`. Each test adds the cases only its binding has. Also the checks both bindings
run alike through their own tritonclient."""
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException


def common_error_cases(tensor):
    nan = np.zeros((2, 3), np.float32)
    nan[1, 2] = np.nan
    zeros = np.zeros((2, 3), np.float32)
    return [
        ("zlpr_loss", [tensor("scores", nan, "FP32"), tensor("labels", nan * 0, "FP32")], {},
         "scores[1, 2] is NaN"),
        ("zlpr_loss", [tensor("scores", zeros, "FP32")], {},
         "model zlpr_loss needs input 'labels'"),
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.int32), "INT32")], {},
         "input 'scores': datatype INT32 is not allowed"),
        ("zlpr_predict", [tensor("scores", zeros, "FP32")], {"colour": "red"},
         "unknown parameter 'colour'"),
    ]


def check_priority_levels(client, tensor):
    """Triton's priority levels 0 (the model's default), 1 and 2 give the same answer; 3 is
    refused, naming the levels."""
    scores = np.random.default_rng(3).standard_normal((2, 50)).astype(np.float32)
    inp = tensor("scores", scores, "FP32")
    labels = [client.infer("zlpr_predict", [inp], priority=p).as_numpy("label_count")
              for p in (0, 1, 2)]
    assert all((l == labels[0]).all() for l in labels)
    with pytest.raises(InferenceServerException) as e:
        client.infer("zlpr_predict", [inp], priority=3)
    assert "parameter 'priority' = 3 must be 0 (the model's default), 1 (interactive) or 2" in \
        e.value.message()
