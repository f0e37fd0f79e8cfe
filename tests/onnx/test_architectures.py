"""The nine ImageNet architectures shipped in the onnx wheel (onnx/backend/test/data/light),
their constant-fill weights replaced by seeded random ones, agree with onnxruntime at
1x3x224x224 on reference and numba-cpu, and the smallest (SqueezeNet) on numba-cuda.

CI runs the cheap ones (numba-cpu: AlexNet, ResNet-50, SqueezeNet, ShuffleNet; reference:
ResNet-50, SqueezeNet, ShuffleNet). ``CONVFORGE_SLOW=1`` runs all nine on both backends,
and SqueezeNet on numba-cuda, which without a GPU is Numba's CUDA simulator (a Python
thread per GPU thread: 13 minutes on two shared cores, measured).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx_models import ARCHITECTURES, RUN_SLOW, light_path, ort_run, randomized
from torch_bridge import assert_close

import convforge as cf

CI = {
    "numba-cpu": {"bvlc_alexnet", "resnet50", "squeezenet", "shufflenet"},
    "reference": {"resnet50", "squeezenet", "shufflenet"},
    "numba-cuda": set(),
}
SLOW_ONLY = {"numba-cuda": {"squeezenet"}}  # the rest are not run there at all


@functools.cache
def prepared(name: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """(the model with random weights, an input, onnxruntime's output)."""
    model = randomized(onnx.load(light_path(name)), seed=0)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return model, x, ort_run(model, x)


def _params(backends=("reference", "numba-cpu", "numba-cuda")):
    out = []
    for backend in backends:
        for name in SLOW_ONLY.get(backend, ARCHITECTURES):
            marks = () if name in CI[backend] else (pytest.mark.slow, pytest.mark.skipif(
                not RUN_SLOW, reason="slow: set CONVFORGE_SLOW=1"))  # fmt: skip
            out.append(pytest.param(backend, name, marks=marks, id=f"{backend}-{name}"))
    return out


@pytest.mark.parametrize("backend, name", _params())
def test_architecture_agrees_with_onnxruntime(backend, name):
    model_proto, x, want = prepared(name)
    model = cf.onnx.load(model_proto)
    assert model.input_shape == (None, 3, 224, 224)
    assert sum(p.size for p in model.parameters()) > 0  # the random weights are parameters now
    net = cf.compile(model, model.input_shape, backend=backend)
    assert_close(net(x), want, what=f"{name} on {backend}")


def test_the_files_as_shipped_import_with_their_fills_as_buffers():
    """Unmodified, most weights are ConstantOfShape fills: folded at import into buffers;
    the float initializers (some biases) are the parameters."""
    model = cf.onnx.load(light_path("squeezenet"))
    assert len(list(model.parameters())) == 13 and len(list(model.named_buffers())) == 39
    assert "conv1_b_0" in dict(model.named_parameters())
    conv1 = dict(model.named_buffers())["conv1_w_0"]
    assert conv1.shape == (64, 3, 3, 3) and np.all(conv1 == np.float32(0.02))
