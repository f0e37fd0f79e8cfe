"""Optimizer update kernels (torch.optim's order of operations), on flattened parameters,
and the global gradient norm behind ``clip_grad_norm``.

Updated parameters and state go to fresh output buffers: the arrays a user passed in
are never written. Every hyper-parameter is a run-time argument, so a new learning rate
(a schedule) or momentum (``OneCycleLR``) reuses the compiled kernels.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.ir import scalar


@njit(cache=True)
def sgd_span(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out, i0, i1):
    """SGD on elements [i0, i1); through views, so the loop index needs no wraparound check."""
    p, g, buf, p_out, buf_out = p[i0:i1], g[i0:i1], buf[i0:i1], p_out[i0:i1], buf_out[i0:i1]
    first = step <= 1
    # in the parameter dtype, as the reference (and torch) computes: float64 intermediates
    # would stay finite where float32 overflows
    t = p.dtype.type
    wd, mom, keep, rate = t(weight_decay), t(momentum), t(1.0 - dampening), t(lr)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if weight_decay != 0.0 else g[i]
        if momentum != 0.0:
            b = gi if first else mom * buf[i] + keep * gi
            buf_out[i] = b
            gi = gi + mom * b if nesterov else b
        else:
            buf_out[i] = buf[i]
        p_out[i] = p[i] - rate * gi


@njit(cache=True)
def adam_span(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, p_out, m_out, v_out, i0, i1):
    """Adam / AdamW on elements [i0, i1) (torch.optim.Adam's order of operations)."""
    p, g, m, v = p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1]
    p_out, m_out, v_out = p_out[i0:i1], m_out[i0:i1], v_out[i0:i1]
    bias1 = 1.0 - beta1**step
    # in the parameter dtype, as the reference (and torch) computes (see sgd_span)
    t = p.dtype.type
    bias2 = t(math.sqrt(1.0 - beta2**step))
    wd, b1, b2, ob1, ob2, e = t(weight_decay), t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2), t(eps)
    decay = t(1.0 - lr * weight_decay)
    rate = t(lr / bias1)
    for i in range(p.shape[0]):
        pi = p[i] * decay if decoupled else p[i]
        gi = g[i] + wd * pi if (weight_decay != 0.0 and not decoupled) else g[i]
        mi = b1 * m[i] + ob1 * gi
        vi = b2 * v[i] + ob2 * gi * gi
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = pi - rate * (mi / (np.sqrt(vi) / bias2 + e))


@njit(cache=True)
def rmsprop_span(p, g, sq, buf, ga, step, lr, alpha, eps, weight_decay, momentum, centered,
                 p_out, sq_out, buf_out, ga_out, i0, i1):  # fmt: skip
    """RMSprop on elements [i0, i1) (torch.optim.RMSprop's order of operations)."""
    p, g, sq, buf, ga = p[i0:i1], g[i0:i1], sq[i0:i1], buf[i0:i1], ga[i0:i1]
    p_out, sq_out, buf_out, ga_out = p_out[i0:i1], sq_out[i0:i1], buf_out[i0:i1], ga_out[i0:i1]
    t = p.dtype.type  # in the parameter dtype (see sgd_span)
    wd, a, oa, e, mom, rate = t(weight_decay), t(alpha), t(1.0 - alpha), t(eps), t(momentum), t(lr)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if weight_decay != 0.0 else g[i]
        si = a * sq[i] + oa * gi * gi
        sq_out[i] = si
        if centered:
            ai = ga[i] + oa * (gi - ga[i])
            ga_out[i] = ai
            d = np.sqrt(si - ai * ai) + e
        else:
            ga_out[i] = ga[i]
            d = np.sqrt(si) + e
        if momentum > 0.0:
            b = mom * buf[i] + gi / d
            buf_out[i] = b
            p_out[i] = p[i] - rate * b
        else:
            buf_out[i] = buf[i]
            p_out[i] = p[i] - rate * (gi / d)


@njit(cache=True)
def adagrad_span(p, g, s, step, lr, lr_decay, weight_decay, eps, p_out, s_out, i0, i1):
    """Adagrad on elements [i0, i1) (torch.optim.Adagrad's order of operations)."""
    p, g, s, p_out, s_out = p[i0:i1], g[i0:i1], s[i0:i1], p_out[i0:i1], s_out[i0:i1]
    t = p.dtype.type  # in the parameter dtype (see sgd_span)
    wd, e = t(weight_decay), t(eps)
    rate = t(lr / (1.0 + (step - 1) * lr_decay))  # ir.ops.optim.adagrad_rate
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if weight_decay != 0.0 else g[i]
        si = s[i] + gi * gi
        s_out[i] = si
        p_out[i] = p[i] - rate * (gi / (np.sqrt(si) + e))


@njit(cache=True)
def spans(n, nt):
    """(span size, span count) splitting ``n`` elements over at most ``nt`` threads, each
    span at least 4096 elements; span ``k`` is ``[k * size, min(n, (k + 1) * size))``."""
    chunks = max(1, min(nt, n // 4096))
    size = (n + chunks - 1) // chunks
    return size, chunks


# One parallel driver per update: Numba cannot take the span function as an argument and
# still cache the compiled code, so each is the same two lines over its own span.
@njit(cache=True, parallel=True)
def sgd_update(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out, nt):
    """:func:`sgd_span` over the whole parameter, split into one span per thread."""
    size, chunks = spans(p.shape[0], nt)
    for k in prange(chunks):
        sgd_span(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out,
                 k * size, min(p.shape[0], (k + 1) * size))  # fmt: skip


@njit(cache=True, parallel=True)
def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, p_out, m_out, v_out, nt):
    """:func:`adam_span` over the whole parameter, split into one span per thread."""
    size, chunks = spans(p.shape[0], nt)
    for k in prange(chunks):
        adam_span(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, p_out, m_out, v_out,
                  k * size, min(p.shape[0], (k + 1) * size))  # fmt: skip


@njit(cache=True, parallel=True)
def rmsprop_update(p, g, sq, buf, ga, step, lr, alpha, eps, weight_decay, momentum, centered,
                   p_out, sq_out, buf_out, ga_out, nt):  # fmt: skip
    """:func:`rmsprop_span` over the whole parameter, split into one span per thread."""
    size, chunks = spans(p.shape[0], nt)
    for k in prange(chunks):
        rmsprop_span(p, g, sq, buf, ga, step, lr, alpha, eps, weight_decay, momentum, centered,
                     p_out, sq_out, buf_out, ga_out, k * size, min(p.shape[0], (k + 1) * size))  # fmt: skip


@njit(cache=True, parallel=True)
def adagrad_update(p, g, s, step, lr, lr_decay, weight_decay, eps, p_out, s_out, nt):
    """:func:`adagrad_span` over the whole parameter, split into one span per thread."""
    size, chunks = spans(p.shape[0], nt)
    for k in prange(chunks):
        adagrad_span(p, g, s, step, lr, lr_decay, weight_decay, eps, p_out, s_out,
                     k * size, min(p.shape[0], (k + 1) * size))  # fmt: skip


@njit(cache=True)
def sum_squares(g):
    """The sum of ``g``'s squares, accumulated in float64."""
    total = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        total += x * x
    return total


@njit(cache=True)
def clip_coef(total_sq, max_norm, out):
    """``out[0] = min(1, max_norm / (sqrt(total_sq) + 1e-6))`` (ir.ops.optim.clip_coef)."""
    coef = max_norm / (math.sqrt(total_sq) + 1e-6)
    out[0] = coef if math.isnan(coef) else min(coef, 1.0)


#: parameters smaller than this are updated by one thread: a parallel launch costs more
#: than the update of a bias vector or a small conv kernel
PARALLEL_UPDATE_MIN = 32768


def _lit(value: float, dtype) -> str:
    """A hyper-parameter as a literal that round-trips (``math.inf``, ``math.nan``); a finite
    value beyond the parameter dtype's range is the infinity the reference's ``t(value)``
    computes with (the kernels compute in float64, which would keep it finite)."""
    rounded = scalar.in_dtype(float(value), dtype)
    return scalar.literal(rounded if math.isinf(rounded) else value)


def _flat(names: list[str]) -> str:
    return ", ".join(f"{n}.reshape(-1)" for n in names)


def _update(ctx, node, ins, outs, parallel_fn, serial_fn, attrs: tuple[str, ...]) -> None:
    """One driver line calling an update kernel: the flattened arrays, the step counter,
    ``attrs`` in the kernel's order, the flattened outputs, then the span or thread count."""
    size = int(np.prod(node.inputs[0].shape))
    if size >= PARALLEL_UPDATE_MIN:
        k, tail = ctx.static(parallel_fn, node.op), "T"
    else:
        k, tail = ctx.static(serial_fn, node.op + "(serial)"), f"0, {size}"
    t = node.inputs[0].type.np_dtype
    values = [str(v) if isinstance(v, bool) else _lit(v, t) for v in (node.attrs[a] for a in attrs)]
    ctx.line(f"{k}({_flat(ins[:-1])}, int({ins[-1]}), {', '.join(values)}, {_flat(outs)}, {tail})")


@lowering("sgd_update")
def _(ctx, node, ins, outs):
    attrs = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _update(ctx, node, ins, outs, sgd_update, sgd_span, attrs)


@lowering("adam_update")
def _(ctx, node, ins, outs):
    attrs = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay")
    _update(ctx, node, ins, outs, adam_update, adam_span, attrs)


@lowering("rmsprop_update")
def _(ctx, node, ins, outs):
    attrs = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _update(ctx, node, ins, outs, rmsprop_update, rmsprop_span, attrs)


@lowering("adagrad_update")
def _(ctx, node, ins, outs):
    _update(ctx, node, ins, outs, adagrad_update, adagrad_span, ("lr", "lr_decay", "weight_decay", "eps"))


@lowering("clip_grad_norm_coef")
def _(ctx, node, ins, outs):
    k = ctx.static(sum_squares, "clip_grad_norm_coef(sum_squares)")
    total = " + ".join(f"{k}({name}.reshape(-1))" for name in ins)
    coef = ctx.static(clip_coef, "clip_grad_norm_coef")
    ctx.line(f"{coef}({total}, {scalar.literal(node.attrs['max_norm'])}, {outs[0]}.reshape(1))")
