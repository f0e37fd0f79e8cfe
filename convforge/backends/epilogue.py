"""Scalar expressions for elementwise epilogues, shared by the CPU and CUDA codegen.

Numba CPU and Numba CUDA both compile Python syntax, so one table serves both; the loop
structure around an expression is backend-specific. ``{x}`` is the value, ``{a}`` an
attribute. Every expression is valid in an ``@njit`` function and a ``@cuda.jit`` kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: op -> expression of ``x`` (its one input) and the op's attributes
UNARY: dict[str, str] = {
    "relu": "max({x}, 0.0)",
    "leaky_relu": "({x} if {x} > 0.0 else {x} * {negative_slope})",
    "sigmoid": "(1.0 / (1.0 + math.exp(-{x})) if {x} >= 0.0 else math.exp({x}) / (1.0 + math.exp({x})))",
    "tanh": "math.tanh({x})",
    "scale": "({x} * {factor})",
}

#: backward op -> expression of the incoming gradient ``g`` and the saved value ``s``
BACKWARD: dict[str, str] = {
    "relu_backward": "({g} if {s} > 0.0 else 0.0)",
    "leaky_relu_backward": "({g} if {s} > 0.0 else {g} * {negative_slope})",
    "sigmoid_backward": "({g} * {s} * (1.0 - {s}))",
    "tanh_backward": "({g} * (1.0 - {s} * {s}))",
}

BINARY: dict[str, str] = {
    "add": "({a} + {b})",
    "mul": "({a} * {b})",
}


def unary(op: str, x: str, attrs: Mapping[str, Any]) -> str:
    """The expression of unary op ``op`` applied to the expression ``x``."""
    return UNARY[op].format(x=x, **{k: repr(float(v)) for k, v in attrs.items() if _is_number(v)})


def backward(op: str, g: str, s: str, attrs: Mapping[str, Any]) -> str:
    return BACKWARD[op].format(g=g, s=s, **{k: repr(float(v)) for k, v in attrs.items() if _is_number(v)})


def binary(op: str, a: str, b: str) -> str:
    return BINARY[op].format(a=a, b=b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
