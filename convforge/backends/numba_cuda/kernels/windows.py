"""Sliding-window snippets shared by the convolution and pooling templates.

A window is described by module constants ``KH KW SH SW PH PW DH DW`` (kernel size,
stride, top/left padding, dilation; a pool's padding may also be ``(top, left, bottom,
right)``, whose bottom/right only the average divisor reads), optionally prefixed (the
fused conv + pool kernel has the conv's window and the pool's, ``PKH ...``). Both
directions of a window are here:

* :func:`taps`: for output ``(oy, ox)``, each tap ``(a, e)`` and the input ``(iy, ix)`` it
  reads, skipping taps in the padding (convolution, pooling, their fused forms);
* :func:`covering`: for input ``(iy, ix)``, each output ``(oy, ox)`` and tap ``(a, e)``
  whose window reads it (the gather form of every backward kernel: no atomics);
* :func:`window_max` / :func:`window_sum`: device functions reducing a value over a window;
* :func:`avg_divisor`: PyTorch's average-pool divisor of a window, as a device function,
  so the forward, the backward and the fused conv kernel divide by one expression.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from convforge.backends.numba_cuda.kernels.templates import consts, device, nest


def window_consts(attrs: Mapping[str, Any], prefix: str = "") -> str:
    """The constants of a pooling window (``dilation`` is 1 where the op has none)."""
    dil = attrs["dilation"] if "dilation" in attrs else (1, 1)
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"][:2]
    values = dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dil[0], DW=dil[1])
    return consts(**{prefix + k: v for k, v in values.items()})


def window_text(attrs: Mapping[str, Any]) -> str:
    """A pooling window's attributes as a kernel file names them."""
    keys = ("kernel_size", "stride", "padding", "dilation", "count_include_pad", "divisor_override")
    return "{" + ", ".join(f"{k}={attrs[k]!r}" for k in keys if k in attrs) + "}"


def taps(out: tuple[str, str], at: tuple[str, str], plane: tuple[str, str], body, p: str = "") -> list[str]:
    """``body`` for each tap ``(a, e)`` of output ``out`` whose input ``at`` lies in ``plane``."""
    (oy, ox), (iy, ix), (h, w) = out, at, plane
    return [
        f"for a in range({p}KH):",
        f"    {iy} = {oy} * {p}SH - {p}PH + a * {p}DH",
        f"    if {iy} >= 0 and {iy} < {h}:",
        f"        for e in range({p}KW):",
        f"            {ix} = {ox} * {p}SW - {p}PW + e * {p}DW",
        f"            if {ix} >= 0 and {ix} < {w}:",
        *nest(body, 16),
    ]


def covering(at: tuple[str, str], out: tuple[str, str], plane: tuple[str, str], body) -> list[str]:
    """``body`` for each output ``out`` in ``plane`` (the output plane) and tap ``(a, e)``
    whose window reads input ``at``."""
    (iy, ix), (oy, ox), (ho, wo) = at, out, plane
    return [
        "for a in range(KH):",
        f"    ty = {iy} + PH - a * DH",
        f"    if ty >= 0 and ty % SH == 0 and ty // SH < {ho}:",
        f"        {oy} = ty // SH",
        "        for e in range(KW):",
        f"            tx = {ix} + PW - e * DW",
        f"            if tx >= 0 and tx % SW == 0 and tx // SW < {wo}:",
        f"                {ox} = tx // SW",
        *nest(body, 16),
    ]


def window_max(
    params: str, value: str, plane: tuple[str, str], setup: Sequence[str] = (), p: str = ""
) -> str:
    """Device function ``window_max(params, n, c, oy, ox) -> (best, arg)``: the first maximum
    of ``value`` (an expression of ``n, c, iy, ix``) over the window (NaN wins, as in the
    reference) and its tap index ``a * KW + e``."""
    body = ["v = " + value, "if v > best or v != v:", "    best = v", f"    arg = a * {p}KW + e"]
    lines = [*setup, "best = -math.inf", "arg = 0", *taps(("oy", "ox"), ("iy", "ix"), plane, body, p)]
    return device("window_max", f"{params}, n, c, oy, ox", [*lines, "return best, arg"])


def window_sum(
    params: str, value: str, plane: tuple[str, str], setup: Sequence[str] = (), p: str = ""
) -> str:
    """Device function ``window_sum(params, n, c, oy, ox)``: the float64 sum of ``value`` over
    the window's taps inside ``plane``."""
    lines = [*setup, "total = 0.0", *taps(("oy", "ox"), ("iy", "ix"), plane, ["total += " + value], p)]
    return device("window_sum", f"{params}, n, c, oy, ox", [*lines, "return total"])


def avg_divisor(attrs: Mapping[str, Any]) -> str:
    """Device function ``avg_divisor(oy, ox, h, w)``: what PyTorch divides window ``(oy, ox)``
    of an ``h x w`` input by (``divisor_override``, or the window's size with or without
    the padding it covers)."""
    if attrs["divisor_override"] is not None:
        expr = repr(float(attrs["divisor_override"]))
    else:
        (kh, kw), (sh, sw), pads = attrs["kernel_size"], attrs["stride"], attrs["padding"]
        (ph, pw), (phh, pwh) = pads[:2], pads[2:] or pads  # top, left; bottom, right
        hs, ws = f"(oy * {sh} - {ph})", f"(ox * {sw} - {pw})"
        he, we = f"min({hs} + {kh}, h + {phh})", f"min({ws} + {kw}, w + {pwh})"
        if attrs["count_include_pad"]:
            expr = f"(({he} - {hs}) * ({we} - {ws}))"
        else:
            expr = f"((min({he}, h) - max({hs}, 0)) * (min({we}, w) - max({ws}, 0)))"
    return device("avg_divisor", "oy, ox, h, w", ["return " + expr])
