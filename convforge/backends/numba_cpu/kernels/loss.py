"""Loss kernels: the class-index losses (static kernels) and the pointwise losses (generated
from ``ir.ops.loss``'s scalar expressions), each with its backward.

Every kernel takes the reduction as ``mode`` (0 none, 1 mean, 2 sum) and an absent weight
as an empty array, so it specialises on the loss, never on a weight's values or a size.
IEEE division (``error_model="numpy"``): a mean over nothing is NaN, as in torch. Labels
were checked against ``[0, C)`` or the ``ignore_index`` before any kernel
(``convforge.backends.base.check_labels``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.ir.ops.loss import POINTWISE_OPS, pointwise_code

_MODES = {"none": 0, "mean": 1, "sum": 2}


# -- cross_entropy / nll_loss --------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _row_shift(x, n, logits):
    """``log sum exp`` of row ``n`` for logits (``logp = x - shift``), 0 for log-probabilities."""
    if not logits:
        return 0.0
    m = -np.inf
    for c in range(x.shape[1]):
        m = max(m, x[n, c])
    s = 0.0
    for c in range(x.shape[1]):
        s += math.exp(x[n, c] - m)
    return m + math.log(s)


@njit(cache=True, error_model="numpy")
def _target_weight(target, weight, n, ignore_index):
    t = target[n]
    if t == ignore_index:
        return 0.0
    return weight[t] if weight.size else 1.0


@njit(cache=True, error_model="numpy")
def _weight_sum(target, weight, ignore_index):
    total = 0.0
    for n in range(target.shape[0]):
        total += _target_weight(target, weight, n, ignore_index)
    return total


@njit(cache=True, error_model="numpy")
def _row_loss(x, target, weight, n, ignore_index, smoothing, logits):
    t = target[n]
    if t == ignore_index:
        return 0.0
    shift = _row_shift(x, n, logits)
    loss = -_target_weight(target, weight, n, ignore_index) * (x[n, t] - shift)
    if smoothing > 0:
        smooth = 0.0
        for c in range(x.shape[1]):
            smooth -= (weight[c] if weight.size else 1.0) * (x[n, c] - shift)
        loss = (1.0 - smoothing) * loss + smoothing / x.shape[1] * smooth
    return loss


@njit(cache=True, error_model="numpy")
def class_loss(x, target, weight, ignore_index, smoothing, logits, mode, out):
    if mode == 0:
        for n in range(x.shape[0]):
            out[n] = _row_loss(x, target, weight, n, ignore_index, smoothing, logits)
        return
    total = 0.0
    for n in range(x.shape[0]):
        total += _row_loss(x, target, weight, n, ignore_index, smoothing, logits)
    out[0] = total / _weight_sum(target, weight, ignore_index) if mode == 1 else total


@njit(cache=True, parallel=True, error_model="numpy")
def class_loss_backward(g, x, target, weight, ignore_index, smoothing, logits, mode, gx):
    N, C = x.shape
    denominator = _weight_sum(target, weight, ignore_index) if mode == 1 else 1.0
    wsum = 0.0
    for c in range(weight.size):
        wsum += weight[c]
    wsum = wsum if weight.size else float(C)
    for n in prange(N):
        t = target[n]
        if t == ignore_index:  # 0, even where the mean divides by no weight at all
            for c in range(C):
                gx[n, c] = 0.0
            continue
        scale = (g[n] if mode == 0 else g[0]) / denominator
        wt = _target_weight(target, weight, n, ignore_index)
        # d loss / d logp[c] = scale * (-(1 - ls) wt [c == t] - ls / C w[c]); through
        # log_softmax subtract softmax[c] times their sum
        total = scale * (-(1.0 - smoothing) * wt - smoothing / C * wsum)
        shift = _row_shift(x, n, logits)
        for c in range(C):
            w = weight[c] if weight.size else 1.0
            grad = -scale * smoothing / C * w
            if c == t:
                grad -= scale * (1.0 - smoothing) * wt
            if logits:
                grad -= math.exp(x[n, c] - shift) * total
            gx[n, c] = grad


def _class_args(ctx, node, ins, offset: int) -> str:
    """``x, target, weight, ignore_index, smoothing, logits, mode`` from the node."""
    a = node.attrs
    x, target = ins[offset], ins[offset + 1]
    logits = node.op.startswith("cross_entropy")
    weight = (
        ins[offset + 2] if len(ins) > offset + 2 else ctx.zeros(0, node.inputs[offset].dtype, "no_weight")
    )
    return (
        f"{x}, {target}, {weight}, {a['ignore_index']}, {a.get('label_smoothing', 0.0)!r}, "
        f"{logits}, {_MODES[a['reduction']]}"
    )


@lowering("cross_entropy", "nll_loss")
def _(ctx, node, ins, outs):
    k = ctx.static(class_loss, "class_loss")
    ctx.line(f"{k}({_class_args(ctx, node, ins, 0)}, {outs[0]}.reshape(-1))")


@lowering("cross_entropy_backward", "nll_loss_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(class_loss_backward, "class_loss_backward")
    ctx.line(f"{k}({ins[0]}.reshape(-1), {_class_args(ctx, node, ins, 1)}, {outs[0]})")


# -- pointwise losses ----------------------------------------------------------------------
_HEADER = "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n\n"
_DECORATOR = '@njit(cache=True, parallel=True, error_model="numpy")'


def reduce_source(loads: list[str], value: str, operands: str) -> str:
    """``kernel(operands, p, mode, out)``: ``out = value`` per element (mode 0) or its mean
    (1) or sum (2), float64 accumulation; ``loads`` bind the expression's locals from element
    ``i``. Rendered for ``mse_loss``::

        @njit(cache=True, parallel=True, error_model="numpy")
        def kernel(x, y, p, mode, out):
            n = x.shape[0]
            if mode == 0:
                for i in prange(n):
                    d = np.float64(x[i]) - y[i]
                    out[i] = d * d
                return
            total = 0.0
            for i in prange(n):
                d = np.float64(x[i]) - y[i]
                total += d * d
            out[0] = total / n if mode == 1 else total
    """
    body = ["        " + line for line in loads]
    return _HEADER + "\n".join(
        [
            _DECORATOR,
            f"def kernel({operands}, p, mode, out):",
            "    n = x.shape[0]",
            "    if mode == 0:",
            "        for i in prange(n):",
            *("    " + line for line in body),
            f"            out[i] = {value}",
            "        return",
            "    total = 0.0",
            "    for i in prange(n):",
            *body,
            f"        total += {value}",
            "    out[0] = total / n if mode == 1 else total",
            "",
        ]
    )


def grad_source(loads: list[str], grad: str, operands: str) -> str:
    """``kernel(g, operands, p, mode, gx)``: ``gx = g * grad`` per element, ``g`` per element
    (mode 0) or the scalar, divided by the count for the mean (mode 1)."""
    return _HEADER + "\n".join(
        [
            _DECORATOR,
            f"def kernel(g, {operands}, p, mode, gx):",
            "    n = x.shape[0]",
            "    scale = 1.0 / n if mode == 1 else 1.0",
            "    for i in prange(n):",
            "        gi = g[i] if mode == 0 else g[0]",
            *("        " + line for line in loads),
            f"        gx[i] = gi * scale * {grad}",
            "",
        ]
    )


def _pointwise_call(ctx, node, ins, outs, backward: bool) -> None:
    """Emit the call of a pointwise loss's kernel (``backward``: its gradient's)."""
    grads = 1 if backward else 0
    operands = ins[grads:]
    loads, value, grad, names, p = pointwise_code(node.op, node.attrs, len(operands) - 2)
    source = grad_source(loads, grad, names) if backward else reduce_source(loads, value, names)
    k = ctx.generated(("loss", node.op, len(operands)), source, node.op)
    flat = [f"{a}.reshape(-1)" for a in [*ins[:grads], *operands]]
    mode = _MODES[node.attrs["reduction"]]
    ctx.line(f"{k}({', '.join(flat)}, {p}, {mode}, {outs[0]}.reshape(-1))")


@lowering(*POINTWISE_OPS)
def _(ctx, node, ins, outs):
    _pointwise_call(ctx, node, ins, outs, backward=False)


@lowering(*(f"{op}_backward" for op in POINTWISE_OPS))
def _(ctx, node, ins, outs):
    _pointwise_call(ctx, node, ins, outs, backward=True)
