"""The errors both bindings must name the same way, for their tests' tables: (model, inputs,
parameters, the message's words), with the inputs made by the binding's own `tensor(name,
array, datatype)`. Each test adds the cases only its binding has."""
import numpy as np


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
