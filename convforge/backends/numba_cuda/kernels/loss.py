"""Losses: ``cross_entropy`` and ``mse_loss`` (one block reducing to the scalar) and their backward ops.

The forward losses are a single block: its threads stride over rows (elements for MSE),
accumulate in float64 and meet in a shared-memory tree; thread 0 writes the scalar.
``cross_entropy_backward`` gives one thread to each row (a log-sum-exp over the classes,
then softmax minus one-hot); ``mse_loss_backward`` is elementwise. Class labels were
checked on the host before any kernel ran (``base.check_labels``).
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import block_reduce
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.elementwise import map_kernel
from convforge.ir.graph import Node

_SINGLE_BLOCK = """\
RT = {RT}


@cuda.jit(cache=True)
def kernel({params}, out):
    sh = cuda.shared.array(RT, dtype=np.float64)
    t = cuda.threadIdx.x
    acc = 0.0
{body}
{reduce}
    if t == 0:
        out[0] = acc{scale}
"""

_CE_ROWS = """\
    N = logits.shape[0]
    C = logits.shape[1]
    k = t
    while k < N:
        m = logits[k, 0]
        for c in range(1, C):
            m = max(m, logits[k, c])
        total = 0.0
        for c in range(C):
            total += math.exp(logits[k, c] - m)
        acc += math.log(total) - (logits[k, target[k]] - m)
        k += RT"""

_MSE_ELEMENTS = """\
    k = t
    while k < x.size:
        d = np.float64(x[k]) - target[k]
        acc += d * d
        k += RT"""


@lowering("cross_entropy")
def _(ctx, node: Node) -> None:
    logits, target = node.inputs
    mean = node.attrs["reduction"] == "mean"
    src = _SINGLE_BLOCK.format(
        RT=ctx.geometry.reduce_threads,
        params="logits, target",
        body=_CE_ROWS,
        reduce=block_reduce(["acc"], ["sh"], 4),
        scale=" / max(logits.shape[0], 1)" if mean else "",
    )
    kernel = ctx.kernel("loss", f"cross_entropy {{reduction={node.attrs['reduction']}}}", src)
    ctx.launch(kernel, 1, ctx.geometry.reduce_threads, logits, target, node.outputs[0])


@lowering("mse_loss")
def _(ctx, node: Node) -> None:
    x, target = node.inputs
    mean = node.attrs["reduction"] == "mean"
    src = _SINGLE_BLOCK.format(
        RT=ctx.geometry.reduce_threads,
        params="x, target",
        body=_MSE_ELEMENTS,
        reduce=block_reduce(["acc"], ["sh"], 4),
        scale=" / max(x.size, 1)" if mean else "",
    )
    kernel = ctx.kernel("loss", f"mse_loss {{reduction={node.attrs['reduction']}}}", src)
    ctx.launch(kernel, 1, ctx.geometry.reduce_threads, ctx.flat(x), ctx.flat(target), node.outputs[0])


_CE_BACKWARD = """\
@cuda.jit(cache=True)
def kernel(g, logits, target, gl):
    N = logits.shape[0]
    C = logits.shape[1]
    factor = g[0] / N if {mean} and N > 0 else g[0]
    k = cuda.grid(1)
    stride = cuda.gridsize(1)
    while k < N:
        m = logits[k, 0]
        for c in range(1, C):
            m = max(m, logits[k, c])
        total = 0.0
        for c in range(C):
            total += math.exp(logits[k, c] - m)
        lse = math.log(total)
        for c in range(C):
            p = math.exp((logits[k, c] - m) - lse)
            if c == target[k]:
                p -= 1.0
            gl[k, c] = p * factor
        k += stride
"""


@lowering("cross_entropy_backward")
def _(ctx, node: Node) -> None:
    g, logits, target = node.inputs
    mean = node.attrs["reduction"] == "mean"
    kernel = ctx.kernel(
        "loss",
        f"cross_entropy_backward {{reduction={node.attrs['reduction']}}}",
        _CE_BACKWARD.format(mean=mean),
    )
    blocks, threads = ctx.grid1d(ctx.shape(logits)[0])
    ctx.launch(kernel, blocks, threads, g, logits, target, node.outputs[0])


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
