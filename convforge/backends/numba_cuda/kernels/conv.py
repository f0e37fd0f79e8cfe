"""Convolution kernels: direct convolution, one thread per output element.

The forward kernel is generated per kernel geometry (kernel size, stride, padding,
dilation, groups: module constants, so loops unroll) and per epilogue: bias, eval-mode
batch-norm affine and activations from the shared table, and an optional closing max /
avg pool, in which case each thread owns one *pooled* output and evaluates the
convolution at each tap of its window (the fused conv+bias+activation+pool is one launch).
Batch and image size are runtime shapes. ``conv1d`` runs through the same kernels on
``[N, C, 1, L]`` views.

A rendered device function (3x3, stride 1, padding 1, one group, bias, ReLU)::

    @cuda.jit(device=True)
    def conv_at(x, w, b, n, o, oy, ox):
        ...
        acc = np.float32(0.0)
        for c in range(cg):
            for i in range(KH):
                iy = oy * SH - PH + i * DH
                if iy >= 0 and iy < H:
                    for j in range(KW):
                        ix = ox * SW - PW + j * DW
                        if ix >= 0 and ix < W:
                            acc += x[n, c0 + c, iy, ix] * w[o, c, i, j]
        v = acc + b[o]
        v = max(v, 0.0)
        return v

The input gradient gathers, per input element, every (output, tap) pair that read it
(no atomics); the weight gradient runs one block per weight element reducing over
(batch, output pixels) in shared memory.
"""

from __future__ import annotations

from convforge.backends import epilogue
from convforge.backends.numba_cuda.codegen import SCALAR, block_reduce, indent
from convforge.backends.numba_cuda.kernels import lowering
from convforge.ir.graph import Node, Value
from convforge.ir.ops.conv import pad_pairs

_CONSTS = """\
KH = {KH}
KW = {KW}
SH = {SH}
SW = {SW}
PH = {PH}
PW = {PW}
DH = {DH}
DW = {DW}
G = {G}
"""

_CONV_AT = """\
@cuda.jit(device=True)
def conv_at({params}, n, o, oy, ox):
    H = x.shape[2]
    W = x.shape[3]
    cg = w.shape[1]
    og = w.shape[0] // G
    c0 = (o // og) * cg
    acc = {DT}(0.0)
    for c in range(cg):
        for i in range(KH):
            iy = oy * SH - PH + i * DH
            if iy >= 0 and iy < H:
                for j in range(KW):
                    ix = ox * SW - PW + j * DW
                    if ix >= 0 and ix < W:
                        acc += x[n, c0 + c, iy, ix] * w[o, c, i, j]
    v = acc
{epilogue}
    return v

"""

_PLAIN = """
@cuda.jit(cache=True)
def kernel({params}, y):
    O = y.shape[1]
    Ho = y.shape[2]
    Wo = y.shape[3]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < y.size:
        ox = i % Wo
        q = i // Wo
        oy = q % Ho
        q //= Ho
        o = q % O
        n = q // O
        y[n, o, oy, ox] = conv_at({params}, n, o, oy, ox)
        i += stride
"""

_POOLED = """
PKH = {PKH}
PKW = {PKW}
PSH = {PSH}
PSW = {PSW}
PPH = {PPH}
PPW = {PPW}
PDH = {PDH}
PDW = {PDW}


@cuda.jit(cache=True)
def kernel({params}, hc, wc, y{am}):
    O = y.shape[1]
    Ho = y.shape[2]
    Wo = y.shape[3]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < y.size:
        px = i % Wo
        q = i // Wo
        py = q % Ho
        q //= Ho
        o = q % O
        n = q // O
{body}
        i += stride
"""

_MAX_BODY = """\
best = -math.inf
arg = 0
for a in range(PKH):
    yy = py * PSH - PPH + a * PDH
    if yy >= 0 and yy < hc:
        for e in range(PKW):
            xx = px * PSW - PPW + e * PDW
            if xx >= 0 and xx < wc:
                v = conv_at({params}, n, o, yy, xx)
                if v > best or v != v:
                    best = v
                    arg = a * PKW + e
y[n, o, py, px] = best"""

_AVG_BODY = """\
total = 0.0
for a in range(PKH):
    yy = py * PSH - PPH + a
    if yy >= 0 and yy < hc:
        for e in range(PKW):
            xx = px * PSW - PPW + e
            if xx >= 0 and xx < wc:
                total += conv_at({params}, n, o, yy, xx)
y[n, o, py, px] = total / {divisor}"""


def avg_divisor(attrs, h: str, w: str, oy: str, ox: str) -> str:
    """The expression of PyTorch's avg-pool divisor for window (oy, ox) over an h x w input."""
    if attrs["divisor_override"] is not None:
        return repr(float(attrs["divisor_override"]))
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"]
    hs, ws = f"({oy} * {sh} - {ph})", f"({ox} * {sw} - {pw})"
    he, we = f"min({hs} + {kh}, {h} + {ph})", f"min({ws} + {kw}, {w} + {pw})"
    if attrs["count_include_pad"]:
        return f"(({he} - {hs}) * ({we} - {ws}))"
    return f"((min({he}, {h}) - max({hs}, 0)) * (min({we}, {w}) - max({ws}, 0)))"


def conv_params(node: Node) -> dict[str, int]:
    """Kernel geometry of a conv1d/conv2d node (or backward op) as 2-D constants.

    Only the top/left padding enters the kernels: the bottom/right padding is already in
    the output size.
    """
    a = node.attrs
    nd = 1 if node.op.startswith("conv1d") else 2
    w_shape = node.inputs[1].shape if node.op in ("conv1d", "conv2d", f"conv{nd}d_backward_input") else None
    ksize = tuple(w_shape[2:]) if w_shape is not None else tuple(a["kernel_size"])
    pads = pad_pairs(a["padding"], nd)
    if nd == 1:
        return dict(
            KH=1,
            KW=ksize[0],
            SH=1,
            SW=a["stride"][0],
            PH=0,
            PW=pads[0][0],
            DH=1,
            DW=a["dilation"][0],
            G=a["groups"],
        )
    return dict(
        KH=ksize[0],
        KW=ksize[1],
        SH=a["stride"][0],
        SW=a["stride"][1],
        PH=pads[0][0],
        PW=pads[1][0],
        DH=a["dilation"][0],
        DW=a["dilation"][1],
        G=a["groups"],
    )


def as4d(ctx, value: Value):
    """A conv operand as a 4-D view (``[N, C, L]`` -> ``[N, C, 1, L]``)."""
    shape = ctx.shape(value)
    if len(shape) == 3:
        shape = (shape[0], shape[1], 1, shape[2])
    return ctx.view(value, shape)


def epilogue_lines(has_bias: bool, bn_eps: float | None, acts: list[tuple[str, dict]]) -> list[str]:
    """``v = ...`` statements: bias, the batch-norm affine (per channel ``o``), activations."""
    lines = ["v = v + b[o]"] if has_bias else []
    if bn_eps is not None:
        lines += [f"bs = bnw[o] / math.sqrt(bnv[o] + {bn_eps!r})", "v = v * bs + (bnb[o] - bnm[o] * bs)"]
    for op, attrs in acts:
        lines.append("v = " + epilogue.unary(op, "v", attrs))
    return lines


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
    """Generate and launch one conv kernel: conv, then bias, BN affine, activations and pool."""
    geo = conv_params(conv)
    params = ["x", "w"] + (["b"] if b is not None else []) + (["bnw", "bnb", "bnm", "bnv"] if bn else [])
    dtype = SCALAR[y.dtype]
    lines = epilogue_lines(b is not None, bn_eps if bn else None, acts)
    src = (
        _CONSTS.format(**geo)
        + "\n\n"
        + _CONV_AT.format(params=", ".join(params), DT=dtype, epilogue=indent(lines, 4) if lines else "")
    )
    pattern = [f"{conv.op} {{{', '.join(f'{k}={v}' for k, v in geo.items())}}}"]
    pattern += (["bias"] if b is not None else []) + (["batch_norm"] if bn else []) + [op for op, _ in acts]
    args = [as4d(ctx, x), as4d(ctx, w), *([b] if b is not None else []), *(bn or [])]
    if pool is None:
        src += _PLAIN.format(params=", ".join(params))
        kernel = ctx.kernel("conv", " -> ".join(pattern) + f" ({y.dtype})", src)
        blocks, threads = ctx.grid1d(ctx.numel(y))
        ctx.launch(kernel, blocks, threads, *args, as4d(ctx, y))
        return
    pa = pool.attrs
    conv_out = conv.outputs[0]
    hc, wc = conv_out.shape[2], conv_out.shape[3]
    if pool.op == "avg_pool2d":
        body = _AVG_BODY.format(params=", ".join(params), divisor=avg_divisor(pa, "hc", "wc", "py", "px"))
        dil = (1, 1)
    else:
        body = _MAX_BODY.format(params=", ".join(params))
        if am is not None:
            body += "\nam[n, o, py, px] = np.uint8(arg)"
        dil = pa["dilation"]
    src += _POOLED.format(
        PKH=pa["kernel_size"][0],
        PKW=pa["kernel_size"][1],
        PSH=pa["stride"][0],
        PSW=pa["stride"][1],
        PPH=pa["padding"][0],
        PPW=pa["padding"][1],
        PDH=dil[0],
        PDW=dil[1],
        params=", ".join(params),
        am=", am" if am is not None else "",
        body=indent(body.split("\n"), 8),
    )
    pattern.append(pool.op + (" (+argmax)" if am is not None else ""))
    kernel = ctx.kernel("conv", " -> ".join(pattern) + f" ({y.dtype})", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, *args, hc, wc, y, *([am] if am is not None else []))


@lowering("conv2d", "conv1d")
def _(ctx, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    forward(ctx, node, x, w, b, None, 0.0, [], None, node.outputs[0], None)


# -- input gradient ------------------------------------------------------------------------
_BACKWARD_INPUT = """
@cuda.jit(cache=True)
def kernel(gy, w, gx):
    C = gx.shape[1]
    H = gx.shape[2]
    W = gx.shape[3]
    Ho = gy.shape[2]
    Wo = gy.shape[3]
    cg = w.shape[1]
    og = w.shape[0] // G
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < gx.size:
        ix = i % W
        q = i // W
        iy = q % H
        q //= H
        cin = q % C
        n = q // C
        g = cin // cg
        c = cin % cg
        acc = {DT}(0.0)
        for o in range(g * og, (g + 1) * og):
            for a in range(KH):
                ty = iy + PH - a * DH
                if ty >= 0 and ty % SH == 0 and ty // SH < Ho:
                    oy = ty // SH
                    for e in range(KW):
                        tx = ix + PW - e * DW
                        if tx >= 0 and tx % SW == 0 and tx // SW < Wo:
                            acc += gy[n, o, oy, tx // SW] * w[o, c, a, e]
        gx[n, cin, iy, ix] = acc
        i += stride
"""


@lowering("conv2d_backward_input", "conv1d_backward_input")
def _(ctx, node: Node) -> None:
    gy, w = node.inputs
    gx = node.outputs[0]
    geo = conv_params(node)
    src = _CONSTS.format(**geo) + _BACKWARD_INPUT.format(DT=SCALAR[gx.dtype])
    pattern = f"{node.op} {{{', '.join(f'{k}={v}' for k, v in geo.items())}}} ({gx.dtype})"
    kernel = ctx.kernel("conv", pattern, src)
    blocks, threads = ctx.grid1d(ctx.numel(gx))
    ctx.launch(kernel, blocks, threads, as4d(ctx, gy), as4d(ctx, w), as4d(ctx, gx))


# -- weight gradient -----------------------------------------------------------------------
_BACKWARD_WEIGHT = """
RT = {RT}


@cuda.jit(cache=True)
def kernel(x, gy, gw):
    sh = cuda.shared.array(RT, dtype={DT})
    t = cuda.threadIdx.x
    H = x.shape[2]
    W = x.shape[3]
    O = gw.shape[0]
    cg = gw.shape[1]
    Ho = gy.shape[2]
    Wo = gy.shape[3]
    og = O // G
    count = x.shape[0] * Ho * Wo
    e = cuda.blockIdx.x
    while e < gw.size:
        j = e % KW
        q = e // KW
        a = q % KH
        q //= KH
        c = q % cg
        o = q // cg
        cin = (o // og) * cg + c
        acc = {DT}(0.0)
        k = t
        while k < count:
            ox = k % Wo
            q = k // Wo
            oy = q % Ho
            n = q // Ho
            iy = oy * SH - PH + a * DH
            ix = ox * SW - PW + j * DW
            if iy >= 0 and iy < H and ix >= 0 and ix < W:
                acc += x[n, cin, iy, ix] * gy[n, o, oy, ox]
            k += RT
{reduce}
        if t == 0:
            gw[o, c, a, j] = acc
        e += cuda.gridDim.x
"""


@lowering("conv2d_backward_weight", "conv1d_backward_weight")
def _(ctx, node: Node) -> None:
    x, gy = node.inputs
    gw = node.outputs[0]
    geo = conv_params(node)
    src = _CONSTS.format(**geo) + _BACKWARD_WEIGHT.format(
        RT=ctx.geometry.reduce_threads, DT=SCALAR[gw.dtype], reduce=block_reduce(["acc"], ["sh"], 8)
    )
    pattern = f"{node.op} {{{', '.join(f'{k}={v}' for k, v in geo.items())}}} ({gw.dtype})"
    kernel = ctx.kernel("conv", pattern, src)
    blocks, threads = ctx.grid_reduce(ctx.numel(gw))
    ctx.launch(kernel, blocks, threads, as4d(ctx, x), as4d(ctx, gy), as4d(ctx, gw))
