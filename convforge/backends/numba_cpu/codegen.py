"""From a graph (after fusion) to a driver module: one plain-Python function calling kernels.

The driver is generated source, written through the kernel-file cache and imported like
the kernels. It binds every value to a local (a graph input, a planned buffer, a fresh
output array or a view) and calls one kernel per node with preallocated arrays; there is
no per-op dispatch beyond these lines. Kernels come from ``kernels/<family>.py``: static
``@njit(cache=True)`` functions, or sources generated per epilogue and loaded from the cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convforge.backends import cache
from convforge.backends.lowering import HostCall
from convforge.backends.numba_cpu import kernels, precompile
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH

# generated kernels call helpers in ``kernels/*.py``: a helper change must miss the cache
FLAGS = f"numba-cpu;parallel;helpers={kernels.SOURCES_HASH}"

#: a kernel call in a driver line (``K3(...)``): how the profiler maps calls to IR nodes
KERNEL_CALL = re.compile(r"\b(K\d+)\(")

#: names the driver itself binds: IR-named locals must not take them
RESERVED = frozenset({"N", "I", "V", "O", "K", "T", "np", "numba", "math", "run"})


def load_generated(source: str, pattern: str) -> Any:
    """Import generated kernel ``source`` (implementing IR ``pattern``) through the kernel cache."""
    text = f"# convforge numba-cpu kernel for IR pattern: {pattern}\n" + source
    return cache.load_module(text, prefix="kernel", flags=FLAGS)


def load_keyed(key: Any, source: str, pattern: str) -> tuple[Any, str]:
    """(module, text) of generated kernel ``source`` for IR ``pattern`` under cache ``key``:
    the file a driver's kernel request (:meth:`Context.generated`) loads."""
    text = f"# convforge numba-cpu kernel for IR pattern: {pattern}\n# key: {key!r}\n" + source
    return cache.load_module(text, prefix="kernel", flags=FLAGS), text


def local_name(value_name: str, is_input: bool) -> str:
    """The driver local of an IR value: ``%0.weight`` -> ``w_0_weight``, ``%7`` -> ``v7``,
    ``%3.argmax`` -> ``v3_argmax``, ``%x`` -> ``x``."""
    safe = "".join(c if c.isalnum() else "_" for c in value_name)
    if not is_input:
        return "v" + safe
    if not safe[:1].isalpha() or safe in RESERVED or safe.startswith("v") or safe.startswith("K"):
        return "w_" + safe
    return safe


def comment(text: str) -> str:
    """``text`` as one line of Python comment: layer names and source locations come from
    the user (or an IR or ONNX file), so a newline or NUL in them is escaped, never code."""
    return "# " + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@dataclass
class KernelRef:
    name: str  # the driver's local name
    label: str  # what `stats` and debug output call it
    dispatcher: Any
    #: where a compile worker finds the kernel (``precompile.origin_of``); None: only here
    origin: dict | None = None


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
            name = f"K{len(self.kernels)}"
            self._static[id(fn)] = name
            self.kernels.append(KernelRef(name, label, fn, precompile.origin_of(fn)))
            cache.track(label, fn)
        return self._static[id(fn)]

    def host(self, fn: Any, label: str) -> str:
        """The driver name of host function ``fn(communicator, *args)`` (a collective): the
        executable binds its communicator when it runs (:class:`~convforge.backends.lowering.HostCall`)."""
        if id(fn) not in self._static:
            name = f"K{len(self.kernels)}"
            self._static[id(fn)] = name
            self.kernels.append(KernelRef(name, label, HostCall(fn, label)))
        return self._static[id(fn)]

    def generated(self, key: Any, source: str, pattern: str) -> str:
        """The driver name of a kernel generated from ``source`` (implements IR ``pattern``)."""
        if key not in self._generated:
            module, text = load_keyed(key, source, pattern)
            name = f"K{len(self.kernels)}"
            label = f"{pattern} [{module.__name__[-8:]}]"
            self._generated[key] = name
            self.kernels.append(
                KernelRef(name, label, module.kernel, precompile.origin_of(module.kernel, text))
            )
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

    def zeros(self, n: int, dtype: str, what: str = "zeros") -> str:
        """A module-level constant of ``n`` zeros, named for what it stands for (``no_bias``)."""
        name = f"{what.upper()}_{len(self.consts)}"
        self.consts.append(f"{name} = np.zeros({n}, dtype=np.{np.dtype(_np(dtype)).name})")
        return name

    def dummy_u8(self) -> str:
        """An empty u8 stand-in for an optional output a kernel then skips (``am.shape[0] == 0``)."""
        name = f"NO_ARGMAX_{len(self.consts)}"
        self.consts.append(f"{name} = np.zeros((0, 0, 0), dtype=np.uint8)")
        return name

    def dummy(self, rank: int, dtype: str) -> str:
        """An empty ``rank``-d stand-in for an optional output a kernel then skips (extent 0)."""
        name = f"NO_OUTPUT_{len(self.consts)}"
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
    #: (IR node, kernel local name) per kernel call, in the order the driver makes them
    call_sites: list[tuple[Any, str]] = field(default_factory=list)

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
    taken: set[str] = set()
    for v in graph.values():
        name = local_name(v.name, v.producer is None)
        while name in taken:  # two IR names that differ only in punctuation
            name += "_"
        taken.add(name)
        ctx.names[id(v)] = name
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

    call_sites: list[tuple[Any, str]] = []
    for node in graph.nodes:
        lower = table.lookup(node)
        ins = [ctx.names[id(v)] for v in node.inputs]
        outs = [ctx.names[id(v)] for v in node.outputs]
        fused = node.meta.get("fused_from")
        ctx.line(comment(node.describe() + (f": {' -> '.join(fused)}" if fused else "")))
        first = len(ctx.lines)
        lower(ctx, node, ins, outs)
        for text in ctx.lines[first:]:
            if not text.lstrip().startswith("#"):
                call_sites += [(node, k) for k in KERNEL_CALL.findall(text)]
    for j, v in enumerate(graph.outputs):
        if j not in direct:
            ctx.line(f"O[{j}][...] = {ctx.names[id(v)]}")

    header = [
        comment(f"convforge numba-cpu driver for graph @{graph.name}"),
        f"# nodes: {', '.join(n.op for n in graph.nodes)}",
        "import math",
        "",
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
        body += ["    " + comment(f"{k.name}: {k.label}") for k in ctx.kernels]
    body += ["    " + line for line in prologue]
    body += ["    " + line for line in ctx.lines]
    body.append("    return O")
    source = "\n".join(header + body) + "\n"
    module = cache.load_module(source, prefix="driver", flags=FLAGS)
    return Program(module.run, ctx.kernels, source, ctx.sources, planned, direct, call_sites)
