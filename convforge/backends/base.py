"""What every backend shares: the executable protocol and the input check before any kernel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from convforge.errors import ConvforgeError, DTypeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.types import BATCH


class Executable(Protocol):
    """A compiled graph."""

    backend: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def source(self) -> str: ...


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> int:
    """Check every graph input's presence, dtype and shape; return the batch size.

    Numba does not bounds-check, so this runs before any kernel: a wrong shape here
    would otherwise read or write out of bounds.
    """
    batch: int | None = None
    batch_from = ""
    for v in graph.inputs:
        if v.name not in inputs:
            raise ConvforgeError(f"graph @{graph.name}: missing input %{v.name} ({v.type})")
        arr = inputs[v.name]
        if not isinstance(arr, np.ndarray):
            raise DTypeError(f"input %{v.name}: expected a NumPy array of {v.type}, got {type(arr).__name__}")
        if arr.dtype != v.type.np_dtype:
            raise DTypeError(f"input %{v.name}: expected dtype {v.type.np_dtype} ({v.type}), got {arr.dtype}")
        if arr.ndim != v.type.rank:
            raise ShapeError(f"input %{v.name}: expected shape {v.type}, got {list(arr.shape)}")
        for want, got in zip(v.type.shape, arr.shape):
            if want == BATCH:
                if batch is None:
                    batch, batch_from = got, v.name
                elif got != batch:
                    raise ShapeError(
                        f"input %{v.name}: batch size {got} differs from {batch} (of input %{batch_from})"
                    )
            elif want != got:
                raise ShapeError(f"input %{v.name}: expected shape {v.type}, got {list(arr.shape)}")
    return 1 if batch is None else batch


def check_labels(name: str, labels: np.ndarray, classes: int) -> None:
    """Class labels must lie in ``[0, classes)``: kernels index with them."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise ShapeError(f"input %{name}: class labels must lie in [0, {classes}), got {int(bad)}")
