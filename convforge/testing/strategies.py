"""Hypothesis strategies: op attributes, valid input shapes, and whole random networks.

Everything is small (channels <= 4, images <= 10x10, a few blocks) so an example runs
in milliseconds on the reference backend, and every choice shrinks towards the simplest
option, so a failing network shrinks to a short one::

    from hypothesis import given
    from convforge.testing import assert_backends_agree, networks

    @given(networks())
    def test_my_backend(net):
        model, input_shape = net
        assert_backends_agree(model, input_shape, backends=("reference", "numba-cpu"))

Attribute dicts use the IR's attribute names (``docs/ops.md``), so they serve both
``Graph.call(op, ...)`` and, for symmetric padding, the ``nn`` layer constructors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

import convforge as cf
from convforge.frontend import nn

__all__ = [
    "Concat",
    "Residual",
    "conv2d_attrs",
    "conv2d_cases",
    "networks",
    "pool2d_attrs",
    "pool2d_cases",
]

MAX_CHANNELS = 4
MAX_SIZE = 10
#: batch norm layers are generated only where they see at least this many values per channel
MIN_BN_VALUES = 4


# =========================================================================================
# Op attributes and shapes
# =========================================================================================
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _conv_axis(draw: st.DrawFn, size: int, asymmetric: bool) -> tuple[int, int, int, int, int]:
    """(kernel, stride, dilation, pad_lo, pad_hi) for one spatial axis of length ``size``."""
    dilation = draw(st.integers(1, 2))
    # the dilated kernel must fit in the input plus at most 2 pixels of padding per side
    max_kernel = min(3, (size + 4 - 1) // dilation + 1)
    kernel = draw(st.integers(1, max_kernel))
    if kernel == 1:
        dilation = 1
    stride = draw(st.integers(1, 3))
    lo = draw(st.integers(0, 2))
    hi = draw(st.integers(0, 2)) if asymmetric else lo
    span = dilation * (kernel - 1) + 1
    deficit = span - (size + lo + hi)
    if deficit > 0:  # pad just enough on both sides (symmetric stays symmetric)
        lo += (deficit + 1) // 2 if not asymmetric else 0
        hi += deficit if asymmetric else (deficit + 1) // 2
    return kernel, stride, dilation, lo, hi


@st.composite
def conv2d_attrs(
    draw: st.DrawFn,
    spatial: tuple[int, int],
    in_channels: int,
    out_channels: int,
    asymmetric_padding: bool = True,
) -> dict[str, Any]:
    """``kernel_size`` plus conv2d attributes valid for an input of ``spatial`` (H, W) size.

    ``padding`` is ``(ph, pw)`` or, when the sides differ, ``(top, left, bottom, right)``.
    """
    kh, sh, dh, top, bottom = draw(_conv_axis(spatial[0], asymmetric_padding))
    kw, sw, dw, left, right = draw(_conv_axis(spatial[1], asymmetric_padding))
    groups = draw(st.sampled_from(_divisors(math.gcd(in_channels, out_channels))))
    padding = (top, left) if (top, left) == (bottom, right) else (top, left, bottom, right)
    return {
        "kernel_size": (kh, kw),
        "stride": (sh, sw),
        "padding": padding,
        "dilation": (dh, dw),
        "groups": groups,
    }


@st.composite
def conv2d_cases(
    draw: st.DrawFn,
    max_channels: int = MAX_CHANNELS,
    max_size: int = MAX_SIZE,
    asymmetric_padding: bool = True,
) -> dict[str, Any]:
    """A valid conv2d call: ``{"x": shape, "w": shape, "b": shape or None, "attrs": {...}}``."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, max_channels))
    o = draw(st.integers(1, max_channels))
    h = draw(st.integers(1, max_size))
    w = draw(st.integers(1, max_size))
    attrs = draw(conv2d_attrs((h, w), c, o, asymmetric_padding))
    kernel = attrs.pop("kernel_size")
    bias = draw(st.booleans())
    return {
        "x": (n, c, h, w),
        "w": (o, c // attrs["groups"], *kernel),
        "b": (o,) if bias else None,
        "attrs": attrs,
    }


@st.composite
def pool2d_attrs(draw: st.DrawFn, kind: str, spatial: tuple[int, int]) -> dict[str, Any]:
    """Attributes of ``max_pool2d`` (``kind="max"``) or ``avg_pool2d`` (``"avg"``) valid for ``spatial``.

    Padding is at most half the kernel and the (dilated) kernel fits in the input, as
    PyTorch requires; ``ceil_mode`` and, for average pooling, ``count_include_pad`` and
    ``divisor_override`` vary too.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
    kernel, dilation = [], []
    for size in spatial:
        d = draw(st.integers(1, 2)) if kind == "max" else 1
        k = draw(st.integers(1, max(1, min(3, (size - 1) // d + 1))))
        kernel.append(k)
        dilation.append(d if k > 1 else 1)
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    attrs: dict[str, Any] = {
        "kernel_size": tuple(kernel),
        "stride": stride,
        "padding": padding,
        "ceil_mode": draw(st.booleans()),
    }
    if kind == "max":
        attrs["dilation"] = tuple(dilation)
    else:
        attrs["count_include_pad"] = draw(st.booleans())
        attrs["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 4)))
    return attrs


@st.composite
def pool2d_cases(draw: st.DrawFn, kind: str, max_channels: int = MAX_CHANNELS,
                 max_size: int = MAX_SIZE) -> dict[str, Any]:  # fmt: skip
    """A valid pooling call: ``{"x": shape, "attrs": {...}}``."""
    shape = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, max_channels)),
        draw(st.integers(1, max_size)),
        draw(st.integers(1, max_size)),
    )
    return {"x": shape, "attrs": draw(pool2d_attrs(kind, shape[2:]))}


# =========================================================================================
# Non-sequential building blocks
# =========================================================================================
class Residual(nn.Module):
    """``x + body(x)``: a residual connection around a shape-preserving body."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Any) -> Any:
        return x + self.body(x)


class Concat(nn.Module):
    """``cf.concat([a(x), b(x)], dim=1)``: two branches joined along the channels."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, x: Any) -> Any:
        return cf.concat([self.a(x), self.b(x)], dim=1)


# =========================================================================================
# Whole networks
# =========================================================================================
_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")


@st.composite
def _activation(draw: st.DrawFn) -> nn.Module:
    kind = draw(st.sampled_from(_ACTIVATIONS))
    if kind == "relu":
        return nn.ReLU()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "sigmoid":
        return nn.Sigmoid()
    return nn.LeakyReLU(draw(st.sampled_from((0.01, 0.2))))


def _out_size(size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int) -> int:
    return (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def _conv_block(draw: st.DrawFn, c: int, h: int, w: int, max_channels: int) -> tuple[nn.Module, tuple]:
    o = draw(st.integers(1, max_channels))
    attrs = draw(conv2d_attrs((h, w), c, o, asymmetric_padding=False))
    kernel, stride, dilation = attrs["kernel_size"], attrs["stride"], attrs["dilation"]
    pad = attrs["padding"]
    if stride == (1, 1) and draw(st.booleans()):
        pad = "same"  # resolved by the frontend; odd pixel at the end for an even extent
        out_hw = (h, w)
    else:
        out_hw = tuple(
            _out_size(s, k, st_, p, p, d) for s, k, st_, p, d in zip((h, w), kernel, stride, pad, dilation)
        )
    layer = nn.Conv2d(c, o, kernel, stride=stride, padding=pad, dilation=dilation, groups=attrs["groups"],
                      bias=draw(st.booleans()))  # fmt: skip
    return layer, (o, *out_hw)


@st.composite
def _pool_block(draw: st.DrawFn, c: int, h: int, w: int) -> tuple[nn.Module, tuple]:
    from convforge.ir.ops import registry
    from convforge.ir.types import TensorType

    kind = draw(st.sampled_from(("max", "avg", "adaptive")))
    if kind == "adaptive":
        size = (draw(st.integers(1, h)), draw(st.integers(1, w)))
        layer: nn.Module = nn.AdaptiveAvgPool2d(size)
        return layer, (c, *size)
    attrs = draw(pool2d_attrs(kind, (h, w)))
    if kind == "max":
        layer = nn.MaxPool2d(**attrs)
    else:
        layer = nn.AvgPool2d(**attrs)
    op = registry.get(f"{kind}_pool2d")
    out = op.infer_types([TensorType("f32", (1, c, h, w))], op.normalize(attrs))[0]
    return layer, tuple(out.shape[1:])


@st.composite
def _residual_block(draw: st.DrawFn, c: int, h: int, w: int, batchnorm: bool) -> tuple[nn.Module, tuple]:
    kernel = draw(st.sampled_from((1, 3)))
    dilation = draw(st.integers(1, 2)) if kernel > 1 else 1
    layers: list[nn.Module] = [
        nn.Conv2d(
            c, c, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=draw(st.booleans())
        )
    ]
    if batchnorm and draw(st.booleans()):
        layers.append(nn.BatchNorm2d(c))
    layers.append(draw(_activation()))
    return Residual(nn.Sequential(*layers)), (c, h, w)


@st.composite
def _concat_block(draw: st.DrawFn, c: int, h: int, w: int, max_channels: int) -> tuple[nn.Module, tuple]:
    o1 = draw(st.integers(1, max(1, max_channels - 1)))
    o2 = draw(st.integers(1, max(1, max_channels - o1)))
    a = nn.Sequential(nn.Conv2d(c, o1, 1))
    b = nn.Sequential(nn.Conv2d(c, o2, 3, padding=1), draw(_activation()))
    return Concat(a, b), (o1 + o2, h, w)


_BLOCKS = ("conv", "activation", "pool", "batchnorm", "residual", "concat", "dropout")


@st.composite
def _head(draw: st.DrawFn, features: int, max_channels: int, batchnorm: bool) -> list[nn.Module]:
    """Flatten + linear, optionally a hidden layer (with batch norm) and a final (log-)softmax."""
    layers: list[nn.Module] = [nn.Flatten()]
    if draw(st.booleans()):
        hidden = draw(st.integers(1, max_channels))
        layers.append(nn.Linear(features, hidden))
        if batchnorm and draw(st.booleans()):
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(draw(_activation()))
        features = hidden
    layers.append(nn.Linear(features, draw(st.integers(1, max_channels)), bias=draw(st.booleans())))
    final = draw(st.sampled_from((None, "softmax", "log_softmax")))
    if final == "softmax":
        layers.append(nn.Softmax(dim=1))
    elif final == "log_softmax":
        layers.append(nn.LogSoftmax(dim=1))
    return layers


def _init_weights(model: nn.Module, seed: int) -> None:
    """Deterministic weights from ``seed`` (nn's own initialiser depends on test order).

    Batch-norm affine parameters and running statistics are randomised too, so that
    eval-mode batch norm is not the identity.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, nn._BatchNorm):
            c = module.num_features
            state[prefix + "weight"] = rng.uniform(0.5, 1.5, c)
            state[prefix + "bias"] = rng.uniform(-0.5, 0.5, c)
            state[prefix + "running_mean"] = rng.uniform(-0.5, 0.5, c)
            state[prefix + "running_var"] = rng.uniform(0.5, 2.0, c)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = int(np.prod(module.weight.shape[1:]))
            bound = 1.0 / math.sqrt(fan_in)
            state[prefix + "weight"] = rng.uniform(-bound, bound, module.weight.shape)
            if module.bias is not None:
                state[prefix + "bias"] = rng.uniform(-bound, bound, module.bias.shape)
    model.load_state_dict(state, strict=False)


@st.composite
def networks(
    draw: st.DrawFn,
    max_depth: int = 4,
    max_channels: int = MAX_CHANNELS,
    max_size: int = MAX_SIZE,
    dropout: bool = True,
    batchnorm: bool = True,
) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """A random ``nn.Sequential`` CNN and a valid input shape ``(N, C, H, W)``.

    Up to ``max_depth`` blocks (conv, activation, max/avg/adaptive pool, batch norm,
    residual ``x + f(x)``, channel ``concat``, dropout), then usually flatten + linear
    (optionally a hidden layer and a final softmax / log-softmax). The batch is 2 to 4;
    batch norm appears only where it normalises at least ``MIN_BN_VALUES`` values per
    channel, so its training-mode statistics are well conditioned.
    """
    batch = draw(st.integers(2, 4))
    c = draw(st.integers(1, max_channels))
    h = draw(st.integers(3, max_size))
    w = draw(st.integers(3, max_size))
    input_shape = (batch, c, h, w)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(0, max_depth))):
        # batch norm over fewer than MIN_BN_VALUES values per channel is ill-conditioned in
        # training (1/std of two nearly equal values): no float32 backend can agree there
        bn_ok = batchnorm and batch * h * w >= MIN_BN_VALUES
        kinds = [k for k in _BLOCKS if (dropout or k != "dropout") and (bn_ok or k != "batchnorm")]
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            layer, (c, h, w) = draw(_conv_block(c, h, w, max_channels))
        elif kind == "activation":
            layer = draw(_activation())
        elif kind == "pool":
            layer, (c, h, w) = draw(_pool_block(c, h, w))
        elif kind == "batchnorm":
            layer = nn.BatchNorm2d(c)
        elif kind == "residual":
            layer, (c, h, w) = draw(_residual_block(c, h, w, bn_ok))
        elif kind == "concat":
            layer, (c, h, w) = draw(_concat_block(c, h, w, max_channels))
        else:
            layer = nn.Dropout(draw(st.sampled_from((0.5, 0.25))))
        layers.append(layer)
    if not layers or draw(st.integers(0, 4)) > 0:  # most networks end in a classifier head
        layers.extend(draw(_head(c * h * w, max_channels, batchnorm and batch >= MIN_BN_VALUES)))
    model = nn.Sequential(*layers)
    _init_weights(model, draw(st.integers(0, 2**16)))
    return model, input_shape
