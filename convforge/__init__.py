"""convforge: a compiler for convolutional neural networks.

import convforge as cf
from convforge import nn, optim
net = cf.compile(model, input_shape=(None, 1, 28, 28), backend="numba-cpu")
"""

import sys as _sys

from convforge import data, distributed, metrics, models, onnx
from convforge.errors import ConvforgeError
from convforge.frontend import functional, nn, optim
from convforge.frontend.compile import CompiledModel, TrainStep, compile, compile_train
from convforge.frontend.functional import (
    add,
    amax,
    cat,
    concat,
    div,
    flatten,
    mean,
    mul,
    neg,
    permute,
    reshape,
    split,
    squeeze,
    stack,
    sub,
    transpose,
    unsqueeze,
)
from convforge.frontend.functional import reduce_sum as sum  # torch.sum
from convforge.frontend.nn import manual_seed
from convforge.serialization import load, save
from convforge.summary import summary
from convforge.training import Trainer, fit

# ``import convforge.nn as nn`` and ``import convforge.functional as F`` name the same modules
for _name, _module in (("nn", nn), ("optim", optim), ("functional", functional)):
    _sys.modules[f"{__name__}.{_name}"] = _module

__version__ = "0.1.0"
__all__ = [
    "distributed",
    "CompiledModel",
    "ConvforgeError",
    "TrainStep",
    "Trainer",
    "add",
    "amax",
    "cat",
    "compile",
    "compile_train",
    "concat",
    "data",
    "div",
    "fit",
    "flatten",
    "functional",
    "load",
    "manual_seed",
    "mean",
    "metrics",
    "models",
    "mul",
    "neg",
    "nn",
    "onnx",
    "optim",
    "permute",
    "reshape",
    "save",
    "split",
    "squeeze",
    "stack",
    "sub",
    "sum",
    "summary",
    "transpose",
    "unsqueeze",
    "__version__",
]
