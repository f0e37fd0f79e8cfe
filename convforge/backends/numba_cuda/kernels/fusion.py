"""``fusion`` nodes: one launch per region, chosen by the region's typed pattern.

The patterns are described in :mod:`convforge.ir.ops.fusion`; this lowering reads the
typed description (:func:`~convforge.ir.ops.fusion.pattern`), never the region's ops:

* :class:`ForwardChain` (``conv2d | conv1d | linear -> [batch_norm] -> activations* ->
  [pool]``): conv chains go to the direct-convolution kernel with the epilogue and pool
  inlined (``kernels/conv.py``), linear chains to the tiled GEMM with the epilogue
  (``kernels/linear.py``);
* :class:`PoolBackward` (``[act_backward(gy, y)] -> max_pool2d_backward_argmax(., argmax)``):
  the gather over the windows covering each input element, applying the activation's
  derivative to the pooled gradient on the fly (``kernels/pool.py``);
* :class:`ConvBackward` (that, then the conv's gradients) has no CUDA kernel: the CUDA
  training pipeline (``fuse{training=true}``) never builds it, and a graph that holds one
  is a BackendError naming the node and its region.

A region that is none of these is the FusionError of ``pattern``: no silent per-op fallback.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import conv, linear, lowering, pool
from convforge.backends.numba_cuda.kernels.epilogue import pattern_steps
from convforge.errors import BackendError
from convforge.ir.graph import Node, Value
from convforge.ir.ops.fusion import ForwardChain, PoolBackward, pattern


@lowering("fusion")
def _(ctx, node: Node) -> None:
    found = pattern(node)
    outer = dict(zip((id(v) for v in node.region.inputs), node.inputs))

    def operand(v: Value) -> Value:
        """The node input that region input ``v`` stands for."""
        return outer[id(v)]

    if isinstance(found, ForwardChain):
        _forward(ctx, node, found, operand)
    elif isinstance(found, PoolBackward):
        act, p = found.activation, found.pool
        gy, y = (operand(v) for v in act.inputs) if act is not None else (operand(p.inputs[0]), None)
        pool.argmax_backward(ctx, p, gy, operand(p.inputs[1]), node.outputs[0], act, y)
    else:  # ConvBackward: numba-cpu only
        ops = " -> ".join(s.op for s in node.region.nodes)
        raise BackendError(
            f"numba-cuda has no kernel for op fusion with the region {ops} "
            f"({type(found).__name__}, at {node.describe()}); compile without fuse{{conv_backward=true}}"
        )


def _forward(ctx, node: Node, chain: ForwardChain, operand) -> None:
    ops = chain.operands(operand)
    y = node.outputs[0]
    if chain.producer.op == "linear":
        steps = pattern_steps(ops.bias is not None, ops.batch_norm is not None, ops.activations)
        pattern_text = " -> ".join(["linear", *steps])
        linear.gemm(
            ctx, pattern_text, ops.x, ops.w, False, True, y,
            bias=ops.bias, bn=ops.batch_norm, bn_eps=ops.eps, acts=ops.activations,
        )  # fmt: skip
        return
    am = node.outputs[1] if chain.saves_argmax else None
    conv.forward(
        ctx,
        chain.producer,
        ops.x,
        ops.w,
        ops.bias,
        ops.batch_norm,
        ops.eps,
        ops.activations,
        chain.pool,
        y,
        am,
    )
