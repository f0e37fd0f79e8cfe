"""Scalar expressions of elementwise ops, read off their declarations (``Op.scalar``).

Numba CPU and Numba CUDA both compile Python syntax, so one expression per op serves both
code generators; the loop around it is backend-specific. In an expression ``{x}`` is the
input of a unary op, ``{a}`` and ``{b}`` the operands of a binary one, ``{g}`` the incoming
gradient and ``{s}`` the saved forward value of an activation's backward op; any other
``{name}`` is an attribute. Every expression is valid in ``@njit`` and ``@cuda.jit`` code
that has ``import math``::

    >>> expression("leaky_relu", {"negative_slope": 0.1}, x="v")
    '(v if v > 0.0 else v * 0.1)'
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from typing import Any

import numpy as np

from convforge.ir.ops import registry

OPERANDS = {"unary": ("x",), "binary": ("a", "b"), "backward": ("g", "s")}


def kind(op: str) -> str | None:
    """``"unary"``, ``"binary"`` or ``"backward"`` for an op with a scalar expression, else None."""
    template = registry.get(op).scalar
    if template is None:
        return None
    names = set(_placeholders(template))
    for k, operands in OPERANDS.items():
        if set(operands) <= names:
            return k
    raise ValueError(f"op {op}: scalar expression {template!r} names none of x, (a, b), (g, s)")


def ops(of_kind: str, family: str | None = None) -> tuple[str, ...]:
    """Every op with a scalar expression of ``of_kind``, optionally from one family, sorted."""
    return tuple(
        sorted(
            name
            for name, op in registry.all_ops().items()
            if op.scalar is not None and kind(name) == of_kind and (family is None or op.family == family)
        )
    )


def monotone_backward_ops() -> tuple[str, ...]:
    """The backward ops of the monotone activations, sorted: what the argmax rewrite accepts."""
    return tuple(
        sorted(op.backward for op in registry.all_ops().values() if op.monotone and op.backward is not None)
    )


def fields(op: str) -> list[str]:
    """The attribute placeholders of ``op``'s expression, sorted."""
    operands = {o for os_ in OPERANDS.values() for o in os_}
    return sorted({n for n in _placeholders(_template(op)) if n not in operands})


def expression(op: str, attrs: Mapping[str, Any] | None = None, **operands: str) -> str:
    """``op``'s expression with ``operands`` substituted and attributes as literals.

    An attribute may also be given as an expression (a kernel parameter name) through
    ``operands``, which takes precedence over ``attrs``.
    """
    values = {k: literal(v) for k, v in (attrs or {}).items() if _is_number(v)}
    values.update(operands)
    return _template(op).format(**values)


def literal(v: float) -> str:
    """``v`` as Python source that round-trips, non-finite values included (``math.inf``)."""
    v = float(v)
    if math.isnan(v):
        return "math.nan"
    if math.isinf(v):
        return "math.inf" if v > 0 else "(-math.inf)"
    return repr(v)


def in_dtype(v: Any, dtype: Any) -> Any:
    """A float attribute rounded to the tensor dtype, as the references compute with it
    (``x.dtype.type(alpha)``): a finite value beyond float32's range becomes an infinity.
    Other values are returned unchanged."""
    if not isinstance(v, float):
        return v
    with np.errstate(over="ignore"):
        return float(np.dtype(dtype).type(v))


def attrs_in_dtype(attrs: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """``attrs`` with every float rounded to ``dtype`` (see :func:`in_dtype`)."""
    return {k: in_dtype(v, dtype) for k, v in attrs.items()}


def _template(op: str) -> str:
    template = registry.get(op).scalar
    if template is None:
        raise ValueError(f"op {op} has no scalar expression")
    return template


def _placeholders(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
