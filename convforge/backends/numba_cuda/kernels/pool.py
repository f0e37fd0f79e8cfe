"""Pooling kernels: max, avg, adaptive avg and their backward ops, one thread per output element.

Window geometry (kernel size, stride, padding, dilation) is baked in as module constants;
``ceil_mode`` needs no code, it is already in the output size. The backward kernels
gather: each input element visits the windows that cover it and sums what they send
back, so no atomics are needed and the result does not depend on thread order. Max-pool
backward recomputes each window's first maximum from ``x`` (as the op table says); the
fused training path reads the stored argmax byte instead (``kernels/fused.py``).
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import SCALAR, indent
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.conv import avg_divisor
from convforge.ir.graph import Node

_WINDOW = """\
KH = {KH}
KW = {KW}
SH = {SH}
SW = {SW}
PH = {PH}
PW = {PW}
DH = {DH}
DW = {DW}

"""

_WINDOW_MAX = """
@cuda.jit(device=True)
def window_max(x, n, c, oy, ox):
    H = x.shape[2]
    W = x.shape[3]
    best = -math.inf
    arg = 0
    for a in range(KH):
        iy = oy * SH - PH + a * DH
        if iy >= 0 and iy < H:
            for e in range(KW):
                ix = ox * SW - PW + e * DW
                if ix >= 0 and ix < W:
                    v = x[n, c, iy, ix]
                    if v > best or v != v:
                        best = v
                        arg = a * KW + e
    return best, arg

"""

#: one thread per output element of ``y`` ([N, C, Ho, Wo]): decodes (n, c, oy, ox)
_PER_OUTPUT = """
@cuda.jit(cache=True)
def kernel({params}):
    C = y.shape[1]
    Ho = y.shape[2]
    Wo = y.shape[3]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < y.size:
        ox = i % Wo
        q = i // Wo
        oy = q % Ho
        q //= Ho
        c = q % C
        n = q // C
{body}
        i += stride
"""

#: one thread per input-gradient element of ``gx``, visiting the windows that cover it
_GATHER = """
@cuda.jit(cache=True)
def kernel({params}):
    C = gx.shape[1]
    H = gx.shape[2]
    W = gx.shape[3]
    Ho = gy.shape[2]
    Wo = gy.shape[3]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < gx.size:
        ix = i % W
        q = i // W
        iy = q % H
        q //= H
        c = q % C
        n = q // C
        acc = {DT}(0.0)
        for a in range(KH):
            ty = iy + PH - a * DH
            if ty >= 0 and ty % SH == 0 and ty // SH < Ho:
                oy = ty // SH
                for e in range(KW):
                    tx = ix + PW - e * DW
                    if tx >= 0 and tx % SW == 0 and tx // SW < Wo:
                        ox = tx // SW
{body}
        gx[n, c, iy, ix] = acc
        i += stride
"""


def window_consts(attrs) -> str:
    dil = attrs["dilation"] if "dilation" in attrs else (1, 1)
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"]
    return _WINDOW.format(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dil[0], DW=dil[1])


def window_text(attrs) -> str:
    keys = ("kernel_size", "stride", "padding", "dilation", "count_include_pad", "divisor_override")
    return "{" + ", ".join(f"{k}={attrs[k]!r}" for k in keys if k in attrs) + "}"


def gather(
    ctx,
    attrs,
    pattern: str,
    params: list[str],
    args: list,
    body: list[str],
    dtype: str,
    recompute: bool = False,
) -> None:
    """Launch a gather kernel for window ``attrs``: ``body`` adds to ``acc`` for window (oy, ox), tap (a, e).

    ``args[-1]`` is the input gradient ``gx``; ``recompute`` adds the ``window_max`` helper.
    """
    src = (
        window_consts(attrs)
        + (_WINDOW_MAX if recompute else "")
        + _GATHER.format(params=", ".join(params), DT=SCALAR[dtype], body=indent(body, 24))
    )
    kernel = ctx.kernel("pool", pattern, src)
    blocks, threads = ctx.grid1d(ctx.numel(args[-1]))
    ctx.launch(kernel, blocks, threads, *args)


@lowering("max_pool2d")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    body = ["best, arg = window_max(x, n, c, oy, ox)", "y[n, c, oy, ox] = best"]
    src = window_consts(node.attrs) + _WINDOW_MAX + _PER_OUTPUT.format(params="x, y", body=indent(body, 8))
    kernel = ctx.kernel("pool", f"max_pool2d {window_text(node.attrs)}", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, x, y)


@lowering("max_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy, x = node.inputs
    gx = node.outputs[0]
    body = ["_, arg = window_max(x, n, c, oy, ox)", "if arg == a * KW + e:", "    acc += gy[n, c, oy, ox]"]
    gather(
        ctx,
        node.attrs,
        f"max_pool2d_backward {window_text(node.attrs)} ({gx.dtype})",
        ["gy", "x", "gx"],
        [gy, x, gx],
        body,
        gx.dtype,
        recompute=True,
    )


@lowering("avg_pool2d")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    body = [
        "H = x.shape[2]",
        "W = x.shape[3]",
        "total = 0.0",
        "for a in range(KH):",
        "    iy = oy * SH - PH + a",
        "    if iy >= 0 and iy < H:",
        "        for e in range(KW):",
        "            ix = ox * SW - PW + e",
        "            if ix >= 0 and ix < W:",
        "                total += x[n, c, iy, ix]",
        f"y[n, c, oy, ox] = total / {avg_divisor(node.attrs, 'H', 'W', 'oy', 'ox')}",
    ]
    src = window_consts(node.attrs) + _PER_OUTPUT.format(params="x, y", body=indent(body, 8))
    kernel = ctx.kernel("pool", f"avg_pool2d {window_text(node.attrs)}", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, x, y)


@lowering("avg_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy = node.inputs[0]
    gx = node.outputs[0]
    body = [f"acc += gy[n, c, oy, ox] / {SCALAR[gx.dtype]}({avg_divisor(node.attrs, 'H', 'W', 'oy', 'ox')})"]
    gather(
        ctx,
        node.attrs,
        f"avg_pool2d_backward {window_text(node.attrs)} ({gx.dtype})",
        ["gy", "gx"],
        [gy, gx],
        body,
        gx.dtype,
    )


# -- adaptive average pooling: window [floor(i*H/oh), ceil((i+1)*H/oh)) -------------------
_ADAPTIVE_BODY = """\
H = x.shape[2]
W = x.shape[3]
hs = (oy * H) // Ho
he = ((oy + 1) * H + Ho - 1) // Ho
ws = (ox * W) // Wo
we = ((ox + 1) * W + Wo - 1) // Wo
total = 0.0
for iy in range(hs, he):
    for ix in range(ws, we):
        total += x[n, c, iy, ix]
y[n, c, oy, ox] = total / ((he - hs) * (we - ws))"""

_ADAPTIVE_BACKWARD = """
@cuda.jit(cache=True)
def kernel(gy, gx):
    C = gx.shape[1]
    H = gx.shape[2]
    W = gx.shape[3]
    Ho = gy.shape[2]
    Wo = gy.shape[3]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < gx.size:
        ix = i % W
        q = i // W
        iy = q % H
        q //= H
        c = q % C
        n = q // C
        acc = {DT}(0.0)
        for oy in range(Ho):
            hs = (oy * H) // Ho
            he = ((oy + 1) * H + Ho - 1) // Ho
            if iy >= hs and iy < he:
                for ox in range(Wo):
                    ws = (ox * W) // Wo
                    we = ((ox + 1) * W + Wo - 1) // Wo
                    if ix >= ws and ix < we:
                        acc += gy[n, c, oy, ox] / {DT}((he - hs) * (we - ws))
        gx[n, c, iy, ix] = acc
        i += stride
"""


@lowering("adaptive_avg_pool2d")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    src = _PER_OUTPUT.format(params="x, y", body=indent(_ADAPTIVE_BODY.split("\n"), 8))
    kernel = ctx.kernel("pool", "adaptive_avg_pool2d", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, x, y)


@lowering("adaptive_avg_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    kernel = ctx.kernel(
        "pool", f"adaptive_avg_pool2d_backward ({gx.dtype})", _ADAPTIVE_BACKWARD.format(DT=SCALAR[gx.dtype])
    )
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(kernel, blocks, threads, gy, gx)
