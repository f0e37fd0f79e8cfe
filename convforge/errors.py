"""The exception hierarchy: every user mistake raises a ``ConvforgeError`` subclass.

Messages name the layer (``features.3 (Conv2d)``) or the IR node (``%4 = conv2d``),
then what was expected and what was given.
"""

from __future__ import annotations


class ConvforgeError(Exception):
    """Base class of every error convforge raises for a user mistake."""


class ShapeError(ConvforgeError, ValueError):
    """A tensor's shape does not fit the layer or op it is given to."""


class DTypeError(ConvforgeError, TypeError):
    """A tensor's dtype is not one the layer or op accepts."""


class AttributeValueError(ConvforgeError, ValueError):
    """An op or layer attribute (stride, padding, ...) is invalid."""


class StateDictError(ConvforgeError, KeyError):
    """A state dict has a missing, unexpected, wrongly shaped or wrongly typed entry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class UnknownOpError(ConvforgeError, KeyError):
    """An op name that no op family registers."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IRParseError(ConvforgeError, SyntaxError):
    """IR text that does not parse; the message names line and column."""


class VerificationError(ConvforgeError):
    """A graph that breaks an IR invariant (order, ownership, types)."""


class BackendError(ConvforgeError):
    """An unknown backend, a missing kernel, or a backend that cannot run here."""


class FusionError(ConvforgeError):
    """A fusion region that is not one of the patterns of ``convforge.ir.ops.fusion``."""


class PassError(ConvforgeError):
    """A pass failed; the message names the pass, the passes before it and the node."""


class SerializationError(ConvforgeError):
    """A weights file that cannot be read safely or does not match the model."""


class DataError(ConvforgeError):
    """A data file that is missing, truncated or malformed."""


def wrap_error(exc: ConvforgeError, where: str) -> ConvforgeError:
    """Prefix an error's message with where it happened, keeping its class."""
    msg = str(exc)
    if msg.startswith(where):
        return exc
    new = type(exc)(f"{where}: {msg}")
    new.__cause__ = exc
    return new
