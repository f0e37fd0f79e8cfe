"""Optimizer updates, one thread per parameter element, in ``torch.optim``'s order of operations,
and the global gradient norm behind ``clip_grad_norm`` (one block).

A kernel is specialised on what changes its code (which terms are present: weight decay,
momentum, Nesterov, centering, decoupled decay) and the dtype; every hyper-parameter
value is a launch argument, rounded to the parameter dtype in the kernel as the
reference's ``t(value)`` is, so a learning-rate schedule reuses the compiled kernels.
The step counter is read on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import (
    block_reduce,
    consts,
    kernel,
    map_kernel,
    thread_loop,
)
from convforge.ir.graph import Node


def _update(
    ctx, node: Node, names: Sequence[str], hyper: Sequence[str], flags: Sequence[str], body: list[str]
):
    """Launch ``body`` per element: ``names`` are the kernel's names for the node's inputs
    (the last is ``step``) and then its outputs; ``hyper`` the attributes passed as
    arguments, ``flags`` those the code depends on (they name the kernel)."""
    values = [*node.inputs, *node.outputs]
    t = node.inputs[0].type.np_dtype
    args = [v if v is node.inputs[-1] else ctx.flat(v) for v in values]
    args += [node.attrs[h] if isinstance(node.attrs[h], bool) else float(node.attrs[h]) for h in hyper]
    spec = ", ".join(f"{f}={bool(node.attrs[f])}" for f in flags)  # present or not, never the value
    map_kernel(
        ctx,
        "optim",
        f"{node.op} {{{spec}}} ({node.inputs[0].dtype})",
        [*names, *hyper],
        ["p = param[i]", "g = grad[i]", *body],
        "param",
        args,
        ctx.numel(node.inputs[0]),
        prelude=f"DT = np.{t.name}\n\n\n",
    )


def _weight_decay(node: Node) -> list[str]:
    return ["g = g + DT(weight_decay) * p"] if node.attrs["weight_decay"] else []


@lowering("sgd_update")
def _(ctx, node: Node) -> None:
    a = node.attrs
    body = _weight_decay(node)
    if a["momentum"]:
        body += [
            "if step[0] <= 1:",
            "    b = g",
            "else:",
            "    b = DT(momentum) * buf[i] + DT(1.0 - dampening) * g",
            "new_buf[i] = b",
            "g = g + DT(momentum) * b" if a["nesterov"] else "g = b",
        ]
    else:
        body.append("new_buf[i] = buf[i]")
    body.append("new_param[i] = p - DT(lr) * g")
    names = ["param", "grad", "buf", "step", "new_param", "new_buf"]
    hyper = ("lr", "momentum", "dampening", "weight_decay")
    _update(ctx, node, names, hyper, ("weight_decay", "momentum", "nesterov"), body)


@lowering("adam_update")
def _(ctx, node: Node) -> None:
    if node.attrs["decoupled_weight_decay"]:
        body = ["p = p * DT(1.0 - lr * weight_decay)"]
    else:
        body = _weight_decay(node)
    body += [
        "mm = DT(beta1) * m[i] + DT(1.0 - beta1) * g",
        "vv = DT(beta2) * v[i] + DT(1.0 - beta2) * g * g",
        "n = np.float64(step[0])",
        "bias1 = 1.0 - beta1 ** n",
        "bias2 = 1.0 - beta2 ** n",
        "denom = math.sqrt(vv) / DT(math.sqrt(bias2)) + DT(eps)",
        "new_param[i] = p - DT(lr / bias1) * (mm / denom)",
        "new_m[i] = mm",
        "new_v[i] = vv",
    ]
    names = ["param", "grad", "m", "v", "step", "new_param", "new_m", "new_v"]
    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _update(ctx, node, names, hyper, ("weight_decay", "decoupled_weight_decay"), body)


@lowering("rmsprop_update")
def _(ctx, node: Node) -> None:
    a = node.attrs
    body = [
        *_weight_decay(node),
        "sq = DT(alpha) * square_avg[i] + DT(1.0 - alpha) * g * g",
        "new_square_avg[i] = sq",
    ]
    if a["centered"]:
        body += [
            "ga = grad_avg[i] + DT(1.0 - alpha) * (g - grad_avg[i])",
            "new_grad_avg[i] = ga",
            "d = math.sqrt(sq - ga * ga) + DT(eps)",
        ]
    else:
        body += ["new_grad_avg[i] = grad_avg[i]", "d = math.sqrt(sq) + DT(eps)"]
    if a["momentum"] > 0:
        body += ["b = DT(momentum) * buf[i] + g / d", "new_buf[i] = b", "new_param[i] = p - DT(lr) * b"]
    else:
        body += ["new_buf[i] = buf[i]", "new_param[i] = p - DT(lr) * (g / d)"]
    names = ["param", "grad", "square_avg", "buf", "grad_avg", "step"]
    names += ["new_param", "new_square_avg", "new_buf", "new_grad_avg"]
    hyper = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _update(ctx, node, names, hyper, ("weight_decay", "momentum", "centered"), body)


@lowering("adagrad_update")
def _(ctx, node: Node) -> None:
    body = [
        *_weight_decay(node),
        "s = state_sum[i] + g * g",
        "new_sum[i] = s",
        "rate = lr / (1.0 + (np.float64(step[0]) - 1.0) * lr_decay)",  # ir.ops.optim.adagrad_rate
        "new_param[i] = p - DT(rate) * (g / (math.sqrt(s) + DT(eps)))",
    ]
    names = ["param", "grad", "state_sum", "step", "new_param", "new_sum"]
    _update(ctx, node, names, ("lr", "lr_decay", "weight_decay", "eps"), ("weight_decay",), body)


@lowering("clip_grad_norm_coef")
def _(ctx, node: Node) -> None:
    grads = [f"g{j}" for j in range(len(node.inputs))]
    lines = ["sh = cuda.shared.array(RT, dtype=np.float64)", "t = cuda.threadIdx.x", "acc = 0.0"]
    for g in grads:
        lines += thread_loop(f"{g}.size", [f"x = np.float64({g}[k])", "acc += x * x"])
    lines += [
        *block_reduce(["acc"], ["sh"]),
        "if t == 0:",
        "    coef = max_norm / (math.sqrt(acc) + 1e-6)",  # ir.ops.optim.clip_coef
        "    out[0] = coef if math.isnan(coef) else min(coef, 1.0)",
    ]
    src = consts(RT=ctx.geometry.reduce_threads) + kernel(", ".join([*grads, "max_norm", "out"]), lines)
    fn = ctx.kernel("optim", f"clip_grad_norm_coef ({len(grads)} gradients)", src)
    flat = [ctx.flat(v) for v in node.inputs]
    ctx.launch(fn, 1, ctx.geometry.reduce_threads, *flat, float(node.attrs["max_norm"]), node.outputs[0])
