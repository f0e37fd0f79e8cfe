"""The ONNX files these tests read (shipped in the onnx wheel) and helpers to prepare and run them."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
LIGHT = os.path.join(DATA, "light")

#: the nine architectures of onnx/backend/test/data/light
ARCHITECTURES = [
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
    "resnet50",
    "squeezenet",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "shufflenet",
]


def light_path(name: str) -> str:
    return os.path.join(LIGHT, f"light_{name}.onnx")


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose float weights are seeded random values of the same shapes.

    The light models build their weights with ``ConstantOfShape`` of an int64 shape
    initializer (a constant fill); each such node becomes a float initializer. Weights
    are scaled by 1/sqrt(fan-in) so activations stay O(1) through deep networks; batch-norm
    variances are positive.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = max(out.ir_version, 4)  # initializers need not be listed as inputs
    graph = out.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    variances = {n.input[4] for n in graph.node if n.op_type == "BatchNormalization" and len(n.input) > 4}
    kept, made = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            made.append(
                numpy_helper.from_array(_weight(rng, shape, node.output[0] in variances), node.output[0])
            )
        else:
            kept.append(node)
    for t in list(graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(t)
            made.append(numpy_helper.from_array(_weight(rng, arr.shape, t.name in variances), t.name))
    float_names = {t.name for t in made}
    rest = [t for t in graph.initializer if t.name not in float_names]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(rest + made)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    names = {t.name for t in graph.initializer}
    real = [i for i in graph.input if i.name not in names and i.name in used]
    del graph.input[:]
    graph.input.extend(real)
    return out


def _weight(rng: np.random.Generator, shape: tuple, positive: bool) -> np.ndarray:
    if positive:
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)


#: tests marked slow run by hand: ``CONVFORGE_SLOW=1 python -m pytest tests/onnx``
RUN_SLOW = os.environ.get("CONVFORGE_SLOW", "") not in ("", "0")


def ort_run(model: onnx.ModelProto | str, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """onnxruntime's output for input ``x``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
