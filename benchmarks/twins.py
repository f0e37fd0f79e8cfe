"""Torch twins of the suite's convforge networks (same layers, same weights) and the peer
calls the suite times: torch eager, torch.compile (inference) and onnxruntime (inference,
on the twin exported with ``torch.onnx.export``). Imported only when the suite runs: it
needs torch."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from convforge.frontend import nn
from convforge.models.zoo import BasicBlock, ResNetSmall


def to_torch(module: nn.Module) -> torch.nn.Module:
    """The torch module computing what ``module`` computes, with its weights copied."""
    twin = _convert(module)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()})
    return twin


def torch_calls(
    model: nn.Module, x: np.ndarray, y: np.ndarray, train: bool, threads: int, peers: Sequence[str]
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """({peer: a call run once already}, {peer: why it was skipped}) for the requested peers.

    Training has one peer, torch eager (SGD momentum 0.9, cross-entropy); inference calls
    return NumPy arrays (torch eager's is the agreement check's oracle).
    """
    twin = to_torch(model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    calls: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    if train:
        twin.train()
        opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(twin(tx), ty)
            loss.backward()
            opt.step()
            return loss.item()

        calls["torch"] = step
        step()
        return calls, skipped
    twin.eval()

    def eager():
        with torch.no_grad():
            return twin(tx).numpy()

    if "torch" in peers:
        calls["torch"] = eager
    if "torch.compile" in peers:
        try:
            compiled = torch.compile(twin)

            def inductor():
                with torch.no_grad():
                    return compiled(tx).numpy()

            inductor()
            calls["torch.compile"] = inductor
        except Exception as e:  # noqa: BLE001 - any failure of the peer is reported, not fatal
            skipped["torch.compile"] = _why(e)
    if "onnxruntime" in peers:
        try:
            calls["onnxruntime"] = _onnxruntime_call(twin, tx, x, threads)
        except Exception as e:  # noqa: BLE001
            skipped["onnxruntime"] = _why(e)
    for call in calls.values():
        call()
    return calls, skipped


def _why(error: Exception) -> str:
    """The exception's type and the first line of its message."""
    text = str(error).splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}"


def _onnxruntime_call(twin, tx, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "twin.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                twin, (tx,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}}
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return lambda: session.run(None, feed)[0]


def _convert(m: nn.Module) -> torch.nn.Module:
    tnn = torch.nn
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(*[_convert(c) for c in m])
    if isinstance(m, nn.Conv2d):
        return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                          m.groups, bias=m.bias is not None)  # fmt: skip
    if isinstance(m, nn.Linear):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, nn.BatchNorm2d):
        return tnn.BatchNorm2d(m.num_features, m.eps, m.momentum)
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    if isinstance(m, nn.Flatten):
        return tnn.Flatten(m.start_dim, m.end_dim)
    if isinstance(m, BasicBlock):
        return _TorchBasicBlock(m)
    if isinstance(m, ResNetSmall):
        return _TorchResNet(m)
    simple = {nn.ReLU: tnn.ReLU, nn.Identity: tnn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    raise TypeError(f"benchmarks.twins: no torch twin for {type(m).__name__}")


class _TorchBasicBlock(torch.nn.Module):
    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.bn1 = _convert(block.conv1), _convert(block.bn1)
        self.conv2, self.bn2 = _convert(block.conv2), _convert(block.bn2)
        self.shortcut = _convert(block.shortcut)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _TorchResNet(torch.nn.Module):
    def __init__(self, net: ResNetSmall):
        super().__init__()
        self.stem = _convert(net.stem)
        self.layer1, self.layer2, self.layer3 = (
            _convert(net.layer1),
            _convert(net.layer2),
            _convert(net.layer3),
        )
        self.pool, self.fc = _convert(net.pool), _convert(net.fc)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))
