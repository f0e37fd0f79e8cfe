"""Relayouts: flatten, reshape, concat, slice. Their gradients are relayouts too."""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import BATCH

I = FusionKind.INJECTIVE


def _int_attr(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AttributeValueError(f"{name} must be an int, got {value!r}")
    return value


def _axis(dim: int, rank: int, what: str = "dim") -> int:
    if not -rank <= dim < rank:
        raise AttributeValueError(f"{what} {dim} is out of range for rank {rank}")
    return dim % rank


def _concrete(arr: np.ndarray, shape: tuple) -> tuple[int, ...]:
    return tuple(arr.shape[0] if d == BATCH else d for d in shape)


# -- flatten ------------------------------------------------------------------------------
flatten = Op("flatten", fusion=I, attrs={"start_dim": 1, "end_dim": -1}, doc="merge dims start..end")


@flatten.check
def _(start_dim, end_dim):
    _int_attr("start_dim", start_dim)
    _int_attr("end_dim", end_dim)


@flatten.shape
def _(x, start_dim, end_dim):
    if x.rank == 0:
        return x.with_shape((1,))
    s, e = _axis(start_dim, x.rank, "start_dim"), _axis(end_dim, x.rank, "end_dim")
    if s > e:
        raise AttributeValueError(f"start_dim {start_dim} comes after end_dim {end_dim} for {x}")
    merged = x.shape[s : e + 1]
    if BATCH in merged and len(merged) > 1:
        raise ShapeError(f"cannot flatten the batch dimension N together with others in {x}")
    size = merged[0] if len(merged) == 1 else int(np.prod(merged))
    return x.with_shape(x.shape[:s] + (size,) + x.shape[e + 1 :])


@flatten.reference
def _(x, start_dim, end_dim):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])


@flatten.vjp
def _(g, node, gy):
    return (g.call("reshape", gy, shape=node.inputs[0].shape),)


# -- reshape ------------------------------------------------------------------------------
reshape = Op("reshape", fusion=I, attrs={"shape": ()}, doc="x with a new shape of the same size")


@reshape.check
def _(shape):
    if not isinstance(shape, tuple):
        raise AttributeValueError(f"shape must be a tuple, got {shape!r}")
    for d in shape:
        if d != BATCH and (isinstance(d, bool) or not isinstance(d, int) or d < 0):
            raise AttributeValueError(f"shape entries must be ints >= 0 or N, got {shape!r}")


@reshape.shape
def _(x, shape):
    if (BATCH in x.shape) != (BATCH in shape):
        raise ShapeError(f"reshape of {x} to {list(shape)} must keep the batch dimension N")
    if (BATCH in shape and shape.index(BATCH) != 0) or (BATCH in x.shape and x.shape.index(BATCH) != 0):
        raise ShapeError(f"the batch dimension N must lead in reshape of {x} to {list(shape)}")
    size_in = int(np.prod([d for d in x.shape if d != BATCH]))
    size_out = int(np.prod([d for d in shape if d != BATCH]))
    if size_in != size_out:
        raise ShapeError(f"cannot reshape {x} ({size_in} elements per sample) to {list(shape)} ({size_out})")
    return x.with_shape(shape)


@reshape.reference
def _(x, shape):
    return x.reshape(_concrete(x, shape))


@reshape.vjp
def _(g, node, gy):
    return (g.call("reshape", gy, shape=node.inputs[0].shape),)


# -- concat -------------------------------------------------------------------------------
concat = Op("concat", fusion=I, attrs={"dim": 1}, doc="join inputs along dim")


@concat.check
def _(dim):
    _int_attr("dim", dim)


@concat.shape
def _(*xs, dim):
    if not xs:
        raise ShapeError("concat expects at least one input, got none")
    first = xs[0]
    axis = _axis(dim, first.rank)
    total = 0
    for i, x in enumerate(xs):
        if x.dtype != first.dtype:
            raise ShapeError(f"concat input {i} has dtype {x.dtype}, expected {first.dtype}")
        if x.rank != first.rank or any(
            a != b for j, (a, b) in enumerate(zip(x.shape, first.shape)) if j != axis
        ):
            raise ShapeError(f"concat input {i} is {x}; expected the shape of {first} except along dim {dim}")
        if x.shape[axis] == BATCH:
            raise ShapeError("concat along the batch dimension N is not supported")
        total += x.shape[axis]
    return first.with_shape(first.shape[:axis] + (total,) + first.shape[axis + 1 :])


@concat.reference
def _(*xs, dim):
    return np.concatenate(xs, axis=dim)


@concat.vjp
def _(g, node, gy):
    axis = node.attrs["dim"] % node.inputs[0].type.rank
    grads, start = [], 0
    for x in node.inputs:
        stop = start + x.shape[axis]
        grads.append(g.call("slice", gy, dim=axis, start=start, stop=stop))
        start = stop
    return tuple(grads)


# -- slice --------------------------------------------------------------------------------
slice_ = Op("slice", fusion=I, attrs={"dim": 1, "start": 0, "stop": 0}, doc="x[start:stop] along dim")


@slice_.check
def _(dim, start, stop):
    for name, v in (("dim", dim), ("start", start), ("stop", stop)):
        _int_attr(name, v)
    if not 0 <= start <= stop:
        raise AttributeValueError(f"slice needs 0 <= start <= stop, got start={start}, stop={stop}")


@slice_.shape
def _(x, dim, start, stop):
    axis = _axis(dim, x.rank)
    if x.shape[axis] == BATCH:
        raise ShapeError("slicing the batch dimension N is not supported")
    if stop > x.shape[axis]:
        raise ShapeError(f"slice stop {stop} exceeds size {x.shape[axis]} of dim {dim} in {x}")
    return x.with_shape(x.shape[:axis] + (stop - start,) + x.shape[axis + 1 :])


@slice_.reference
def _(x, dim, start, stop):
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, stop)
    return np.ascontiguousarray(x[tuple(index)])
