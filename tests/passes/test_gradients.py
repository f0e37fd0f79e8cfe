"""Every VJP rule, checked through the autodiff pass on one-op graphs.

For each case of the table below: build ``y = op(inputs)``, append the probe loss
``L = <y, u>`` for a fixed random ``u``, run ``Autodiff``, then

* float64, reference backend: the inner-product identity against central finite
  differences along a random direction v of each differentiable input,
  ``(L(x + h v) - L(x - h v)) / 2h == <dL/dx, v>``;
* float32: each gradient against ``torch.autograd`` on the same function.

The probe loss is written as ``reshape(linear(reshape(y, [1, n]), u[1, n]), [])``, which
is exactly ``<y, u>`` (and adds no gradient op beyond the case's own). For a
multi-output op (``batch_norm_train``) the loss reads output 0; the other outputs are
statistics saved for the backward pass and carry no gradient by design.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import BACKENDS

from convforge.backends.reference import run_graph
from convforge.ir.graph import Graph
from convforge.ir.ops import registry, rng
from convforge.ir.types import TensorType
from convforge.passes.autodiff import Autodiff
from convforge.testing import FD_STEP, GRADCHECK, compare_arrays, tolerance

DOCS_OPS = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


@dataclass
class In:
    """One input: its shape and kind (``x`` differentiable float, ``const`` float without
    a gradient, ``pos`` positive float without a gradient, ``labels`` i64 classes, ``indices``
    distinct i64 flat indices into planes of ``classes`` elements, ``step``)."""

    shape: tuple[int, ...]
    kind: str = "x"
    classes: int = 0
    scale: float = 1.0  # of the standard normal values of an ``x`` or ``const`` input
    shift: float = 0.0  # added to them (a divisor kept away from 0)


@dataclass
class Case:
    op: str
    inputs: list[In]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}[{'x'.join(map(str, self.inputs[0].shape))}{';' + attrs if attrs else ''}]"


def X(*shape: int) -> In:
    return In(tuple(shape))


def POS(*shape: int) -> In:
    return In(tuple(shape), "pos")


STEP = In((), "step")

# -- the table: a few attribute/shape combinations per op with a VJP ------------------------
CASES: list[Case] = [
    # conv: stride 1-3, symmetric and asymmetric padding, dilation, groups, no bias
    Case("conv2d", [X(2, 2, 5, 5), X(3, 2, 3, 3), X(3)]),
    Case("conv2d", [X(1, 2, 7, 6), X(2, 2, 3, 2), X(2)], {"stride": (2, 3), "padding": (1, 2)}),
    Case("conv2d", [X(1, 2, 6, 6), X(2, 2, 2, 2)], {"stride": 3, "padding": (0, 1, 1, 0)}),
    Case("conv2d", [X(1, 4, 7, 7), X(4, 2, 3, 3), X(4)], {"dilation": (2, 1), "groups": 2, "padding": 1}),
    Case("conv2d", [X(2, 3, 4, 5), X(3, 1, 2, 3)], {"groups": 3, "padding": (1, 0, 0, 2), "stride": (1, 2)}),
    Case("conv2d", [X(2, 4, 5, 5), X(8, 1, 3, 3), X(8)], {"groups": 4, "padding": 1}),  # depthwise
    Case(
        "conv_transpose2d",
        [X(2, 3, 3, 4), X(3, 2, 3, 3), X(2)],
        {"stride": 2, "padding": 1, "output_padding": 1},
    ),
    Case(
        "conv_transpose2d",
        [X(1, 4, 3, 3), X(4, 1, 2, 3)],
        {"groups": 2, "dilation": (2, 1), "stride": (1, 2)},
    ),
    Case("conv1d", [X(2, 2, 7), X(3, 2, 3), X(3)], {"stride": 2, "padding": 1}),
    Case("conv1d", [X(1, 4, 8), X(2, 2, 2)], {"dilation": 3, "groups": 2, "padding": (0, 2)}),
    Case("linear", [X(3, 4), X(2, 4), X(2)]),
    Case("linear", [X(2, 3), X(4, 3)]),
    Case("matmul", [X(2, 3), X(3, 4)]),
    Case("matmul", [X(3, 2), X(4, 3)], {"transpose_a": True, "transpose_b": True}),
    Case("matmul", [X(2, 3), X(4, 3)], {"transpose_b": True}),
    # pools: padding, ceil_mode, dilation, count_include_pad, divisor_override
    Case("max_pool2d", [X(2, 2, 6, 6)], {"kernel_size": 2}),
    Case("max_pool2d", [X(1, 2, 7, 6)], {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    Case("max_pool2d", [X(1, 1, 7, 7)], {"kernel_size": (2, 3), "stride": 1, "dilation": (2, 1)}),
    Case("avg_pool2d", [X(2, 2, 6, 6)], {"kernel_size": 2}),
    Case("avg_pool2d", [X(1, 2, 7, 5)], {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    Case(
        "avg_pool2d",
        [X(1, 1, 6, 7)],
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False, "ceil_mode": True},
    ),  # fmt: skip
    Case("avg_pool2d", [X(1, 1, 5, 5)], {"kernel_size": 2, "stride": 1, "divisor_override": 3}),
    # ONNX's asymmetric pads (top, left, bottom, right)
    Case("max_pool2d", [X(1, 2, 6, 7)], {"kernel_size": 3, "stride": 2, "padding": (0, 1, 1, 0)}),
    Case("avg_pool2d", [X(1, 2, 6, 7)], {"kernel_size": 2, "stride": 2, "padding": (1, 0, 1, 1)}),
    Case(
        "avg_pool2d",
        [X(1, 1, 6, 5)],
        {
            "kernel_size": 3,
            "stride": 2,
            "padding": (0, 1, 1, 1),
            "count_include_pad": False,
            "ceil_mode": True,
        },
    ),  # fmt: skip
    Case("max_pool2d_with_indices", [X(1, 2, 7, 6)], {"kernel_size": 3, "stride": 2, "padding": 1}),
    Case("max_unpool2d", [X(2, 2, 2, 3), In((2, 2, 2, 3), "indices", classes=20)], {"output_size": (4, 5)}),
    Case("adaptive_avg_pool2d", [X(2, 2, 5, 7)], {"output_size": (2, 3)}),
    Case("adaptive_avg_pool2d", [X(1, 2, 4, 4)], {"output_size": 1}),
    # normalisation and dropout
    Case("batch_norm", [X(2, 3, 3, 3), X(3), X(3), In((3,), "const"), In((3,), "pos")]),
    Case("batch_norm", [X(4, 3), X(3), X(3), In((3,), "const"), In((3,), "pos")], {"eps": 1e-3}),
    Case("batch_norm_train", [X(2, 3, 3, 3), X(3), X(3), In((3,), "const"), In((3,), "pos")]),
    Case("batch_norm_train", [X(5, 2), X(2), X(2), In((2,), "const"), In((2,), "pos")], {"momentum": 0.3}),
    Case("batch_norm_train", [X(2, 2, 5), X(2), X(2), In((2,), "const"), In((2,), "pos")]),
    Case("local_response_norm", [X(2, 5, 2, 3)], {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 1.5}),
    Case("local_response_norm", [X(2, 4, 3)], {"size": 2, "alpha": 0.3, "beta": 1.2, "k": 2.0}),
    Case("layer_norm", [X(2, 3, 2, 4), X(2, 4), X(2, 4)], {"normalized_shape": (2, 4)}),
    Case("layer_norm", [X(3, 5), X(5)], {"normalized_shape": 5, "eps": 1e-3}),
    Case("layer_norm", [X(2, 3, 4)], {"normalized_shape": (3, 4)}),
    Case("group_norm", [X(2, 4, 3, 2), X(4), X(4)], {"num_groups": 2}),
    Case("group_norm", [X(3, 6, 4)], {"num_groups": 3}),
    Case("dropout", [X(2, 3, 4, 4), STEP], {"p": 0.5, "seed": 7}),
    Case("dropout", [X(3, 5), STEP], {"p": 0.2, "seed": 0}),
    # activations
    Case("relu", [X(2, 3, 4)]),
    Case("relu6", [In((3, 4, 5), scale=5.0)]),  # values on both sides of 0 and 6
    Case("leaky_relu", [X(2, 3, 4)]),
    Case("leaky_relu", [X(2, 5)], {"negative_slope": 0.3}),
    Case("sigmoid", [X(2, 3, 4)]),
    Case("tanh", [X(2, 3, 4)]),
    Case("elu", [In((2, 3, 4), scale=2.0)]),
    Case("elu", [In((2, 5), scale=2.0)], {"alpha": -0.5}),  # reads the input: elu_backward_input
    Case("hardtanh", [In((3, 5), scale=3.0)], {"min_val": -2.0, "max_val": 2.5}),
    Case("hardsigmoid", [In((3, 5), scale=4.0)]),
    Case("softplus", [In((3, 5), scale=3.0)], {"beta": 2.0, "threshold": 4.0}),
    Case("gelu", [In((2, 3, 4), scale=2.0)]),
    Case("gelu_tanh", [In((2, 3, 4), scale=2.0)]),
    Case("silu", [In((2, 3, 4), scale=3.0)]),
    Case("hardswish", [In((3, 5), scale=4.0)]),
    Case("mish", [In((2, 3, 4), scale=3.0)]),
    Case("softmax", [X(3, 5)]),
    Case("softmax", [X(2, 3, 2, 2)], {"dim": -1}),
    Case("softmax", [X(3, 4)], {"dim": 0}),
    Case("log_softmax", [X(3, 5)]),
    Case("log_softmax", [X(2, 3, 2, 2)], {"dim": 2}),
    # losses
    Case("cross_entropy", [X(4, 5), In((4,), "labels", classes=5)]),
    Case("cross_entropy", [X(3, 2), In((3,), "labels", classes=2)], {"reduction": "sum"}),
    Case("mse_loss", [X(3, 4), X(3, 4)]),
    Case("mse_loss", [X(2, 2, 3), X(2, 2, 3)], {"reduction": "sum"}),
    Case("l1_loss", [X(3, 4), X(3, 4)]),
    Case("l1_loss", [X(2, 3), X(2, 3)], {"reduction": "sum"}),
    Case("smooth_l1_loss", [X(3, 4), X(3, 4)], {"beta": 0.5}),
    Case("huber_loss", [X(3, 4), X(3, 4)], {"delta": 0.7, "reduction": "sum"}),
    Case("nll_loss", [X(4, 5), In((4,), "labels", classes=5)]),
    Case("nll_loss", [X(5, 3), In((5,), "labels", classes=3), In((3,), "pos")], {"ignore_index": 1}),
    Case("binary_cross_entropy_with_logits", [X(3, 4), In((3, 4), "pos")]),
    Case("binary_cross_entropy_with_logits", [X(2, 3), POS(2, 3), POS(3), POS(3)], {"reduction": "sum"}),
    # collectives: one process (the LOCAL communicator), where all_reduce is the identity
    Case("all_reduce", [X(2, 3)]),
    Case("channel_count", [X(2, 3, 4)]),
    # x, weight, bias, mean (with gradients), var, running mean and var, count
    Case("sync_batch_norm", [X(2, 3, 2, 2), X(3), X(3), X(3), POS(3), In((3,), "const"), POS(3), POS(1)]),
    # elementwise and relayouts
    Case("add", [X(2, 3, 2), X(2, 3, 2)]),
    Case("mul", [X(2, 3, 2), X(2, 3, 2)]),
    Case("add", [X(2, 3, 2, 2), X(3, 1, 1)]),  # a per-channel operand
    Case("mul", [X(1), X(2, 3, 2)]),  # a scalar-like operand
    Case("sub", [X(2, 3, 1), X(1, 4)]),
    Case("sub", [X(2, 3), X(2, 3)]),
    Case("div", [X(2, 1, 3), In((2, 1), scale=0.3, shift=2.0)]),
    Case("add_n", [X(2, 3), X(3), X(2, 1)]),
    Case("scale", [X(3, 4)], {"factor": -2.5}),
    Case("add_scalar", [X(3, 4)], {"value": 1.5}),
    Case("neg", [X(3, 4)]),
    Case("reciprocal", [In((3, 4), scale=0.3, shift=2.0)]),
    Case("reduce_sum", [X(2, 3, 2, 2)], {"dims": (1, 3), "keepdim": True}),
    Case("reduce_sum", [X(2, 3)], {"dims": (0,)}),
    Case("reduce_mean", [X(2, 3, 2, 2)], {"dims": (2, 3)}),
    Case("reduce_mean", [X(2, 3, 2)], {"dims": (0, 1, 2)}),
    Case("reduce_max", [X(2, 3, 4)], {"dims": (-1,)}),
    Case("reduce_max", [X(2, 3, 2)], {"dims": (0, 2), "keepdim": True}),
    Case("transpose", [X(2, 3, 2, 2)], {"perm": (0, 2, 3, 1)}),
    Case("transpose", [X(2, 3, 4)], {"perm": (1, 0, 2)}),
    Case("slice", [X(2, 6, 2)], {"dim": 1, "start": 1, "stop": 6, "step": 2}),
    Case("slice", [X(2, 3, 4)], {"dim": -1, "start": 0, "stop": 2}),
    Case("cast", [X(3, 4)], {"dtype": "f64"}),
    Case("concat", [X(2, 1, 3), X(2, 3, 3), X(2, 2, 3)]),
    Case("concat", [X(2, 3), X(1, 3)], {"dim": 0}),
    Case("concat", [X(1, 2, 2, 2), X(1, 2, 2, 3)], {"dim": -1}),
    *(
        Case("pad", [X(2, 2, 4, 5)], {"pads": (0, 0, 1, 3, 0, 0, 2, 1), "mode": mode})
        for mode in ("constant", "reflect", "replicate", "circular")
    ),
    Case("pad", [X(2, 5, 4)], {"pads": (0, -1, 2, 0, 1, -1), "value": 2.0}),
    Case("interpolate", [X(2, 2, 3, 4)], {"size": (7, 8)}),
    Case("interpolate", [X(1, 2, 5, 4)], {"size": (8, 2), "mode": "nearest-exact", "scales": (1.7, 0.6)}),
    Case("interpolate", [X(2, 1, 3, 4)], {"size": (5, 9), "mode": "bilinear"}),
    Case("interpolate", [X(1, 2, 4, 3)], {"size": (7, 2), "mode": "bilinear", "align_corners": True}),
    Case("interpolate", [X(1, 1, 4, 5)], {"size": (5, 6), "mode": "bilinear", "scales": (1.3, 1.3)}),
    Case("flatten", [X(2, 3, 2, 2)]),
    Case("flatten", [X(2, 3, 2, 2)], {"start_dim": 0, "end_dim": 2}),
    Case("reshape", [X(2, 3, 4)], {"shape": (4, 6)}),
    Case("reshape", [X(2, 6)], {"shape": (2, 3, 2)}),
]

#: ops with no VJP by design: backward ops, optimizer updates, constants, and the ops made
#: by passes that run after autodiff (fuse: max_pool2d_argmax; fold_batchnorm: bn_fold_*). The "fusion"
#: family of docs/ops.md (the fusion op) is made by fuse, so it is exempt too.
NOT_DIFFERENTIABLE = {
    "sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "clip_grad_norm_coef",
    "ones_like", "zeros_like",
    "max_pool2d_argmax", "bn_fold_weight", "bn_fold_weight_transposed", "bn_fold_bias",
}  # fmt: skip
EXEMPT_FAMILIES = {"fusion"}


# -- building and running ------------------------------------------------------------------
def _make_inputs(case: Case, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    np_dtype = TensorType(dtype, ()).np_dtype
    arrays = {}
    for i, spec in enumerate(case.inputs):
        if spec.kind == "indices":  # distinct flat indices into a plane of ``classes`` elements
            flat = np.stack([r.permutation(spec.classes)[: int(np.prod(spec.shape[2:]))] for _ in range(
                spec.shape[0] * spec.shape[1])])  # fmt: skip
            arrays[f"in{i}"] = flat.reshape(spec.shape).astype(np.int64)
        elif spec.kind == "labels":
            arrays[f"in{i}"] = r.integers(0, spec.classes, spec.shape).astype(np.int64)
        elif spec.kind == "step":
            arrays[f"in{i}"] = np.asarray(3, dtype=np.int64)
        elif spec.kind == "pos":
            arrays[f"in{i}"] = r.uniform(0.5, 2.0, spec.shape).astype(np_dtype)
        else:
            arrays[f"in{i}"] = (r.standard_normal(spec.shape) * spec.scale + spec.shift).astype(np_dtype)
    return arrays


def _build(case: Case, arrays: dict[str, np.ndarray]) -> tuple[Graph, list[str], np.ndarray]:
    """The one-op graph with its probe loss, differentiated; returns (graph, wrt names, u)."""
    g = Graph(case.op)
    ins = []
    for i in range(len(case.inputs)):
        a = arrays[f"in{i}"]
        dtype = {np.dtype(np.int64): "i64", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[a.dtype]
        ins.append(g.add_input(f"in{i}", TensorType(dtype, a.shape)))
    out = g.call(case.op, *ins, **case.attrs)
    y = out[0] if isinstance(out, tuple) else out
    n = int(np.prod(y.shape, dtype=np.int64))
    u = g.add_input("u", TensorType(y.dtype, (1, n)))
    flat = g.call("reshape", y, shape=(1, n))
    loss = g.call("reshape", g.call("linear", flat, u), shape=())
    g.set_outputs([loss])
    wrt = [f"in{i}" for i, spec in enumerate(case.inputs) if spec.kind == "x"]
    Autodiff(wrt="|".join(wrt)).run(g)
    g.verify()
    u_arr = np.random.default_rng(99).standard_normal((1, n)).astype(TensorType(y.dtype, ()).np_dtype)
    return g, wrt, u_arr


def _loss_and_grads(g: Graph, arrays: dict[str, np.ndarray], u: np.ndarray):
    outs = run_graph(g, {**arrays, "u": u})
    return float(outs[0]), outs[1:]


# -- float64: finite differences -----------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_vjp_matches_finite_differences_in_float64(case: Case):
    arrays = _make_inputs(case, "f64")
    g, wrt, u = _build(case, arrays)
    loss, grads = _loss_and_grads(g, arrays, u)
    r = np.random.default_rng(1)
    for name, grad in zip(wrt, grads):
        assert grad.shape == arrays[name].shape and grad.dtype == np.float64
        for _ in range(2):
            v = r.standard_normal(arrays[name].shape)
            plus, _ = _loss_and_grads(g, {**arrays, name: arrays[name] + FD_STEP * v}, u)
            minus, _ = _loss_and_grads(g, {**arrays, name: arrays[name] - FD_STEP * v}, u)
            fd = (plus - minus) / (2 * FD_STEP)
            analytic = float(np.sum(grad * v))
            bound = GRADCHECK.rtol * float(np.sum(np.abs(grad * v))) + GRADCHECK.atol * max(1.0, abs(loss))
            assert abs(fd - analytic) <= bound, (
                f"{case.id}: d/d{name} along v: finite differences {fd!r}, <grad, v> = {analytic!r} "
                f"(|diff| {abs(fd - analytic):.3g} > {bound:.3g})"
            )


# -- float32: torch.autograd ---------------------------------------------------------------
def _pads(padding: Any, nd: int) -> tuple[tuple[int, ...], list[int]]:
    """(symmetric padding for torch, F.pad list) from an IR padding attribute."""
    p = (padding,) * nd if isinstance(padding, int) else tuple(padding)
    if len(p) == nd:
        return p, []
    lo, hi = p[:nd], p[nd:]
    flat: list[int] = []
    for a, b in reversed(list(zip(lo, hi))):  # F.pad wants the last dim first
        flat += [a, b]
    return (0,) * nd, flat


def _torch_op(case: Case, t: list[torch.Tensor]) -> torch.Tensor:
    a = dict(registry.get(case.op).normalize(case.attrs))
    op = case.op
    if op in ("conv2d", "conv1d"):
        nd = 2 if op == "conv2d" else 1
        pad, flat = _pads(a["padding"], nd)
        x = TF.pad(t[0], flat) if flat else t[0]
        fn = TF.conv2d if nd == 2 else TF.conv1d
        return fn(x, t[1], t[2] if len(t) > 2 else None, a["stride"], pad, a["dilation"], a["groups"])
    if op == "conv_transpose2d":
        return TF.conv_transpose2d(t[0], t[1], t[2] if len(t) > 2 else None, a["stride"], a["padding"],
                                   a["output_padding"], a["groups"], a["dilation"])  # fmt: skip
    if op == "linear":
        return TF.linear(*t)
    if op == "matmul":
        return (t[0].T if a["transpose_a"] else t[0]) @ (t[1].T if a["transpose_b"] else t[1])
    if op in ("max_pool2d", "avg_pool2d") and len(a["padding"]) == 4:
        return _asymmetric_pool(op, t[0], a)
    if op == "max_pool2d":
        return TF.max_pool2d(t[0], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    if op == "avg_pool2d":
        return TF.avg_pool2d(t[0], a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                             a["count_include_pad"], a["divisor_override"])  # fmt: skip
    if op == "max_pool2d_with_indices":
        return TF.max_pool2d(t[0], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    if op == "max_unpool2d":  # the scatter PyTorch's max_unpool2d is, of distinct indices
        n, c = t[0].shape[:2]
        flat = torch.zeros(n, c, a["output_size"][0] * a["output_size"][1], dtype=t[0].dtype)
        return flat.scatter(2, t[1].reshape(n, c, -1), t[0].reshape(n, c, -1)).reshape(
            n, c, *a["output_size"]
        )
    if op == "adaptive_avg_pool2d":
        return TF.adaptive_avg_pool2d(t[0], a["output_size"])
    if op in ("batch_norm", "batch_norm_train"):
        training = op == "batch_norm_train"
        return TF.batch_norm(t[0], t[3].detach().clone(), t[4].detach().clone(), t[1], t[2], training,
                             a.get("momentum", 0.1), a["eps"])  # fmt: skip
    if op == "layer_norm":
        return TF.layer_norm(t[0], a["normalized_shape"], *t[1:], eps=a["eps"])
    if op == "group_norm":
        return TF.group_norm(t[0], a["num_groups"], *t[1:], eps=a["eps"])
    if op == "local_response_norm":
        if a["before"] != a["size"] // 2:
            raise AssertionError("torch's window starts size // 2 channels before")
        return TF.local_response_norm(t[0], a["size"], a["alpha"], a["beta"], a["k"])
    if op == "dropout":
        keep = rng.uniform_array(a["seed"], 3, tuple(t[0].shape)) >= a["p"]
        return t[0] * torch.from_numpy(keep.astype(np.float32)) / (1.0 - a["p"])
    if op == "relu":
        return TF.relu(t[0])
    if op == "relu6":
        return TF.relu6(t[0])
    if op == "leaky_relu":
        return TF.leaky_relu(t[0], a["negative_slope"])
    if op == "sigmoid":
        return torch.sigmoid(t[0])
    if op == "tanh":
        return torch.tanh(t[0])
    if op == "elu":
        return TF.elu(t[0], a["alpha"])
    if op == "hardtanh":
        return TF.hardtanh(t[0], a["min_val"], a["max_val"])
    if op == "hardsigmoid":
        return TF.hardsigmoid(t[0])
    if op == "softplus":
        return TF.softplus(t[0], a["beta"], a["threshold"])
    if op in ("gelu", "gelu_tanh"):
        return TF.gelu(t[0], approximate="tanh" if op == "gelu_tanh" else "none")
    if op in ("silu", "hardswish", "mish"):
        return getattr(TF, op)(t[0])
    if op == "softmax":
        return TF.softmax(t[0], a["dim"])
    if op == "log_softmax":
        return TF.log_softmax(t[0], a["dim"])
    if op == "cross_entropy":
        return TF.cross_entropy(t[0], t[1], reduction=a["reduction"])
    if op == "mse_loss":
        return TF.mse_loss(t[0], t[1], reduction=a["reduction"])
    if op in ("l1_loss", "smooth_l1_loss", "huber_loss"):
        options = {"smooth_l1_loss": {"beta": a.get("beta")}, "huber_loss": {"delta": a.get("delta")}}
        return getattr(TF, op)(t[0], t[1], reduction=a["reduction"], **options.get(op, {}))
    if op == "nll_loss":
        weight = t[2] if len(t) > 2 else None
        return TF.nll_loss(t[0], t[1], weight, ignore_index=a["ignore_index"], reduction=a["reduction"])
    if op == "binary_cross_entropy_with_logits":
        weight, pos_weight = (t[2], t[3]) if len(t) > 3 else (None, None)
        return TF.binary_cross_entropy_with_logits(
            t[0], t[1], weight, reduction=a["reduction"], pos_weight=pos_weight
        )
    if op == "all_reduce":
        return t[0].clone()
    if op == "channel_count":  # a constant of x's shape: zero gradient
        return t[0].new_full((1,), float(t[0].numel() // t[0].shape[1])) + 0 * t[0].sum()
    if op == "sync_batch_norm":  # batch norm with the given statistics, differentiable in them
        shape = (1, -1) + (1,) * (t[0].dim() - 2)
        invstd = torch.rsqrt(t[4] + a["eps"]).reshape(shape)
        return (t[0] - t[3].reshape(shape)) * invstd * t[1].reshape(shape) + t[2].reshape(shape)
    if op == "add":
        return t[0] + t[1]
    if op == "sub":
        return t[0] - t[1]
    if op == "mul":
        return t[0] * t[1]
    if op == "div":
        return t[0] / t[1]
    if op == "add_n":
        return sum(t[1:], t[0])
    if op == "add_scalar":
        return t[0] + a["value"]
    if op == "neg":
        return -t[0]
    if op == "reciprocal":
        return 1.0 / t[0]
    if op in ("reduce_sum", "reduce_mean", "reduce_max"):
        fn = {"reduce_sum": torch.sum, "reduce_mean": torch.mean, "reduce_max": torch.amax}[op]
        return fn(t[0], a["dims"], keepdim=a["keepdim"])
    if op == "transpose":
        return t[0].permute(a["perm"])
    if op == "slice":
        index = [slice(None)] * t[0].dim()
        index[a["dim"]] = slice(a["start"], a["stop"], a["step"])
        return t[0][tuple(index)]
    if op == "scale":
        return t[0] * a["factor"]
    if op == "cast":
        return t[0].to(torch.float64 if a["dtype"] == "f64" else torch.float32)
    if op == "concat":
        return torch.cat(t, a["dim"])
    if op == "interpolate":
        if a["scales"] is not None:  # the output size floor(in * scale) with torch's coordinates
            return TF.interpolate(t[0], scale_factor=a["scales"], mode=a["mode"])
        corners = a["align_corners"] if a["mode"] == "bilinear" else None
        return TF.interpolate(t[0], size=a["size"], mode=a["mode"], align_corners=corners)
    if op == "pad":
        rank = t[0].dim()
        flat = [p for d in reversed(range(rank)) for p in (a["pads"][d], a["pads"][d + rank])]
        while flat[-2:] == [0, 0]:  # torch's non-constant modes take the padded trailing dims only
            flat = flat[:-2]
        value = a["value"] if a["mode"] == "constant" else None
        return TF.pad(t[0], flat, mode=a["mode"], value=value)
    if op == "flatten":
        return torch.flatten(t[0], a["start_dim"], a["end_dim"])
    if op == "reshape":
        return t[0].reshape(a["shape"])
    raise AssertionError(f"no torch twin for op {op}; add one to _torch_op")


def _asymmetric_pool(op: str, x: torch.Tensor, a: dict) -> torch.Tensor:
    """ONNX's (top, left, bottom, right) pads, which torch's pools lack: the padding made
    explicit (-inf for max), or, for an average without the padding in its divisor, the
    window sums over the zero-padded input divided by each window's count of real pixels."""
    top, left, bottom, right = a["padding"]
    flat = [left, right, top, bottom]
    if op == "max_pool2d":
        xp = TF.pad(x, flat, value=-math.inf)
        return TF.max_pool2d(xp, a["kernel_size"], a["stride"], 0, a["dilation"], a["ceil_mode"])
    if a["count_include_pad"] and not a["ceil_mode"]:
        return TF.avg_pool2d(TF.pad(x, flat), a["kernel_size"], a["stride"], 0)
    k = a["kernel_size"]
    ones = torch.ones_like(x[:1, :1])
    sums, counts = (
        TF.avg_pool2d(TF.pad(v, flat), k, a["stride"], 0, a["ceil_mode"], divisor_override=1)
        for v in (x, ones)
    )
    return sums / counts


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_vjp_matches_torch_autograd_in_float32(case: Case):
    arrays = _make_inputs(case, "f32")
    g, wrt, u = _build(case, arrays)
    _, grads = _loss_and_grads(g, arrays, u)
    tensors = [torch.from_numpy(arrays[f"in{i}"].copy()) for i in range(len(case.inputs))]
    for i, spec in enumerate(case.inputs):
        if spec.kind == "x":
            tensors[i].requires_grad_(True)
    y = _torch_op(case, tensors)
    (y.reshape(-1) * torch.from_numpy(u.reshape(-1))).sum().backward()
    tol = tolerance("f32", "reference", "torch")
    for name, grad in zip(wrt, grads):
        want = tensors[int(name[2:])].grad.numpy()
        assert grad.dtype == np.float32
        mismatch = compare_arrays(grad, want, tol)
        assert mismatch is None, f"{case.id}: gradient of {name}: {mismatch.describe('convforge', 'torch')}"


# -- coverage ------------------------------------------------------------------------------
def test_every_op_with_a_vjp_is_in_the_table():
    covered = {c.op for c in CASES}
    with_vjp = {name for name, op in registry.all_ops().items() if op.has_vjp}
    missing = sorted(with_vjp - covered)
    assert not missing, f"ops with a VJP but no gradient test case: {', '.join(missing)}; add them to CASES"
    stale = sorted(covered - with_vjp)
    assert not stale, f"CASES lists ops without a VJP: {', '.join(stale)}"


def _documented_ops() -> list[tuple[str, str]]:
    """(family, op) for every op named in the table of docs/ops.md."""
    rows = []
    for line in DOCS_OPS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and line.lstrip().startswith("|"):
            rows += [(cells[0], name) for name in re.findall(r"`([a-z0-9_]+)`", cells[1])]
    return rows


def test_every_differentiable_documented_op_has_a_vjp():
    documented = _documented_ops()
    assert ("conv", "conv2d") in documented and ("pool", "max_pool2d") in documented, (
        "docs/ops.md table not found"
    )
    ops = registry.all_ops()
    forward = [
        name
        for family, name in documented
        if "_backward" not in name and name not in NOT_DIFFERENTIABLE and family not in EXEMPT_FAMILIES
    ]
    unknown = sorted(n for n in forward if n not in ops)
    assert not unknown, f"docs/ops.md lists ops no family registers: {', '.join(unknown)}"
    without = sorted(n for n in forward if not ops[n].has_vjp)
    assert not without, f"differentiable ops without a VJP: {', '.join(without)}"


# -- every backend runs the same joint graphs ----------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", [*BACKENDS, "numba-cuda"])
def test_joint_graph_agrees_on_every_backend(case: Case, backend: str):
    """Forward + the VJP-derived backward of each case, compiled by ``backend`` (the shared
    backends of tests/conftest.py, and numba-cuda: on its simulator the cases are small
    enough), equals the reference in float32."""
    from convforge.backends import get_backend

    arrays = _make_inputs(case, "f32")
    g, wrt, u = _build(case, arrays)
    inputs = {**arrays, "u": u}
    want = run_graph(g, inputs)
    got = get_backend(backend).compile_graph(g, training=True).run(inputs)
    names = ["loss", *(f"d/d{name}" for name in wrt)]
    for label, a, b in zip(names, got, want):
        mismatch = compare_arrays(a, b, tolerance("f32", "reference", backend))
        assert mismatch is None, f"{case.id} {label} on {backend}: {mismatch}"
