"""The ``fusion`` op: a node that holds a region, the sub-graph a backend runs as one kernel.

The fuse pass (``convforge.passes.fuse``) builds the regions; what a region may contain,
and how a backend reads it, is described here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from convforge.errors import FusionError
from convforge.ir import scalar
from convforge.ir.ops import registry
from convforge.ir.ops.pool import MAX_ARGMAX_TAPS
from convforge.ir.ops.registry import FusionKind, Op

if TYPE_CHECKING:
    from convforge.ir.graph import Node, Value

T = TypeVar("T")

fusion = Op(
    "fusion", fusion=FusionKind.OPAQUE, region=True,
    doc="the region's outputs; the region is a fused chain (see convforge.ir.ops.fusion)",
)  # fmt: skip


# -- what a region may be ---------------------------------------------------------------------
#: ops that open a forward chain; only a conv2d chain may close with a pool
PRODUCERS = ("conv2d", "conv1d", "linear")
#: pools that may close a conv2d chain (``max_pool2d_argmax`` in training)
POOLS = ("max_pool2d", "avg_pool2d", "max_pool2d_argmax")


@dataclass(frozen=True)
class ForwardChain:
    """``producer -> [batch_norm] -> activations* -> [pool]``: one kernel, the epilogue and
    pool applied to the producer's output while it is in cache.

    ``pool`` is ``max_pool2d_argmax`` when the region saves, for backward, the argmax tap
    of every window (one byte per output) instead of the pre-pool activation.
    """

    producer: Node
    batch_norm: Node | None
    activations: tuple[Node, ...]
    pool: Node | None

    @property
    def saves_argmax(self) -> bool:
        return self.pool is not None and self.pool.op == "max_pool2d_argmax"

    def operands(self, outer: Callable[[Value], T]) -> ChainOperands[T]:
        """What a kernel for this chain takes, each region input mapped through ``outer``
        (to the fusion node's input, or a backend's expression for it)."""
        x, w, *bias = (outer(v) for v in self.producer.inputs)
        bn = self.batch_norm
        return ChainOperands(
            x=x,
            w=w,
            bias=bias[0] if bias else None,
            batch_norm=[outer(v) for v in bn.inputs[1:]] if bn is not None else None,
            eps=bn.attrs["eps"] if bn is not None else 0.0,
            # attributes rounded to the tensor dtype, as the references compute with them
            activations=[
                (a.op, scalar.attrs_in_dtype(a.attrs, a.outputs[0].type.np_dtype)) for a in self.activations
            ],
        )


@dataclass(frozen=True)
class ChainOperands(Generic[T]):
    """The operands of a :class:`ForwardChain`'s kernel: input, weight, optional bias, the
    batch norm's (weight, bias, running mean, running var) and eps, the activations."""

    x: T
    w: T
    bias: T | None
    batch_norm: list[T] | None
    eps: float
    activations: list[tuple[str, dict]]


@dataclass(frozen=True)
class PoolBackward:
    """``[act_backward(gy, y)] -> max_pool2d_backward_argmax(., argmax)``: the pooled gradient,
    times the activation's derivative read off the pooled output, scattered to the argmax."""

    activation: Node | None
    pool: Node


@dataclass(frozen=True)
class ConvBackward:
    """A :class:`PoolBackward` whose result feeds the conv's gradients directly:
    ``conv2d_backward_weight`` [``reduce_sum`` (bias)] [``conv2d_backward_input``].

    Region inputs are ``(gy, y, argmax, x[, w])``; its outputs those ops' results, in order.
    The conv-output gradient is rebuilt per image inside the kernel, never stored.
    """

    activation: Node
    pool: Node
    weight: Node
    bias: Node | None
    grad_input: Node | None


@dataclass(frozen=True)
class NormForward:
    """``conv2d -> batch_norm_train -> [activation]`` in training: the conv, the batch
    statistics, and the normalisation, affine and activation applied in one pass.

    Region outputs: the activation's (or the batch norm's) output, then the conv output
    (what the batch-norm backward reads), then the batch norm's mean, invstd, running mean
    and running var.
    """

    producer: Node
    batch_norm: Node
    activation: Node | None


@dataclass(frozen=True)
class NormBackward:
    """``[act_backward] -> batch_norm_backward -> conv2d_backward_weight [-> conv2d_backward_input]``:
    the two per-channel reductions, then per image the conv-output gradient rebuilt in
    scratch and fed to the conv's gradient GEMMs, never stored.

    Region outputs: the batch norm's weight and bias gradients, the conv's weight gradient,
    then its input gradient if any.
    """

    activation: Node | None
    batch_norm: Node
    weight: Node
    grad_input: Node | None


Pattern = ForwardChain | PoolBackward | ConvBackward | NormForward | NormBackward


def pool_fusable(pool: Node, training: bool) -> bool:
    """Whether ``pool`` may close a fused conv chain (what the kernels implement)."""
    a = pool.attrs
    if pool.op in ("max_pool2d", "max_pool2d_argmax"):
        return tuple(a["dilation"]) == (1, 1) and a["kernel_size"][0] * a["kernel_size"][1] <= MAX_ARGMAX_TAPS
    if pool.op == "avg_pool2d":
        return not training and not any(a["padding"]) and not a["ceil_mode"] and a["divisor_override"] is None
    return False


def pattern(node: Node) -> Pattern:
    """The typed description of fusion node ``node``'s region; a FusionError naming the node
    and the region's ops if it is none of the patterns above."""
    region = node.region
    steps = list(region.nodes) if region is not None else []
    found = _forward(steps) or _backward(steps) or _norm_forward(steps) or _norm_backward(steps)
    if found is None:
        ops = " -> ".join(s.op for s in steps) or "an empty region"
        raise FusionError(f"{node.describe()}: the region {ops} is not a fusion pattern")
    return found


def _forward(steps: list[Node]) -> ForwardChain | None:
    if not steps or steps[0].op not in PRODUCERS:
        return None
    producer, rest = steps[0], steps[1:]
    bn = rest.pop(0) if rest and rest[0].op == "batch_norm" else None
    acts = []
    while rest and scalar.kind(rest[0].op) == "unary":
        acts.append(rest.pop(0))
    pool = None
    if rest and rest[0].op in POOLS and producer.op == "conv2d":
        pool = rest.pop(0)
        if not pool_fusable(pool, training=pool.op == "max_pool2d_argmax"):
            return None
    if rest:
        return None
    return ForwardChain(producer, bn, tuple(acts), pool)


def _backward(steps: list[Node]) -> PoolBackward | ConvBackward | None:
    rest = list(steps)
    act = rest.pop(0) if rest and rest[0].op in scalar.monotone_backward_ops() else None
    if not rest or rest[0].op != "max_pool2d_backward_argmax":
        return None
    pool = rest.pop(0)
    if tuple(pool.attrs["dilation"]) != (1, 1):
        return None
    if not rest:
        return PoolBackward(act, pool)
    if act is None or rest[0].op != "conv2d_backward_weight":
        return None
    weight = rest.pop(0)
    bias = rest.pop(0) if rest and rest[0].op == "reduce_sum" else None
    grad_input = rest.pop(0) if rest and rest[0].op == "conv2d_backward_input" else None
    if rest:
        return None
    return ConvBackward(act, pool, weight, bias, grad_input)


def _norm_forward(steps: list[Node]) -> NormForward | None:
    ops = [s.op for s in steps]
    if ops[:2] != ["conv2d", "batch_norm_train"] or len(steps) > 3:
        return None
    act = steps[2] if len(steps) == 3 else None
    if act is not None and not _reads_own_output(act):
        return None
    return NormForward(steps[0], steps[1], act)


def _norm_backward(steps: list[Node]) -> NormBackward | None:
    rest = list(steps)
    act = rest.pop(0) if rest and rest[0].op in scalar.monotone_backward_ops() else None
    if len(rest) < 2 or [n.op for n in rest[:2]] != ["batch_norm_backward", "conv2d_backward_weight"]:
        return None
    bn, weight = rest[0], rest[1]
    grad_input = rest[2] if len(rest) == 3 and rest[2].op == "conv2d_backward_input" else None
    if len(rest) != 2 + (grad_input is not None):
        return None
    return NormBackward(act, bn, weight, grad_input)


def _reads_own_output(act: Node) -> bool:
    """Whether ``act``'s backward reads only its output (a monotone activation)."""
    op = registry.get(act.op)
    return op.monotone and op.backward in scalar.monotone_backward_ops()
