"""Optimizer update kernels (torch.optim's order of operations), on flattened parameters.

Updated parameters and state go to fresh output buffers: the arrays a user passed in
are never written.
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


@njit(cache=True, parallel=True)
def sgd_update(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out, nt):
    """:func:`sgd_span` over the whole parameter, split into one span per thread."""
    n = p.shape[0]
    chunks = max(1, min(nt, n // 4096))
    size = (n + chunks - 1) // chunks
    for t in prange(chunks):
        i0 = min(n, t * size)
        sgd_span(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out, i0,
                 min(n, i0 + size))  # fmt: skip


@njit(cache=True)
def adam_span(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, p_out, m_out, v_out, i0, i1):
    """Adam on elements [i0, i1) (torch.optim.Adam's order of operations)."""
    p, g, m, v = p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1]
    p_out, m_out, v_out = p_out[i0:i1], m_out[i0:i1], v_out[i0:i1]
    bias1 = 1.0 - beta1**step
    # in the parameter dtype, as the reference (and torch) computes (see sgd_span)
    t = p.dtype.type
    bias2 = t(math.sqrt(1.0 - beta2**step))
    wd, b1, b2, ob1, ob2, e = t(weight_decay), t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2), t(eps)
    rate = t(lr / bias1)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if weight_decay != 0.0 else g[i]
        mi = b1 * m[i] + ob1 * gi
        vi = b2 * v[i] + ob2 * gi * gi
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = p[i] - rate * (mi / (np.sqrt(vi) / bias2 + e))


@njit(cache=True, parallel=True)
def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, p_out, m_out, v_out, nt):
    """:func:`adam_span` over the whole parameter, split into one span per thread."""
    n = p.shape[0]
    chunks = max(1, min(nt, n // 4096))
    size = (n + chunks - 1) // chunks
    for t in prange(chunks):
        i0 = min(n, t * size)
        adam_span(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, p_out, m_out, v_out, i0,
                  min(n, i0 + size))  # fmt: skip


#: parameters smaller than this are updated by one thread: a parallel launch costs more
#: than the update of a bias vector or a small conv kernel
PARALLEL_UPDATE_MIN = 32768


def _update_call(ctx, node, parallel_fn, serial_fn, label: str) -> tuple[str, str]:
    """(kernel name, trailing arguments) for a parameter of this node's size."""
    size = int(np.prod(node.inputs[0].shape))
    if size >= PARALLEL_UPDATE_MIN:
        return f"{ctx.static(parallel_fn, label)}", "T"
    return f"{ctx.static(serial_fn, label + '(serial)')}", f"0, {size}"


def _lit(value: float, dtype) -> str:
    """A hyper-parameter as a literal that round-trips (``math.inf``, ``math.nan``); a finite
    value beyond the parameter dtype's range is the infinity the reference's ``t(value)``
    computes with (the kernels compute in float64, which would keep it finite)."""
    rounded = scalar.in_dtype(float(value), dtype)
    return scalar.literal(rounded if math.isinf(rounded) else value)


def _flat(names: list[str]) -> str:
    return ", ".join(f"{n}.reshape(-1)" for n in names)


@lowering("sgd_update")
def _(ctx, node, ins, outs):
    k, tail = _update_call(ctx, node, sgd_update, sgd_span, "sgd_update")
    a, t = node.attrs, node.inputs[0].type.np_dtype
    ctx.line(
        f"{k}({_flat(ins[:3])}, int({ins[3]}), {_lit(a['lr'], t)}, {_lit(a['momentum'], t)}, "
        f"{_lit(a['dampening'], t)}, "
        f"{bool(a['nesterov'])}, {_lit(a['weight_decay'], t)}, {_flat(outs)}, {tail})"
    )


@lowering("adam_update")
def _(ctx, node, ins, outs):
    k, tail = _update_call(ctx, node, adam_update, adam_span, "adam_update")
    a, t = node.attrs, node.inputs[0].type.np_dtype
    ctx.line(
        f"{k}({_flat(ins[:4])}, int({ins[4]}), {_lit(a['lr'], t)}, {_lit(a['beta1'], t)}, "
        f"{_lit(a['beta2'], t)}, {_lit(a['eps'], t)}, {_lit(a['weight_decay'], t)}, {_flat(outs)}, {tail})"
    )
