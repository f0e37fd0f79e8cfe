"""Elementwise ops and reductions.

* Binary ops with NumPy / PyTorch broadcasting: ``add``, ``sub``, ``mul``, ``div``, and
  ``add_n`` (the sum of n inputs, ONNX ``Sum``). The gradient of a broadcast operand is
  the output gradient summed over the dims broadcasting stretched (``reduce_sum`` then
  ``reshape``: :func:`reduce_to`).
* Ops with one tensor and a Python scalar: ``scale`` (``factor * x``), ``add_scalar``
  (``x + value``); and ``neg``, ``reciprocal``. ``1.0 - x`` is ``add_scalar(neg(x), 1.0)``,
  ``2 / x`` is ``scale(reciprocal(x), 2.0)``: one meaning per op.
* Reductions over any set of dims, with ``keepdim``: ``reduce_sum``, ``reduce_mean``,
  ``reduce_max`` (its gradient is shared evenly by tied maxima, as ``torch.amax``'s).
* ``ones_like``, ``zeros_like``, ``cast``.

``add`` is also how autodiff sums the gradients of a value used twice, and how a residual
block is written (``x + f(x)``): operands of one shape need no broadcasting at all. A
binary op is never a fused epilogue (the fuse pass takes unary ones only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, expect_same_dtype
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import DTYPES, Dim, TensorType

E = FusionKind.ELEMENTWISE
R = FusionKind.REDUCE


# -- broadcasting -------------------------------------------------------------------------
def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """NumPy's broadcast of ``shapes`` (aligned at the right; a 1 stretches). The batch
    symbol ``N`` broadcasts with itself and with 1, never with another size."""
    rank = max((len(s) for s in shapes), default=0)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out: list[Dim] = []
    for i, dims in enumerate(zip(*padded)):
        sizes = sorted({d for d in dims if d != 1}, key=str)
        if len(sizes) > 1:
            given = " and ".join(str(list(s)) for s in shapes)
            raise ShapeError(
                f"shapes {given} do not broadcast: dim {i - rank} is {sizes[0]} in one "
                f"and {sizes[1]} in another"
            )
        out.append(sizes[0] if sizes else 1)
    return tuple(out)


Groups = list[tuple[list[Dim], tuple[bool, ...]]]


def broadcast_groups(out: Sequence[Dim], shapes: Sequence[Sequence[Dim]]) -> Groups:
    """The iteration space of a broadcasting op, as kernels loop over it: ``out``'s dims,
    those of size 1 dropped, adjacent ones merged while every operand is broadcast along
    both or along neither. Each group is ``(its dims of out, per operand: broadcast?)``;
    there is at least one group. ``[N,C,H,W] + [C,1,1]`` is ``[N] (b), [C] (-), [H,W] (b)``.
    """
    rank = len(out)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    groups: list[tuple[list[Dim], tuple[bool, ...]]] = []
    for i, d in enumerate(out):
        if d == 1:
            continue
        status = tuple(p[i] == 1 for p in padded)
        if groups and groups[-1][1] == status:
            groups[-1][0].append(d)
        else:
            groups.append(([d], status))
    return groups or [([1], tuple(False for _ in shapes))]


def reduce_to(g, grad, shape: Sequence[Dim]):
    """IR for ``grad`` (a broadcast result) summed back to an operand of ``shape``: the VJP of
    broadcasting. ``grad`` itself when nothing was broadcast."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = grad.type.rank - len(shape)
    dims = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and grad.shape[lead + i] != 1
    )
    summed = g.call("reduce_sum", grad, dims=dims, keepdim=True) if dims else grad
    return summed if tuple(summed.shape) == shape else g.call("reshape", summed, shape=shape)


def _broadcast(*xs: TensorType) -> TensorType:
    expect_same_dtype(*xs)
    return xs[0].with_shape(broadcast_shapes(*(x.shape for x in xs)))


# -- add / sub / mul / div ------------------------------------------------------------------
add = Op("add", fusion=E, doc="a + b (broadcasting)", scalar="({a} + {b})")
add.shape(_broadcast)


@add.reference
def _(a, b):
    return a + b


@add.vjp
def _(g, node, gy):
    a, b = node.inputs
    return (reduce_to(g, gy, a.shape), reduce_to(g, gy, b.shape))


sub = Op("sub", fusion=E, doc="a - b (broadcasting)", scalar="({a} - {b})")
sub.shape(_broadcast)


@sub.reference
def _(a, b):
    return a - b


@sub.vjp
def _(g, node, gy):
    a, b = node.inputs
    return (reduce_to(g, gy, a.shape), reduce_to(g, g.call("neg", gy), b.shape))


mul = Op("mul", fusion=E, doc="a * b (broadcasting)", scalar="({a} * {b})")
mul.shape(_broadcast)


@mul.reference
def _(a, b):
    return a * b


@mul.vjp
def _(g, node, gy):
    a, b = node.inputs
    return (reduce_to(g, g.call("mul", gy, b), a.shape), reduce_to(g, g.call("mul", gy, a), b.shape))


div = Op("div", fusion=E, doc="a / b (broadcasting; true division, floats)", scalar="({a} / {b})")


@div.shape
def _(a, b):
    expect_float(a, "dividend")
    return _broadcast(a, b)


@div.reference
def _(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


@div.vjp
def _(g, node, gy):
    # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -(1/b) * y
    a, b = node.inputs
    ga = g.call("div", gy, b)
    gb = g.call("neg", g.call("mul", ga, node.output))
    return (reduce_to(g, ga, a.shape), reduce_to(g, gb, b.shape))


# -- add_n ----------------------------------------------------------------------------------
add_n = Op("add_n", fusion=E, doc="x0 + x1 + ... (n >= 1 inputs, broadcasting; ONNX Sum)")


@add_n.shape
def _(*xs):
    if not xs:
        raise ShapeError("add_n expects at least one input, got none")
    return _broadcast(*xs)


@add_n.reference
def _(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return np.array(np.broadcast_to(out, broadcast_shapes(*(x.shape for x in xs))))


@add_n.vjp
def _(g, node, gy):
    return tuple(reduce_to(g, gy, x.shape) for x in node.inputs)


# -- one tensor and a scalar ----------------------------------------------------------------
def _number(name: str, value) -> dict:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeValueError(f"{name} must be a number, got {value!r}")
    return {name: float(value)}


def _same_float(x: TensorType, **_: object) -> TensorType:
    expect_float(x)
    return x


scale = Op("scale", fusion=E, attrs={"factor": 1.0}, doc="factor * x", scalar="({x} * {factor})")
scale.check(lambda factor: _number("factor", factor))
scale.shape(_same_float)


@scale.reference
def _(x, factor):
    return x * x.dtype.type(factor)


@scale.vjp
def _(g, node, gy):
    return (g.call("scale", gy, **node.attrs),)


add_scalar = Op("add_scalar", fusion=E, attrs={"value": 0.0}, doc="x + value", scalar="({x} + {value})")
add_scalar.check(lambda value: _number("value", value))
add_scalar.shape(_same_float)


@add_scalar.reference
def _(x, value):
    return x + x.dtype.type(value)


@add_scalar.vjp
def _(g, node, gy):
    return (gy,)


neg = Op("neg", fusion=E, doc="-x", scalar="(-{x})")
neg.shape(_same_float)


@neg.reference
def _(x):
    return -x


@neg.vjp
def _(g, node, gy):
    return (g.call("neg", gy),)


reciprocal = Op(
    "reciprocal", fusion=E, doc="1 / x", scalar="(1.0 / {x})",
    backward="reciprocal_backward", saves="output",
)  # fmt: skip
reciprocal.shape(_same_float)


@reciprocal.reference
def _(x):
    with np.errstate(divide="ignore"):
        return x.dtype.type(1) / x


reciprocal_backward = Op(
    "reciprocal_backward", fusion=E, doc="-gy * y * y (y = 1 / x)", scalar="(-{g} * {s} * {s})"
)


@reciprocal_backward.shape
def _(gy, y):
    expect_float(gy, "gradient")
    if gy.shape != y.shape:
        raise ShapeError(f"expected gradient and saved tensor of the same shape, got {gy} and {y}")
    return gy


@reciprocal_backward.reference
def _(gy, y):
    return -gy * y * y


# -- reductions -----------------------------------------------------------------------------
def _check_dims(dims, keepdim) -> dict:
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if isinstance(dims, list):
        dims = tuple(dims)
    if not isinstance(dims, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise AttributeValueError(f"dims must be a tuple of ints, got {dims!r}")
    return {"dims": dims, "keepdim": bool(keepdim)}


def reduced_dims(x: TensorType | Sequence[Dim], dims: Sequence[int]) -> tuple[int, ...]:
    """``dims`` of a tensor of ``x``'s rank made non-negative and sorted; an error when one is
    out of range or repeats. ``()`` reduces nothing (NumPy's meaning)."""
    rank = x.rank if isinstance(x, TensorType) else len(x)
    out = []
    for d in dims:
        if not -rank <= d < max(rank, 1):
            raise AttributeValueError(f"dim {d} is out of range for rank {rank}")
        out.append(d % rank if rank else 0)
    if len(set(out)) != len(out):
        raise AttributeValueError(f"dims {tuple(dims)} repeat a dimension")
    return tuple(sorted(out)) if rank else ()


def reduced_shape(shape: Sequence[Dim], dims: Sequence[int], keepdim: bool) -> tuple[Dim, ...]:
    """The shape a reduction over ``dims`` (already from :func:`reduced_dims`) leaves."""
    if keepdim:
        return tuple(1 if i in dims else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in dims)


def reduce_groups(shape: Sequence[Dim], dims: Sequence[int]) -> list[tuple[bool, list[Dim]]]:
    """A reduction's loop nest, as kernels run it: ``shape``'s dims, those of size 1 dropped,
    adjacent ones merged while all are reduced or all kept: ``[(reduced?, dims)]``. A bias
    gradient, ``[N,C,H,W]`` over ``(0, 2, 3)``, is ``(True, [N]), (False, [C]), (True, [H, W])``."""
    groups: list[tuple[bool, list[Dim]]] = []
    for i, d in enumerate(shape):
        if d == 1:
            continue
        reduced = i in dims
        if groups and groups[-1][0] == reduced:
            groups[-1][1].append(d)
        else:
            groups.append((reduced, [d]))
    return groups


def _reduction_shape(x: TensorType, dims, keepdim, *, nonempty: bool = False) -> TensorType:
    expect_float(x)
    reduced = reduced_dims(x, dims)
    if nonempty and any(x.shape[d] == 0 for d in reduced):
        raise ShapeError(f"cannot reduce {x} over an empty dimension (dims {tuple(dims)})")
    return x.with_shape(reduced_shape(x.shape, reduced, keepdim))


reduce_sum = Op(
    "reduce_sum", fusion=R, attrs={"dims": (), "keepdim": False},
    doc="sum over dims (a bias gradient is reduce_sum(gy, dims=(0, 2, 3)))",
)  # fmt: skip
reduce_sum.check(_check_dims)
reduce_sum.shape(_reduction_shape)


@reduce_sum.reference
def _(x, dims, keepdim):
    return np.asarray(x.sum(axis=reduced_dims(x.shape, dims), keepdims=keepdim), dtype=x.dtype)


@reduce_sum.vjp
def _(g, node, gy):
    return (g.call("reduce_sum_backward", gy, node.inputs[0], **node.attrs),)


reduce_mean = Op("reduce_mean", fusion=R, attrs={"dims": (), "keepdim": False}, doc="mean over dims")
reduce_mean.check(_check_dims)


@reduce_mean.shape
def _(x, dims, keepdim):
    return _reduction_shape(x, dims, keepdim, nonempty=True)


@reduce_mean.reference
def _(x, dims, keepdim):
    return np.asarray(x.mean(axis=reduced_dims(x.shape, dims), keepdims=keepdim), dtype=x.dtype)


@reduce_mean.vjp
def _(g, node, gy):
    return (g.call("reduce_mean_backward", gy, node.inputs[0], **node.attrs),)


def _spread_shape(gy: TensorType, x: TensorType, dims, keepdim) -> TensorType:
    """``reduce_{sum,mean}_backward(gy, x)``: gy must be the reduction's shape; gx is x's."""
    expect_same_dtype(gy, x)
    want = _reduction_shape(x, dims, keepdim)
    if gy.shape != want.shape:
        raise ShapeError(f"gradient {gy} does not match {want}, the reduction of {x} over dims {tuple(dims)}")
    return x


def _spread(gy: np.ndarray, x: np.ndarray, dims, divide: bool) -> np.ndarray:
    """``gy`` broadcast back over the reduced dims of ``x`` (divided by their count: mean)."""
    reduced = reduced_dims(x.shape, dims)
    keep = gy.reshape(reduced_shape(x.shape, reduced, True))
    if divide:
        keep = keep / gy.dtype.type(max(1, int(np.prod([x.shape[d] for d in reduced], dtype=np.int64))))
    return np.ascontiguousarray(np.broadcast_to(keep, x.shape))


# Reduction gradients take the forward input ``x`` for its shape: with the batch N among
# the reduced dims, the gradient's shape exists only at run time.
reduce_sum_backward = Op(
    "reduce_sum_backward", fusion=R, attrs={"dims": (), "keepdim": False},
    doc="gy broadcast back over the reduced dims of x (x is read for its shape only)",
)  # fmt: skip
reduce_sum_backward.check(_check_dims)
reduce_sum_backward.shape(_spread_shape)


@reduce_sum_backward.reference
def _(gy, x, dims, keepdim):
    return _spread(gy, x, dims, divide=False)


reduce_mean_backward = Op(
    "reduce_mean_backward", fusion=R, attrs={"dims": (), "keepdim": False},
    doc="gy broadcast back over the reduced dims of x, divided by their count",
)  # fmt: skip
reduce_mean_backward.check(_check_dims)
reduce_mean_backward.shape(_spread_shape)


@reduce_mean_backward.reference
def _(gy, x, dims, keepdim):
    return _spread(gy, x, dims, divide=True)


reduce_max = Op(
    "reduce_max", fusion=R, attrs={"dims": (), "keepdim": False},
    doc="maximum over dims (torch.amax; NaN propagates)",
)  # fmt: skip
reduce_max.check(_check_dims)


@reduce_max.shape
def _(x, dims, keepdim):
    return _reduction_shape(x, dims, keepdim, nonempty=True)


@reduce_max.reference
def _(x, dims, keepdim):
    return np.asarray(x.max(axis=reduced_dims(x.shape, dims), keepdims=keepdim), dtype=x.dtype)


@reduce_max.vjp
def _(g, node, gy):
    return (g.call("reduce_max_backward", gy, node.inputs[0], node.output, **node.attrs),)


reduce_max_backward = Op(
    "reduce_max_backward", fusion=R, attrs={"dims": (), "keepdim": False},
    doc="gy / (number of maxima) at every element equal to its maximum y, 0 elsewhere (torch.amax)",
)  # fmt: skip
reduce_max_backward.check(_check_dims)


@reduce_max_backward.shape
def _(gy, x, y, dims, keepdim):
    expect_same_dtype(gy, x, y)
    want = _reduction_shape(x, dims, keepdim)
    if gy.shape != want.shape or y.shape != want.shape:
        raise ShapeError(f"reduce_max_backward: gradient {gy} and maximum {y} must be {want} for input {x}")
    return x


@reduce_max_backward.reference
def _(gy, x, y, dims, keepdim):
    reduced = reduced_dims(x.shape, dims)
    keep = reduced_shape(x.shape, reduced, True)
    mask = x == y.reshape(keep)
    count = mask.sum(axis=reduced, keepdims=True).astype(x.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((gy.reshape(keep) / count) * mask).astype(x.dtype)


# -- constants ----------------------------------------------------------------------------
ones_like = Op("ones_like", fusion=E, doc="a tensor of ones shaped like x (seeds autodiff)")
ones_like.shape(lambda x: x)


@ones_like.reference
def _(x):
    return np.ones_like(x)


zeros_like = Op("zeros_like", fusion=E, doc="a tensor of zeros shaped like x")
zeros_like.shape(lambda x: x)


@zeros_like.reference
def _(x):
    return np.zeros_like(x)


# -- cast ---------------------------------------------------------------------------------
cast = Op("cast", fusion=E, attrs={"dtype": "f32"}, doc="x converted to dtype")


@cast.check
def _(dtype):
    if dtype not in DTYPES:
        raise AttributeValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@cast.shape
def _(x, dtype):
    return x.with_dtype(dtype)


@cast.reference
def _(x, dtype):
    return x.astype(DTYPES[dtype])


@cast.vjp
def _(g, node, gy):
    return (g.call("cast", gy, dtype=node.inputs[0].dtype),)
