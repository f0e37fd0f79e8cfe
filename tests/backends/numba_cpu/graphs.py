"""Small hand-built graphs shared by the numba-cpu and pass tests."""

from __future__ import annotations

import numpy as np

from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T

LENET_PARAMS = {
    "0.weight": (6, 1, 5, 5), "0.bias": (6,), "3.weight": (16, 6, 5, 5), "3.bias": (16,),
    "7.weight": (120, 400), "7.bias": (120,), "9.weight": (84, 120), "9.bias": (84,),
    "11.weight": (10, 84), "11.bias": (10,),
}  # fmt: skip


def lenet(dtype: str = "f32") -> Graph:
    g = Graph("lenet")
    x = g.add_input("x", T(dtype, ("N", 1, 28, 28)))
    p = {k: g.add_input(k, T(dtype, s)) for k, s in LENET_PARAMS.items()}
    h = g.call("conv2d", x, p["0.weight"], p["0.bias"], padding=(2, 2))
    h = g.call("max_pool2d", g.call("relu", h), kernel_size=(2, 2))
    h = g.call("conv2d", h, p["3.weight"], p["3.bias"])
    h = g.call("max_pool2d", g.call("relu", h), kernel_size=(2, 2))
    h = g.call("flatten", h)
    h = g.call("relu", g.call("linear", h, p["7.weight"], p["7.bias"]))
    h = g.call("relu", g.call("linear", h, p["9.weight"], p["9.bias"]))
    g.set_outputs([g.call("linear", h, p["11.weight"], p["11.bias"])])
    return g


def random_inputs(graph: Graph, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        shape = v.type.concrete(batch)
        if v.type.dtype == "i64":
            out[v.name] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            scale = 1.0 if v.name == "x" else 1.0 / np.sqrt(max(fan, 1))
            out[v.name] = (rng.standard_normal(shape) * scale).astype(v.type.np_dtype)
    if "running_var" in out:
        out["running_var"] = np.abs(out["running_var"]) + 0.5
    return out
