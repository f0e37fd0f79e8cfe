"""Batch norm (eval, train, both backward ops) and dropout.

Batch-norm kernels see ``x`` as ``[N, C, inner]``. Eval mode is one thread per element.
Training and the backward ops give one block to each channel: the block reduces the
channel's statistics in shared memory (float64, two passes for the variance, as the
reference), then the same threads write the channel's outputs, so each is one launch.

Dropout draws its mask with :func:`convforge.ir.ops.rng.hash_uniform` compiled as a
device function (:data:`hash_uniform`), so every backend drops the same elements.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import block_reduce, indent
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.elementwise import map_kernel
from convforge.errors import ShapeError
from convforge.ir.graph import Node, Value


def hash_uniform_device():
    """``rng.hash_uniform`` as a CUDA device function (imported by the generated dropout files)."""
    from numba import cuda

    from convforge.ir.ops import rng

    return cuda.jit(device=True)(rng.hash_uniform)


def channel_view(ctx, value: Value) -> tuple[int, int, int]:
    """``[N, C, *S]`` as ``(N, C, prod(S))``."""
    shape = ctx.shape(value)
    inner = 1
    for d in shape[2:]:
        inner *= d
    return shape[0], shape[1], inner


@lowering("batch_norm")
def _(ctx, node: Node) -> None:
    x, weight, bias, mean, var = node.inputs
    y = node.outputs[0]
    n, c, inner = channel_view(ctx, x)
    body = [
        "ch = (i // inner) % C",
        f"s = weight[ch] / math.sqrt(var[ch] + {node.attrs['eps']!r})",
        "y[i] = x[i] * s + (bias[ch] - mean[ch] * s)",
    ]
    map_kernel(
        ctx,
        "norm",
        f"batch_norm {{eps={node.attrs['eps']!r}}} (eval)",
        ["x", "weight", "bias", "mean", "var", "y", "C", "inner"],
        body,
        "y",
        [ctx.flat(x), weight, bias, mean, var, ctx.flat(y), c, inner],
        ctx.numel(y),
    )


_PER_CHANNEL = """\
RT = {RT}


@cuda.jit(cache=True)
def kernel({params}):
    sh = cuda.shared.array(RT, dtype=np.float64)
    sh2 = cuda.shared.array(RT, dtype=np.float64)
    t = cuda.threadIdx.x
    N = x.shape[0]
    C = x.shape[1]
    inner = x.shape[2]
    count = N * inner
    ch = cuda.blockIdx.x
    while ch < C:
{body}
        ch += cuda.gridDim.x
"""


def _loop(lines: list[str]) -> list[str]:
    """``lines`` run for each of the channel's elements ``(n, r)`` the thread owns."""
    return [
        "k = t",
        "while k < count:",
        "    n = k // inner",
        "    r = k % inner",
        *("    " + line for line in lines),
        "    k += RT",
    ]


def _per_channel(ctx, pattern: str, params: list[str], body: list[str], args: list, channels: int) -> None:
    src = _PER_CHANNEL.format(RT=ctx.geometry.reduce_threads, params=", ".join(params), body="\n".join(body))
    kernel = ctx.kernel("norm", pattern, src)
    blocks, threads = ctx.grid_reduce(channels)
    ctx.launch(kernel, blocks, threads, *args)


def _check_count(node: Node, n: int, c: int, inner: int) -> None:
    if n * inner <= 1:
        raise ShapeError(
            f"expected more than 1 value per channel when training, got input shape {[n, c, inner]} "
            f"(at {node.describe()})"
        )


@lowering("batch_norm_train")
def _(ctx, node: Node) -> None:
    x, weight, bias, rmean, rvar = node.inputs
    y, mean, invstd, new_mean, new_var = node.outputs
    eps, momentum = node.attrs["eps"], node.attrs["momentum"]
    n, c, inner = channel_view(ctx, x)
    _check_count(node, n, c, inner)
    body = [
        "acc = 0.0",
        *_loop(["acc += x[n, ch, r]"]),
        block_reduce(["acc"], ["sh"], 0),
        "mu = acc / count",
        "acc = 0.0",
        *_loop(["d = x[n, ch, r] - mu", "acc += d * d"]),
        block_reduce(["acc"], ["sh"], 0),
        "var = acc / count",
        f"inv = 1.0 / math.sqrt(var + {eps!r})",
        "scale = inv * weight[ch]",
        *_loop(["y[n, ch, r] = (x[n, ch, r] - mu) * scale + bias[ch]"]),
        "if t == 0:",
        "    mean[ch] = mu",
        "    invstd[ch] = inv",
        f"    new_mean[ch] = (1.0 - {momentum!r}) * rmean[ch] + {momentum!r} * mu",
        f"    new_var[ch] = (1.0 - {momentum!r}) * rvar[ch] + {momentum!r} * var * (count / (count - 1))",
    ]
    body = [line for chunk in body for line in chunk.split("\n")]
    _per_channel(
        ctx,
        f"batch_norm_train {{eps={eps!r}, momentum={momentum!r}}}",
        ["x", "weight", "bias", "rmean", "rvar", "y", "mean", "invstd", "new_mean", "new_var"],
        [indent(body, 8)],
        [
            ctx.view(x, (n, c, inner)),
            weight,
            bias,
            rmean,
            rvar,
            ctx.view(y, (n, c, inner)),
            mean,
            invstd,
            new_mean,
            new_var,
        ],
        c,
    )


def _backward(ctx, node: Node, stats: list[str], pattern: str) -> None:
    gy, x, weight, a, b = node.inputs
    gx, gw, gb = node.outputs
    n, c, inner = channel_view(ctx, x)
    body = [
        *stats,
        "sg = 0.0",
        "sgx = 0.0",
        *_loop(["g = gy[n, ch, r]", "sg += g", "sgx += g * ((x[n, ch, r] - mu) * inv)"]),
        block_reduce(["sg", "sgx"], ["sh", "sh2"], 0),
    ]
    if node.op == "batch_norm_backward":
        body += [
            "f = weight[ch] * inv / count",
            *_loop(
                ["xh = (x[n, ch, r] - mu) * inv", "gx[n, ch, r] = f * (count * gy[n, ch, r] - sg - xh * sgx)"]
            ),
        ]
    else:
        body += ["f = weight[ch] * inv", *_loop(["gx[n, ch, r] = gy[n, ch, r] * f"])]
    body += ["if t == 0:", "    gw[ch] = sgx", "    gb[ch] = sg"]
    body = [line for chunk in body for line in chunk.split("\n")]
    _per_channel(
        ctx,
        pattern,
        ["gy", "x", "weight", "a", "b", "gx", "gw", "gb"],
        [indent(body, 8)],
        [
            ctx.view(gy, (n, c, inner)),
            ctx.view(x, (n, c, inner)),
            weight,
            a,
            b,
            ctx.view(gx, (n, c, inner)),
            gw,
            gb,
        ],
        c,
    )


@lowering("batch_norm_backward")
def _(ctx, node: Node) -> None:
    # a, b = the batch mean and invstd saved by batch_norm_train
    _backward(ctx, node, ["mu = a[ch]", "inv = np.float64(b[ch])"], "batch_norm_backward (batch statistics)")


@lowering("batch_norm_eval_backward")
def _(ctx, node: Node) -> None:
    # a, b = running_mean, running_var
    eps = node.attrs["eps"]
    _backward(
        ctx,
        node,
        ["mu = a[ch]", f"inv = 1.0 / math.sqrt(np.float64(b[ch]) + {eps!r})"],
        f"batch_norm_eval_backward {{eps={eps!r}}}",
    )


# -- dropout -------------------------------------------------------------------------------
_DROPOUT_PRELUDE = """\
from convforge.backends.numba_cuda.kernels.norm import hash_uniform_device

hash_uniform = hash_uniform_device()


"""


@lowering("dropout", "dropout_backward")
def _(ctx, node: Node) -> None:
    x, step = node.inputs
    y = node.outputs[0]
    p, seed = node.attrs["p"], node.attrs["seed"]
    if p >= 1.0:
        body = ["y[i] = 0"]
    else:
        # the scale rounded to the dtype once, as the reference does
        scale = float(y.type.np_dtype.type(1.0 / (1.0 - p)))
        body = [f"u = hash_uniform({seed}, step[0], i)", f"y[i] = x[i] * {scale!r} if u >= {p!r} else 0"]
    map_kernel(
        ctx,
        "norm",
        f"{node.op} {{p={p!r}, seed={seed}}} ({y.dtype})",
        ["x", "step", "y"],
        body,
        "y",
        [ctx.flat(x), step, ctx.flat(y)],
        ctx.numel(y),
        prelude=_DROPOUT_PRELUDE,
    )
