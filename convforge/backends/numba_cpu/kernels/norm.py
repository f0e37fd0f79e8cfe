"""Batch norm (eval, train, both backward ops), dropout and local response norm kernels.

Tensors are seen as ``[N, C, L]`` (L = H*W, the length, or 1), statistics accumulate in
float64 and threads split the channels. Dropout regenerates its mask from the shared
counter-based hash (``convforge.ir.ops.rng``), compiled here unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.activation import act_grad_row
from convforge.backends.numba_cpu.kernels.conv import gradient_products_source
from convforge.backends.numba_cpu.kernels.epilogue import epilogue_lines, indent
from convforge.ir import scalar
from convforge.ir.ops import rng

hash_uniform = njit(cache=True)(rng.hash_uniform)


@njit(cache=True, parallel=True)
def batch_norm(x, w, b, mean, var, eps, y):
    N, C, L = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        s = w[c] / math.sqrt(np.float64(var[c]) + eps)
        t = b[c] - mean[c] * s
        for i in range(L):
            y[n, c, i] = x[n, c, i] * s + t


@njit(cache=True, parallel=True)
def batch_norm_train(x, w, b, rmean, rvar, eps, momentum, y, mean, invstd, new_mean, new_var):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        acc = 0.0
        for n in range(N):
            for i in range(L):
                acc += x[n, c, i]
        m = acc / count
        sq = 0.0
        for n in range(N):
            for i in range(L):
                d = x[n, c, i] - m
                sq += d * d
        v = sq / count
        inv = 1.0 / math.sqrt(v + eps)
        mean[c] = m
        invstd[c] = inv
        new_mean[c] = (1.0 - momentum) * rmean[c] + momentum * m
        new_var[c] = (1.0 - momentum) * rvar[c] + momentum * v * (count / (count - 1))
        s = inv * w[c]
        for n in range(N):
            for i in range(L):
                y[n, c, i] = (x[n, c, i] - m) * s + b[c]


@njit(cache=True, parallel=True)
def batch_norm_backward(gy, x, w, mean, invstd, gx, gw, gb):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        m = np.float64(mean[c])
        inv = np.float64(invstd[c])
        sg = 0.0
        sgx = 0.0
        for n in range(N):
            for i in range(L):
                g = np.float64(gy[n, c, i])
                sg += g
                sgx += g * (x[n, c, i] - m) * inv
        gb[c] = sg
        gw[c] = sgx
        k = w[c] * inv / count
        for n in range(N):
            for i in range(L):
                xhat = (x[n, c, i] - m) * inv
                gx[n, c, i] = k * (count * gy[n, c, i] - sg - xhat * sgx)


@njit(cache=True, parallel=True)
def batch_norm_eval_backward(gy, x, w, rmean, rvar, eps, gx, gw, gb):
    N, C, L = x.shape
    for c in prange(C):
        inv = 1.0 / math.sqrt(np.float64(rvar[c]) + eps)
        m = np.float64(rmean[c])
        sg = 0.0
        sgx = 0.0
        k = w[c] * inv
        for n in range(N):
            for i in range(L):
                g = np.float64(gy[n, c, i])
                sg += g
                sgx += g * (x[n, c, i] - m) * inv
                gx[n, c, i] = g * k
        gb[c] = sg
        gw[c] = sgx


# -- training batch norm fused with its conv (the NormForward / NormBackward regions) -------
@njit(cache=True)
def channel_moments(z, c, k):
    """(sum d, sum d^2) of d = z[:, c] - k over every image, in float64, in eight
    interleaved partial sums (see :func:`channel_grad_sums`)."""
    N, L = z.shape[0], z.shape[2]
    s1 = np.zeros(8)
    s2 = np.zeros(8)
    whole = L - L % 8
    for n in range(N):
        zn = z[n, c]
        for i0 in range(0, whole, 8):
            for lane in range(8):
                d = zn[i0 + lane] - k
                s1[lane] += d
                s2[lane] += d * d
        for i in range(whole, L):
            d = zn[i] - k
            s1[0] += d
            s2[0] += d * d
    return s1.sum(), s2.sum()


@njit(cache=True, parallel=True)
def batch_stats(z, w, b, rmean, rvar, eps, momentum, mean, invstd, new_mean, new_var, scale, shift):
    """Batch statistics of ``z`` [N, C, L] in one pass, the running-statistics update, and
    the float64 per-channel ``scale``, ``shift`` of the normalisation and affine.

    The sums are taken about the channel's first value, in float64: the one-pass variance
    ``E[d^2] - E[d]^2`` then cancels only as much as the data's spread about it.
    """
    N, C, L = z.shape
    count = N * L
    for c in prange(C):
        k = np.float64(z[0, c, 0])
        s1, s2 = channel_moments(z, c, k)
        dm = s1 / count
        v = max(s2 / count - dm * dm, 0.0)
        m = k + dm
        inv = 1.0 / math.sqrt(v + eps)
        mean[c] = m
        invstd[c] = inv
        new_mean[c] = (1.0 - momentum) * rmean[c] + momentum * m
        new_var[c] = (1.0 - momentum) * rvar[c] + momentum * v * (count / (count - 1))
        scale[c] = inv * w[c]
        shift[c] = b[c] - m * scale[c]


_NORM_TRAIN = """\
import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels.norm import batch_stats


@njit(cache=True, parallel=True)
def kernel(z, w, b, rmean, rvar, eps, momentum, y, mean, invstd, new_mean, new_var):
    N, C, L = z.shape
    scale = np.empty(C)
    shift = np.empty(C)
    batch_stats(z, w, b, rmean, rvar, eps, momentum, mean, invstd, new_mean, new_var, scale, shift)
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        so = scale[c]
        to = shift[c]
        for i in range(L):
            v = z[n, c, i]
{epi}
            y[n, c, i] = v
"""


def norm_train_source(acts: list[tuple[str, dict]]) -> str:
    """Source of the training batch norm + activations kernel: the statistics of the conv
    output ``z`` in one pass, then ``y = act(z * scale + shift)`` in one more. Rendered for
    ReLU, the plane loop's body is ``v = z[n, c, i]; v = v * so + to; v = max(v, 0.0)``."""
    return _NORM_TRAIN.format(epi=indent(epilogue_lines(acts, has_bn=True), 12))


@njit(cache=True)
def channel_grad_sums(ga, a, z, o, m, act):
    """(sum g, sum g * (z - m)) over channel o of every image, g = act'(a) * ga, in float64.

    Eight interleaved partial sums: one running sum is a chain of dependent adds that LLVM
    may not reorder (3.5 -> 1.8 ms for a 32-channel 32x32 layer at batch 64); g comes a
    plane at a time from ``act_grad_row``, whose loops vectorise."""
    kind, p, q = act
    N, L = ga.shape[0], ga.shape[2]
    sg = np.zeros(8)
    sgc = np.zeros(8)
    whole = L - L % 8
    gn = np.empty(L, dtype=ga.dtype)
    for n in range(N):
        zn = z[n, o]
        act_grad_row(kind, p, q, ga[n, o], a[n, o], gn)
        for i0 in range(0, whole, 8):
            for lane in range(8):
                g = np.float64(gn[i0 + lane])
                sg[lane] += g
                sgc[lane] += g * (zn[i0 + lane] - m)
        for i in range(whole, L):
            g = np.float64(gn[i])
            sg[0] += g
            sgc[0] += g * (zn[i] - m)
    return sg.sum(), sgc.sum()


@njit(cache=True)
def channel_grad_terms(ga, a, z, bw, mean, invstd, act, o, gbw, gbb, sums):
    """Channel o's batch-norm bias and weight gradients, and the terms the conv-output
    gradient is rebuilt from (``sums`` rows: k, mean, invstd, sum g, sum g * x_hat)."""
    count = ga.shape[0] * ga.shape[2]
    m = np.float64(mean[o])
    inv = np.float64(invstd[o])
    sg, sgc = channel_grad_sums(ga, a, z, o, m, act)
    sgx = sgc * inv
    gbb[o] = sg
    gbw[o] = sgx
    sums[0, o] = bw[o] * inv / count
    sums[1, o] = m
    sums[2, o] = inv
    sums[3, o] = sg
    sums[4, o] = sgx


@njit(cache=True)
def conv_output_grad(ga, a, z, sums, act, n, ho, wo, rw, gz):
    """gz[o, oy*rw + ox] = the conv-output gradient of image n, rebuilt from the per-channel
    ``sums`` of :func:`channel_grad_terms` (the extra columns of pitch rw are left alone)."""
    kind, p, q = act
    count = ga.shape[0] * ga.shape[2]
    for o in range(ga.shape[1]):
        k, m, inv, sg, sgx = sums[0, o], sums[1, o], sums[2, o], sums[3, o], sums[4, o]
        gzo, gao, ao, zo = gz[o], ga[n, o], a[n, o], z[n, o]
        for oy in range(ho):
            # g row by row into gz (act_grad_row's loops vectorise), then the affine in place
            row = gzo[oy * rw : oy * rw + wo]
            act_grad_row(kind, p, q, gao[oy * wo : oy * wo + wo], ao[oy * wo : oy * wo + wo], row)
            zr = zo[oy * wo : oy * wo + wo]
            for ox in range(wo):
                row[ox] = k * (count * row[ox] - sg - (zr[ox] - m) * inv * sgx)


# The generated backward of conv2d -> batch_norm_train -> [activation], from the activation's
# output gradient ``ga`` ([N, O, L], like its output ``a`` and the conv output ``z``). Pass 1
# reduces g = act'(a) * ga and g * x_hat per channel (the batch norm's bias and weight
# gradients); pass 2, per image, rebuilds the conv-output gradient
# bw * invstd / m * (m * g - sum g - x_hat * sum g x_hat) in scratch and runs the conv's
# gradient products on it while it is in cache (``conv.gradient_products_source``).
_NORM_BACKWARD = """\
import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels.norm import channel_grad_terms, conv_output_grad
{products}

@njit(cache=True)
def chunk(ga, a, z, sums, act, x, w2, wf, u, geometry, grad, t, chunks, want_gx, part, gx):
    ho, wo = geometry[9], geometry[10]
    mine = (x.shape[0] - t + chunks - 1) // chunks  # images t, t + chunks, ...
    group = gradient_group(x, geometry, grad, mine)
    scratch = gradient_scratch(x, ga.shape[1], w2.shape[1], geometry, grad, group)
    gz, rw = scratch[0][2], scratch[0][3]
    part[:] = 0
    gz[:] = 0  # the wide layout's extra columns stay zero
    for i in range(mine):
        n = t + i * chunks
        conv_output_grad(ga, a, z, sums, act, n, ho, wo, rw, gz)
        j = i % group
        k = min(group, mine - i + j)
        image_gradients(x, n, j, k, chunks, w2, wf, u, geometry, grad, want_gx, scratch, part, gx)


@njit(cache=True, parallel=True)
def kernel(ga, a, z, bw, mean, invstd, act, x, w, conv, grad, nt, gbw, gbb, gw, gx):
    N, O, L = ga.shape
    sums = np.empty((5, O))
    for o in prange(O):
        channel_grad_terms(ga, a, z, bw, mean, invstd, act, o, gbw, gbb, sums)
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    w2 = w.reshape(O, cg * kh * kw)
    wf, u = gradient_weights(w, x, grad, nt)
    chunks = max(1, min(N, nt))
    part = weight_grad_parts(chunks, w, grad[0])
    want_gx = gx.shape[0] == N
    for t in prange(chunks):
        chunk(ga, a, z, sums, act, x, w2, wf, u, (kh, kw) + conv, grad, t, chunks, want_gx, part[t], gx)
    weight_grad_sum(part, grad[0], gw)
"""


def norm_backward_source(kw: int = 0, r: int = 0) -> str:
    """Source of the backward of conv2d -> batch_norm_train -> [activation]: ``kernel(ga, a,
    z, bw, mean, invstd, act, x, w, conv, grad, nt, gbw, gbb, gw, gx)``.

    ``conv`` is (sh, sw, ph, pw, dh, dw, groups, ho, wo); ``grad``, ``kw`` and ``r`` as in
    ``conv.gradient_products_source``. gx is written when it has N images.
    """
    return _NORM_BACKWARD.format(products=gradient_products_source(kw, r))


@njit(cache=True, parallel=True)
def dropout(x, step, p, seed, y):
    """y = x * keep / (1 - p) with keep = uniform(seed, step, i) >= p (flat arrays)."""
    n = x.shape[0]
    if p >= 1.0:
        for i in prange(n):
            y[i] = 0
        return
    scale = x.dtype.type(1.0 / (1.0 - p))
    for i in prange(n):
        if hash_uniform(seed, step, i) >= p:
            y[i] = x[i] * scale
        else:
            y[i] = 0


def _as3(ctx, value, expr: str) -> str:
    t = value.type  # the trailing size spelled out: NumPy cannot infer -1 for an empty array
    return f"{expr}.reshape({ctx.dim(t.shape[0])}, {t.shape[1]}, {math.prod(t.shape[2:])})"


@lowering("batch_norm")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm, "batch_norm")
    x = node.inputs[0]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {', '.join(ins[1:])}, {scalar.literal(node.attrs['eps'])}, "
        f"{_as3(ctx, x, outs[0])})"
    )


@lowering("batch_norm_train")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_train, "batch_norm_train")
    x = node.inputs[0]
    a = node.attrs
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {', '.join(ins[1:])}, "
        f"{scalar.literal(a['eps'])}, {scalar.literal(a['momentum'])}, "
        f"{_as3(ctx, x, outs[0])}, {', '.join(outs[1:])})"
    )


@lowering("batch_norm_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_backward, "batch_norm_backward")
    x = node.inputs[1]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {_as3(ctx, x, ins[1])}, {', '.join(ins[2:])}, "
        f"{_as3(ctx, x, outs[0])}, {outs[1]}, {outs[2]})"
    )


@lowering("batch_norm_eval_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_eval_backward, "batch_norm_eval_backward")
    x = node.inputs[1]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {_as3(ctx, x, ins[1])}, {', '.join(ins[2:])}, "
        f"{scalar.literal(node.attrs['eps'])}, {_as3(ctx, x, outs[0])}, {outs[1]}, {outs[2]})"
    )


@lowering("dropout", "dropout_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(dropout, "dropout")
    a = node.attrs
    ctx.line(
        f"{k}({ins[0]}.reshape(-1), int({ins[1]}), {scalar.literal(a['p'])}, {int(a['seed'])}, "
        f"{outs[0]}.reshape(-1))"
    )


@njit(cache=True)
def bn_scale_shift(bnw, bnb, bnm, bnv, eps, has_bn):
    """Per-channel (scale, shift) of an inference batch norm: y = x * scale + shift."""
    O = bnw.shape[0] if has_bn else 0
    s = np.empty(O, dtype=bnw.dtype)
    t = np.empty(O, dtype=bnw.dtype)
    for o in range(O):
        s[o] = bnw[o] / math.sqrt(bnv[o] + eps)
        t[o] = bnb[o] - bnm[o] * s[o]
    return s, t


# -- batch-norm folding (fold-batchnorm) ------------------------------------------------------
@njit(cache=True)
def bn_fold_weight(w, gamma, var, eps, out):
    """out[o, :] = w[o, :] * gamma[o] / sqrt(var[o] + eps) (w flattened to [O, K])."""
    for o in range(w.shape[0]):
        s = gamma[o] / np.sqrt(np.float64(var[o]) + eps)
        for k in range(w.shape[1]):
            out[o, k] = w[o, k] * s


@njit(cache=True)
def bn_fold_bias(gamma, beta, mean, var, bias, has_bias, eps, out):
    for o in range(gamma.shape[0]):
        s = gamma[o] / np.sqrt(np.float64(var[o]) + eps)
        b = bias[o] if has_bias else 0.0
        out[o] = (b - mean[o]) * s + beta[o]


@njit(cache=True)
def bn_fold_weight_transposed(w, gamma, var, eps, out):
    """out[g, i, j, :] = w[g, i, j, :] * scale[g * J + j]: a conv_transpose2d weight
    [Cin, Cout/g, *k] seen as [g, Cin/g, Cout/g, K], whose output channels are (g, j)."""
    G, I, J, K = w.shape
    for g in range(G):
        for j in range(J):
            o = g * J + j
            s = gamma[o] / np.sqrt(np.float64(var[o]) + eps)
            for i in range(I):
                for k in range(K):
                    out[g, i, j, k] = w[g, i, j, k] * s


@lowering("bn_fold_weight")
def _(ctx, node, ins, outs):
    k = ctx.static(bn_fold_weight, "bn_fold_weight")
    o = node.inputs[0].shape[0]
    eps = scalar.literal(node.attrs["eps"])
    ctx.line(f"{k}({ins[0]}.reshape({o}, -1), {ins[1]}, {ins[2]}, {eps}, {outs[0]}.reshape({o}, -1))")


@lowering("bn_fold_weight_transposed")
def _(ctx, node, ins, outs):
    k = ctx.static(bn_fold_weight_transposed, "bn_fold_weight_transposed")
    shape, g = node.inputs[0].shape, node.attrs["groups"]
    view = f"reshape({g}, {shape[0] // g}, {shape[1]}, -1)"
    eps = scalar.literal(node.attrs["eps"])
    ctx.line(f"{k}({ins[0]}.{view}, {ins[1]}, {ins[2]}, {eps}, {outs[0]}.{view})")


@lowering("bn_fold_bias")
def _(ctx, node, ins, outs):
    k = ctx.static(bn_fold_bias, "bn_fold_bias")
    bias = ins[4] if len(ins) > 4 else ins[0]
    ctx.line(
        f"{k}({', '.join(ins[:4])}, {bias}, {len(ins) > 4}, {scalar.literal(node.attrs['eps'])}, {outs[0]})"
    )


# -- local response normalisation: x seen as [N, C, S], one (n, c) plane per iteration --------
@njit(cache=True)
def _lrn_denominator(x, n, j, s, size, before, alpha, k):
    """``k + alpha / size * sum of x[n, c, s]^2`` over channel ``j``'s window, in float64."""
    lo = max(j - before, 0)
    hi = min(j - before + size, x.shape[1])
    acc = 0.0
    for c in range(lo, hi):
        v = np.float64(x[n, c, s])
        acc += v * v
    return k + alpha / size * acc


@njit(cache=True, parallel=True)
def local_response_norm(x, size, before, alpha, beta, k, y):
    N, C, S = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for s in range(S):
            y[n, c, s] = x[n, c, s] * math.pow(_lrn_denominator(x, n, c, s, size, before, alpha, k), -beta)


@njit(cache=True, parallel=True)
def local_response_norm_backward(gy, x, size, before, alpha, beta, k, gx):
    """gx[c] = gy[c] d[c]^-beta - 2 alpha beta / size x[c] sum_j gy[j] x[j] d[j]^(-beta-1) over the
    channels j whose window holds c: [c - (size - 1 - before), c + before]."""
    N, C, S = x.shape
    after = size - 1 - before
    f = 2.0 * alpha * beta / size
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        lo = max(c - after, 0)
        hi = min(c + before + 1, C)
        for s in range(S):
            t = 0.0
            for j in range(lo, hi):
                d = _lrn_denominator(x, n, j, s, size, before, alpha, k)
                t += gy[n, j, s] * np.float64(x[n, j, s]) * math.pow(d, -beta - 1.0)
            d = _lrn_denominator(x, n, c, s, size, before, alpha, k)
            gx[n, c, s] = gy[n, c, s] * math.pow(d, -beta) - f * x[n, c, s] * t


def _ncs(ctx, value, expr: str) -> str:
    """``expr`` seen as ``[N, C, S]``."""
    n, c, *rest = value.shape
    inner = " * ".join(str(d) for d in rest) or "1"
    return f"{expr}.reshape({ctx.dim(n)}, {c}, {inner})"


def _lrn_args(node) -> str:
    a = node.attrs
    return ", ".join(
        [str(a["size"]), str(a["before"]), *(scalar.literal(a[k]) for k in ("alpha", "beta", "k"))]
    )


@lowering("local_response_norm")
def _(ctx, node, ins, outs):
    k = ctx.static(local_response_norm, "local_response_norm")
    x = node.inputs[0]
    ctx.line(f"{k}({_ncs(ctx, x, ins[0])}, {_lrn_args(node)}, {_ncs(ctx, x, outs[0])})")


@lowering("local_response_norm_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(local_response_norm_backward, "local_response_norm_backward")
    x = node.inputs[1]
    gy, xs, gx = (_ncs(ctx, x, e) for e in (ins[0], ins[1], outs[0]))
    ctx.line(f"{k}({gy}, {xs}, {_lrn_args(node)}, {gx})")


# -- layer norm and group norm: x seen as rows [R, K, S], normalised per row ------------------
# layer_norm: R = the leading dims, K = 1, S = prod(normalized_shape), parameter s;
# group_norm: R = N * groups, K = C / groups, S = spatial, parameter (r % groups) * K + k.
@njit(cache=True)
def _row_moments(x, r, eps):
    """(mean, 1 / sqrt(biased var + eps)) of row ``r`` of ``x`` [R, K, S], two passes in float64."""
    K, S = x.shape[1], x.shape[2]
    acc = 0.0
    for k in range(K):
        for s in range(S):
            acc += x[r, k, s]
    mean = acc / (K * S)
    sq = 0.0
    for k in range(K):
        for s in range(S):
            d = x[r, k, s] - mean
            sq += d * d
    return mean, 1.0 / math.sqrt(sq / (K * S) + eps)


@njit(cache=True)
def _param(r, k, s, per_channel, groups, K):
    return (r % groups) * K + k if per_channel else s


@njit(cache=True, parallel=True)
def row_norm(x, w, b, affine, per_channel, groups, eps, y):
    """y = (x - mean) * rstd per row, times ``w`` (affine >= 1) plus ``b`` (affine == 2)."""
    R, K, S = x.shape
    for r in prange(R):
        mean, rstd = _row_moments(x, r, eps)
        for k in range(K):
            for s in range(S):
                v = (x[r, k, s] - mean) * rstd
                if affine > 0:
                    p = _param(r, k, s, per_channel, groups, K)
                    v = v * w[p]
                    if affine > 1:
                        v += b[p]
                y[r, k, s] = v


@njit(cache=True, parallel=True)
def row_norm_backward_input(gy, x, w, has_weight, per_channel, groups, eps, gx):
    """gx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) per row, g = gy * w."""
    R, K, S = x.shape
    count = K * S
    for r in prange(R):
        mean, rstd = _row_moments(x, r, eps)
        sg = 0.0
        sgx = 0.0
        for k in range(K):
            for s in range(S):
                g = gy[r, k, s] * (w[_param(r, k, s, per_channel, groups, K)] if has_weight else 1.0)
                sg += g
                sgx += g * (x[r, k, s] - mean) * rstd
        for k in range(K):
            for s in range(S):
                g = gy[r, k, s] * (w[_param(r, k, s, per_channel, groups, K)] if has_weight else 1.0)
                xh = (x[r, k, s] - mean) * rstd
                gx[r, k, s] = rstd * (g - sg / count - xh * sgx / count)


@njit(cache=True, parallel=True)
def row_norm_backward_params(gy, x, per_channel, groups, eps, gw, gb):
    """gw[p] = sum of gy * x_hat and gb[p] = sum of gy over the elements of parameter p."""
    R, K, S = x.shape
    stats = np.empty((R, 2))
    for r in prange(R):
        stats[r, 0], stats[r, 1] = _row_moments(x, r, eps)
    for p in prange(gw.shape[0]):
        aw = 0.0
        ab = 0.0
        if per_channel:
            g, k = p // K, p % K
            for r in range(g, R, groups):
                for s in range(S):
                    aw += gy[r, k, s] * (x[r, k, s] - stats[r, 0]) * stats[r, 1]
                    ab += gy[r, k, s]
        else:
            for r in range(R):
                aw += gy[r, 0, p] * (x[r, 0, p] - stats[r, 0]) * stats[r, 1]
                ab += gy[r, 0, p]
        gw[p] = aw
        gb[p] = ab


def _rows(ctx, node, x) -> tuple[str, bool, int]:
    """(reshape arguments of the [R, K, S] view, per_channel, groups) of a layer/group norm node."""
    if node.op.startswith("layer_norm"):
        d = int(np.prod(node.attrs["normalized_shape"]))
        return f"-1, 1, {d}", False, 1
    g = node.attrs["num_groups"]
    c = x.shape[1]
    return f"-1, {c // g}, {int(np.prod(x.shape[2:], dtype=np.int64))}", True, g


@lowering("layer_norm", "group_norm")
def _(ctx, node, ins, outs):
    x = node.inputs[0]
    view, per_channel, groups = _rows(ctx, node, x)
    # parameters flat: layer_norm's have normalized_shape
    w = f"{ins[1]}.reshape(-1)" if len(ins) > 1 else ctx.zeros(0, x.type.dtype, "no_weight")
    b = f"{ins[2]}.reshape(-1)" if len(ins) > 2 else w
    k = ctx.static(row_norm, "row_norm")
    eps = scalar.literal(node.attrs["eps"])
    ctx.line(
        f"{k}({ins[0]}.reshape({view}), {w}, {b}, {len(ins) - 1}, {per_channel}, {groups}, {eps}, "
        f"{outs[0]}.reshape({view}))"
    )


@lowering("layer_norm_backward", "group_norm_backward")
def _(ctx, node, ins, outs):
    x = node.inputs[1]
    view, per_channel, groups = _rows(ctx, node, x)
    has_weight = len(ins) > 2
    w = f"{ins[2]}.reshape(-1)" if has_weight else ctx.zeros(0, x.type.dtype, "no_weight")
    eps = scalar.literal(node.attrs["eps"])
    gy, xs, gx = (f"{e}.reshape({view})" for e in (ins[0], ins[1], outs[0]))
    k = ctx.static(row_norm_backward_input, "row_norm_backward_input")
    ctx.line(f"{k}({gy}, {xs}, {w}, {has_weight}, {per_channel}, {groups}, {eps}, {gx})")
    k = ctx.static(row_norm_backward_params, "row_norm_backward_params")
    ctx.line(f"{k}({gy}, {xs}, {per_channel}, {groups}, {eps}, {outs[1]}.reshape(-1), {outs[2]}.reshape(-1))")
