"""The epilogue of a fused producer: statements applied to its scalar output ``v`` before the
single store (the conv kernel's ``conv_at`` and the tiled GEMM share them).

The activations' expressions come from their op declarations (:mod:`convforge.ir.scalar`).
"""

from __future__ import annotations

from convforge.ir import scalar


def epilogue_lines(has_bias: bool, bn_eps: float | None, acts: list[tuple[str, dict]]) -> list[str]:
    """``v = ...`` statements: bias ``b``, the batch-norm affine (``bnw bnb bnm bnv``, per
    output channel ``o``), then the activations."""
    lines = ["v = v + b[o]"] if has_bias else []
    if bn_eps is not None:
        eps = scalar.literal(bn_eps)
        lines += [f"bs = bnw[o] / math.sqrt(bnv[o] + {eps})", "v = v * bs + (bnb[o] - bnm[o] * bs)"]
    for op, attrs in acts:
        lines.append("v = " + scalar.expression(op, attrs, x="v"))
    return lines


def pattern_steps(has_bias: bool, has_bn: bool, acts: list[tuple[str, dict]]) -> list[str]:
    """The epilogue's steps as a kernel file's pattern line names them."""
    return [*(["bias"] if has_bias else []), *(["batch_norm"] if has_bn else []), *(op for op, _ in acts)]
