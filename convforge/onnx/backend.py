"""An ``onnx.backend.base.Backend`` over convforge, for ONNX's own conformance suite.

    from convforge.onnx.backend import backend_for
    rep = backend_for("numba-cpu").prepare(model)       # imports and checks the graph
    outputs = rep.run([x, w])                            # compiles on first use, then runs

Unlike ``cf.onnx.load`` (one input, one output, a module), the adapter runs any graph the
importer converts: several inputs and outputs, float64 tensors, inputs fed at run time
where a module would hold parameters. Shapes are taken as given (no symbolic batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import onnx.backend.base as onnx_backend

from convforge.backends import get_backend
from convforge.errors import ShapeError
from convforge.frontend.compile import FRONT_PIPELINE
from convforge.ir.types import TensorType
from convforge.onnx import importer
from convforge.onnx.reader import RUNTIME_DTYPES, read_model, value_dtype, value_shape
from convforge.passes import PassManager

RUNTIME_DTYPES_NP = {1: np.float32, 11: np.float64}


class ConvforgeRep(onnx_backend.BackendRep):
    """A converted ONNX graph, compiled on ``target`` for the inputs it is run with.

    Inputs the importer needs as constants (a Reshape target, Clip bounds, Resize scales,
    integer inputs) are bound to the values of the call: the program is specialised on them
    (and on every input's shape), as ``cf.onnx.load`` would see them as initializers.
    """

    def __init__(self, model: Any, target: str):
        self.model = model
        self.target = target
        self.inputs = importer.graph_inputs(model, used_only=False)  # the caller feeds every one
        self.bound = {i.name for i in self.inputs if i.type.tensor_type.elem_type not in RUNTIME_DTYPES}
        self._programs: dict[tuple, tuple[Any, importer.Plan]] = {}
        declared = [value_shape(i) for i in self.inputs]
        if not self.bound and all(s is not None and all(isinstance(d, int) for d in s) for s in declared):
            arrays = [np.zeros(s, RUNTIME_DTYPES_NP[i.type.tensor_type.elem_type])
                      for i, s in zip(self.inputs, declared)]  # fmt: skip
            try:  # every check runs at prepare time, unless an input must be bound to its value
                self._programs[self._key(arrays)] = self._compile(arrays)
            except importer.NeedsConstant as exc:
                if exc.name not in {i.name for i in self.inputs}:
                    raise
                self.bound.add(exc.name)  # compiled at run time, for the values given

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        arrays = _positional(inputs, self.inputs)
        executable, plan = self._program(arrays)
        feed = {}
        given = {info.name: arr for info, arr in zip(self.inputs, arrays)}
        for name, t in plan.inputs:
            arr = given[name]
            if arr.dtype != t.np_dtype:
                raise ShapeError(f"ONNX input {name!r}: expected dtype {t.dtype}, got {arr.dtype}")
            feed[name] = np.asarray(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
        for key, entry in plan.state.items():
            feed[key] = entry.array
        return tuple(executable.run(feed))

    def _program(self, arrays: list[np.ndarray]) -> tuple[Any, importer.Plan]:
        while True:
            key = self._key(arrays)
            if key in self._programs:
                return self._programs[key]
            try:
                self._programs[key] = self._compile(arrays)
                return self._programs[key]
            except importer.NeedsConstant as exc:
                if exc.name in self.bound or exc.name not in {i.name for i in self.inputs}:
                    raise
                self.bound.add(exc.name)

    def _key(self, arrays: list[np.ndarray]) -> tuple:
        return tuple(
            (a.shape, a.dtype.str, a.tobytes() if info.name in self.bound else None)
            for info, a in zip(self.inputs, arrays)
        )

    def _compile(self, arrays: list[np.ndarray]) -> tuple[Any, importer.Plan]:
        types, constants = {}, {}
        for info, arr in zip(self.inputs, arrays):
            if info.name in self.bound:
                constants[info.name] = np.array(arr)
            else:
                types[info.name] = TensorType(value_dtype(info, f"ONNX input {info.name!r}"), arr.shape)
        plan = importer.Conversion(self.model, types, file_batch=None, constants=constants).run()
        graph = plan.graph.copy()
        PassManager.from_string(FRONT_PIPELINE).run(graph)
        return get_backend(self.target).compile_graph(graph), plan


def _positional(inputs: Any, infos: Sequence[Any]) -> list[np.ndarray]:
    if isinstance(inputs, dict):
        missing = [i.name for i in infos if i.name not in inputs]
        if missing:
            raise ShapeError(f"missing ONNX input(s) {', '.join(map(repr, missing))}")
        inputs = [inputs[i.name] for i in infos]
    elif isinstance(inputs, np.ndarray):
        inputs = [inputs]
    inputs = list(inputs)
    if len(inputs) != len(infos):
        names = ", ".join(i.name for i in infos)
        raise ShapeError(f"expected {len(infos)} input(s) ({names}), got {len(inputs)}")
    return [np.asarray(a) for a in inputs]


@cache
def backend_for(target: str) -> type[onnx_backend.Backend]:
    """The ``onnx.backend.base.Backend`` class that runs models on convforge backend ``target``."""

    class ConvforgeBackend(onnx_backend.Backend):
        @classmethod
        def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> ConvforgeRep:
            super().prepare(model, device, **kwargs)
            return ConvforgeRep(read_model(model), target)

        @classmethod
        def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any):
            return cls.prepare(model, device, **kwargs).run(inputs)

        @classmethod
        def supports_device(cls, device: str) -> bool:
            return device == "CPU"

    ConvforgeBackend.__name__ = ConvforgeBackend.__qualname__ = f"ConvforgeBackend[{target}]"
    return ConvforgeBackend
