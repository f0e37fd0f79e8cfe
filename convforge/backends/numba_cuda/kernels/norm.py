"""Batch norm (eval, train, both backward ops, the fold-batchnorm ops), dropout, local
response normalisation, layer norm and group norm.

Batch-norm kernels see ``x`` as ``[N, C, inner]``. Eval mode is one thread per element.
Training and the backward ops give one block to each channel: the block reduces the
channel's statistics in shared memory (float64, two passes for the variance, as the
reference), then the same threads write the channel's outputs, so each is one launch.

Dropout draws its mask with :func:`convforge.ir.ops.rng.hash_uniform` compiled as a
device function (:data:`hash_uniform`), so every backend drops the same elements.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import (
    block_loop,
    block_reduce,
    consts,
    grid_loop,
    kernel,
    map_kernel,
    nest,
    thread_loop,
)
from convforge.errors import ShapeError
from convforge.ir import scalar
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


def _scale(weight: str, var: str, eps: float) -> str:
    """The expression of a channel's batch-norm scale ``weight / sqrt(var + eps)``."""
    return f"{weight} / math.sqrt({var} + {scalar.literal(eps)})"


@lowering("batch_norm")
def _(ctx, node: Node) -> None:
    x, weight, bias, mean, var = node.inputs
    y = node.outputs[0]
    n, c, inner = channel_view(ctx, x)
    body = [
        "ch = (i // inner) % C",
        f"s = {_scale('weight[ch]', 'var[ch]', node.attrs['eps'])}",
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


# -- folding an eval-mode batch norm into the conv before it (fold-batchnorm) --------------
@lowering("bn_fold_weight", "bn_fold_weight_transposed")
def _(ctx, node: Node) -> None:
    w, weight, var = node.inputs
    out = node.outputs[0]
    inner = ctx.numel(w) // ctx.shape(w)[0]
    eps = node.attrs["eps"]
    # the output channel of element i: its row, or for a transposed weight [Cin, Cout/g, *k]
    # column j of group g = row // (Cin / g), channel g * Cout/g + j
    channel = ["o = i // inner"]
    if node.op == "bn_fold_weight_transposed":
        per_group, cols = ctx.shape(w)[0] // node.attrs["groups"], ctx.shape(w)[1]
        inner //= cols
        channel = [f"o = (i // (inner * {cols})) // {per_group} * {cols} + (i // inner) % {cols}"]
    body = [*channel, f"out[i] = w[i] * ({_scale('weight[o]', 'np.float64(var[o])', eps)})"]
    groups = f", groups={node.attrs['groups']}" if "groups" in node.attrs else ""
    map_kernel(
        ctx,
        "norm",
        f"{node.op} {{eps={eps!r}{groups}}}",
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
        f"s = {_scale('weight[i]', 'np.float64(var[i])', eps)}",
        f"out[i] = ({b} - mean[i]) * s + bn_bias[i]",
    ]
    params = ["weight", "bn_bias", "mean", "var", *(["bias"] if bias else []), "out"]
    map_kernel(
        ctx,
        "norm",
        f"bn_fold_bias {{eps={eps!r}}}" + (" with bias" if bias else ""),
        params,
        body,
        "out",
        [weight, bn_bias, mean, var, *bias, out],
        ctx.numel(out),
    )


# -- training and backward: one block per channel ------------------------------------------
def _loop(lines: list[str]) -> list[str]:
    """``lines`` run for each of the channel's elements ``(n, r)`` the thread owns."""
    return thread_loop("count", ["n = k // inner", "r = k % inner", *lines])


def _per_channel(ctx, pattern: str, params: list[str], body: list[str], args: list, channels: int) -> None:
    """Launch one block per channel ``ch`` of ``x`` (``[N, C, inner]``) running ``body``."""
    setup = [
        "sh = cuda.shared.array(RT, dtype=np.float64)",
        "sh2 = cuda.shared.array(RT, dtype=np.float64)",
        "t = cuda.threadIdx.x",
        "N = x.shape[0]",
        "C = x.shape[1]",
        "inner = x.shape[2]",
        "count = N * inner",
    ]
    src = consts(RT=ctx.geometry.reduce_threads) + kernel(
        ", ".join(params), [*setup, *block_loop("C", body, "ch")]
    )
    fn = ctx.kernel("norm", pattern, src)
    blocks, threads = ctx.grid_reduce(channels)
    ctx.launch(fn, blocks, threads, *args)


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
    m = scalar.literal(momentum)
    n, c, inner = channel_view(ctx, x)
    _check_count(node, n, c, inner)
    body = [
        "acc = 0.0",
        *_loop(["acc += x[n, ch, r]"]),
        *block_reduce(["acc"], ["sh"]),
        "mu = acc / count",
        "acc = 0.0",
        *_loop(["d = x[n, ch, r] - mu", "acc += d * d"]),
        *block_reduce(["acc"], ["sh"]),
        "var = acc / count",
        f"inv = 1.0 / math.sqrt(var + {scalar.literal(eps)})",
        "scale = inv * weight[ch]",
        *_loop(["y[n, ch, r] = (x[n, ch, r] - mu) * scale + bias[ch]"]),
        "if t == 0:",
        "    mean[ch] = mu",
        "    invstd[ch] = inv",
        f"    new_mean[ch] = (1.0 - {m}) * rmean[ch] + {m} * mu",
        f"    new_var[ch] = (1.0 - {m}) * rvar[ch] + {m} * var * (count / (count - 1))",
    ]
    _per_channel(
        ctx,
        f"batch_norm_train {{eps={eps!r}, momentum={momentum!r}}}",
        ["x", "weight", "bias", "rmean", "rvar", "y", "mean", "invstd", "new_mean", "new_var"],
        body,
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
        *block_reduce(["sg", "sgx"], ["sh", "sh2"]),
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
    _per_channel(
        ctx,
        pattern,
        ["gy", "x", "weight", "a", "b", "gx", "gw", "gb"],
        body,
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
        ["mu = a[ch]", f"inv = 1.0 / math.sqrt(np.float64(b[ch]) + {scalar.literal(eps)})"],
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
        keep = f"y[i] = x[i] * {scalar.literal(scale)} if u >= {scalar.literal(p)} else 0"
        body = [f"u = hash_uniform({seed}, step[0], i)", keep]
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


# -- local response normalisation: one thread per element of x seen as [N, C, S] -----------------
def _lrn_denominator(j: str, attrs) -> list[str]:
    """Lines setting ``d``: ``k + alpha / size * sum of x^2`` over channel ``j``'s window (float64)."""
    size, before = attrs["size"], attrs["before"]
    return [
        "acc = 0.0",
        f"for q in range(max({j} - {before}, 0), min({j} - {before} + {size}, C)):",
        "    v = np.float64(x[n, q, r])",
        "    acc += v * v",
        f"d = {scalar.literal(attrs['k'])} + {scalar.literal(attrs['alpha'] / size)} * acc",
    ]


def _lrn_text(attrs) -> str:
    return "{" + ", ".join(f"{k}={attrs[k]!r}" for k in ("size", "alpha", "beta", "k", "before")) + "}"


@lowering("local_response_norm", "local_response_norm_backward")
def _(ctx, node: Node) -> None:
    a = node.attrs
    x = node.inputs[-1]
    shape3 = channel_view(ctx, x)
    beta = a["beta"]
    decode = ["n = i // (C * S)", "c = (i // S) % C", "r = i % S"]
    if node.op == "local_response_norm":
        params = ["x", "y"]
        power = scalar.literal(-beta)
        body = [*decode, *_lrn_denominator("c", a), f"y[n, c, r] = x[n, c, r] * math.pow(d, {power})"]
    else:
        params = ["gy", "x", "gx"]
        after, before = a["size"] - 1 - a["before"], a["before"]
        body = [
            *decode,
            "t = 0.0",
            f"for j in range(max(c - {after}, 0), min(c + {before + 1}, C)):",
            *("    " + line for line in _lrn_denominator("j", a)),
            f"    t += gy[n, j, r] * np.float64(x[n, j, r]) * math.pow(d, {scalar.literal(-beta - 1.0)})",
            *_lrn_denominator("c", a),
            f"gx[n, c, r] = gy[n, c, r] * math.pow(d, {scalar.literal(-beta)}) - "
            f"{scalar.literal(2.0 * a['alpha'] * beta / a['size'])}"
            " * x[n, c, r] * t",
        ]
    out = params[-1]
    setup = [f"C = {out}.shape[1]", f"S = {out}.shape[2]"]
    src = kernel(", ".join(params), [*setup, *grid_loop(f"{out}.size", body)])
    fn = ctx.kernel("norm", f"{node.op} {_lrn_text(a)} (x as [N, C, S])", src)
    blocks, threads = ctx.grid1d(ctx.numel(x))
    ctx.launch(fn, blocks, threads, *(ctx.view(v, shape3) for v in (*node.inputs, node.outputs[0])))


# -- layer norm and group norm: one thread per row of x seen as [R, K, S] ---------------------
# layer_norm: R = the leading dims, K = 1, S = prod(normalized_shape), parameter s;
# group_norm: R = N * groups, K = C / groups, S = spatial, parameter (r % groups) * K + k.
def _norm_rows(ctx, node: Node, x: Value) -> tuple[tuple[int, int, int], str]:
    """The [R, K, S] view of ``x`` and the parameter index expression of element (r, k, s)."""
    shape = ctx.shape(x)
    if node.op.startswith("layer_norm"):
        d = 1
        for n in node.attrs["normalized_shape"]:
            d *= n
        return (ctx.numel(x) // d, 1, d), "s"
    g = node.attrs["num_groups"]
    inner = ctx.numel(x) // (shape[0] * shape[1])
    return (shape[0] * g, shape[1] // g, inner), f"(r % {g}) * {shape[1] // g} + k"


def _moments(eps: float) -> list[str]:
    """Lines setting ``mean`` and ``rstd`` of row ``r`` of ``x`` (float64, two passes; their
    loop variables leave ``k`` and ``s`` alone)."""
    return [
        "acc = 0.0",
        "for kk in range(K):",
        "    for ss in range(S):",
        "        acc += x[r, kk, ss]",
        "mean = acc / (K * S)",
        "sq = 0.0",
        "for kk in range(K):",
        "    for ss in range(S):",
        "        d = x[r, kk, ss] - mean",
        "        sq += d * d",
        f"rstd = 1.0 / math.sqrt(sq / (K * S) + {eps!r})",
    ]


_ROWS = ["K = x.shape[1]", "S = x.shape[2]"]


@lowering("layer_norm", "group_norm")
def _(ctx, node: Node) -> None:
    x, *params = node.inputs
    y = node.outputs[0]
    view, index = _norm_rows(ctx, node, x)
    value = "(x[r, k, s] - mean) * rstd"
    if params:
        value = f"{value} * w[{index}]" + (f" + b[{index}]" if len(params) > 1 else "")
    body = [*_moments(node.attrs["eps"]), "for k in range(K):", "    for s in range(S):"]
    body += [f"        y[r, k, s] = {value}"]
    names = ["x", *("w", "b")[: len(params)], "y"]
    src = kernel(", ".join(names), [*_ROWS, *grid_loop("x.shape[0]", body, var="r")])
    fn = ctx.kernel("norm", f"{node.op} {dict(node.attrs)!r} affine={len(params)} (rows [R, K, S])", src)
    blocks, threads = ctx.grid1d(view[0])
    ctx.launch(fn, blocks, threads, ctx.view(x, view), *(ctx.flat(p) for p in params), ctx.view(y, view))


@lowering("layer_norm_backward", "group_norm_backward")
def _(ctx, node: Node) -> None:
    gy, x, *weight = node.inputs
    gx, gw, gb = node.outputs
    view, index = _norm_rows(ctx, node, x)
    g = f"gy[r, k, s] * w[{index}]" if weight else "gy[r, k, s]"
    rows = [
        *_moments(node.attrs["eps"]),
        "sg = 0.0",
        "sgx = 0.0",
        "for k in range(K):",
        "    for s in range(S):",
        f"        g = {g}",
        "        sg += g",
        "        sgx += g * (x[r, k, s] - mean) * rstd",
        "for k in range(K):",
        "    for s in range(S):",
        f"        g = {g}",
        "        xh = (x[r, k, s] - mean) * rstd",
        "        gx[r, k, s] = rstd * (g - sg / (K * S) - xh * sgx / (K * S))",
    ]
    names = ["gy", "x", *(["w"] if weight else []), "gx"]
    src = kernel(", ".join(names), [*_ROWS, *grid_loop("x.shape[0]", rows, var="r")])
    pattern = f"{node.op} {dict(node.attrs)!r}{' with weight' if weight else ''} (rows [R, K, S])"
    fn = ctx.kernel("norm", pattern + " input gradient", src)
    blocks, threads = ctx.grid1d(view[0])
    flat_w = [ctx.flat(w) for w in weight]
    ctx.launch(fn, blocks, threads, ctx.view(gy, view), ctx.view(x, view), *flat_w, ctx.view(gx, view))
    # the parameter gradients: one thread per parameter, over the rows and positions it scales
    # (each row's statistics recomputed: no scratch buffer holds them)
    accumulate = ["aw += gy[r, k, s] * (x[r, k, s] - mean) * rstd", "ab += gy[r, k, s]"]
    moments = nest(_moments(node.attrs["eps"]), 4)
    if node.op == "group_norm_backward":
        rows = [
            "k = p % K",
            f"for r in range(p // K, x.shape[0], {node.attrs['num_groups']}):",
            *moments,
            "    for s in range(S):",
            *nest(accumulate, 8),
        ]
    else:
        rows = ["k = 0", "s = p", "for r in range(x.shape[0]):", *moments, *nest(accumulate, 4)]
    body = ["aw = 0.0", "ab = 0.0", *rows, "gw[p] = aw", "gb[p] = ab"]
    src = kernel("gy, x, gw, gb", [*_ROWS, *grid_loop("gw.size", body, var="p")])
    fn = ctx.kernel("norm", f"{node.op} {dict(node.attrs)!r} (rows [R, K, S]) parameter gradients", src)
    blocks, threads = ctx.grid1d(ctx.numel(gw))
    ctx.launch(fn, blocks, threads, ctx.view(gy, view), ctx.view(x, view), ctx.flat(gw), ctx.flat(gb))
