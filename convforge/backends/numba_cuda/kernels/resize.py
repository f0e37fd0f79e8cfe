"""Pad and interpolate kernels, one thread per element.

Pad kernels are generated from the op's index map
(:func:`convforge.ir.ops.resize.index_expression`) with the pads and sizes baked in;
interpolation kernels carry the reference's per-axis taps (``taps``, ``transposed_taps``)
as module-level constant arrays.

The forward reads, for each output element, the input element its index map names; the
backward gathers, for each input element, the output gradients of the elements that read
it (the centre one and, along each padded dim, the pad-region outputs whose index map
lands on it), as the numba-cpu kernels do, so no atomics are needed.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import SCALAR
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import decode, grid_loop, kernel, nest, per_element
from convforge.ir import scalar
from convforge.ir.graph import Node
from convforge.ir.ops.resize import axis_taps, index_expression, transposed_taps


def _geometry(ctx, node: Node) -> tuple[list[int], list[int], tuple[int, ...]]:
    pads = node.attrs["pads"]
    rank = len(pads) // 2
    return list(pads[:rank]), list(pads[rank:]), tuple(d for d in range(rank) if pads[d] or pads[d + rank])


def _text(node: Node) -> str:
    return f"{node.op} {{pads={list(node.attrs['pads'])}, mode={node.attrs['mode']}}}"


@lowering("pad")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    b, _, padded = _geometry(ctx, node)
    xs, ys = ctx.shape(x), ctx.shape(y)
    rank, mode = len(b), node.attrs["mode"]
    names = [f"o{d}" for d in range(rank)]
    lines = decode("i", names, [str(s) for s in ys])
    for d in range(rank):
        j = index_expression(mode, f"o{d}", str(b[d]), str(xs[d])) if d in padded else f"o{d}"
        lines.append(f"j{d} = {j}")
    read = f"x[{', '.join(f'j{d}' for d in range(rank))}]"
    out = f"y[{', '.join(names)}]"
    if mode == "constant" and padded:
        value = f"{SCALAR[y.dtype]}({scalar.literal(node.attrs['value'])})"
        lines.append(f"{out} = {value} if {' or '.join(f'j{d} < 0' for d in padded)} else {read}")
    else:
        lines.append(f"{out} = {read}")
    fn = ctx.kernel("resize", f"{_text(node)} ({y.dtype})", kernel("x, y", grid_loop("y.size", lines)))
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(fn, blocks, threads, ctx.view(x, xs), ctx.view(y, ys))


@lowering("pad_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    b, e, padded = _geometry(ctx, node)
    gys, gxs = ctx.shape(gy), ctx.shape(gx)
    rank, mode = len(b), node.attrs["mode"]
    lines = [*decode("i", [f"i{d}" for d in range(rank)], [str(s) for s in gxs]), "acc = 0.0"]
    body = [f"acc += gy[{', '.join(f'o{d}' for d in range(rank))}]"]
    for d in reversed(range(rank)):
        if d not in padded:
            body = [f"o{d} = i{d}", *body]
            continue
        lb, le = max(b[d], 0), max(e[d], 0)
        count = 1 if mode == "constant" else 1 + lb + le  # constant: only the centre reads x
        hit = index_expression(mode, f"o{d}", str(b[d]), str(gxs[d]))
        body = [
            f"for t{d} in range({count}):",
            f"    if t{d} == 0:",
            f"        o{d} = i{d} + {b[d]}",
            f"    elif t{d} <= {lb}:",
            f"        o{d} = t{d} - 1",
            "    else:",
            f"        o{d} = {b[d] + gxs[d] - lb - 1} + t{d}",
            f"    if 0 <= o{d} < {gys[d]} and (t{d} == 0 or {hit} == i{d}):",
            *nest(body, 8),
        ]
    lines += [*body, f"gx[{', '.join(f'i{d}' for d in range(rank))}] = acc"]
    fn = ctx.kernel("resize", f"{_text(node)} ({gx.dtype})", kernel("gy, gx", grid_loop("gx.size", lines)))
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(fn, blocks, threads, ctx.view(gy, gys), ctx.view(gx, gxs))


# -- interpolate: the per-axis taps (ir/ops/resize.py) as module constants of the kernel file --
def _array(name: str, values) -> str:
    """A module-level NumPy array (Numba freezes a global array into the kernel as a constant)."""
    return f"{name} = np.array({values.tolist()!r}, dtype=np.{values.dtype.name})\n"


@lowering("interpolate")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    one = x.type.np_dtype.type(1)
    tables = ""
    for axis, (i0, i1, lam) in zip("HW", axis_taps(node.attrs, x.shape[2:], x.type.np_dtype)):
        tables += _array(f"{axis}0", i0) + _array(f"{axis}1", i1)
        tables += _array(f"{axis}L0", (one - lam).astype(lam.dtype)) + _array(f"{axis}L1", lam)
    body = [
        "a0 = H0[oy]",
        "a1 = H1[oy]",
        "b0 = W0[ox]",
        "b1 = W1[ox]",
        "top = x[n, c, a0, b0] * WL0[ox] + x[n, c, a0, b1] * WL1[ox]",
        "bottom = x[n, c, a1, b0] * WL0[ox] + x[n, c, a1, b1] * WL1[ox]",
        "y[n, c, oy, ox] = top * HL0[oy] + bottom * HL1[oy]",
    ]
    src = tables + "\n\n" + per_element("x, y", "y", ["n", "c", "oy", "ox"], ["C", "Ho", "Wo"], body)
    fn = ctx.kernel("resize", f"interpolate {dict(node.attrs)!r} ({y.dtype}, input {list(x.shape[2:])})", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(fn, blocks, threads, x, y)


@lowering("interpolate_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    size = node.attrs["input_size"]
    tables = ""
    for axis, n, t in zip("HW", size, axis_taps(node.attrs, size, gy.type.np_dtype)):
        start, index, weight = transposed_taps(*t, n)
        tables += _array(f"{axis}S", start) + _array(f"{axis}I", index) + _array(f"{axis}W", weight)
    body = [
        "acc = 0.0",
        "for p in range(HS[iy], HS[iy + 1]):",
        "    row = 0.0",
        "    for q in range(WS[ix], WS[ix + 1]):",
        "        row += WW[q] * gy[n, c, HI[p], WI[q]]",
        "    acc += HW[p] * row",
        "gx[n, c, iy, ix] = acc",
    ]
    src = tables + "\n\n" + per_element("gy, gx", "gx", ["n", "c", "iy", "ix"], ["C", "H", "W"], body)
    fn = ctx.kernel("resize", f"interpolate_backward {dict(node.attrs)!r} ({gx.dtype})", src)
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(fn, blocks, threads, gy, gx)
