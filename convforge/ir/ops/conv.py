"""Convolutions: conv2d, conv1d, their backward ops (input and weight gradients), and
conv_transpose2d (the transposed convolution, conv2d's input gradient with a bias).

"Convolution" here is cross-correlation, as in PyTorch: ``y[o, p] = sum_t w[o, t] x[p + t]``
with no kernel flip. Layout is NCHW (NCL in 1-D); the output size is floored as PyTorch
does: ``(size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1``.

``padding`` is ``(ph, pw)`` (symmetric) or ``(top, left, bottom, right)`` in 2-D, ``(p,)`` or
``(lo, hi)`` in 1-D; an asymmetric tuple whose sides agree is normalised to the short form.
``"same"`` / ``"valid"`` never reach the IR: the frontend resolves them to ints.

The NumPy references are vectorised: one ``einsum`` per kernel offset over whole strided
views of the padded input, never a loop per output pixel, so they can serve as the oracle
for large property runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, expect_rank, expect_same_dtype, int_tuple, window_out
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import BATCH, Dim, TensorType

Pads = tuple[tuple[int, int], ...]

_SPATIAL_NAMES = {1: ("length",), 2: ("height", "width")}
_SPATIAL_SUBSCRIPTS = {1: "l", 2: "hw"}


# -- attributes ---------------------------------------------------------------------------
def _check_padding(padding: object, nd: int) -> tuple[int, ...]:
    """Padding as ``nd`` ints (symmetric) or ``2 * nd`` ints (per side), short form when possible."""
    if isinstance(padding, str):
        raise AttributeValueError(
            f"padding must be ints in the IR, got {padding!r}; the frontend resolves "
            f'"same"/"valid" to ints because the attribute check does not see the kernel size'
        )
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding,) * nd
    long_form = "(top, left, bottom, right)" if nd == 2 else "(lo, hi)"
    if not isinstance(padding, (tuple, list)) or len(padding) not in (nd, 2 * nd):
        raise AttributeValueError(
            f"padding must be an int, {nd} int{'s' if nd > 1 else ''} (symmetric) or {2 * nd} ints "
            f"{long_form}, got {padding!r}"
        )
    for p in padding:
        if isinstance(p, bool) or not isinstance(p, int):
            raise AttributeValueError(f"padding must be ints, got {padding!r}")
        if p < 0:
            raise AttributeValueError(f"padding must be >= 0, got {padding!r}")
    pads = tuple(int(p) for p in padding)
    if len(pads) == 2 * nd and pads[:nd] == pads[nd:]:
        pads = pads[:nd]
    return pads


def pad_pairs(padding: Sequence[int], nd: int) -> Pads:
    """``(lo, hi)`` per spatial dim from a normalised ``padding`` attribute."""
    if len(padding) == nd:
        return tuple((p, p) for p in padding)
    return tuple((padding[i], padding[i + nd]) for i in range(nd))


def _check_groups(groups: object) -> int:
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise AttributeValueError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise AttributeValueError(f"groups must be >= 1, got {groups}")
    return groups


def _check_size(name: str, value: object, nd: int) -> tuple[int, ...]:
    if value is None:
        raise AttributeValueError(f"{name} is required: {nd} int(s), got None")
    return int_tuple(name, value, nd, minimum=1)


def _checker(nd: int, size_attr: str | None = None):
    def check(stride, padding, dilation, groups, **size):
        out = {
            "stride": int_tuple("stride", stride, nd, minimum=1),
            "padding": _check_padding(padding, nd),
            "dilation": int_tuple("dilation", dilation, nd, minimum=1),
            "groups": _check_groups(groups),
        }
        if size_attr is not None:
            out[size_attr] = _check_size(size_attr, size[size_attr], nd)
        return out

    return check


# -- shape rules --------------------------------------------------------------------------
def _static(d: Dim, what: str) -> int:
    if d == BATCH:
        raise ShapeError(f"{what} must be a concrete int, got the batch symbol {BATCH}")
    return int(d)  # type: ignore[arg-type]


def _out_spatial(
    spatial: Sequence[Dim], kernel: Sequence[int], stride, padding, dilation, nd: int
) -> tuple[int, ...]:
    names = _SPATIAL_NAMES[nd]
    return tuple(
        window_out(
            _static(size, f"input {names[i]}"),
            kernel[i],
            stride[i],
            lo,
            hi,
            dilation[i],
            what=f"input {names[i]}",
        )
        for i, (size, (lo, hi)) in enumerate(zip(spatial, pad_pairs(padding, nd)))
    )


def _check_weight(w: TensorType, nd: int) -> tuple[int, int, tuple[int, ...]]:
    expect_rank(w, nd + 2, "weight")
    out_ch = _static(w.shape[0], "weight out_channels")
    in_per_group = _static(w.shape[1], "weight in_channels / groups")
    kernel = tuple(_static(k, "kernel size") for k in w.shape[2:])
    if min(kernel) < 1 or in_per_group < 1 or out_ch < 1:
        raise ShapeError(f"expected a weight with every dimension >= 1, got {w}")
    return out_ch, in_per_group, kernel


def _check_channels(x: TensorType, w: TensorType, groups: int, in_per_group: int, out_ch: int) -> int:
    in_ch = _static(x.shape[1], "input channels")
    if out_ch % groups:
        raise ShapeError(f"groups={groups} must divide the output channels, got weight {w} ({out_ch} out)")
    if in_ch % groups:
        raise ShapeError(f"groups={groups} must divide the input channels, got input {x} ({in_ch} channels)")
    if in_ch != in_per_group * groups:
        raise ShapeError(
            f"expected input with {in_per_group * groups} channels (weight {w}, groups={groups}), got {in_ch}"
        )
    return in_ch


def _forward_shape(nd: int):
    def shape(x, w, b=None, *, stride, padding, dilation, groups):
        expect_rank(x, nd + 2, "input")
        expect_float(x, "input")
        dtype = expect_same_dtype(*(t for t in (x, w, b) if t is not None))
        out_ch, in_per_group, kernel = _check_weight(w, nd)
        _check_channels(x, w, groups, in_per_group, out_ch)
        if b is not None and b.shape != (out_ch,):
            raise ShapeError(f"expected bias of shape [{out_ch}] (weight {w}), got {b}")
        spatial = _out_spatial(x.shape[2:], kernel, stride, padding, dilation, nd)
        return TensorType(dtype, (x.shape[0], out_ch, *spatial))

    return shape


def _expect_grad_spatial(gy: TensorType, expected: tuple[int, ...], source: str) -> None:
    if tuple(gy.shape[2:]) != expected:
        raise ShapeError(f"expected output gradient of spatial size {list(expected)} ({source}), got {gy}")


def _backward_input_shape(nd: int):
    def shape(gy, w, *, stride, padding, dilation, groups, input_size):
        expect_rank(gy, nd + 2, "output gradient")
        expect_float(gy, "output gradient")
        dtype = expect_same_dtype(gy, w)
        out_ch, in_per_group, kernel = _check_weight(w, nd)
        if out_ch % groups:
            raise ShapeError(f"groups={groups} must divide the output channels, got weight {w}")
        if gy.shape[1] != out_ch:
            raise ShapeError(f"expected output gradient with {out_ch} channels (weight {w}), got {gy}")
        expected = _out_spatial(input_size, kernel, stride, padding, dilation, nd)
        _expect_grad_spatial(gy, expected, f"input_size={list(input_size)}, weight {w}")
        return TensorType(dtype, (gy.shape[0], in_per_group * groups, *input_size))

    return shape


def _backward_weight_shape(nd: int):
    def shape(x, gy, *, stride, padding, dilation, groups, kernel_size):
        expect_rank(x, nd + 2, "input")
        expect_rank(gy, nd + 2, "output gradient")
        expect_float(x, "input")
        dtype = expect_same_dtype(x, gy)
        if x.shape[0] != gy.shape[0]:
            raise ShapeError(f"expected input and output gradient of one batch size, got {x} and {gy}")
        in_ch = _static(x.shape[1], "input channels")
        out_ch = _static(gy.shape[1], "output gradient channels")
        if in_ch % groups or out_ch % groups:
            raise ShapeError(
                f"groups={groups} must divide the input channels ({in_ch}) and the output "
                f"channels ({out_ch}), got input {x} and output gradient {gy}"
            )
        expected = _out_spatial(x.shape[2:], kernel_size, stride, padding, dilation, nd)
        _expect_grad_spatial(gy, expected, f"input {x}, kernel_size={list(kernel_size)}")
        return TensorType(dtype, (out_ch, in_ch // groups, *kernel_size))

    return shape


# -- scratch bounds ----------------------------------------------------------------------
def conv_workspace(
    channels: int, groups: int, out_ch: int, kernel, spatial, out_spatial, padding, dilation
) -> dict[str, tuple[int, ...]]:
    """The per-image scratch an im2col lowering allocates (numba-cpu's stride-1 "wide" layout
    is the largest): the padded input, the im2col columns and the output rows, both widened
    to the padded row pitch ``o + d * (k - 1)``. ``Op.workspace`` bounds each like a tensor."""
    nd = len(kernel)
    pairs = pad_pairs(padding, nd)
    padded = tuple(int(n) + lo + hi for n, (lo, hi) in zip(spatial, pairs))
    pitch = out_spatial[-1] + dilation[-1] * (kernel[-1] - 1)
    rows = (*out_spatial[:-1], pitch)
    return {
        "padded input": (channels, *padded),
        "im2col columns": (channels // groups * int(np.prod(kernel, dtype=object)), *rows),
        "output rows": (out_ch, *rows),
    }


def _forward_workspace(nd: int):
    def workspace(x, w, b=None, *, stride, padding, dilation, groups):
        out = _out_spatial(x.shape[2:], w.shape[2:], stride, padding, dilation, nd)
        kernel = w.shape[2:]
        return conv_workspace(x.shape[1], groups, w.shape[0], kernel, x.shape[2:], out, padding, dilation)

    return workspace


def _backward_input_workspace(nd: int):
    def workspace(gy, w, *, stride, padding, dilation, groups, input_size):
        channels = w.shape[1] * groups
        return conv_workspace(
            channels, groups, w.shape[0], w.shape[2:], input_size, gy.shape[2:], padding, dilation
        )

    return workspace


def _backward_weight_workspace(nd: int):
    def workspace(x, gy, *, stride, padding, dilation, groups, kernel_size):
        return conv_workspace(
            x.shape[1], groups, gy.shape[1], kernel_size, x.shape[2:], gy.shape[2:], padding, dilation
        )

    return workspace


# -- NumPy references ---------------------------------------------------------------------
def _tap_slices(offsets, out_spatial, stride, dilation) -> tuple[slice, ...]:
    """Where kernel tap ``offsets`` reads the padded input, for every output position at once."""
    return tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s) for o, n, s, d in zip(offsets, out_spatial, stride, dilation)
    )


def _grouped(a: np.ndarray, groups: int) -> np.ndarray:
    """``[N, C, *S]`` viewed as ``[N, groups, C / groups, *S]``."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, *a.shape[2:])


def conv_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, padding, dilation, groups: int
) -> np.ndarray:
    """N-d cross-correlation (``nd`` = ``w.ndim - 2``), PyTorch semantics."""
    nd = w.ndim - 2
    sp = _SPATIAL_SUBSCRIPTS[nd]
    pads = pad_pairs(padding, nd)
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    kernel = w.shape[2:]
    out_spatial = tuple(
        (xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nd)
    )
    n, out_ch = x.shape[0], w.shape[0]
    wg = w.reshape(groups, out_ch // groups, *w.shape[1:])
    y = np.zeros((n, groups, out_ch // groups, *out_spatial), dtype=x.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        taps = _grouped(
            xp[(slice(None), slice(None), *_tap_slices(offsets, out_spatial, stride, dilation))], groups
        )
        # [N, G, C/g, *S] x [G, O/g, C/g] -> [N, G, O/g, *S]
        y += np.einsum(f"ngc{sp},goc->ngo{sp}", taps, wg[(Ellipsis, *offsets)], optimize=True)
    y = y.reshape(n, out_ch, *out_spatial)
    if b is not None:
        y += b.reshape(out_ch, *(1,) * nd)
    return y


def conv_backward_input(
    gy: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int, input_size
) -> np.ndarray:
    """The transposed convolution: scatter-add ``gy`` through every kernel tap, then crop the padding.

    Input rows the forward floor dropped are never read, so their gradient stays 0.
    """
    nd = w.ndim - 2
    sp = _SPATIAL_SUBSCRIPTS[nd]
    pads = pad_pairs(padding, nd)
    n, out_ch = gy.shape[0], w.shape[0]
    in_ch = w.shape[1] * groups
    padded = tuple(size + lo + hi for size, (lo, hi) in zip(input_size, pads))
    gxp = np.zeros((n, groups, in_ch // groups, *padded), dtype=gy.dtype)
    gyg = _grouped(gy, groups)
    wg = w.reshape(groups, out_ch // groups, *w.shape[1:])
    out_spatial = gy.shape[2:]
    for offsets in itertools.product(*(range(k) for k in w.shape[2:])):
        where = (slice(None), slice(None), slice(None), *_tap_slices(offsets, out_spatial, stride, dilation))
        # [N, G, O/g, *S] x [G, O/g, C/g] -> [N, G, C/g, *S]
        gxp[where] += np.einsum(f"ngo{sp},goc->ngc{sp}", gyg, wg[(Ellipsis, *offsets)], optimize=True)
    crop = tuple(slice(lo, lo + size) for size, (lo, _) in zip(input_size, pads))
    return gxp.reshape(n, in_ch, *padded)[(slice(None), slice(None), *crop)].copy()


def conv_backward_weight(
    x: np.ndarray, gy: np.ndarray, stride, padding, dilation, groups: int, kernel_size
) -> np.ndarray:
    """The cross-correlation of the (padded) input with the output gradient."""
    nd = x.ndim - 2
    sp = _SPATIAL_SUBSCRIPTS[nd]
    xp = np.pad(x, ((0, 0), (0, 0), *pad_pairs(padding, nd)))
    in_ch, out_ch = x.shape[1], gy.shape[1]
    out_spatial = gy.shape[2:]
    gyg = _grouped(gy, groups)
    gw = np.zeros((groups, out_ch // groups, in_ch // groups, *kernel_size), dtype=x.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel_size)):
        taps = _grouped(
            xp[(slice(None), slice(None), *_tap_slices(offsets, out_spatial, stride, dilation))], groups
        )
        # [N, G, C/g, *S] x [N, G, O/g, *S] -> [G, O/g, C/g]
        gw[(Ellipsis, *offsets)] = np.einsum(f"ngc{sp},ngo{sp}->goc", taps, gyg, optimize=True)
    return gw.reshape(out_ch, in_ch // groups, *kernel_size)


# -- op declarations ----------------------------------------------------------------------
def _declare(nd: int) -> tuple[Op, Op, Op]:
    """Declare ``conv{nd}d`` and its two backward ops; 1-D and 2-D differ only in rank."""
    name = f"conv{nd}d"
    ones = (1,) * nd
    zeros = (0,) * nd
    common = {"stride": ones, "padding": zeros, "dilation": ones, "groups": 1}

    fwd = Op(
        name,
        fusion=FusionKind.OUT_FUSABLE,
        attrs=common,
        doc=f"{nd}-D cross-correlation x[N,C,*S] * w[O,C/g,*k] (+ b[O])",
    )
    fwd.check(_checker(nd))
    fwd.shape(_forward_shape(nd))
    fwd.workspace(_forward_workspace(nd))

    @fwd.reference
    def _(x, w, b=None, *, stride, padding, dilation, groups):
        return conv_forward(x, w, b, stride, padding, dilation, groups)

    @fwd.vjp
    def _(g, node, gy):
        x, w = node.inputs[0], node.inputs[1]
        conv = {k: node.attrs[k] for k in common}
        gx = g.call(f"{name}_backward_input", gy, w, input_size=tuple(x.shape[2:]), **conv)
        gw = g.call(f"{name}_backward_weight", x, gy, kernel_size=tuple(w.shape[2:]), **conv)
        if len(node.inputs) == 2:
            return gx, gw
        gb = g.call("reduce_sum", gy, dims=(0, *range(2, nd + 2)))
        return gx, gw, gb

    bwd_in = Op(
        f"{name}_backward_input",
        attrs={**common, "input_size": None},
        doc=f"gradient of {name} with respect to its input: a transposed convolution of gy",
    )
    bwd_in.check(_checker(nd, "input_size"))
    bwd_in.shape(_backward_input_shape(nd))
    bwd_in.workspace(_backward_input_workspace(nd))

    @bwd_in.reference
    def _(gy, w, *, stride, padding, dilation, groups, input_size):
        return conv_backward_input(gy, w, stride, padding, dilation, groups, input_size)

    bwd_w = Op(
        f"{name}_backward_weight",
        attrs={**common, "kernel_size": None},
        doc=f"gradient of {name} with respect to its weight: x cross-correlated with gy",
    )
    bwd_w.check(_checker(nd, "kernel_size"))
    bwd_w.shape(_backward_weight_shape(nd))
    bwd_w.workspace(_backward_weight_workspace(nd))

    @bwd_w.reference
    def _(x, gy, *, stride, padding, dilation, groups, kernel_size):
        return conv_backward_weight(x, gy, stride, padding, dilation, groups, kernel_size)

    return fwd, bwd_in, bwd_w


conv2d, conv2d_backward_input, conv2d_backward_weight = _declare(2)
conv1d, conv1d_backward_input, conv1d_backward_weight = _declare(1)


# -- conv_transpose2d -------------------------------------------------------------------------
_TRANSPOSE_ATTRS = {
    "stride": (1, 1),
    "padding": (0, 0),
    "output_padding": (0, 0),
    "dilation": (1, 1),
    "groups": 1,
}


def transpose_output_size(
    size: Sequence[Dim], kernel: Sequence[int], stride, padding, output_padding, dilation
) -> tuple[int, ...]:
    """PyTorch's ``(in - 1) * stride - pad_lo - pad_hi + dilation * (k - 1) + output_padding + 1``."""
    out = []
    for i, (n, (lo, hi)) in enumerate(zip(size, pad_pairs(padding, 2))):
        n = _static(n, f"input {_SPATIAL_NAMES[2][i]}")
        o = (n - 1) * stride[i] - lo - hi + dilation[i] * (kernel[i] - 1) + output_padding[i] + 1
        if o < 1:
            raise ShapeError(
                f"output {_SPATIAL_NAMES[2][i]} of the transposed convolution must be >= 1, got {o} "
                f"(input {n}, kernel {kernel[i]}, stride {stride[i]}, padding ({lo}, {hi}), "
                f"dilation {dilation[i]}, output_padding {output_padding[i]})"
            )
        out.append(o)
    return tuple(out)


conv_transpose2d = Op(
    "conv_transpose2d", attrs=_TRANSPOSE_ATTRS,
    doc="transposed 2-D convolution x[N,Cin,H,W] * w[Cin,Cout/g,kh,kw] (+ b[Cout]): conv2d's input gradient",
)  # fmt: skip


@conv_transpose2d.check
def _(stride, padding, output_padding, dilation, groups):
    out = _checker(2)(stride, padding, dilation, groups)
    out["output_padding"] = int_tuple("output_padding", output_padding, 2, minimum=0)
    for op, s in zip(out["output_padding"], out["stride"]):
        if op >= s:
            raise AttributeValueError(
                f"output_padding must be smaller than stride, got output_padding="
                f"{list(out['output_padding'])} and stride={list(out['stride'])}"
            )
    return out


@conv_transpose2d.workspace
def _(x, w, b=None, *, stride, padding, output_padding, dilation, groups):
    # conv2d's input gradient: the columns span the transposed output
    size = transpose_output_size(x.shape[2:], w.shape[2:], stride, padding, output_padding, dilation)
    out_ch = w.shape[1] * groups
    return conv_workspace(out_ch, groups, w.shape[0], w.shape[2:], size, x.shape[2:], padding, dilation)


@conv_transpose2d.shape
def _(x, w, b=None, *, stride, padding, output_padding, dilation, groups):
    expect_rank(x, 4, "input")
    expect_float(x, "input")
    dtype = expect_same_dtype(*(t for t in (x, w, b) if t is not None))
    in_ch, out_per_group, kernel = _check_weight(w, 2)
    if in_ch % groups:
        raise ShapeError(f"groups={groups} must divide the input channels, got weight {w} ({in_ch} in)")
    if x.shape[1] != in_ch:
        raise ShapeError(
            f"expected input with {in_ch} channels (weight {w} is [Cin, Cout/g, kh, kw]), got {x}"
        )
    out_ch = out_per_group * groups
    if b is not None and b.shape != (out_ch,):
        raise ShapeError(f"expected bias of shape [{out_ch}] (weight {w}, groups={groups}), got {b}")
    spatial = transpose_output_size(x.shape[2:], kernel, stride, padding, output_padding, dilation)
    return TensorType(dtype, (x.shape[0], out_ch, *spatial))


@conv_transpose2d.reference
def _(x, w, b=None, *, stride, padding, output_padding, dilation, groups):
    size = transpose_output_size(x.shape[2:], w.shape[2:], stride, padding, output_padding, dilation)
    y = conv_backward_input(x, w, stride, padding, dilation, groups, size)
    return y if b is None else y + b.reshape(-1, 1, 1)


@conv_transpose2d.vjp
def _(g, node, gy):
    # y = conv2d_backward_input(x, w): its adjoint in x is the convolution, in w the conv's
    # weight gradient with the roles of input (gy) and output gradient (x) swapped
    x, w = node.inputs[0], node.inputs[1]
    conv = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
    gx = g.call("conv2d", gy, w, **conv)
    gw = g.call("conv2d_backward_weight", gy, x, kernel_size=tuple(w.shape[2:]), **conv)
    if len(node.inputs) == 2:
        return gx, gw
    return gx, gw, g.call("reduce_sum", gy, dims=(0, 2, 3))
