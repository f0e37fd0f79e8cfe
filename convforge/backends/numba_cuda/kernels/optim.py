"""Optimizer updates, one thread per parameter element, in ``torch.optim``'s order of operations.

Hyper-parameters are baked into the kernel (a new learning rate is a new kernel file,
which is cheap next to a kernel launch per value); the step counter is read on the device.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import map_kernel
from convforge.ir import scalar
from convforge.ir.graph import Node


def _lit(value: float, dtype) -> str:
    """``value`` rounded to the parameter dtype, as the reference's ``t(value)``, as a literal
    that round-trips (``math.inf``, ``math.nan``)."""
    return scalar.literal(float(dtype.type(value)))


@lowering("sgd_update")
def _(ctx, node: Node) -> None:
    param, grad, buf, step = node.inputs
    new_param, new_buf = node.outputs
    a = node.attrs
    t = param.type.np_dtype
    body = ["p = param[i]", "g = grad[i]"]
    if a["weight_decay"]:
        body.append(f"g = g + {_lit(a['weight_decay'], t)} * p")
    if a["momentum"]:
        body += [
            "if step[0] <= 1:",
            "    b = g",
            "else:",
            f"    b = {_lit(a['momentum'], t)} * buf[i] + {_lit(1 - a['dampening'], t)} * g",
            "new_buf[i] = b",
            f"g = g + {_lit(a['momentum'], t)} * b" if a["nesterov"] else "g = b",
        ]
    else:
        body.append("new_buf[i] = buf[i]")
    body.append(f"new_param[i] = p - {_lit(a['lr'], t)} * g")
    attrs = ", ".join(f"{k}={v!r}" for k, v in a.items())
    map_kernel(
        ctx,
        "optim",
        f"sgd_update {{{attrs}}} ({param.dtype})",
        ["param", "grad", "buf", "step", "new_param", "new_buf"],
        body,
        "param",
        [ctx.flat(param), ctx.flat(grad), ctx.flat(buf), step, ctx.flat(new_param), ctx.flat(new_buf)],
        ctx.numel(param),
    )


@lowering("adam_update")
def _(ctx, node: Node) -> None:
    param, grad, m, v, step = node.inputs
    new_param, new_m, new_v = node.outputs
    a = node.attrs
    t = param.type.np_dtype
    b1, b2 = a["beta1"], a["beta2"]
    body = ["p = param[i]", "g = grad[i]"]
    if a["weight_decay"]:
        body.append(f"g = g + {_lit(a['weight_decay'], t)} * p")
    body += [
        f"mm = {_lit(b1, t)} * m[i] + {_lit(1 - b1, t)} * g",
        f"vv = {_lit(b2, t)} * v[i] + {_lit(1 - b2, t)} * g * g",
        "n = np.float64(step[0])",
        f"bias1 = 1.0 - {scalar.literal(b1)} ** n",
        f"bias2 = 1.0 - {scalar.literal(b2)} ** n",
        f"denom = math.sqrt(vv) / DT(math.sqrt(bias2)) + {_lit(a['eps'], t)}",
        f"new_param[i] = p - DT({scalar.literal(a['lr'])} / bias1) * (mm / denom)",
        "new_m[i] = mm",
        "new_v[i] = vv",
    ]
    attrs = ", ".join(f"{k}={v!r}" for k, v in a.items())
    map_kernel(
        ctx,
        "optim",
        f"adam_update {{{attrs}}} ({param.dtype})",
        ["param", "grad", "m", "v", "step", "new_param", "new_m", "new_v"],
        body,
        "param",
        [
            ctx.flat(param),
            ctx.flat(grad),
            ctx.flat(m),
            ctx.flat(v),
            step,
            ctx.flat(new_param),
            ctx.flat(new_m),
            ctx.flat(new_v),
        ],
        ctx.numel(param),
        prelude=f"DT = np.{t.name}\n\n\n",
    )
