"""Convolution kernels: direct convolution, one thread per output element.

The forward kernel is generated per kernel geometry (kernel size, stride, padding,
dilation, groups: module constants, so loops unroll) and per epilogue: bias, eval-mode
batch-norm affine and activations from the ops' scalar expressions, and an optional
closing max / avg pool, in which case each thread owns one *pooled* output and evaluates
the convolution at each tap of its window (the fused conv+bias+activation+pool is one
launch, lowered from a ``fusion`` node by ``kernels/fusion.py``). Batch and image size are
runtime shapes. ``conv1d`` runs through the same kernels on ``[N, C, 1, L]`` views.

A rendered device function (3x3, stride 1, padding 1, one group, bias, ReLU)::

    @cuda.jit(device=True)
    def conv_at(x, w, b, n, o, oy, ox):
        ...
        acc = np.float32(0.0)
        for c in range(cg):
            for a in range(KH):
                iy = oy * SH - PH + a * DH
                if iy >= 0 and iy < H:
                    for e in range(KW):
                        ix = ox * SW - PW + e * DW
                        if ix >= 0 and ix < W:
                            acc += x[n, c0 + c, iy, ix] * w[o, c, a, e]
        v = acc
        v = v + b[o]
        v = max(v, 0.0)
        return v

The input gradient gathers, per input element, every (output, tap) pair that read it
(no atomics); the weight gradient runs one block per weight element reducing over
(batch, output pixels) in shared memory.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import SCALAR
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.epilogue import epilogue_lines, pattern_steps
from convforge.backends.numba_cuda.kernels.templates import (
    block_loop,
    block_reduce,
    consts,
    decode,
    device,
    kernel,
    nest,
    per_element,
    thread_loop,
)
from convforge.backends.numba_cuda.kernels.windows import (
    avg_divisor,
    covering,
    taps,
    window_consts,
    window_max,
    window_sum,
)
from convforge.ir.graph import Node, Value
from convforge.ir.ops.conv import pad_pairs


def conv_params(node: Node) -> dict[str, int]:
    """Kernel geometry of a conv1d/conv2d node (or backward op) as 2-D constants.

    Only the top/left padding enters the kernels: the bottom/right padding is already in
    the output size.
    """
    a = node.attrs
    nd = 1 if node.op.startswith("conv1d") else 2
    with_weight = ("conv1d", "conv2d", f"conv{nd}d_backward_input", "conv_transpose2d")
    w_shape = node.inputs[1].shape if node.op in with_weight else None
    ksize = tuple(w_shape[2:]) if w_shape is not None else tuple(a["kernel_size"])
    pads = pad_pairs(a["padding"], nd)
    if nd == 1:
        kh, kw, sh, sw, ph, pw, dh, dw = 1, ksize[0], 1, a["stride"][0], 0, pads[0][0], 1, a["dilation"][0]
    else:
        kh, kw = ksize
        (sh, sw), (ph, pw), (dh, dw) = a["stride"], (pads[0][0], pads[1][0]), a["dilation"]
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw, G=a["groups"])


def _pattern(node: Node, geo: dict[str, int]) -> str:
    return f"{node.op} {{{', '.join(f'{k}={v}' for k, v in geo.items())}}}"


def as4d(ctx, value: Value):
    """A conv operand as a 4-D view (``[N, C, L]`` -> ``[N, C, 1, L]``)."""
    shape = ctx.shape(value)
    if len(shape) == 3:
        shape = (shape[0], shape[1], 1, shape[2])
    return ctx.view(value, shape)


def _conv_at(params: str, dtype: str, epilogue: list[str]) -> str:
    """Device function ``conv_at(params, n, o, oy, ox)``: one output of the convolution, then
    the epilogue."""
    mac = ["acc += x[n, c0 + c, iy, ix] * w[o, c, a, e]"]
    lines = [
        "H = x.shape[2]",
        "W = x.shape[3]",
        "cg = w.shape[1]",
        "og = w.shape[0] // G",
        "c0 = (o // og) * cg",
        f"acc = {dtype}(0.0)",
        "for c in range(cg):",
        *nest(taps(("oy", "ox"), ("iy", "ix"), ("H", "W"), mac)),
        "v = acc",
        *epilogue,
        "return v",
    ]
    return device("conv_at", f"{params}, n, o, oy, ox", lines)


def _pooled(params: str, pool: Node, argmax: bool) -> tuple[str, list[str]]:
    """The pool's window over ``conv_at`` (an ``hc x wc`` plane): its source, and the kernel
    body storing pooled output ``y[n, o, oy, ox]`` (and the argmax tap ``am``)."""
    value, plane, call = f"conv_at({params}, n, c, iy, ix)", ("hc", "wc"), f"({params}, hc, wc, n, o, oy, ox)"
    src = window_consts(pool.attrs, "P")
    if pool.op == "avg_pool2d":
        src += window_sum(f"{params}, hc, wc", value, plane, p="P") + avg_divisor(pool.attrs)
        return src, [f"y[n, o, oy, ox] = window_sum{call} / avg_divisor(oy, ox, hc, wc)"]
    src += window_max(f"{params}, hc, wc", value, plane, p="P")
    body = [f"best, arg = window_max{call}", "y[n, o, oy, ox] = best"]
    return src, body + (["am[n, o, oy, ox] = np.uint8(arg)"] if argmax else [])


def forward(
    ctx,
    conv: Node,
    x: Value,
    w: Value,
    b: Value | None,
    bn: list[Value] | None,
    bn_eps: float,
    acts: list[tuple[str, dict]],
    pool: Node | None,
    y: Value,
    am: Value | None,
) -> None:
    """Generate and launch one conv kernel: conv, then bias, BN affine, activations and pool.

    With ``pool`` (``max_pool2d``, ``max_pool2d_argmax`` or ``avg_pool2d``) each thread owns
    one pooled output of ``y`` and ``am`` receives the argmax tap of each window, if given.
    """
    geo = conv_params(conv)
    ins = ["x", "w", *(["b"] if b is not None else []), *(["bnw", "bnb", "bnm", "bnv"] if bn else [])]
    params = ", ".join(ins)
    epilogue = epilogue_lines(b is not None, bn_eps if bn else None, acts)
    src = consts(**geo) + _conv_at(params, SCALAR[y.dtype], epilogue)
    pattern = [_pattern(conv, geo), *pattern_steps(b is not None, bool(bn), acts)]
    args = [as4d(ctx, x), as4d(ctx, w), *([b] if b is not None else []), *(bn or [])]
    if pool is None:
        outs, body, extra = ["y"], [f"y[n, o, oy, ox] = conv_at({params}, n, o, oy, ox)"], [as4d(ctx, y)]
    else:
        window, body = _pooled(params, pool, am is not None)
        src += window
        outs = ["hc", "wc", "y", *(["am"] if am is not None else [])]
        hc, wc = conv.outputs[0].shape[2:]
        extra = [hc, wc, y, *([am] if am is not None else [])]
        pattern.append(pool.op + (" (+argmax)" if am is not None else ""))
    src += per_element(", ".join([*ins, *outs]), "y", ["n", "o", "oy", "ox"], ["O", "Ho", "Wo"], body)
    fn = ctx.kernel("conv", " -> ".join(pattern) + f" ({y.dtype})", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(fn, blocks, threads, *args, *extra)


@lowering("conv2d", "conv1d")
def _(ctx, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    forward(ctx, node, x, w, b, None, 0.0, [], None, node.outputs[0], None)


# -- input gradient ------------------------------------------------------------------------
@lowering("conv2d_backward_input", "conv1d_backward_input", "conv_transpose2d")
def _(ctx, node: Node) -> None:
    # conv_transpose2d is the input gradient of the convolution whose output is x, plus a
    # bias (output_padding is only in the output size: no window reads the rows it adds)
    gy, w, *bias = node.inputs
    gx = node.outputs[0]
    geo = conv_params(node)
    setup = ["Ho = gy.shape[2]", "Wo = gy.shape[3]", "cg = w.shape[1]", "og = w.shape[0] // G"]
    body = [
        "g = cin // cg",
        "c = cin % cg",
        f"acc = {SCALAR[gx.dtype]}(0.0)",
        "for o in range(g * og, (g + 1) * og):",
        *nest(
            covering(("iy", "ix"), ("oy", "ox"), ("Ho", "Wo"), ["acc += gy[n, o, oy, ox] * w[o, c, a, e]"])
        ),
        "gx[n, cin, iy, ix] = acc + b[cin]" if bias else "gx[n, cin, iy, ix] = acc",
    ]
    params = "gy, w, b, gx" if bias else "gy, w, gx"
    src = consts(**geo) + per_element(params, "gx", ["n", "cin", "iy", "ix"], ["C", "H", "W"], body, setup)
    fn = ctx.kernel("conv", f"{_pattern(node, geo)}{' with bias' if bias else ''} ({gx.dtype})", src)
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(fn, blocks, threads, as4d(ctx, gy), as4d(ctx, w), *bias, as4d(ctx, gx))


# -- weight gradient -----------------------------------------------------------------------
@lowering("conv2d_backward_weight", "conv1d_backward_weight")
def _(ctx, node: Node) -> None:
    x, gy = node.inputs
    gw = node.outputs[0]
    geo = conv_params(node)
    dtype = SCALAR[gw.dtype]
    setup = [
        f"sh = cuda.shared.array(RT, dtype={dtype})",
        "t = cuda.threadIdx.x",
        "H = x.shape[2]",
        "W = x.shape[3]",
        "cg = gw.shape[1]",
        "Ho = gy.shape[2]",
        "Wo = gy.shape[3]",
        "og = gw.shape[0] // G",
        "count = x.shape[0] * Ho * Wo",
    ]
    pixel = [
        *decode("k", ["n", "oy", "ox"], ["", "Ho", "Wo"], rest="p"),
        "iy = oy * SH - PH + a * DH",
        "ix = ox * SW - PW + j * DW",
        "if iy >= 0 and iy < H and ix >= 0 and ix < W:",
        "    acc += x[n, cin, iy, ix] * gy[n, o, oy, ox]",
    ]
    weight = [
        *decode("e", ["o", "c", "a", "j"], ["", "cg", "KH", "KW"]),
        "cin = (o // og) * cg + c",
        f"acc = {dtype}(0.0)",
        *thread_loop("count", pixel),
        *block_reduce(["acc"], ["sh"]),
        "if t == 0:",
        "    gw[o, c, a, j] = acc",
    ]
    src = consts(**geo, RT=ctx.geometry.reduce_threads) + kernel(
        "x, gy, gw", [*setup, *block_loop("gw.size", weight, "e")]
    )
    fn = ctx.kernel("conv", f"{_pattern(node, geo)} ({gw.dtype})", src)
    blocks, threads = ctx.grid_reduce(ctx.numel(gw))
    ctx.launch(fn, blocks, threads, as4d(ctx, x), as4d(ctx, gy), as4d(ctx, gw))
