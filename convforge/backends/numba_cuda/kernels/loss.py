"""Loss kernels: the class-index losses (``cross_entropy``, ``nll_loss``) and the pointwise
losses (from ``ir.ops.loss``'s scalar expressions), each with its backward.

A reduced loss is one block: its threads stride over rows (elements for a pointwise loss),
accumulate in float64 and meet in a shared-memory tree; thread 0 writes the scalar. The
class-index backward is one block too (the mean's divisor, the summed target weights, is
a block sum first); ``reduction="none"`` and the pointwise backward ops run one thread per
element. Kernels specialise on the op, the reduction and which weights are present, never
on a weight's values. Class labels were checked on the host (``base.check_labels``).
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import (
    block_reduce,
    consts,
    grid_loop,
    kernel,
    map_kernel,
    max_sum_exp,
    nest,
    thread_loop,
)
from convforge.ir.graph import Node
from convforge.ir.ops.loss import POINTWISE_OPS, pointwise_code


def _single_block(
    ctx, node: Node, params: str, prelude: list[str], row: list[str], count: str, args: list
) -> None:
    """One block whose threads add ``row``'s ``loss`` (and ``wt``) over ``k < count``; the
    scalar output is the sum, or its mean over the summed ``wt``."""
    mean = node.attrs["reduction"] == "mean"
    lines = [
        "sh = cuda.shared.array(RT, dtype=np.float64)",
        "shw = cuda.shared.array(RT, dtype=np.float64)",
        "t = cuda.threadIdx.x",
        *prelude,
        "acc = 0.0",
        "wacc = 0.0",
        *thread_loop(count, [*row, "acc += loss", "wacc += wt"]),
        *block_reduce(["acc", "wacc"], ["sh", "shw"]),
        "if t == 0:",
        f"    out[0] = {'(acc / wacc if wacc != 0.0 else math.nan)' if mean else 'acc'}",
    ]
    src = consts(RT=ctx.geometry.reduce_threads) + kernel(f"{params}, out", lines)
    fn = ctx.kernel("loss", f"{node.op} {{reduction={node.attrs['reduction']}}}", src)
    ctx.launch(fn, 1, ctx.geometry.reduce_threads, *args, node.outputs[0])


# -- cross_entropy / nll_loss --------------------------------------------------------------
def _class_row(logits: bool, weighted: bool) -> list[str]:
    """Row ``k``'s ``loss`` and target weight ``wt`` (0 where ignored), ``shift`` its
    log-sum-exp (0 for log-probabilities), reading ``ignore`` and ``ls``."""
    w = "weight[{}]" if weighted else "1.0"
    shift = (
        [*max_sum_exp("x[k, {c}]", "C", "c"), "shift = m + math.log(total)"] if logits else ["shift = 0.0"]
    )
    return [
        "tk = target[k]",
        "loss = 0.0",
        "wt = 0.0",
        *shift,
        "if tk != ignore:",
        f"    wt = {w.format('tk')}",
        "    loss = -wt * (x[k, tk] - shift)",
        "    if ls > 0.0:",
        "        smooth = 0.0",
        "        for c in range(C):",
        f"            smooth -= {w.format('c')} * (x[k, c] - shift)",
        "        loss = (1.0 - ls) * loss + ls / C * smooth",
    ]


def _class_operands(node: Node, first: int) -> tuple[bool, bool, str, list]:
    x, target, *weight = node.inputs[first:]
    params = ", ".join(["x", "target", *(["weight"] if weight else [])])
    return node.op.startswith("cross_entropy"), bool(weight), params, [x, target, *weight]


def _class_scalars(node: Node) -> list:
    return [int(node.attrs["ignore_index"]), float(node.attrs.get("label_smoothing", 0.0))]


@lowering("cross_entropy", "nll_loss")
def _(ctx, node: Node) -> None:
    logits, weighted, params, args = _class_operands(node, 0)
    row = _class_row(logits, weighted)
    params = f"{params}, ignore, ls"
    args = [*args, *_class_scalars(node)]
    if node.attrs["reduction"] != "none":
        _single_block(ctx, node, params, ["C = x.shape[1]"], row, "x.shape[0]", args)
        return
    lines = ["C = x.shape[1]", *grid_loop("x.shape[0]", [*row, "out[k] = loss"], "k")]
    fn = ctx.kernel("loss", f"{node.op} {{reduction=none}}", kernel(f"{params}, out", lines))
    blocks, threads = ctx.grid1d(ctx.shape(node.inputs[0])[0])
    ctx.launch(fn, blocks, threads, *args, node.outputs[0])


@lowering("cross_entropy_backward", "nll_loss_backward")
def _(ctx, node: Node) -> None:
    logits, weighted, params, args = _class_operands(node, 1)
    reduction = node.attrs["reduction"]
    w = "weight[{}]" if weighted else "1.0"
    wsum = ["wall = 0.0", "for c in range(C):", f"    wall += {w.format('c')}"]
    # the mean divides by the summed target weights: a block sum before the gradients
    divisor = [
        "wacc = 0.0",
        *thread_loop("N", ["tk = target[k]", "if tk != ignore:", f"    wacc += {w.format('tk')}"]),
        *block_reduce(["wacc"], ["shw"]),
    ]
    gradient = [
        f"scale = {'g[k]' if reduction == 'none' else 'g[0]'} / divisor",
        f"wt = {w.format('tk')}",
        "rowsum = scale * (-(1.0 - ls) * wt - ls / C * wall)",
        *([*max_sum_exp("x[k, {c}]", "C", "c"), "shift = m + math.log(total)"] if logits else []),
        "for c in range(C):",
        f"    grad = -scale * ls / C * {w.format('c')}",
        "    if c == tk:",
        "        grad -= scale * (1.0 - ls) * wt",
        *(["    grad -= math.exp(x[k, c] - shift) * rowsum"] if logits else []),
        "    gx[k, c] = grad",
    ]
    # an ignored row is 0, even where the mean divides by no weight at all
    row = [
        "tk = target[k]",
        "if tk == ignore:",
        "    for c in range(C):",
        "        gx[k, c] = 0.0",
        "else:",
        *nest(gradient),
    ]
    lines = [
        "shw = cuda.shared.array(RT, dtype=np.float64)",
        "t = cuda.threadIdx.x",
        "N, C = x.shape",
        *wsum,
        *(divisor if reduction == "mean" else ["wacc = 1.0"]),
        "divisor = wacc",
        *thread_loop("N", row),
    ]
    src = consts(RT=ctx.geometry.reduce_threads) + kernel(f"g, {params}, ignore, ls, gx", lines)
    fn = ctx.kernel("loss", f"{node.op} {{reduction={reduction}}}", src)
    ctx.launch(
        fn, 1, ctx.geometry.reduce_threads, node.inputs[0], *args, *_class_scalars(node), node.outputs[0]
    )


# -- pointwise losses ----------------------------------------------------------------------
def _pointwise(ctx, node: Node, first: int) -> tuple[list[str], str, str, str, list]:
    operands = node.inputs[first:]
    loads, value, grad, names, p = pointwise_code(node.op, node.attrs, len(operands) - 2)
    return loads, value, grad, names, [ctx.flat(v) for v in operands] + [float(p)]


@lowering(*POINTWISE_OPS)
def _(ctx, node: Node) -> None:
    loads, value, _, names, args = _pointwise(ctx, node, 0)
    row = [line.replace("[i", "[k") for line in loads] + ["wt = 1.0", f"loss = {value}"]
    if node.attrs["reduction"] != "none":
        # the mean of a pointwise loss divides by the element count: each element weighs 1
        _single_block(ctx, node, f"{names}, p", [], row, "x.size", args)
        return
    body = [*loads, f"out[i] = {value}"]
    size = ctx.numel(node.inputs[0])
    map_kernel(
        ctx,
        "loss",
        node.op,
        [*names.split(", "), "p", "out"],
        body,
        "x",
        [*args, ctx.flat(node.outputs[0])],
        size,
    )


@lowering(*(f"{op}_backward" for op in POINTWISE_OPS))
def _(ctx, node: Node) -> None:
    loads, _, grad, names, args = _pointwise(ctx, node, 1)
    g = node.inputs[0]
    size = ctx.numel(node.inputs[1])
    mean = node.attrs["reduction"] == "mean"
    gi = "g[i]" if node.attrs["reduction"] == "none" else "g[0]"
    body = [*loads, f"gx[i] = {gi} * scale * {grad}"]
    scale = 1.0 / size if mean and size else 1.0
    params = ["g", *names.split(", "), "p", "scale", "gx"]
    map_kernel(
        ctx, "loss", node.op, params, body, "x", [ctx.flat(g), *args, scale, ctx.flat(node.outputs[0])], size
    )
