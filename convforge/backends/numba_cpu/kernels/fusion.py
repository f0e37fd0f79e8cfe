"""``fusion`` nodes: one kernel per region, chosen by the region's typed pattern.

The patterns are described in :mod:`convforge.ir.ops.fusion`:

* :class:`ForwardChain` (``conv2d|conv1d|linear [-> batch_norm] [-> activation]* [-> pool]``):
  one generated kernel; the epilogue runs on the GEMM output while it is in cache.
* :class:`PoolBackward` (``[act_backward] -> max_pool2d_backward_argmax``): the gradient is
  masked at the pooled position and scattered through the stored argmax in one pass.
* :class:`ConvBackward` (that pair, then the conv's weight [bias] [input] gradients): one
  kernel rebuilds each image's conv-output gradient from the pooled one and runs both GEMMs.
"""

from __future__ import annotations

from convforge.backends.numba_cpu.kernels import conv, linear, lowering
from convforge.backends.numba_cpu.kernels.activation import act_text
from convforge.backends.numba_cpu.kernels.pool import act_backward_max_pool_argmax, window
from convforge.ir.graph import Node
from convforge.ir.ops.fusion import ConvBackward, ForwardChain, PoolBackward, pattern


@lowering("fusion")
def _(ctx, node: Node, ins: list[str], outs: list[str]) -> None:
    found = pattern(node)
    operand = _operands(node, ins)
    if isinstance(found, ForwardChain):
        _forward(ctx, node, found, operand, outs)
    elif isinstance(found, ConvBackward):
        _conv_backward(ctx, found, ins, outs, node)
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
    k = ctx.static(conv.conv2d_backward_fused, "conv2d_backward_fused")
    geometry = (*conv.conv_params(found.weight), gz.shape[2], gz.shape[3])
    act = act_text(found.activation)
    ctx.line(
        f"{k}({gp}, {yp}, {am}, act={act}, pool=({window(found.pool.attrs)}), x={x}, w={w}, "
        f"conv={geometry}, nt=T, gw={gw}, gb={gb}, gx={gx})"
    )
