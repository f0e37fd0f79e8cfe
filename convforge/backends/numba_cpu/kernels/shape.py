"""Shape ops: flatten and reshape are views (no kernel, no copy); transpose, slice and
slice_backward copy through the strided loop nest of ``kernels/elementwise.py``
(:func:`~convforge.backends.numba_cpu.kernels.elementwise.map_source`); concat copies
with NumPy into the planned buffer.

A view's output aliases its input's buffer; the memory plan keeps that buffer alive for
as long as the view is used (see ``convforge.passes.memory_plan.ALIAS_OPS``). A transpose
reads its input as a transposed view of the input's dims merged where they stay adjacent
(``ir.ops.shape.transpose_groups``); a slice reads (or, backward, writes) the view
``x.reshape(outer, D, inner)[:, start:stop:step, :]``.
"""

from __future__ import annotations

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.elementwise import emit_map
from convforge.ir.ops.shape import transpose_groups


@lowering("flatten", "reshape")
def _(ctx, node, ins, outs):
    ctx.view(node.outputs[0], f"{ins[0]}.reshape(({ctx.shape_expr(node.outputs[0])}))")


@lowering("concat")
def _(ctx, node, ins, outs):
    dim = node.attrs["dim"] % node.outputs[0].type.rank
    ctx.line(f"np.concatenate(({', '.join(ins)},), axis={dim}, out={outs[0]})")


def _dims(ctx, dims) -> str:
    return " * ".join(str(ctx.dim(d)) for d in dims) or "1"


@lowering("transpose")
def _(ctx, node, ins, outs):
    groups, perm = transpose_groups(node.inputs[0].shape, node.attrs["perm"])
    sizes = [_dims(ctx, g) for g in groups]
    src = f"{ins[0]}.reshape({', '.join(sizes)},).transpose({', '.join(map(str, perm))},)"
    out = f"{outs[0]}.reshape({', '.join(sizes[p] for p in perm)},)"
    emit_map(ctx, "v0", [src], out, len(groups))


def _rows(ctx, value, dim: int) -> tuple[str, str, str]:
    """``value``'s shape as driver text ``(outer, D, inner)`` around axis ``dim``."""
    shape = value.shape
    axis = dim % len(shape)
    return _dims(ctx, shape[:axis]), str(ctx.dim(shape[axis])), _dims(ctx, shape[axis + 1 :])


@lowering("slice")
def _(ctx, node, ins, outs):
    a = node.attrs
    outer, size, inner = _rows(ctx, node.inputs[0], a["dim"])
    _, length, _ = _rows(ctx, node.outputs[0], a["dim"])
    src = f"{ins[0]}.reshape({outer}, {size}, {inner})[:, {a['start']}:{a['stop']}:{a['step']}, :]"
    emit_map(ctx, "v0", [src], f"{outs[0]}.reshape({outer}, {length}, {inner})", 3)


@lowering("slice_backward")
def _(ctx, node, ins, outs):
    a = node.attrs
    outer, length, inner = _rows(ctx, node.inputs[0], a["dim"])
    _, size, _ = _rows(ctx, node.outputs[0], a["dim"])
    ctx.line(f"{outs[0]}.fill(0)")
    dst = f"{outs[0]}.reshape({outer}, {size}, {inner})[:, {a['start']}:{a['stop']}:{a['step']}, :]"
    emit_map(ctx, "v0", [f"{ins[0]}.reshape({outer}, {length}, {inner})"], dst, 3)
