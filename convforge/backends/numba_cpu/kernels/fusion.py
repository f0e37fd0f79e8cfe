"""``fusion`` nodes: one kernel per region, chosen by the region's typed pattern.

The patterns are described in :mod:`convforge.ir.ops.fusion`:

* :class:`ForwardChain` (``conv2d|conv1d|linear [-> batch_norm] [-> activation]* [-> pool]``):
  one generated kernel; the epilogue runs on the GEMM output while it is in cache.
* :class:`PoolBackward` (``[act_backward] -> max_pool2d_backward_argmax``): the gradient is
  masked at the pooled position and scattered through the stored argmax in one pass.
* :class:`ConvBackward` (that pair, then the conv's weight [bias] [input] gradients): one
  kernel rebuilds each image's conv-output gradient from the pooled one and runs the conv's
  gradient products on it, as the batch-norm backward below does.
* :class:`NormForward` (``conv2d -> batch_norm_train [-> activation]``): the conv kernel,
  then one kernel taking the batch statistics in one pass and applying the normalisation,
  affine and activation in one more.
* :class:`NormBackward` (``[act_backward] -> batch_norm_backward -> conv gradients``): one
  kernel reduces the two per-channel sums, then rebuilds each image's conv-output gradient
  in scratch and runs the conv's gradient products on it.

The gradient products (``conv.gradient_products_source``) are the weight gradient (im2col
GEMM or Winograd tiles) and the input gradient (im2col, or the stride-1 conv of
``conv.gradient_as_conv`` on Winograd or the direct micro-kernels); ``# conv weight
gradient:`` / ``# conv input gradient:`` lines in the driver say which and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from convforge.backends.numba_cpu.kernels import conv, linear, lowering, norm
from convforge.backends.numba_cpu.kernels.activation import act_text
from convforge.backends.numba_cpu.kernels.pool import act_backward_max_pool_argmax, window
from convforge.ir import scalar
from convforge.ir.graph import Node, Value
from convforge.ir.ops.fusion import (
    ConvBackward,
    ForwardChain,
    NormBackward,
    NormForward,
    PoolBackward,
    pattern,
)


@lowering("fusion")
def _(ctx, node: Node, ins: list[str], outs: list[str]) -> None:
    found = pattern(node)
    operand = _operands(node, ins)
    if isinstance(found, ForwardChain):
        _forward(ctx, node, found, operand, outs)
    elif isinstance(found, ConvBackward):
        _conv_backward(ctx, found, ins, outs, node)
    elif isinstance(found, NormForward):
        _norm_forward(ctx, found, operand, outs)
    elif isinstance(found, NormBackward):
        _norm_backward(ctx, found, operand, outs, node)
    else:
        _pool_backward(ctx, found, operand, outs)


def _operands(node: Node, ins: list[str]):
    """Driver expression of a region value that is a region input."""
    by_id = {id(v): expr for v, expr in zip(node.region.inputs, ins)}
    return lambda v: by_id[id(v)]


def _forward(ctx, node: Node, chain: ForwardChain, operand, outs: list[str]) -> None:
    ops = chain.operands(operand)
    if chain.producer.op == "linear":
        linear.emit_forward(
            ctx, node, ops.x, ops.w, ops.bias, ops.batch_norm, ops.eps, ops.activations, outs[0]
        )
        return
    am = outs[1] if chain.saves_argmax else None
    conv.emit_forward(
        ctx, chain.producer, ops.x, ops.w, ops.bias, ops.batch_norm, ops.eps, ops.activations,
        chain.pool, outs[0], am, node.outputs[0],
    )  # fmt: skip


def _pool_backward(ctx, found: PoolBackward, operand, outs: list[str]) -> None:
    pool = found.pool
    if found.activation is not None:
        gy, s = (operand(v) for v in found.activation.inputs)
    else:
        gy = s = operand(pool.inputs[0])
    am = operand(pool.inputs[1])
    k = ctx.static(act_backward_max_pool_argmax, "act_backward_max_pool_argmax")
    act = act_text(found.activation)
    ctx.line(f"{k}({gy}, {s}, {am}, act={act}, pool=({window(pool.attrs)}), gx={outs[0]})")


def _conv_backward(ctx, found: ConvBackward, ins: list[str], outs: list[str], node: Node) -> None:
    gp, yp, am, x = ins[:4]
    by_out = dict(zip((id(v) for v in node.region.outputs), outs))
    gw = by_out[id(found.weight.outputs[0])]
    dtype = found.weight.outputs[0].type.dtype
    # without an input gradient the kernel reads only the weight's shape, which gw has
    w = ins[4] if found.grad_input is not None else gw
    gb = by_out[id(found.bias.outputs[0])] if found.bias is not None else ctx.zeros(0, dtype, "no_bias_grad")
    gx = by_out[id(found.grad_input.outputs[0])] if found.grad_input is not None else ctx.dummy(4, dtype)
    gz = found.pool.outputs[0].type
    geometry = (*conv.conv_params(found.weight), gz.shape[2], gz.shape[3])
    k, grad = _backward_kernel(ctx, node, found, "conv2d_pool_backward", conv.pool_backward_source)
    ctx.line(
        f"{k}({gp}, {yp}, {am}, act={act_text(found.activation)}, pool=({window(found.pool.attrs)}), "
        f"x={x}, w={w}, conv={geometry}, grad={grad}, nt=T, gw={gw}, gb={gb}, gx={gx})"
    )


def _backward_kernel(
    ctx, node: Node, found: ConvBackward | NormBackward, head: str, source: Callable[[int, int], str]
) -> tuple[str, tuple]:
    """(kernel name, its ``grad`` argument) of a fused conv backward region: ``source(kw,
    r)`` (``conv.pool_backward_source`` or ``norm.norm_backward_source``) generated for the
    algorithms its conv's gradient products take, with driver comments saying which and why."""
    weight, grad_input = found.weight, found.grad_input
    weight_algorithm, weight_why = conv.weight_grad_algorithm(weight)
    input_algorithm, input_why, kw, pads = "im2col", "", 0, (0, 0)
    as_conv = conv.gradient_as_conv(grad_input) if grad_input is not None else None
    if as_conv is not None:
        tune = bool(ctx.graph.meta.get("tune"))
        input_algorithm, input_why = conv.conv_algorithm(as_conv, tune=tune, gradient=True)
        kw, pads = as_conv.inputs[1].shape[-1], conv.conv_params(as_conv)[2:4]
    elif grad_input is not None:
        input_why = "its stride, groups or padding make it no stride-1 conv of the output gradient"
    ctx.line(f"# conv weight gradient: {weight_algorithm} ({weight_why})")
    if grad_input is not None:
        ctx.line(f"# conv input gradient: {input_algorithm} ({input_why})")
    direct_kw = kw if input_algorithm == "direct" else 0
    # the Winograd variant the products run (0: none, and no Winograd code in the kernel)
    r = weight.outputs[0].shape[-1] if "winograd" in (weight_algorithm, input_algorithm) else 0
    grad = (weight_algorithm == "winograd", conv.INPUT_GRAD_ALGORITHMS.index(input_algorithm), *pads)
    suffix = f" [direct k{direct_kw}]" if direct_kw else ""
    k = ctx.generated(
        (head, direct_kw, r), source(direct_kw, r), " -> ".join(n.op for n in node.region.nodes) + suffix
    )
    return k, grad


def _planes(ctx, value: Value, expr: str) -> str:
    """``expr`` seen as [N, C, H*W] (the trailing size spelled out: NumPy cannot infer -1
    for an empty array)."""
    t = value.type
    return f"{expr}.reshape({ctx.dim(t.shape[0])}, {t.shape[1]}, {math.prod(t.shape[2:])})"


def _norm_forward(ctx, found: NormForward, operand, outs: list[str]) -> None:
    cv, bn = found.producer, found.batch_norm
    x, w, *bias = (operand(v) for v in cv.inputs)
    z = cv.outputs[0]
    conv.emit_forward(
        ctx, cv, x, w, bias[0] if bias else None, None, 0.0, [], None, outs[1], None, z
    )  # fmt: skip
    acts = found.activation
    act_ops = [] if acts is None else [(acts.op, scalar.attrs_in_dtype(acts.attrs, z.type.np_dtype))]
    key = ("batch_norm_train", tuple((op, tuple(sorted(at.items()))) for op, at in act_ops))
    pattern = " -> ".join(["batch_norm_train", *(op for op, _ in act_ops)])
    k = ctx.generated(key, norm.norm_train_source(act_ops), pattern)
    params = ", ".join(operand(v) for v in bn.inputs[1:])
    a = bn.attrs
    ctx.line(
        f"{k}({_planes(ctx, z, outs[1])}, {params}, {scalar.literal(a['eps'])}, "
        f"{scalar.literal(a['momentum'])}, {_planes(ctx, z, outs[0])}, {', '.join(outs[2:])})"
    )


def _norm_backward(ctx, found: NormBackward, operand, outs: list[str], node: Node) -> None:
    bn, weight = found.batch_norm, found.weight
    gy, z, bw, mean, invstd = bn.inputs
    if found.activation is not None:
        ga, a = (operand(v) for v in found.activation.inputs)
    else:
        ga = a = operand(gy)
    gbw, gbb, gw = outs[:3]
    dtype = weight.outputs[0].type.dtype
    w = operand(found.grad_input.inputs[1]) if found.grad_input is not None else gw
    gx = outs[3] if found.grad_input is not None else ctx.dummy(4, dtype)
    geometry = (*conv.conv_params(weight), z.shape[2], z.shape[3])
    planes = [_planes(ctx, z, e) for e in (ga, a, operand(z))]
    args = (
        f"{', '.join(planes)}, {operand(bw)}, {operand(mean)}, {operand(invstd)}, "
        f"act={act_text(found.activation)}, x={operand(weight.inputs[0])}, w={w}, conv={geometry}"
    )
    k, grad = _backward_kernel(ctx, node, found, "conv2d_batch_norm_backward", norm.norm_backward_source)
    ctx.line(f"{k}({args}, grad={grad}, nt=T, gbw={gbw}, gbb={gbb}, gw={gw}, gx={gx})")
