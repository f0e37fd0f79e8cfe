"""Losses: ``cross_entropy`` and ``mse_loss`` (one block reducing to the scalar) and their backward ops.

The forward losses are a single block: its threads stride over rows (elements for MSE),
accumulate in float64 and meet in a shared-memory tree; thread 0 writes the scalar.
``cross_entropy_backward`` gives one thread to each row (a log-sum-exp over the classes,
then softmax minus one-hot); ``mse_loss_backward`` is elementwise. Class labels were
checked on the host before any kernel ran (``base.check_labels``).
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
    thread_loop,
)
from convforge.ir.graph import Node

#: row ``k`` of ``logits``: ``m`` its maximum, ``total`` the sum of ``exp(logits - m)``
_ROW_STATS = ["C = logits.shape[1]", *max_sum_exp("logits[k, {c}]", "C", "c")]


def _single_block(ctx, node: Node, params: str, count: str, row: list[str], args: list) -> None:
    """Launch one block whose threads sum ``row`` (adding to ``acc``) over ``k < count``; the
    scalar output is the sum, or its mean over ``count`` for ``reduction="mean"``."""
    mean = node.attrs["reduction"] == "mean"
    lines = [
        "sh = cuda.shared.array(RT, dtype=np.float64)",
        "t = cuda.threadIdx.x",
        "acc = 0.0",
        *thread_loop(count, row),
        *block_reduce(["acc"], ["sh"]),
        "if t == 0:",
        f"    out[0] = acc{f' / max({count}, 1)' if mean else ''}",
    ]
    src = consts(RT=ctx.geometry.reduce_threads) + kernel(f"{params}, out", lines)
    fn = ctx.kernel("loss", f"{node.op} {{reduction={node.attrs['reduction']}}}", src)
    ctx.launch(fn, 1, ctx.geometry.reduce_threads, *args, node.outputs[0])


@lowering("cross_entropy")
def _(ctx, node: Node) -> None:
    logits, target = node.inputs
    row = [*_ROW_STATS, "acc += math.log(total) - (logits[k, target[k]] - m)"]
    _single_block(ctx, node, "logits, target", "logits.shape[0]", row, [logits, target])


@lowering("mse_loss")
def _(ctx, node: Node) -> None:
    x, target = node.inputs
    row = ["d = np.float64(x[k]) - target[k]", "acc += d * d"]
    _single_block(ctx, node, "x, target", "x.size", row, [ctx.flat(x), ctx.flat(target)])


@lowering("cross_entropy_backward")
def _(ctx, node: Node) -> None:
    g, logits, target = node.inputs
    mean = node.attrs["reduction"] == "mean"
    row = [
        *_ROW_STATS,
        "lse = math.log(total)",
        "for c in range(C):",
        "    p = math.exp((logits[k, c] - m) - lse)",
        "    if c == target[k]:",
        "        p -= 1.0",
        "    gl[k, c] = p * factor",
    ]
    lines = [
        "N = logits.shape[0]",
        f"factor = g[0] / N if {mean} and N > 0 else g[0]",
        *grid_loop("N", row, "k"),
    ]
    src = kernel("g, logits, target, gl", lines)
    fn = ctx.kernel("loss", f"cross_entropy_backward {{reduction={node.attrs['reduction']}}}", src)
    blocks, threads = ctx.grid1d(ctx.shape(logits)[0])
    ctx.launch(fn, blocks, threads, g, logits, target, node.outputs[0])


@lowering("mse_loss_backward")
def _(ctx, node: Node) -> None:
    g, x, target = node.inputs
    gx = node.outputs[0]
    mean = node.attrs["reduction"] == "mean"
    size = ctx.numel(x)
    divisor = size if mean and size else 1
    body = ["gx[i] = (x[i] - target[i]) * (2.0 * g[0] / divisor)"]
    map_kernel(
        ctx,
        "loss",
        "mse_loss_backward",
        ["g", "x", "target", "gx", "divisor"],
        body,
        "gx",
        [g, ctx.flat(x), ctx.flat(target), ctx.flat(gx), divisor],
        size,
    )
