"""The op table: every op, on every backend, against the reference backend in float64.

Each case is one op over named inputs (dtype and shape, ``N`` the batch) with attributes.
Its graph runs on each backend with no passes (reference, numba-cpu, and numba-cuda on
Numba's CUDA simulator, which ``tests/conftest.py`` switches on before anything imports
``numba.cuda``) and is compared with the reference backend running the same graph with
every f32 promoted to f64, on the same values: the reference's own f32 kernels are held to
that oracle too. Shapes stay tiny (the simulator runs each CUDA thread in Python).

The second half is the layout rule of the kernel trees: every op has a lowering on each
Numba backend unless :data:`KNOWN_GAPS` says why not, and that lowering is registered from
the ``kernels/<family>.py`` that mirrors the ``ir/ops/<family>.py`` declaring the op.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convforge.backends import BACKENDS, get_backend
from convforge.ir import scalar
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.types import TensorType
from convforge.testing import available_backends, tolerance

F, D, N = "f32", "f64", "N"
AVAILABLE = available_backends()
#: what a float32 result must match the float64 oracle to (as the CUDA op tests always had)
F32_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@dataclass(frozen=True)
class Case:
    """One op over ``inputs`` ``{name: (dtype, shape)}`` with ``attrs``.

    ``values`` overrides the random values of some inputs: an array, or a function of
    ``(rng, shape)``; ``positive`` names inputs fed positive values (besides those the op
    declares, ``Op.positive``). ``exact`` compares bit for bit with the reference in the
    case's own dtype (a dropout mask must be the same elements, scaled the same);
    ``check`` is a further assertion on the outputs.
    """

    op: str
    inputs: Mapping[str, tuple[str, tuple]]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    positive: tuple[str, ...] = ()
    batch: int = 2
    exact: bool = False
    check: Callable[[list[np.ndarray]], None] | None = None


def case(name: str, op: str, inputs, attrs=None, **kw) -> Any:
    return pytest.param(Case(op, inputs, dict(attrs or {}), **kw), id=name)


def _step(value: int) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _some_dropped(outs: list[np.ndarray]) -> None:
    assert 0 < np.count_nonzero(outs[0]) < outs[0].size


def _ties(rng: np.random.Generator, shape) -> np.ndarray:
    """Values in {0, 1, 2} along rows of 3, some with a tied maximum (``reduce_max``)."""
    return np.minimum(np.arange(int(np.prod(shape))) % 4, 2).reshape(shape).astype(np.float64)


def _row_max(rng: np.random.Generator, shape) -> np.ndarray:
    """The row maxima of :func:`_ties` values of shape ``(*shape, 3)``: ``reduce_max_backward``'s y."""
    return _ties(rng, (*shape, 3)).max(axis=-1)


def _wide(rng: np.random.Generator, shape) -> np.ndarray:
    """Values spread over every branch of a pointwise activation (``relu6`` clips at 6)."""
    return 4.0 * rng.standard_normal(shape)


_BN = {"x": (F, (N, 3, 2, 2)), "w": (F, (3,)), "b": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))}
_BN_FOLD = {"w": (F, (3,)), "bb": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))}
_SGD = {"p": (F, (3, 2)), "g": (F, (3, 2)), "buf": (F, (3, 2)), "step": ("i64", ())}
_ADAM = {"p": (F, (4,)), "g": (F, (4,)), "m": (F, (4,)), "v": (F, (4,)), "step": ("i64", ())}
_RMSPROP = {"p": (F, (4,)), "g": (F, (4,)), "sq": (F, (4,)), "buf": (F, (4,)), "ga": (F, (4,)),
            "step": ("i64", ())}  # fmt: skip
_ADAGRAD = {"p": (F, (2, 3)), "g": (F, (2, 3)), "s": (F, (2, 3)), "step": ("i64", ())}
_CE = {"logits": (F, (N, 4)), "target": ("i64", (N,))}
_CE_VALUES = {"target": np.array([0, 3, 1]), "g": np.asarray(1.5, dtype=np.float32)}
#: the incoming gradient of a loss by reduction: per row / element for "none"
_LOSS_GRAD = {"none": None, "mean": np.asarray(1.5, dtype=np.float32)}
_WINDOW3 = {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)}

CASES = [
    # conv
    case("conv2d-plain", "conv2d", {"x": (F, (N, 2, 6, 6)), "w": (F, (3, 2, 3, 3)), "b": (F, (3,))}),
    case("conv2d-stride2-pad", "conv2d", {"x": (F, (N, 2, 6, 6)), "w": (F, (2, 2, 3, 3))},
         {"stride": (2, 2), "padding": (1, 1)}),
    case("conv2d-dilation2", "conv2d", {"x": (F, (N, 1, 6, 6)), "w": (F, (2, 1, 2, 2)), "b": (F, (2,))},
         {"dilation": (2, 2), "padding": (1, 0)}),
    case("conv2d-groups2", "conv2d", {"x": (F, (N, 4, 5, 5)), "w": (F, (4, 2, 3, 3)), "b": (F, (4,))},
         {"groups": 2, "stride": (2, 1)}),
    case("conv2d-asym-pad", "conv2d", {"x": (F, (N, 1, 5, 5)), "w": (F, (2, 1, 2, 2))},
         {"padding": (0, 1, 1, 0)}),
    case("conv2d-f64", "conv2d", {"x": (D, (N, 2, 5, 5)), "w": (D, (2, 2, 3, 3))}, {"padding": (1, 1)}),
    case("conv1d", "conv1d", {"x": (F, (N, 2, 7)), "w": (F, (4, 1, 3)), "b": (F, (4,))},
         {"groups": 2, "stride": (2,), "padding": (1,), "dilation": (2,)}),
    case("conv2d-depthwise", "conv2d", {"x": (F, (N, 3, 5, 5)), "w": (F, (6, 1, 3, 3)), "b": (F, (6,))},
         {"groups": 3, "padding": (1, 1)}),
    case("conv_transpose2d", "conv_transpose2d",
         {"x": (F, (N, 4, 3, 3)), "w": (F, (4, 3, 3, 3)), "b": (F, (6,))},
         {"stride": (2, 2), "padding": (1, 1), "output_padding": (1, 0), "groups": 2}),
    case("conv_transpose2d-dil-asym-nobias", "conv_transpose2d",
         {"x": (F, (N, 2, 3, 4)), "w": (F, (2, 2, 2, 3))},
         {"dilation": (2, 1), "padding": (0, 1, 1, 0), "stride": (1, 2)}),
    case("conv2d_backward_input", "conv2d_backward_input", {"gy": (F, (N, 4, 3, 3)), "w": (F, (4, 2, 3, 3))},
         {"stride": (2, 2), "padding": (1, 1), "groups": 2, "input_size": (6, 6)}),
    case("conv2d_backward_input-dil", "conv2d_backward_input",
         {"gy": (F, (N, 2, 4, 4)), "w": (F, (2, 1, 2, 2))},
         {"dilation": (2, 2), "input_size": (6, 6)}),
    case("conv2d_backward_weight", "conv2d_backward_weight",
         {"x": (F, (N, 4, 6, 6)), "gy": (F, (N, 4, 3, 3))},
         {"stride": (2, 2), "padding": (1, 1), "groups": 2, "kernel_size": (3, 3)}),
    case("conv2d_backward_weight-dil", "conv2d_backward_weight",
         {"x": (F, (N, 1, 6, 6)), "gy": (F, (N, 2, 4, 4))},
         {"dilation": (2, 2), "kernel_size": (2, 2)}),
    case("conv1d_backward_input", "conv1d_backward_input", {"gy": (F, (N, 2, 3)), "w": (F, (2, 2, 3))},
         {"stride": (2,), "padding": (1,), "input_size": (6,)}),
    case("conv1d_backward_weight", "conv1d_backward_weight", {"x": (F, (N, 2, 6)), "gy": (F, (N, 2, 3))},
         {"stride": (2,), "padding": (1,), "kernel_size": (3,)}),
    # linear
    case("linear", "linear", {"x": (F, (N, 5)), "w": (F, (3, 5)), "b": (F, (3,))}),
    case("linear-nobias", "linear", {"x": (F, (N, 6)), "w": (F, (7, 6))}),
    case("matmul-nn", "matmul", {"a": (F, (3, 5)), "b": (F, (5, 6))}),
    case("matmul-nt", "matmul", {"a": (F, (3, 5)), "b": (F, (6, 5))}, {"transpose_b": True}),
    case("matmul-tn", "matmul", {"a": (F, (5, 3)), "b": (F, (5, 6))}, {"transpose_a": True}),
    case("matmul-tt", "matmul", {"a": (F, (5, 3)), "b": (F, (6, 5))},
         {"transpose_a": True, "transpose_b": True}),
    # pool
    case("max_pool2d", "max_pool2d", {"x": (F, (N, 2, 6, 6))}, {"kernel_size": (2, 2)}),
    case("max_pool2d-pad-ceil", "max_pool2d", {"x": (F, (N, 1, 6, 6))}, {**_WINDOW3, "ceil_mode": True}),
    case("max_pool2d-dil", "max_pool2d", {"x": (F, (N, 1, 6, 6))},
         {"kernel_size": (2, 2), "stride": (1, 1), "dilation": (2, 2)}),
    case("max_pool2d_backward", "max_pool2d_backward", {"gy": (F, (N, 1, 3, 3)), "x": (F, (N, 1, 6, 6))},
         _WINDOW3),
    case("max_pool2d_argmax", "max_pool2d_argmax", {"x": (F, (N, 1, 6, 6))}, {"kernel_size": (2, 2)}),
    case("max_pool2d_backward_argmax", "max_pool2d_backward_argmax",
         {"gy": (F, (N, 1, 3, 3)), "am": ("u8", (N, 1, 3, 3))}, {**_WINDOW3, "input_size": (6, 6)},
         values={"am": lambda rng, shape: rng.integers(0, 9, size=shape).astype(np.uint8)}),
    case("max_pool2d_with_indices", "max_pool2d_with_indices", {"x": (F, (N, 2, 5, 6))},
         {**_WINDOW3, "ceil_mode": True}),
    case("max_unpool2d", "max_unpool2d", {"x": (F, (N, 2, 2, 3)), "ind": ("i64", (N, 2, 2, 3))},
         {"output_size": (4, 5)}, values={"ind": lambda rng, shape: rng.integers(-2, 22, size=shape)}),
    case("max_unpool2d_backward", "max_unpool2d_backward",
         {"gy": (F, (N, 2, 4, 5)), "ind": ("i64", (N, 2, 2, 3))},
         values={"ind": lambda rng, shape: rng.integers(-2, 22, size=shape)}),
    case("avg_pool2d", "avg_pool2d", {"x": (F, (N, 2, 6, 6))}, {"kernel_size": (2, 2)}),
    case("avg_pool2d-pad-nocount", "avg_pool2d", {"x": (F, (N, 1, 6, 6))},
         {**_WINDOW3, "count_include_pad": False, "ceil_mode": True}),
    case("avg_pool2d-divisor", "avg_pool2d", {"x": (F, (N, 1, 5, 5))},
         {"kernel_size": (2, 2), "divisor_override": 3}),
    # ONNX's asymmetric pads (top, left, bottom, right)
    case("max_pool2d-asym-pad-ceil", "max_pool2d", {"x": (F, (N, 1, 6, 5))},
         {"kernel_size": (3, 2), "stride": (2, 2), "padding": (0, 1, 1, 0), "ceil_mode": True}),
    case("max_pool2d_backward-asym-pad", "max_pool2d_backward",
         {"gy": (F, (N, 1, 3, 3)), "x": (F, (N, 1, 6, 6))},
         {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 0, 0, 1)}),
    case("avg_pool2d-asym-pad-nocount", "avg_pool2d", {"x": (F, (N, 1, 6, 5))},
         {"kernel_size": (3, 3), "stride": (2, 2), "padding": (0, 1, 1, 1), "count_include_pad": False,
          "ceil_mode": True}),
    case("avg_pool2d-asym-pad", "avg_pool2d", {"x": (F, (N, 1, 5, 5))},
         {"kernel_size": (2, 2), "stride": (2, 2), "padding": (1, 1, 0, 0)}),
    case("avg_pool2d_backward-asym-pad", "avg_pool2d_backward", {"gy": (F, (N, 1, 3, 3))},
         {"kernel_size": (3, 3), "stride": (2, 2), "padding": (0, 1, 1, 1), "count_include_pad": False,
          "input_size": (5, 5), "ceil_mode": True}),
    case("avg_pool2d_backward", "avg_pool2d_backward", {"gy": (F, (N, 1, 3, 3))},
         {**_WINDOW3, "input_size": (6, 6)}),
    case("adaptive_avg_pool2d", "adaptive_avg_pool2d", {"x": (F, (N, 2, 5, 6))}, {"output_size": (2, 4)}),
    case("adaptive_avg_pool2d_backward", "adaptive_avg_pool2d_backward", {"gy": (F, (N, 2, 2, 4))},
         {"output_size": (2, 4), "input_size": (5, 6)}),
    # norm
    case("batch_norm-4d", "batch_norm", _BN, {"eps": 1e-3}),
    case("batch_norm_train-4d", "batch_norm_train", _BN, {"momentum": 0.2}),
    case("batch_norm_train-2d", "batch_norm_train",
         {"x": (F, (N, 4)), "w": (F, (4,)), "b": (F, (4,)), "m": (F, (4,)), "v": (F, (4,))}),
    case("batch_norm_backward", "batch_norm_backward",
         {"gy": (F, (N, 3, 2, 2)), "x": (F, (N, 3, 2, 2)), "w": (F, (3,)), "m": (F, (3,)), "i": (F, (3,))},
         ),
    case("batch_norm_eval_backward", "batch_norm_eval_backward",
         {"gy": (F, (N, 3, 5)), "x": (F, (N, 3, 5)), "w": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))}),
    case("local_response_norm", "local_response_norm", {"x": (F, (N, 5, 2, 3))},
         {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 1.5}),
    # collective: one process, so all_reduce is the identity (tests/distributed runs ranks)
    case("all_reduce-mean", "all_reduce", {"x": (F, (N, 3, 2))}, {"reduce": "mean", "bucket": 0}),
    case("all_reduce-sum", "all_reduce", {"x": (F, (7,))}, {"reduce": "sum"}),
    case("sync_batch_norm", "sync_batch_norm", {**_BN, "rm": (F, (3,)), "rv": (F, (3,)), "n": (F, (1,))},
         {"eps": 1e-3, "momentum": 0.2}, values={"n": np.array([8.0])}),
    case("channel_count", "channel_count", {"x": (F, (N, 3, 2, 2))}),
    case("sync_batch_norm_backward", "sync_batch_norm_backward",
         {"gy": (F, (N, 3, 5)), "x": (F, (N, 3, 5)), "w": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))}),
    case("local_response_norm-even-onnx", "local_response_norm", {"x": (F, (N, 4, 3))},
         {"size": 4, "alpha": 0.2, "beta": 0.6, "k": 2.0, "before": 1}),
    case("local_response_norm_backward", "local_response_norm_backward",
         {"gy": (F, (N, 5, 2, 3)), "x": (F, (N, 5, 2, 3))}, {"size": 4, "alpha": 0.5, "beta": 0.75}),
    case("layer_norm", "layer_norm", {"x": (F, (N, 3, 2, 4)), "w": (F, (2, 4)), "b": (F, (2, 4))},
         {"normalized_shape": (2, 4), "eps": 1e-3}),
    case("layer_norm-noaffine", "layer_norm", {"x": (F, (N, 3, 5))}, {"normalized_shape": (5,)}),
    case("layer_norm_backward", "layer_norm_backward",
         {"gy": (F, (N, 3, 2, 4)), "x": (F, (N, 3, 2, 4)), "w": (F, (2, 4))}, {"normalized_shape": (2, 4)}),
    case("layer_norm_backward-noweight", "layer_norm_backward", {"gy": (F, (N, 3, 5)), "x": (F, (N, 3, 5))},
         {"normalized_shape": (3, 5)}),
    case("group_norm", "group_norm", {"x": (F, (N, 4, 2, 3)), "w": (F, (4,)), "b": (F, (4,))},
         {"num_groups": 2}),
    case("group_norm-weight-only", "group_norm", {"x": (F, (N, 6, 5)), "w": (F, (6,))}, {"num_groups": 3}),
    case("group_norm_backward", "group_norm_backward",
         {"gy": (F, (N, 4, 2, 3)), "x": (F, (N, 4, 2, 3)), "w": (F, (4,))}, {"num_groups": 2}),
    case("group_norm_backward-noweight", "group_norm_backward", {"gy": (F, (N, 4, 3)), "x": (F, (N, 4, 3))},
         {"num_groups": 4, "eps": 1e-2}),
    case("bn_fold_bias", "bn_fold_bias", {**_BN_FOLD, "b": (F, (3,))}, {"eps": 1e-3}),
    case("bn_fold_bias-nobias", "bn_fold_bias", _BN_FOLD, {"eps": 1e-3}),
    case("bn_fold_weight", "bn_fold_weight", {"cw": (F, (3, 2, 2, 2)), "w": (F, (3,)), "v": (F, (3,))},
         {"eps": 1e-3}),
    case("bn_fold_weight_transposed", "bn_fold_weight_transposed",
         {"cw": (F, (4, 3, 2, 2)), "w": (F, (6,)), "v": (F, (6,))}, {"groups": 2}),
    *(
        case(f"{op}-p{p}", op, {"x": (F, (N, 3, 4)), "step": ("i64", ())}, {"p": p, "seed": 7},
             values={"step": _step(5)}, exact=True, check=_some_dropped if p < 1.0 else None)
        for op in ("dropout", "dropout_backward")
        for p in (0.3, 1.0)
    ),
    # activations
    *(case(op, op, {"x": (F, (N, 3, 4))}) for op in ("relu", "sigmoid", "tanh")),
    case("leaky_relu", "leaky_relu", {"x": (F, (N, 5))}, {"negative_slope": 0.2}),
    *(
        case(op, op, {"gy": (F, (N, 3, 4)), "y": (F, (N, 3, 4))})
        for op in ("relu_backward", "sigmoid_backward", "tanh_backward")
    ),
    case("leaky_relu_backward", "leaky_relu_backward", {"gy": (F, (N, 5)), "x": (F, (N, 5))},
         {"negative_slope": 0.1}),
    # attributes off their defaults (each activation's default case is generated below)
    case("elu-alpha", "elu", {"x": (F, (N, 3, 4))}, {"alpha": 0.5}, values={"x": _wide}),
    case("elu_backward_input", "elu_backward_input", {"gy": (F, (N, 5)), "x": (F, (N, 5))},
         {"alpha": -0.5}),
    case("hardtanh-clip-min-only", "hardtanh", {"x": (F, (N, 5))}, {"min_val": 0.5, "max_val": math.inf}),
    case("hardtanh_backward-range", "hardtanh_backward", {"gy": (F, (N, 5)), "y": (F, (N, 5))},
         {"min_val": -0.5, "max_val": 0.25}),
    case("hardsigmoid-onnx", "hardsigmoid", {"x": (F, (N, 5))}, {"alpha": 0.2, "beta": 0.4},
         values={"x": _wide}),
    case("softplus-beta-threshold", "softplus", {"x": (F, (N, 5))}, {"beta": 2.0, "threshold": 3.0},
         values={"x": _wide}),
    case("softmax", "softmax", {"x": (F, (N, 5))}),
    case("softmax-dim2", "softmax", {"x": (F, (N, 3, 4))}, {"dim": 2}),
    case("log_softmax", "log_softmax", {"x": (F, (N, 3, 4))}, {"dim": 1}),
    case("softmax_backward", "softmax_backward", {"gy": (F, (N, 3, 4)), "y": (F, (N, 3, 4))}, {"dim": -1}),
    case("log_softmax_backward", "log_softmax_backward", {"gy": (F, (N, 5)), "y": (F, (N, 5))}),
    # elementwise
    case("add", "add", {"a": (F, (N, 3)), "b": (F, (N, 3))}),
    case("mul", "mul", {"a": (D, (N, 3)), "b": (D, (N, 3))}),
    case("sub", "sub", {"a": (F, (N, 3)), "b": (F, (N, 3))}),
    case("div", "div", {"a": (F, (N, 3)), "b": (F, (N, 3))}, positive=("b",)),
    case("add-channel", "add", {"a": (F, (N, 3, 2, 2)), "b": (F, (3, 1, 1))}),
    case("mul-scalar-like", "mul", {"a": (F, (1,)), "b": (F, (N, 3, 2, 2))}),
    case("sub-outer", "sub", {"a": (F, (N, 3, 1)), "b": (F, (1, 4))}),
    case("div-channel", "div", {"a": (D, (N, 2, 3, 2)), "b": (D, (1, 2, 1, 1))}, positive=("b",)),
    case("add_n", "add_n", {"a": (F, (N, 3)), "b": (F, (N, 3)), "c": (F, (N, 3))}),
    case("add_n-broadcast", "add_n", {"a": (F, (N, 2, 3)), "b": (F, (3,)), "c": (F, (2, 1))}),
    case("scale", "scale", {"x": (F, (N, 4))}, {"factor": -2.5}),
    case("add_scalar", "add_scalar", {"x": (F, (N, 4))}, {"value": 1.5}),
    case("neg", "neg", {"x": (F, (N, 4))}),
    case("reciprocal", "reciprocal", {"x": (F, (N, 4))}, positive=("x",)),
    case("reciprocal_backward", "reciprocal_backward", {"gy": (F, (N, 4)), "y": (F, (N, 4))}),
    case("reduce_sum-bias", "reduce_sum", {"x": (F, (N, 3, 2, 2))}, {"dims": (0, 2, 3)}),
    case("reduce_sum-keepdim", "reduce_sum", {"x": (F, (N, 3, 4))}, {"dims": (1,), "keepdim": True}),
    case("reduce_sum-all", "reduce_sum", {"x": (F, (N, 3))}, {"dims": (0, 1)}),
    case("reduce_sum-scattered", "reduce_sum", {"x": (F, (N, 3, 2, 4))}, {"dims": (1, 3)}),
    case("reduce_mean-spatial", "reduce_mean", {"x": (F, (N, 3, 2, 2))}, {"dims": (2, 3), "keepdim": True}),
    case("reduce_mean-all", "reduce_mean", {"x": (D, (N, 3))}, {"dims": (0, -1)}),
    case("reduce_max", "reduce_max", {"x": (F, (N, 3, 4))}, {"dims": (-1,)}),
    case("reduce_max-scattered", "reduce_max", {"x": (F, (N, 3, 2))}, {"dims": (0, 2), "keepdim": True}),
    case("reduce_max-ties", "reduce_max", {"x": (F, (N, 2, 3))}, {"dims": (2,)}, values={"x": _ties}),
    case("reduce_sum_backward", "reduce_sum_backward", {"gy": (F, (3,)), "x": (F, (N, 3, 2))},
         {"dims": (0, 2)}),
    case("reduce_mean_backward", "reduce_mean_backward", {"gy": (F, (N, 1, 2)), "x": (F, (N, 3, 2))},
         {"dims": (1,), "keepdim": True}),
    case("reduce_mean_backward-all", "reduce_mean_backward", {"gy": (F, ()), "x": (F, (N, 3))},
         {"dims": (0, 1)}),
    case("reduce_max_backward", "reduce_max_backward",
         {"gy": (F, (N, 2)), "x": (F, (N, 2, 3)), "y": (F, (N, 2))}, {"dims": (2,)},
         values={"x": _ties, "y": _row_max}),
    case("reduce_max_backward-batch", "reduce_max_backward",  # across the batch: a block per output
         {"gy": (F, (3,)), "x": (F, (N, 3)), "y": (F, (3,))}, {"dims": (0,)},
         values={"x": _ties, "y": lambda rng, shape: _ties(rng, (2, *shape)).max(axis=0)}),
    case("ones_like", "ones_like", {"x": (F, (N, 3))}),
    case("zeros_like", "zeros_like", {"x": ("i64", (N, 3))}),
    case("cast-f64", "cast", {"x": (F, (N, 3))}, {"dtype": "f64"}),
    case("cast-i64", "cast", {"x": (F, (N, 3))}, {"dtype": "i64"}),
    # shape
    case("flatten", "flatten", {"x": (F, (N, 2, 2, 3))}),
    case("reshape", "reshape", {"x": (F, (N, 6))}, {"shape": (N, 2, 3)}),
    case("concat", "concat", {"a": (F, (N, 1, 3)), "b": (F, (N, 2, 3))}, {"dim": 1}),
    case("concat-last", "concat", {"a": (F, (N, 2, 1)), "b": (F, (N, 2, 2)), "c": (F, (N, 2, 3))},
         {"dim": -1}),
    case("slice", "slice", {"x": (F, (N, 5, 2))}, {"dim": 1, "start": 1, "stop": 4}),
    case("slice-step", "slice", {"x": (F, (N, 2, 7))}, {"dim": -1, "start": 1, "stop": 7, "step": 3}),
    case("slice_backward", "slice_backward", {"gy": (F, (N, 2, 2))},
         {"dim": 2, "start": 1, "stop": 7, "step": 3, "input_size": 8}),
    case("transpose", "transpose", {"x": (F, (N, 2, 3))}, {"perm": (0, 2, 1)}),
    case("transpose-shuffle", "transpose", {"x": (F, (N, 2, 3, 2, 2))}, {"perm": (0, 2, 1, 3, 4)}),
    case("transpose-nhwc", "transpose", {"x": (D, (N, 3, 2, 2))}, {"perm": (0, 2, 3, 1)}),
    # resize
    case("pad-constant", "pad", {"x": (F, (N, 2, 3, 4))}, {"pads": (0, 0, 1, 2, 0, 1, 2, 0), "value": -1.5}),
    case("pad-constant-crop", "pad", {"x": (F, (N, 5, 4))}, {"pads": (0, -1, 2, 0, 1, -1)}),
    *(
        case(f"pad-{mode}", "pad", {"x": (F, (N, 2, 3, 4))}, {"pads": (0, 0, 2, 1, 0, 0, 1, 3), "mode": mode})
        for mode in ("reflect", "replicate", "circular")
    ),
    *(
        case(f"pad_backward-{mode}", "pad_backward", {"gy": (F, (N, 2, 6, 8))},
             {"pads": (0, 0, 2, 1, 0, 0, 1, 3), "mode": mode})
        for mode in ("constant", "reflect", "replicate", "circular")
    ),
    case("interpolate-nearest", "interpolate", {"x": (F, (N, 2, 3, 4))}, {"size": (7, 6)}),
    case("interpolate-nearest-exact-scales", "interpolate", {"x": (F, (N, 1, 5, 4))},
         {"size": (8, 2), "mode": "nearest-exact", "scales": (1.7, 0.6)}),
    case("interpolate-bilinear", "interpolate", {"x": (F, (N, 2, 3, 4))},
         {"size": (5, 7), "mode": "bilinear"}),
    case("interpolate-bilinear-align", "interpolate", {"x": (F, (N, 1, 4, 3))},
         {"size": (6, 2), "mode": "bilinear", "align_corners": True}),
    case("interpolate_backward-nearest", "interpolate_backward", {"gy": (F, (N, 2, 7, 6))},
         {"size": (7, 6), "input_size": (3, 4)}),
    case("interpolate_backward-bilinear", "interpolate_backward", {"gy": (F, (N, 1, 5, 2))},
         {"size": (5, 2), "mode": "bilinear", "scales": (1.3, 0.5), "input_size": (4, 4)}),
    case("interpolate_backward-bilinear-align", "interpolate_backward", {"gy": (F, (N, 2, 6, 7))},
         {"size": (6, 7), "mode": "bilinear", "align_corners": True, "input_size": (3, 4)}),
    case("pad_backward-crop", "pad_backward", {"gy": (F, (N, 6, 3))}, {"pads": (0, -1, 2, 0, 1, -1)}),
    # loss
    case("mse_loss", "mse_loss", {"x": (F, (N, 3)), "t": (F, (N, 3))}),
    case("mse_loss-sum", "mse_loss", {"x": (F, (N, 3)), "t": (F, (N, 3))}, {"reduction": "sum"}),
    case("mse_loss_backward", "mse_loss_backward", {"g": (F, ()), "x": (F, (N, 3)), "t": (F, (N, 3))}),
    *(
        case(f"{op}-{reduction}", op, {**({"g": (F, ())} if op.endswith("backward") else {}), **_CE},
             {"reduction": reduction}, values=_CE_VALUES, batch=3)
        for op in ("cross_entropy", "cross_entropy_backward")
        for reduction in ("mean", "sum")
    ),
    # losses with torch's options (issue 15): weights, ignore_index, label smoothing, "none"
    *(
        case(f"{op}{'-w' if w else ''}-{reduction}", op,
             {**({"g": (F, () if reduction != "none" else (N,))} if op.endswith("backward") else {}), **_CE,
              **({"weight": (F, (4,))} if w else {})},
             {"reduction": reduction, **({"label_smoothing": 0.2} if op.startswith("cross") else {})},
             values={**_CE_VALUES, "target": np.array([0, -100, 1]), "g": _LOSS_GRAD[reduction]}, batch=3)
        for op in ("cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward")
        for w in (False, True)
        for reduction in ("none", "mean")
    ),
    *(
        case(f"{op}{'-w' if weights else ''}-{reduction}", op,
             {**({"g": (F, () if reduction != "none" else (N, 3))} if op.endswith("backward") else {}),
              "x": (F, (N, 3)), "t": (F, (N, 3)),
              **({"w": (F, (3,)), "pw": (F, (3,))} if weights else {})},
             {"reduction": reduction, **attrs}, positive=("pw",) if weights else ())
        for base, attrs in (
            ("l1_loss", {}), ("smooth_l1_loss", {"beta": 0.5}), ("huber_loss", {"delta": 0.8}),
            ("binary_cross_entropy_with_logits", {}),
        )
        for op in (base, f"{base}_backward")
        for weights in ((False, True) if base.startswith("binary") else (False,))
        for reduction in ("none", "mean")
    ),
    # optimizer updates
    *(
        case(f"sgd_update-{k}", "sgd_update", _SGD, attrs, values={"step": _step(step)})
        for k, (attrs, step) in enumerate([
            ({"lr": 0.1}, 1),
            ({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, 1),
            ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1}, 3),
            ({"lr": 0.05, "momentum": 0.9, "nesterov": True}, 2),
        ])
    ),
    *(
        case(f"adam_update-wd{wd}", "adam_update", _ADAM, {"lr": 0.01, "weight_decay": wd},
             values={"step": _step(3)})
        for wd in (0.0, 0.1)
    ),
    case("adam_update-decoupled", "adam_update", _ADAM,
         {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, values={"step": _step(2)}),
    *(
        case(f"rmsprop_update-{k}", "rmsprop_update", _RMSPROP, {"lr": 0.01, **attrs},
             values={"step": _step(2), "ga": lambda rng, shape: 0.1 * rng.standard_normal(shape)})
        for k, attrs in enumerate([
            {},
            {"weight_decay": 0.1, "momentum": 0.9},
            {"alpha": 0.9, "centered": True, "eps": 1e-6},
        ])
    ),
    *(
        case(f"adagrad_update-{k}", "adagrad_update", _ADAGRAD, attrs, values={"step": _step(3)})
        for k, attrs in enumerate([{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1}])
    ),
    case("clip_grad_norm_coef", "clip_grad_norm_coef",
         {"g0": (F, (3, 2)), "g1": (F, (4,)), "g2": (F, (N, 2))}, {"max_norm": 0.5}),
    case("clip_grad_norm_coef-unclipped", "clip_grad_norm_coef", {"g0": (D, (5,))}, {"max_norm": 100.0}),
]  # fmt: skip


def _saved_by(op: str) -> Callable:
    """What ``op``'s backward op reads: its output on :func:`_wide` values, or those values."""
    forward = registry.get(op)

    def values(rng: np.random.Generator, shape) -> np.ndarray:
        x = _wide(rng, shape).astype(np.float32)
        return forward.run_reference([x], forward.normalize({}))[0] if forward.saves == "output" else x

    return values


def _declared_activations(explicit: set[str]) -> list:
    """A case for each pointwise activation (and its backward op) without an explicit one,
    built from what the op declares: adding an activation needs no edit here."""
    cases = []
    for op in scalar.ops("unary", family="activation"):
        if op not in explicit:
            cases.append(case(op, op, {"x": (F, (N, 3, 4))}, values={"x": _wide}))
        backward = registry.get(op).backward
        if backward is not None and backward not in explicit:
            inputs = {"gy": (F, (N, 3, 4)), "s": (F, (N, 3, 4))}
            cases.append(case(backward, backward, inputs, values={"s": _saved_by(op)}))
    return cases


CASES += _declared_activations({p.values[0].op for p in CASES})

#: ops with no single-op case, and where they are tested instead
NOT_IN_TABLE = {
    "fusion": "a region op: its patterns run in tests/backends/numba_cuda/test_cuda_fusion.py, "
    "tests/backends/numba_cpu and the fuse pass tests",
}


@pytest.fixture(params=["reference", "numba-cpu", "numba-cuda"])
def backend(request, tmp_path_factory, monkeypatch) -> str:
    name = request.param
    if name not in AVAILABLE:
        pytest.skip(f"backend {name} is not available here")
    if name == "numba-cuda":  # kernel files to the session's CUDA cache, as the CUDA tests do
        monkeypatch.setenv(
            "CONVFORGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "convforge-cuda-cache")
        )
    return name


def op_graph(c: Case, promote: bool = False) -> Graph:
    """The one-node graph of case ``c``, every output returned; ``promote``: f32 inputs as f64."""
    g = Graph(c.op)
    values = [
        g.add_input(name, TensorType(D if promote and dtype == F else dtype, shape))
        for name, (dtype, shape) in c.inputs.items()
    ]
    out = g.call(c.op, *values, **c.attrs)
    g.set_outputs(list(out) if isinstance(out, tuple) else [out])
    return g


def case_inputs(c: Case, graph: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal floats, small non-negative integers, class labels below the class count
    (``Op.labels``), positive values where the op (``Op.positive``) or the case asks."""
    op = registry.get(c.op)
    names = list(c.inputs)
    labels = {names[i]: names[j] for i, j in op.labels.items()}
    positive = {names[i] for i in op.positive} | set(c.positive)
    out = {}
    for v in graph.inputs:
        shape = v.type.concrete(c.batch)
        given = c.values.get(v.name)
        if given is not None:
            arr = given(rng, shape) if callable(given) else given
        elif v.name in labels:
            arr = rng.integers(0, graph.inputs[names.index(labels[v.name])].shape[1], size=shape)
        elif v.type.is_float:
            arr = rng.standard_normal(shape)
            arr = np.abs(arr) + 0.5 if v.name in positive else arr
        else:
            arr = rng.integers(0, 3, size=shape)
        out[v.name] = np.asarray(arr).astype(v.type.np_dtype)
    return out


def run(backend: str, graph: Graph, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``graph`` compiled by ``backend`` with no passes (the op's own kernel), run on ``inputs``."""
    return [np.asarray(a) for a in get_backend(backend).compile_graph(graph, pipeline="").run(dict(inputs))]


@pytest.mark.parametrize("c", CASES)
def test_op_matches_reference_in_float64(backend, rng, c: Case):
    graph = op_graph(c)
    inputs = case_inputs(c, graph, rng)
    got = run(backend, graph, inputs)
    if c.exact:
        want = run("reference", graph, inputs)
    else:
        promoted = op_graph(c, promote=True)
        want = run("reference", promoted, {k: v.astype(np.float64) if v.dtype == np.float32 else v
                                           for k, v in inputs.items()})  # fmt: skip
    assert len(got) == len(want) == len(graph.outputs)
    for i, (g, w, declared) in enumerate(zip(got, want, graph.outputs)):
        what = f"output {i} of {c.op} on {backend}"
        assert g.shape == w.shape == declared.type.concrete(c.batch), f"{what}: shape {g.shape} != {w.shape}"
        assert g.dtype == declared.type.np_dtype, f"{what}: dtype {g.dtype} != {declared.type.np_dtype}"
        if c.exact or not declared.type.is_float:
            np.testing.assert_array_equal(g, w, err_msg=what)
        elif declared.type.dtype == F:
            np.testing.assert_allclose(g.astype(np.float64), w, err_msg=what, **F32_TOLERANCE)
        else:
            tol = tolerance(D, backend)
            np.testing.assert_allclose(g, w, rtol=tol.rtol, atol=tol.atol, err_msg=what)
    if c.check is not None:
        c.check(got)


def test_every_op_has_a_case():
    tabled = {p.values[0].op for p in CASES}
    assert not tabled & set(NOT_IN_TABLE), "an op both in the table and in NOT_IN_TABLE"
    assert sorted(set(registry.all_ops()) - tabled - set(NOT_IN_TABLE)) == []


def test_every_op_has_a_reference():
    """The oracle: every op but a region op has a NumPy reference."""
    missing = [n for n, op in registry.all_ops().items() if op._reference is None and not op.region]
    assert missing == []


# =========================================================================================
# Where each op's kernel lives
# =========================================================================================
#: ``(backend, op) -> why the backend has no lowering for it``; every other op must have one
KNOWN_GAPS: dict[tuple[str, str], str] = {}

NUMBA_BACKENDS = ["numba-cpu", "numba-cuda"]


def _kernels(backend: str):
    return importlib.import_module(BACKENDS[backend] + ".kernels")


@pytest.mark.parametrize("backend_name", NUMBA_BACKENDS)
def test_every_op_has_a_lowering_or_a_known_gap(backend_name):
    table = _kernels(backend_name).load_all()
    missing = sorted(
        op for op in registry.all_ops() if op not in table and (backend_name, op) not in KNOWN_GAPS
    )
    assert missing == [], f"{backend_name} has no lowering for {missing} and KNOWN_GAPS does not say why"
    stale = sorted(op for (b, op) in KNOWN_GAPS if b == backend_name and op in table)
    assert stale == [], f"KNOWN_GAPS lists {stale} for {backend_name}, which lowers them now"


@pytest.mark.parametrize("backend_name", NUMBA_BACKENDS)
def test_lowerings_live_in_their_family_file(backend_name):
    """``kernels/<family>.py`` mirrors ``ir/ops/<family>.py``: the op declared in a family's file
    is lowered (the lowering function defined and registered) in the same family's kernel file."""
    kernels = _kernels(backend_name)
    table = kernels.load_all()
    misplaced = {
        op: fn.__module__
        for op, fn in table.items()
        if fn.__module__ != f"{kernels.__name__}.{registry.get(op).family}"
    }
    assert misplaced == {}, f"{backend_name}: lowerings outside their op's family file (op: module)"
    families = {op.family for op in registry.all_ops().values()}
    assert set(kernels.FAMILIES) == families, "FAMILIES must be exactly the ir/ops families"
    folder = Path(kernels.__file__).parent
    assert sorted(f for f in families if not (folder / f"{f}.py").is_file()) == []


def test_the_simulator_is_on_for_numba_cuda():
    """numba-cuda runs here on Numba's simulator unless a GPU run asks otherwise."""
    if "numba-cuda" not in AVAILABLE:
        pytest.skip("numba-cuda is not available here")
    from convforge.backends.numba_cuda.runtime import load_cuda

    _, simulate = load_cuda()
    assert simulate == (os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"))
