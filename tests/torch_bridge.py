"""Build the PyTorch twin of a convforge model (same layers, same weights) for oracles."""

from __future__ import annotations

import numpy as np
import torch

from convforge.frontend import nn


def to_torch(module: nn.Module) -> torch.nn.Module:
    """The torch module equivalent to ``module``, with its weights copied."""
    twin = _convert(module)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()})
    return twin


def _convert(m: nn.Module) -> torch.nn.Module:
    tnn = torch.nn
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(*[_convert(c) for c in m])
    if isinstance(m, nn.Conv2d):
        return tnn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    if isinstance(m, nn.Conv1d):
        return tnn.Conv1d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    if isinstance(m, nn.ConvTranspose2d):
        return tnn.ConvTranspose2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.output_padding, m.groups,
            bias=m.bias is not None, dilation=m.dilation,
        )  # fmt: skip
    if isinstance(m, nn.Linear):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            return_indices=m.return_indices,
            ceil_mode=m.ceil_mode,
        )
    if isinstance(m, nn.MaxUnpool2d):
        return tnn.MaxUnpool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.AvgPool2d):
        return tnn.AvgPool2d(
            m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
        )
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return tnn.AdaptiveMaxPool2d(m.output_size)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, nn.BatchNorm2d):
        return tnn.BatchNorm2d(m.num_features, m.eps, m.momentum)
    if isinstance(m, nn.BatchNorm1d):
        return tnn.BatchNorm1d(m.num_features, m.eps, m.momentum)
    if isinstance(m, nn.LocalResponseNorm):
        return tnn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)
    pads = {
        nn.ZeroPad2d: tnn.ZeroPad2d, nn.ReflectionPad2d: tnn.ReflectionPad2d,
        nn.ReplicationPad2d: tnn.ReplicationPad2d, nn.CircularPad2d: tnn.CircularPad2d,
        nn.ZeroPad1d: tnn.ZeroPad1d, nn.ReflectionPad1d: tnn.ReflectionPad1d,
        nn.ReplicationPad1d: tnn.ReplicationPad1d, nn.CircularPad1d: tnn.CircularPad1d,
    }  # fmt: skip
    if type(m) in pads:
        return pads[type(m)](m.padding)
    if isinstance(m, (nn.ConstantPad2d, nn.ConstantPad1d)):
        return (tnn.ConstantPad2d if isinstance(m, nn.ConstantPad2d) else tnn.ConstantPad1d)(
            m.padding, m.value
        )
    if isinstance(m, nn.LayerNorm):
        return tnn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None)
    if isinstance(m, nn.GroupNorm):
        return tnn.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine)
    if isinstance(m, nn.Upsample):
        return tnn.Upsample(m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    if isinstance(m, nn.Flatten):
        return tnn.Flatten(m.start_dim, m.end_dim)
    simple = {
        nn.ReLU: tnn.ReLU,
        nn.ReLU6: tnn.ReLU6,
        nn.Sigmoid: tnn.Sigmoid,
        nn.Tanh: tnn.Tanh,
        nn.Identity: tnn.Identity,
    }
    for ours, theirs in simple.items():
        if type(m) is ours:
            return theirs()
    if isinstance(m, nn.LeakyReLU):
        return tnn.LeakyReLU(m.negative_slope)
    pointwise = {
        nn.SiLU: tnn.SiLU,
        nn.Hardswish: tnn.Hardswish,
        nn.Hardsigmoid: tnn.Hardsigmoid,
        nn.Mish: tnn.Mish,
    }
    for ours, theirs in pointwise.items():
        if type(m) is ours:
            return theirs()
    if isinstance(m, nn.ELU):
        return tnn.ELU(m.alpha)
    if isinstance(m, nn.GELU):
        return tnn.GELU(m.approximate)
    if isinstance(m, nn.Hardtanh):
        return tnn.Hardtanh(m.min_val, m.max_val)
    if isinstance(m, nn.Softplus):
        return tnn.Softplus(m.beta, m.threshold)
    if isinstance(m, nn.Softmax):
        return tnn.Softmax(m.dim)
    if isinstance(m, nn.LogSoftmax):
        return tnn.LogSoftmax(m.dim)
    raise TypeError(f"no torch twin for {type(m).__name__}")


def assert_close(
    ours: np.ndarray, theirs, rtol: float = 1e-4, atol_scale: float = 1e-5, what: str = ""
) -> None:
    """Scale-aware comparison: |a - b| <= atol_scale * max|b| + rtol * |b|."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    scale = max(float(np.abs(theirs).max()) if theirs.size else 0.0, 1e-30)
    err = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    bound = atol_scale * scale + rtol * np.abs(theirs)
    worst = float((err - bound).max()) if err.size else 0.0
    assert worst <= 0, f"{what}: max abs error {err.max():.3g} (scale {scale:.3g}) exceeds tolerance"


def assert_gradients_match_torch(
    loss: float, grads: dict, twin: torch.nn.Module, x: np.ndarray, y: np.ndarray
):
    """``(loss, grads)`` from convforge's ``step.gradients(x, y)`` (cross-entropy) equal torch
    autograd's on ``twin``: the loss, every parameter's gradient and the input's."""
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for key, p in twin.named_parameters():
        assert_close(grads[key], p.grad, rtol=1e-3, atol_scale=1e-4, what=key)
    assert_close(grads["input"], xt.grad, rtol=1e-3, atol_scale=1e-4, what="input")
