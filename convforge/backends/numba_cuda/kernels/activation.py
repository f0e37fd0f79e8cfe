"""Activation kernels: the pointwise ones from the shared epilogue table, softmax along a dim.

Pointwise activations and their backward ops are one thread per element
(:func:`convforge.backends.numba_cuda.kernels.elementwise.map_kernel`). Softmax-family
kernels see ``x`` as ``[outer, D, inner]`` (D the softmax dim) and give one thread to each
(outer, inner) row, which makes three passes over its D elements.
"""

from __future__ import annotations

from convforge.backends import epilogue
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.elementwise import map_kernel
from convforge.ir.graph import Node, Value


def _attrs_text(node: Node) -> str:
    return " {" + ", ".join(f"{k}={v!r}" for k, v in node.attrs.items()) + "}" if node.attrs else ""


@lowering(*(op for op in epilogue.UNARY if op != "scale"))  # scale lives in elementwise.py
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    expr = epilogue.unary(node.op, "v", node.attrs)
    map_kernel(
        ctx,
        "activation",
        node.op + _attrs_text(node),
        ["x", "y"],
        ["v = x[i]", f"y[i] = {expr}"],
        "y",
        [ctx.flat(x), ctx.flat(y)],
        ctx.numel(y),
    )


@lowering(*epilogue.BACKWARD)
def _(ctx, node: Node) -> None:
    gy, saved = node.inputs
    gx = node.outputs[0]
    expr = epilogue.backward(node.op, "g", "s", node.attrs)
    map_kernel(
        ctx,
        "activation",
        node.op + _attrs_text(node),
        ["gy", "sv", "gx"],
        ["g = gy[i]", "s = sv[i]", f"gx[i] = {expr}"],
        "gx",
        [ctx.flat(gy), ctx.flat(saved), ctx.flat(gx)],
        ctx.numel(gx),
    )


# -- softmax family ------------------------------------------------------------------------
_ROWS = """\
@cuda.jit(cache=True)
def kernel({params}):
    outer, D, inner = {first}.shape
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < outer * inner:
        o = i // inner
        r = i % inner
{body}
        i += stride
"""

_BODIES = {
    "softmax": [
        "m = x[o, 0, r]",
        "for d in range(1, D):",
        "    m = max(m, x[o, d, r])",
        "total = 0.0",
        "for d in range(D):",
        "    total += math.exp(x[o, d, r] - m)",
        "for d in range(D):",
        "    y[o, d, r] = math.exp(x[o, d, r] - m) / total",
    ],
    "log_softmax": [
        "m = x[o, 0, r]",
        "for d in range(1, D):",
        "    m = max(m, x[o, d, r])",
        "total = 0.0",
        "for d in range(D):",
        "    total += math.exp(x[o, d, r] - m)",
        "lse = math.log(total)",
        "for d in range(D):",
        "    y[o, d, r] = (x[o, d, r] - m) - lse",
    ],
    "softmax_backward": [
        "dot = 0.0",
        "for d in range(D):",
        "    dot += gy[o, d, r] * y[o, d, r]",
        "for d in range(D):",
        "    gx[o, d, r] = y[o, d, r] * (gy[o, d, r] - dot)",
    ],
    "log_softmax_backward": [
        "total = 0.0",
        "for d in range(D):",
        "    total += gy[o, d, r]",
        "for d in range(D):",
        "    gx[o, d, r] = gy[o, d, r] - math.exp(y[o, d, r]) * total",
    ],
}


def rows_view(ctx, value: Value, dim: int) -> tuple[int, int, int]:
    """``value``'s shape as ``(outer, D, inner)`` around axis ``dim``."""
    shape = ctx.shape(value) if value.type.rank else (1,)
    axis = dim % len(shape)
    outer = inner = 1
    for d in shape[:axis]:
        outer *= d
    for d in shape[axis + 1 :]:
        inner *= d
    return outer, shape[axis], inner


@lowering("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
def _(ctx, node: Node) -> None:
    dim = node.attrs["dim"]
    shape3 = rows_view(ctx, node.inputs[0], dim)
    if node.op.endswith("_backward"):
        params = ["gy", "y", "gx"]
    else:
        params = ["x", "y"]
    src = _ROWS.format(
        params=", ".join(params), first=params[0], body="\n".join(" " * 8 + line for line in _BODIES[node.op])
    )
    kernel = ctx.kernel("activation", f"{node.op} (rows of [outer, D, inner])", src)
    values = [*node.inputs, node.outputs[0]]
    blocks, threads = ctx.grid1d(shape3[0] * shape3[2])
    ctx.launch(kernel, blocks, threads, *(ctx.view(v, shape3) for v in values))
