"""``cf.onnx``: import ONNX models as ``nn.Module``s and export convforge models to ONNX.

    model = cf.onnx.load("resnet50.onnx")                  # parameters = initializers
    net = cf.compile(model, input_shape=model.input_shape)
    cf.onnx.export(net, "lenet.onnx", input_shape=(None, 1, 28, 28))

The ``onnx`` package is imported only when these functions run.
"""

from __future__ import annotations

from typing import Any


def load(source: Any, input_shape: Any = None):
    """Import an ONNX model (path, bytes or ``onnx.ModelProto``); see ``convforge.onnx.importer.load``."""
    from convforge.onnx.importer import load as _load

    return _load(source, input_shape)


def export(model: Any, path: Any, input_shape: Any = None, opset: int | None = None):
    """Write a convforge model to ONNX; see ``convforge.onnx.exporter.export``."""
    from convforge.onnx.exporter import DEFAULT_OPSET
    from convforge.onnx.exporter import export as _export

    return _export(model, path, input_shape, DEFAULT_OPSET if opset is None else opset)


__all__ = ["export", "load"]
