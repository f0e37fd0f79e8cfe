"""Epilogue statements for generated kernels: the batch-norm affine and elementwise ops,
applied to a scalar ``v`` (the expressions come from the ops, ``convforge.ir.scalar``)."""

from __future__ import annotations

from convforge.ir import scalar


def indent(lines: list[str], depth: int) -> str:
    """``lines`` indented by ``depth`` spaces, one per line (``pass`` when there are none)."""
    return "\n".join(" " * depth + line for line in lines) if lines else " " * depth + "pass"


def epilogue_lines(acts: list[tuple[str, dict]], has_bn: bool) -> list[str]:
    """``v = ...`` statements applying the BN affine (``so``, ``to``) and the activations to ``v``."""
    lines = ["v = v * so + to"] if has_bn else []
    for op, attrs in acts:
        lines.append("v = " + scalar.expression(op, attrs, x="v"))
    return lines
