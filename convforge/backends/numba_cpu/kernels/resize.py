"""Pad and interpolate kernels.

Pad kernels are generated per (rank, mode, padded dims) from the op's index map
(:func:`convforge.ir.ops.resize.index_expression`); the pad amounts are runtime arguments,
so new pads compile nothing. Interpolation is one static kernel per direction: the
per-axis taps (:func:`convforge.ir.ops.resize.taps`, the reference's own, so the index and
weight arithmetic is the reference's bit for bit) are driver constants, and the backward
gathers through them read backwards (``transposed_taps``).

The forward reads, for each output element, the input element its index map names. The
backward gathers, for each input element, the output gradients of the elements that read
it: the centre one and, along each padded dim, those of the two pad regions whose index
map lands on it (``1 + before + after`` candidates per dim), so no two threads write one
element. Rendered for a 2-D reflect pad of dim 1 the backward is::

    @njit(cache=True, parallel=True)
    def kernel(gy, gx, b, e):
        for q in prange(gx.size):
            i0 = q // (gx.shape[1])
            i1 = q % gx.shape[1]
            acc = 0.0
            o0 = i0
            for t1 in range(1 + max(b[1], 0) + max(e[1], 0)):
                if t1 == 0:
                    o1 = i1 + b[1]
                elif t1 <= max(b[1], 0):
                    o1 = t1 - 1
                else:
                    o1 = b[1] + gx.shape[1] + t1 - max(b[1], 0) - 1
                if 0 <= o1 < gy.shape[1] and (t1 == 0 or <index map of o1> == i1):
                    acc += gy[o0, o1]
            gx[i0, i1] = acc
"""

from __future__ import annotations

from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.epilogue import indent
from convforge.ir import scalar
from convforge.ir.ops.resize import axis_taps, index_expression, transposed_taps

_HEADER = "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n\n"


def _decode(out: str, rank: int, var: str) -> list[str]:
    """Lines splitting the flat index ``q`` into ``var0 .. var{rank-1}`` over ``out``'s shape
    (each from ``q`` itself: Numba's parfor pass refuses a loop index copied and updated)."""
    lines = []
    for d in range(rank):
        inner = " * ".join(f"{out}.shape[{k}]" for k in range(d + 1, rank))
        index = f"q // ({inner})" if inner else "q"
        lines.append(f"{var}{d} = {index} % {out}.shape[{d}]" if d else f"{var}0 = {index}")
    return lines


def forward_source(rank: int, mode: str, padded: tuple[int, ...]) -> str:
    lines = _decode("y", rank, "o")
    for d in range(rank):
        j = index_expression(mode, f"o{d}", f"b[{d}]", f"x.shape[{d}]") if d in padded else f"o{d}"
        lines.append(f"j{d} = {j}")
    read = f"x[{', '.join(f'j{d}' for d in range(rank))}]"
    out = f"y[{', '.join(f'o{d}' for d in range(rank))}]"
    if mode == "constant" and padded:
        outside = " or ".join(f"j{d} < 0" for d in padded)
        lines += [f"{out} = value if {outside} else {read}"]
    else:
        lines += [f"{out} = {read}"]
    return _HEADER + (
        "@njit(cache=True, parallel=True)\n"
        "def kernel(x, y, b, value):\n"
        "    for q in prange(y.size):\n" + indent(lines, 8) + "\n"
    )


def backward_source(rank: int, mode: str, padded: tuple[int, ...]) -> str:
    lines = [*_decode("gx", rank, "i"), "acc = 0.0"]
    body = [f"acc += gy[{', '.join(f'o{d}' for d in range(rank))}]"]
    for d in reversed(range(rank)):
        if d not in padded:
            body = [f"o{d} = i{d}", *body]
            continue
        lb, le = f"max(b[{d}], 0)", f"max(e[{d}], 0)"
        # constant mode: only the centre reads an input element
        count = "1" if mode == "constant" else f"1 + {lb} + {le}"
        hit = index_expression(mode, f"o{d}", f"b[{d}]", f"gx.shape[{d}]")
        body = [
            f"for t{d} in range({count}):",
            f"    if t{d} == 0:",
            f"        o{d} = i{d} + b[{d}]",
            f"    elif t{d} <= {lb}:",
            f"        o{d} = t{d} - 1",
            "    else:",
            f"        o{d} = b[{d}] + gx.shape[{d}] + t{d} - {lb} - 1",
            f"    if 0 <= o{d} < gy.shape[{d}] and (t{d} == 0 or {hit} == i{d}):",
            *("        " + line for line in body),
        ]
    lines += body + [f"gx[{', '.join(f'i{d}' for d in range(rank))}] = acc"]
    return _HEADER + (
        "@njit(cache=True, parallel=True)\n"
        "def kernel(gy, gx, b, e):\n"
        "    for q in prange(gx.size):\n" + indent(lines, 8) + "\n"
    )


def _pads(node) -> tuple[list[int], list[int], tuple[int, ...]]:
    pads = node.attrs["pads"]
    rank = len(pads) // 2
    b, e = list(pads[:rank]), list(pads[rank:])
    return b, e, tuple(d for d in range(rank) if b[d] or e[d])


def _ints(values: list[int]) -> str:
    """An int64 array literal for the driver (which imports NumPy as ``np``)."""
    return f"np.array({values!r}, dtype=np.int64)"


@lowering("pad")
def _(ctx, node, ins, outs):
    b, _, padded = _pads(node)
    rank, mode = len(b), node.attrs["mode"]
    k = ctx.generated(("pad", rank, mode, padded), forward_source(rank, mode, padded), f"pad {{mode={mode}}}")
    ctx.line(f"{k}({ins[0]}, {outs[0]}, {_ints(b)}, {scalar.literal(node.attrs['value'])})")


@lowering("pad_backward")
def _(ctx, node, ins, outs):
    b, e, padded = _pads(node)
    rank, mode = len(b), node.attrs["mode"]
    src = backward_source(rank, mode, padded)
    k = ctx.generated(("pad_backward", rank, mode, padded), src, f"pad_backward {{mode={mode}}}")
    ctx.line(f"{k}({ins[0]}, {outs[0]}, {_ints(b)}, {_ints(e)})")


# -- interpolate: per-axis tap tables (ir/ops/resize.py) computed once, as driver constants -----
@njit(cache=True, parallel=True)
def interpolate(x, h0, h1, hl0, hl1, w0, w1, wl0, wl1, y):
    """y = blend of the (h0|h1, w0|w1) input pixels by weights (hl0, hl1) x (wl0, wl1)."""
    N, C, Ho, Wo = y.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oy in range(Ho):
            a0, a1 = h0[oy], h1[oy]
            for ox in range(Wo):
                b0, b1 = w0[ox], w1[ox]
                top = x[n, c, a0, b0] * wl0[ox] + x[n, c, a0, b1] * wl1[ox]
                bottom = x[n, c, a1, b0] * wl0[ox] + x[n, c, a1, b1] * wl1[ox]
                y[n, c, oy, ox] = top * hl0[oy] + bottom * hl1[oy]


@njit(cache=True, parallel=True)
def interpolate_backward(gy, hs, hi, hw, ws, wi, ww, gx):
    """gx[iy, ix] = sum of gy over the outputs that read it (``transposed_taps`` per axis)."""
    N, C, H, W = gx.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for iy in range(H):
            for ix in range(W):
                acc = 0.0
                for p in range(hs[iy], hs[iy + 1]):
                    row = 0.0
                    for q in range(ws[ix], ws[ix + 1]):
                        row += ww[q] * gy[n, c, hi[p], wi[q]]
                    acc += hw[p] * row
                gx[n, c, iy, ix] = acc


def _table(ctx, what: str, values) -> str:
    """A driver constant holding ``values`` (a NumPy array), named for what it is."""
    name = f"{what.upper()}_{len(ctx.consts)}"
    ctx.consts.append(f"{name} = np.array({values.tolist()!r}, dtype=np.{values.dtype.name})")
    return name


@lowering("interpolate")
def _(ctx, node, ins, outs):
    x = node.inputs[0]
    one = x.type.np_dtype.type(1)
    args = []
    for axis, (i0, i1, lam) in zip("hw", axis_taps(node.attrs, x.shape[2:], x.type.np_dtype)):
        args += [_table(ctx, f"{axis}_index", a) for a in (i0, i1)]
        args += [_table(ctx, f"{axis}_weight", a) for a in ((one - lam).astype(lam.dtype), lam)]
    k = ctx.static(interpolate, "interpolate")
    ctx.line(f"{k}({ins[0]}, {', '.join(args)}, {outs[0]})")


@lowering("interpolate_backward")
def _(ctx, node, ins, outs):
    size = node.attrs["input_size"]
    args = []
    for axis, n, t in zip("hw", size, axis_taps(node.attrs, size, node.inputs[0].type.np_dtype)):
        start, index, weight = transposed_taps(*t, n)
        args += [_table(ctx, f"{axis}_start", start), _table(ctx, f"{axis}_from", index)]
        args.append(_table(ctx, f"{axis}_weight", weight))
    k = ctx.static(interpolate_backward, "interpolate_backward")
    ctx.line(f"{k}({ins[0]}, {', '.join(args)}, {outs[0]})")
