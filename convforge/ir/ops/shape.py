"""Relayouts: flatten, reshape, transpose, concat, slice. Their gradients are relayouts too.

``reshape`` keeps explicit shapes (``0`` and ``-1`` are resolved by the frontend or the
importer; the batch ``N`` may lead); ``squeeze``, ``unsqueeze`` and ``view`` are reshapes,
``split`` is several slices, ``stack`` is reshapes and a concat (see ``frontend``).
"""

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


# -- transpose ----------------------------------------------------------------------------
transpose = Op("transpose", fusion=I, attrs={"perm": ()}, doc="y.shape[i] = x.shape[perm[i]] (torch.permute)")


@transpose.check
def _(perm):
    if isinstance(perm, list):
        perm = tuple(perm)
    if not isinstance(perm, tuple) or not all(isinstance(p, int) and not isinstance(p, bool) for p in perm):
        raise AttributeValueError(f"perm must be a tuple of ints, got {perm!r}")
    if sorted(perm) != list(range(len(perm))):
        raise AttributeValueError(f"perm must be a permutation of 0..{len(perm) - 1}, got {perm!r}")
    return {"perm": perm}


@transpose.shape
def _(x, perm):
    if len(perm) != x.rank:
        raise ShapeError(f"perm {list(perm)} has {len(perm)} entries for {x} of rank {x.rank}")
    if BATCH in x.shape and perm[x.shape.index(BATCH)] != x.shape.index(BATCH):
        raise ShapeError(f"transpose {list(perm)} of {x} would move the batch dimension N")
    return x.with_shape(tuple(x.shape[p] for p in perm))


@transpose.reference
def _(x, perm):
    return np.ascontiguousarray(np.transpose(x, perm))


@transpose.vjp
def _(g, node, gy):
    return (g.call("transpose", gy, perm=tuple(int(i) for i in np.argsort(node.attrs["perm"]))),)


def transpose_groups(shape: tuple, perm: tuple[int, ...]) -> tuple[list[list], tuple[int, ...]]:
    """A transpose as kernels run it: the input's dims, those of size 1 dropped, adjacent ones
    that stay adjacent and in order merged; returns (the input's dim groups, the permutation
    of the groups). ``[N,C,H,W]`` by ``(0, 2, 3, 1)`` is ``[[N], [C], [H, W]]`` by ``(0, 2, 1)``."""
    kept = [p for p in perm if shape[p] != 1]
    runs: list[list[int]] = []  # input dims, in output order, merged into runs
    for p in kept:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    order = sorted(range(len(runs)), key=lambda k: runs[k][0])  # runs in input order
    groups = [[shape[d] for d in runs[k]] for k in order] or [[1]]
    position = {k: i for i, k in enumerate(order)}
    return groups, tuple(position[k] for k in range(len(runs))) or (0,)


# -- slice --------------------------------------------------------------------------------
slice_ = Op(
    "slice", fusion=I, attrs={"dim": 1, "start": 0, "stop": 0, "step": 1},
    doc="x[start:stop:step] along dim (0 <= start <= stop, step >= 1: negative indices are resolved "
    "by the frontend)",
)  # fmt: skip


def _check_slice(dim, start, stop, step):
    for name, v in (("dim", dim), ("start", start), ("stop", stop), ("step", step)):
        _int_attr(name, v)
    if not 0 <= start <= stop:
        raise AttributeValueError(f"slice needs 0 <= start <= stop, got start={start}, stop={stop}")
    if step < 1:
        raise AttributeValueError(f"slice step must be >= 1, got {step}")


def slice_length(start: int, stop: int, step: int) -> int:
    return len(range(start, stop, step))


slice_.check(_check_slice)


@slice_.shape
def _(x, dim, start, stop, step):
    axis = _axis(dim, x.rank)
    if x.shape[axis] == BATCH:
        raise ShapeError("slicing the batch dimension N is not supported")
    if stop > x.shape[axis]:
        raise ShapeError(f"slice stop {stop} exceeds size {x.shape[axis]} of dim {dim} in {x}")
    return x.with_shape(x.shape[:axis] + (slice_length(start, stop, step),) + x.shape[axis + 1 :])


@slice_.reference
def _(x, dim, start, stop, step):
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, stop, step)
    return np.ascontiguousarray(x[tuple(index)])


@slice_.vjp
def _(g, node, gy):
    x = node.inputs[0]
    axis = node.attrs["dim"] % x.type.rank
    return (g.call("slice_backward", gy, **node.attrs, input_size=x.shape[axis]),)


slice_backward = Op(
    "slice_backward", fusion=I, attrs={"dim": 1, "start": 0, "stop": 0, "step": 1, "input_size": 0},
    doc="zeros of the sliced input's shape with gy at x[start:stop:step] along dim",
)  # fmt: skip


@slice_backward.check
def _(dim, start, stop, step, input_size):
    _check_slice(dim, start, stop, step)
    _int_attr("input_size", input_size)
    if stop > input_size:
        raise AttributeValueError(f"slice stop {stop} exceeds input_size {input_size}")


@slice_backward.shape
def _(gy, dim, start, stop, step, input_size):
    axis = _axis(dim, gy.rank)
    if gy.shape[axis] != slice_length(start, stop, step):
        raise ShapeError(
            f"gradient {gy} has {gy.shape[axis]} along dim {dim}, the slice {start}:{stop}:{step} "
            f"has {slice_length(start, stop, step)}"
        )
    return gy.with_shape(gy.shape[:axis] + (input_size,) + gy.shape[axis + 1 :])


@slice_backward.reference
def _(gy, dim, start, stop, step, input_size):
    axis = dim % gy.ndim
    gx = np.zeros(gy.shape[:axis] + (input_size,) + gy.shape[axis + 1 :], dtype=gy.dtype)
    index = [slice(None)] * gy.ndim
    index[axis] = slice(start, stop, step)
    gx[tuple(index)] = gy
    return gx
