"""Optimizer update kernels (torch.optim's order of operations), on flattened parameters.

Updated parameters and state go to fresh output buffers: the arrays a user passed in
are never written.
"""

from __future__ import annotations

import math

from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering


@njit(cache=True, parallel=True)
def sgd_update(p, g, buf, step, lr, momentum, dampening, nesterov, weight_decay, p_out, buf_out):
    first = step <= 1
    for i in prange(p.shape[0]):
        gi = g[i] + weight_decay * p[i] if weight_decay != 0.0 else g[i]
        if momentum != 0.0:
            b = gi if first else momentum * buf[i] + (1.0 - dampening) * gi
            buf_out[i] = b
            gi = gi + momentum * b if nesterov else b
        else:
            buf_out[i] = buf[i]
        p_out[i] = p[i] - lr * gi


@njit(cache=True, parallel=True)
def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, p_out, m_out, v_out):
    bias1 = 1.0 - beta1**step
    bias2 = math.sqrt(1.0 - beta2**step)
    for i in prange(p.shape[0]):
        gi = g[i] + weight_decay * p[i] if weight_decay != 0.0 else g[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = p[i] - lr / bias1 * (mi / (math.sqrt(vi) / bias2 + eps))


def _flat(names: list[str]) -> str:
    return ", ".join(f"{n}.reshape(-1)" for n in names)


@lowering("sgd_update")
def _(ctx, node, ins, outs):
    k = ctx.static(sgd_update, "sgd_update")
    a = node.attrs
    ctx.line(
        f"{k}({_flat(ins[:3])}, int({ins[3]}), {a['lr']!r}, {a['momentum']!r}, {a['dampening']!r}, "
        f"{bool(a['nesterov'])}, {a['weight_decay']!r}, {_flat(outs)})"
    )


@lowering("adam_update")
def _(ctx, node, ins, outs):
    k = ctx.static(adam_update, "adam_update")
    a = node.attrs
    ctx.line(
        f"{k}({_flat(ins[:4])}, int({ins[4]}), {a['lr']!r}, {a['beta1']!r}, {a['beta2']!r}, "
        f"{a['eps']!r}, {a['weight_decay']!r}, {_flat(outs)})"
    )
