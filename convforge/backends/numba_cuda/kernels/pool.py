"""Pooling kernels: max (with or without the argmax byte), avg, adaptive avg and their
backward ops, one thread per output element.

Window geometry (kernel size, stride, padding, dilation) is baked in as module constants
(``kernels/windows.py``); ``ceil_mode`` needs no code, it is already in the output size.
The backward kernels gather: each input element visits the windows that cover it and sums
what they send back, so no atomics are needed and the result does not depend on thread
order. Max-pool backward recomputes each window's first maximum from ``x`` (as the op
table says); the training path stores the argmax tap as one byte per output
(``max_pool2d_argmax``) and scatters through it (``max_pool2d_backward_argmax``, which the
``fusion`` lowering also runs with an activation's derivative applied on the fly).
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import SCALAR
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import device, grid_loop, kernel, per_element
from convforge.backends.numba_cuda.kernels.windows import (
    avg_divisor,
    covering,
    window_consts,
    window_max,
    window_sum,
    window_text,
)
from convforge.ir import scalar
from convforge.ir.graph import Node, Value

#: the plane the forward windows read: ``x``'s height and width
_PLANE = ["H = x.shape[2]", "W = x.shape[3]"]


def _over_x(reduce) -> str:
    """The window device function ``reduce`` (``window_max`` / ``window_sum``) over ``x[n, c]``."""
    return reduce("x", "x[n, c, iy, ix]", ("H", "W"), _PLANE)


def _per_output(ctx, pattern: str, params: list[str], args: list, body: list[str], prelude: str) -> None:
    """Launch a kernel of one thread per output element ``y[n, c, oy, ox]`` (``y`` is in ``params``)."""
    src = prelude + per_element(
        ", ".join(params), "y", ["n", "c", "oy", "ox"], ["C", "Ho", "Wo"], body, _PLANE
    )
    fn = ctx.kernel("pool", pattern, src)
    blocks, threads = ctx.grid1d(ctx.numel(args[params.index("y")]))
    ctx.launch(fn, blocks, threads, *args)


def _gather(ctx, pattern: str, params: list[str], args: list, loops: list[str], prelude: str = "") -> None:
    """Launch a kernel of one thread per input-gradient element ``gx[n, c, iy, ix]`` (the last
    of ``args``), summing into ``acc`` what ``loops`` add over the windows covering it."""
    gx = args[-1]
    body = [f"acc = {SCALAR[gx.dtype]}(0.0)", *loops, "gx[n, c, iy, ix] = acc"]
    setup = ["Ho = gy.shape[2]", "Wo = gy.shape[3]"]
    src = prelude + per_element(", ".join(params), "gx", ["n", "c", "iy", "ix"], ["C", "H", "W"], body, setup)
    fn = ctx.kernel("pool", pattern, src)
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(fn, blocks, threads, *args)


def _window_gather(
    ctx, attrs, pattern: str, params: list[str], args: list, body: list[str], prelude: str = ""
) -> None:
    """:func:`_gather` over pooling window ``attrs``: ``body`` runs for window (oy, ox), tap (a, e)."""
    loops = covering(("iy", "ix"), ("oy", "ox"), ("Ho", "Wo"), body)
    _gather(
        ctx,
        f"{pattern} {window_text(attrs)} ({args[-1].dtype})",
        params,
        args,
        loops,
        window_consts(attrs) + prelude,
    )


@lowering("max_pool2d", "max_pool2d_argmax")
def _(ctx, node: Node) -> None:
    x, y, *am = [node.inputs[0], *node.outputs]
    body = ["best, arg = window_max(x, n, c, oy, ox)", "y[n, c, oy, ox] = best"]
    body += ["am[n, c, oy, ox] = np.uint8(arg)"] if am else []
    params = ["x", "y", *(["am"] if am else [])]
    _per_output(
        ctx,
        f"{node.op} {window_text(node.attrs)}",
        params,
        [x, y, *am],
        body,
        window_consts(node.attrs) + _over_x(window_max),
    )


@lowering("max_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy, x = node.inputs
    body = ["_, arg = window_max(x, n, c, oy, ox)", "if arg == a * KW + e:", "    acc += gy[n, c, oy, ox]"]
    args = [gy, x, node.outputs[0]]
    _window_gather(ctx, node.attrs, node.op, ["gy", "x", "gx"], args, body, _over_x(window_max))


def argmax_backward(
    ctx, pool: Node, gy: Value, am: Value, gx: Value, act: Node | None = None, y: Value | None = None
) -> None:
    """Scatter ``gy`` through the stored argmax ``am`` of ``pool``'s windows into ``gx``;
    with ``act`` (an activation's backward op) the pooled gradient is first multiplied by the
    activation's derivative, read off its pooled output ``y``."""
    grad, params, args, pattern = "gy[n, c, oy, ox]", ["gy", "am", "gx"], [gy, am, gx], pool.op
    if act is not None:
        attrs = scalar.attrs_in_dtype(act.attrs, act.outputs[0].type.np_dtype)
        grad = scalar.expression(act.op, attrs, g=grad, s="y[n, c, oy, ox]")
        params, args, pattern = ["gy", "y", "am", "gx"], [gy, y, am, gx], f"{act.op} -> {pattern}"
    body = ["if am[n, c, oy, ox] == a * KW + e:", f"    acc += {grad}"]
    _window_gather(ctx, pool.attrs, pattern, params, args, body)


@lowering("max_pool2d_backward_argmax")
def _(ctx, node: Node) -> None:
    gy, am = node.inputs
    argmax_backward(ctx, node, gy, am, node.outputs[0])


@lowering("avg_pool2d")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    prelude = window_consts(node.attrs) + _over_x(window_sum)
    body = ["y[n, c, oy, ox] = window_sum(x, n, c, oy, ox) / avg_divisor(oy, ox, H, W)"]
    pattern = f"avg_pool2d {window_text(node.attrs)}"
    _per_output(ctx, pattern, ["x", "y"], [x, y], body, prelude + avg_divisor(node.attrs))


@lowering("avg_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    body = [f"acc += gy[n, c, oy, ox] / {SCALAR[gx.dtype]}(avg_divisor(oy, ox, H, W))"]
    _window_gather(ctx, node.attrs, node.op, ["gy", "gx"], [gy, gx], body, avg_divisor(node.attrs))


# -- adaptive average pooling: window [floor(i*H/oh), ceil((i+1)*H/oh)) -------------------
_ADAPTIVE_WINDOW = device(
    "adaptive_window",
    "oy, ox, H, W, Ho, Wo",
    [
        "hs = (oy * H) // Ho",
        "he = ((oy + 1) * H + Ho - 1) // Ho",
        "ws = (ox * W) // Wo",
        "we = ((ox + 1) * W + Wo - 1) // Wo",
        "return hs, he, ws, we, (he - hs) * (we - ws)",
    ],
)


@lowering("adaptive_avg_pool2d")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    body = [
        "hs, he, ws, we, size = adaptive_window(oy, ox, H, W, Ho, Wo)",
        "total = 0.0",
        "for iy in range(hs, he):",
        "    for ix in range(ws, we):",
        "        total += x[n, c, iy, ix]",
        "y[n, c, oy, ox] = total / size",
    ]
    _per_output(ctx, "adaptive_avg_pool2d", ["x", "y"], [x, y], body, _ADAPTIVE_WINDOW)


@lowering("adaptive_avg_pool2d_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    # the outputs whose windows hold (iy, ix) are the same formula with the planes swapped
    loops = [
        "ys, ye, xs, xe, _ = adaptive_window(iy, ix, Ho, Wo, H, W)",
        "for oy in range(ys, ye):",
        "    for ox in range(xs, xe):",
        f"        acc += gy[n, c, oy, ox] / {SCALAR[gx.dtype]}(adaptive_window(oy, ox, H, W, Ho, Wo)[4])",
    ]
    _gather(
        ctx, f"adaptive_avg_pool2d_backward ({gx.dtype})", ["gy", "gx"], [gy, gx], loops, _ADAPTIVE_WINDOW
    )


# -- PyTorch's indices (return_indices=True) and max unpooling --------------------------------------
@lowering("max_pool2d_with_indices")
def _(ctx, node: Node) -> None:
    x, y, ind = node.inputs[0], *node.outputs
    body = [
        "best, arg = window_max(x, n, c, oy, ox)",
        "y[n, c, oy, ox] = best",
        "iy = oy * SH - PH + (arg // KW) * DH",
        "ix = ox * SW - PW + (arg % KW) * DW",
        "ind[n, c, oy, ox] = iy * W + ix",
    ]
    _per_output(
        ctx,
        f"{node.op} {window_text(node.attrs)}",
        ["x", "y", "ind"],
        [x, y, ind],
        body,
        window_consts(node.attrs) + _over_x(window_max),
    )


def _planes(ctx, value: Value):
    n, c, h, w = ctx.shape(value)
    return ctx.view(value, (n * c, h * w))


@lowering("max_unpool2d")
def _(ctx, node: Node) -> None:
    # one thread per plane: it zeroes the plane, then writes in row-major order, so a repeated
    # index keeps the last value as on the other backends
    x, ind = node.inputs
    y = node.outputs[0]
    body = [
        "for j in range(y.shape[1]):",
        "    y[p, j] = 0",
        "for i in range(x.shape[1]):",
        "    j = ind[p, i]",
        "    if j >= 0 and j < y.shape[1]:",
        "        y[p, j] = x[p, i]",
    ]
    src = kernel("x, ind, y", grid_loop("x.shape[0]", body, var="p"))
    fn = ctx.kernel("pool", f"max_unpool2d ({y.dtype}, one thread per plane)", src)
    blocks, threads = ctx.grid1d(ctx.shape(x)[0] * ctx.shape(x)[1])
    ctx.launch(fn, blocks, threads, _planes(ctx, x), _planes(ctx, ind), _planes(ctx, y))


@lowering("max_unpool2d_backward")
def _(ctx, node: Node) -> None:
    gy, ind = node.inputs
    gx = node.outputs[0]
    body = [
        "p = i // gx.shape[1]",
        "j = ind[p, i % gx.shape[1]]",
        "gx[p, i % gx.shape[1]] = gy[p, j] if j >= 0 and j < gy.shape[1] else 0",
    ]
    src = kernel("gy, ind, gx", grid_loop("gx.size", body))
    fn = ctx.kernel("pool", f"max_unpool2d_backward ({gx.dtype})", src)
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(fn, blocks, threads, _planes(ctx, gy), _planes(ctx, ind), _planes(ctx, gx))
