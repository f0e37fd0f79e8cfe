"""``fusion`` nodes (one launch per region) and the ops that exist for fusion.

The ``fuse`` pass builds two kinds of region, and each becomes a single kernel:

- forward: ``conv2d | conv1d | linear -> [batch_norm] -> activations* -> [pool]``, where
  the pool is ``max_pool2d``, ``avg_pool2d`` or (training) ``max_pool2d_argmax``. Conv
  regions go to the direct-convolution kernel with the epilogue and pool inlined
  (``kernels/conv.py``), linear regions to the tiled GEMM with the epilogue (``linear.py``).
- backward (training): ``act_backward(gy, y) -> max_pool2d_backward_argmax(., argmax)``: a
  gather over the windows covering each input element that applies the activation's
  derivative to the pooled gradient on the fly.

A region of any other shape is an error naming it: no silent per-op fallback.
"""

from __future__ import annotations

from convforge.backends import epilogue
from convforge.backends.numba_cuda.codegen import indent
from convforge.backends.numba_cuda.kernels import conv, linear, lowering
from convforge.backends.numba_cuda.kernels.elementwise import map_kernel
from convforge.backends.numba_cuda.kernels.pool import (
    _PER_OUTPUT,
    _WINDOW_MAX,
    gather,
    window_consts,
    window_text,
)
from convforge.errors import BackendError
from convforge.ir.graph import Node

PRODUCERS = ("conv2d", "conv1d", "linear")
POOLS = ("max_pool2d", "avg_pool2d", "max_pool2d_argmax")


@lowering("fusion")
def _(ctx, node: Node) -> None:
    region = node.region
    if region is None:
        raise BackendError(f"numba-cuda: {node.describe()} has no region")
    steps = region.nodes
    outer = {id(r): v for r, v in zip(region.inputs, node.inputs)}
    ops = [s.op for s in steps]
    if ops and ops[0] in PRODUCERS:
        _forward(ctx, node, steps, outer)
    elif len(ops) == 2 and ops[0] in epilogue.BACKWARD and ops[1] == "max_pool2d_backward_argmax":
        act, pool = steps
        gy, y, am = (outer[id(v)] for v in (act.inputs[0], act.inputs[1], pool.inputs[1]))
        grad = epilogue.backward(act.op, "gy[n, c, oy, ox]", "y[n, c, oy, ox]", act.attrs)
        gx = node.outputs[0]
        gather(
            ctx,
            pool.attrs,
            f"{act.op} -> max_pool2d_backward_argmax {window_text(pool.attrs)} ({gx.dtype})",
            ["gy", "y", "am", "gx"],
            [gy, y, am, gx],
            ["if am[n, c, oy, ox] == a * KW + e:", f"    acc += {grad}"],
            gx.dtype,
        )
    else:
        raise BackendError(
            f"numba-cuda has no fused kernel for the region {' -> '.join(ops)} (at {node.describe()})"
        )


def _forward(ctx, node: Node, steps: list[Node], outer: dict[int, object]) -> None:
    producer = steps[0]

    def ext(v):
        return outer[id(v)]

    x, w = ext(producer.inputs[0]), ext(producer.inputs[1])
    b = ext(producer.inputs[2]) if len(producer.inputs) > 2 else None
    i = 1
    bn, bn_eps = None, 0.0
    if i < len(steps) and steps[i].op == "batch_norm":
        bn = [ext(v) for v in steps[i].inputs[1:]]
        bn_eps = steps[i].attrs["eps"]
        i += 1
    acts = []
    while i < len(steps) and steps[i].op in epilogue.UNARY:
        acts.append((steps[i].op, dict(steps[i].attrs)))
        i += 1
    pool = None
    if i < len(steps) and steps[i].op in POOLS and producer.op == "conv2d":
        pool = steps[i]
        i += 1
    if i != len(steps):
        ops = " -> ".join(s.op for s in steps)
        raise BackendError(f"numba-cuda has no fused kernel for the region {ops} (at {node.describe()})")
    y = node.outputs[0]
    am = node.outputs[1] if pool is not None and pool.op == "max_pool2d_argmax" else None
    if producer.op == "linear":
        pattern = " -> ".join(
            [
                "linear",
                *(["bias"] if b is not None else []),
                *(["batch_norm"] if bn else []),
                *(op for op, _ in acts),
            ]
        )
        linear.gemm(ctx, pattern, x, w, False, True, y, bias=b, bn=bn, bn_eps=bn_eps, acts=acts)
    else:
        conv.forward(ctx, producer, x, w, b, bn, bn_eps, acts, pool, y, am)


# -- ops that exist for fusion -------------------------------------------------------------
@lowering("max_pool2d_argmax")
def _(ctx, node: Node) -> None:
    x = node.inputs[0]
    y, am = node.outputs
    body = [
        "best, arg = window_max(x, n, c, oy, ox)",
        "y[n, c, oy, ox] = best",
        "am[n, c, oy, ox] = np.uint8(arg)",
    ]
    src = (
        window_consts(node.attrs) + _WINDOW_MAX + _PER_OUTPUT.format(params="x, y, am", body=indent(body, 8))
    )
    kernel = ctx.kernel("fused", f"max_pool2d_argmax {window_text(node.attrs)}", src)
    blocks, threads = ctx.grid1d(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, x, y, am)


@lowering("max_pool2d_backward_argmax")
def _(ctx, node: Node) -> None:
    gy, am = node.inputs
    gx = node.outputs[0]
    gather(
        ctx,
        node.attrs,
        f"max_pool2d_backward_argmax {window_text(node.attrs)} ({gx.dtype})",
        ["gy", "am", "gx"],
        [gy, am, gx],
        ["if am[n, c, oy, ox] == a * KW + e:", "    acc += gy[n, c, oy, ox]"],
        gx.dtype,
    )


@lowering("bn_fold_weight")
def _(ctx, node: Node) -> None:
    w, weight, var = node.inputs
    out = node.outputs[0]
    inner = ctx.numel(w) // ctx.shape(w)[0]
    eps = node.attrs["eps"]
    body = ["o = i // inner", f"out[i] = w[i] * (weight[o] / math.sqrt(np.float64(var[o]) + {eps!r}))"]
    map_kernel(
        ctx,
        "fused",
        f"bn_fold_weight {{eps={eps!r}}}",
        ["w", "weight", "var", "out", "inner"],
        body,
        "out",
        [ctx.flat(w), weight, var, ctx.flat(out), inner],
        ctx.numel(out),
    )


@lowering("bn_fold_bias")
def _(ctx, node: Node) -> None:
    weight, bn_bias, mean, var, *bias = node.inputs
    out = node.outputs[0]
    eps = node.attrs["eps"]
    b = "bias[i]" if bias else "0.0"
    body = [
        f"s = weight[i] / math.sqrt(np.float64(var[i]) + {eps!r})",
        f"out[i] = ({b} - mean[i]) * s + bn_bias[i]",
    ]
    params = ["weight", "bn_bias", "mean", "var", *(["bias"] if bias else []), "out"]
    map_kernel(
        ctx,
        "fused",
        f"bn_fold_bias {{eps={eps!r}}}" + (" with bias" if bias else ""),
        params,
        body,
        "out",
        [weight, bn_bias, mean, var, *bias, out],
        ctx.numel(out),
    )
