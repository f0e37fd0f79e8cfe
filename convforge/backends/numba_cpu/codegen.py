"""From a graph (after fusion) to a driver module: one plain-Python function calling kernels.

The driver is generated source, written through the kernel-file cache and imported like
the kernels. It binds every value to a local (a graph input, a planned buffer, a fresh
output array or a view) and calls one kernel per node with preallocated arrays; there is
no per-op dispatch beyond these lines. Kernels come from ``kernels/<family>.py``: static
``@njit(cache=True)`` functions, or sources generated per epilogue and loaded from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convforge.backends import cache
from convforge.backends.numba_cpu import kernels
from convforge.errors import BackendError
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH

# generated kernels call helpers in ``kernels/*.py``: a helper change must miss the cache
FLAGS = f"numba-cpu;parallel;helpers={kernels.SOURCES_HASH}"


@dataclass
class KernelRef:
    name: str  # the driver's local name
    label: str  # what `stats` and debug output call it
    dispatcher: Any


@dataclass
class Context:
    """What a lowering sees: emit driver lines, request kernels, name values."""

    graph: Graph
    lines: list[str] = field(default_factory=list)
    kernels: list[KernelRef] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    consts: list[str] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    _static: dict[int, str] = field(default_factory=dict)
    _generated: dict[Any, str] = field(default_factory=dict)
    _tmp: int = 0

    # -- kernels ---------------------------------------------------------------------------
    def static(self, fn: Any, label: str) -> str:
        """The driver name of a static kernel from ``kernels/<family>.py``."""
        if id(fn) not in self._static:
            name = f"k{len(self.kernels)}"
            self._static[id(fn)] = name
            self.kernels.append(KernelRef(name, label, fn))
            cache.track(label, fn)
        return self._static[id(fn)]

    def generated(self, key: Any, source: str, pattern: str) -> str:
        """The driver name of a kernel generated from ``source`` (implements IR ``pattern``)."""
        if key not in self._generated:
            text = f"# convforge numba-cpu kernel for IR pattern: {pattern}\n# key: {key!r}\n" + source
            module = cache.load_module(text, prefix="kernel", flags=FLAGS)
            name = f"k{len(self.kernels)}"
            label = f"{pattern} [{module.__name__[-8:]}]"
            self._generated[key] = name
            self.kernels.append(KernelRef(name, label, module.kernel))
            self.sources.append((f"{module.__file__}", text))
            cache.track(label, module.kernel)
        return self._generated[key]

    # -- driver text -----------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.lines.append(text)

    @staticmethod
    def dim(d: Any) -> str:
        return "N" if d == BATCH else str(d)

    def shape_expr(self, value: Value) -> str:
        dims = [self.dim(d) for d in value.shape]
        return ", ".join(dims) + ("," if len(dims) == 1 else "")

    def zeros(self, n: int, dtype: str) -> str:
        name = f"Z{len(self.consts)}"
        self.consts.append(f"{name} = np.zeros({n}, dtype=np.{np.dtype(_np(dtype)).name})")
        return name

    def dummy_u8(self) -> str:
        """An empty u8 stand-in for an optional output a kernel then skips (``am.shape[0] == 0``)."""
        name = f"Z{len(self.consts)}"
        self.consts.append(f"{name} = np.zeros((0, 0, 0), dtype=np.uint8)")
        return name

    def dummy(self, rank: int, dtype: str) -> str:
        """An empty ``rank``-d stand-in for an optional output a kernel then skips (extent 0)."""
        name = f"Z{len(self.consts)}"
        shape = ", ".join(["0"] + ["1"] * (rank - 1))
        self.consts.append(f"{name} = np.zeros(({shape},), dtype=np.{np.dtype(_np(dtype)).name})")
        return name

    def temp(self, value: Value) -> str:
        self._tmp += 1
        name = f"t{self._tmp}"
        self.line(f"{name} = np.empty(({self.shape_expr(value)}), dtype=np.{value.type.np_dtype.name})")
        return name

    def view(self, value: Value, expr: str) -> None:
        """Bind ``value`` to a view expression (flatten, reshape): no buffer, no copy."""
        self.line(f"{self.names[id(value)]} = {expr}")


def _np(dtype: str) -> np.dtype:
    from convforge.ir.types import DTYPES

    return DTYPES[dtype]


@dataclass
class Program:
    """A generated driver and everything it needs at run time."""

    run: Any
    kernels: list[KernelRef]
    driver_source: str
    kernel_sources: list[tuple[str, str]]
    planned: list[Value]  # values bound to V[i]
    direct_outputs: set[int]  # indices of outputs a kernel writes in place

    def source(self) -> str:
        """The driver, every generated kernel file, and the static kernels it calls by name."""
        generated = {text for _, text in self.kernel_sources}
        static = [
            f"# static kernel {k.name}: {k.dispatcher.py_func.__module__}.{k.dispatcher.py_func.__name__}"
            for k in self.kernels
            if not k.dispatcher.py_func.__module__.startswith("convforge_gen_")
        ]
        return "\n\n".join([self.driver_source, *sorted(generated), "\n".join(static)])


def generate(graph: Graph, planned: list[Value], views: set[int]) -> Program:
    """Generate the driver for ``graph``; ``planned`` values live in planned buffers ``V[i]``."""
    table = kernels.load_all()
    ctx = Context(graph)
    for i, v in enumerate(graph.inputs):
        ctx.names[id(v)] = f"x{i}"
    for i, node in enumerate(graph.nodes):
        for j, out in enumerate(node.outputs):
            ctx.names[id(out)] = f"v{i}_{j}"
    planned_index = {id(v): i for i, v in enumerate(planned)}
    out_index: dict[int, int] = {}
    direct: set[int] = set()
    for j, v in enumerate(graph.outputs):
        if v.producer is not None and id(v) not in out_index and id(v) not in views:
            out_index[id(v)] = j
            direct.add(j)

    prologue = []
    for i, v in enumerate(graph.inputs):
        prologue.append(f"{ctx.names[id(v)]} = I[{i}]")
    for node in graph.nodes:
        for out in node.outputs:
            name = ctx.names[id(out)]
            if id(out) in out_index:
                prologue.append(f"{name} = O[{out_index[id(out)]}]")
            elif id(out) in planned_index:
                prologue.append(f"{name} = V[{planned_index[id(out)]}]")

    for node in graph.nodes:
        if node.op not in table:
            raise BackendError(f"numba-cpu has no kernel for op {node.op!r} (at {node.describe()})")
        ins = [ctx.names[id(v)] for v in node.inputs]
        outs = [ctx.names[id(v)] for v in node.outputs]
        ctx.line(f"# {node.describe()}")
        table[node.op](ctx, node, ins, outs)
    for j, v in enumerate(graph.outputs):
        if j not in direct:
            ctx.line(f"O[{j}][...] = {ctx.names[id(v)]}")

    header = [
        f"# convforge numba-cpu driver for graph @{graph.name}",
        f"# nodes: {', '.join(n.op for n in graph.nodes)}",
        "import numba",
        "import numpy as np",
        "",
        *ctx.consts,
        "",
        "",
        "def run(N, I, V, O, K):",
    ]
    body = ["    T = numba.get_num_threads()"]
    if ctx.kernels:
        body.append(f"    {', '.join(k.name for k in ctx.kernels)}, = K")
    body += ["    " + line for line in prologue]
    body += ["    " + line for line in ctx.lines]
    body.append("    return O")
    source = "\n".join(header + body) + "\n"
    module = cache.load_module(source, prefix="driver", flags=FLAGS)
    return Program(module.run, ctx.kernels, source, ctx.sources, planned, direct)
