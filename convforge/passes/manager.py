"""Passes and the pass manager.

A pass is a small dataclass with a ``name`` and ``run(graph) -> changed``; its fields are
its options, so a pipeline is a string::

    PassManager.from_string("canonicalize,cse,dce,fuse{training=true},memory-plan").run(graph)

The manager verifies the graph after every pass and takes instruments (timing,
print-after, dump each stage to a numbered file). A failing pass is reported with its
name, the passes before it and the node it failed on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from convforge.errors import ConvforgeError, PassError
from convforge.fileio import atomic_write
from convforge.ir.graph import Graph, Node


@dataclasses.dataclass
class Pass:
    """Base class: subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = "pass"

    def run(self, graph: Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        opts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)]
        return self.name + (f"{{{', '.join(opts)}}}" if opts else "")


class PassFailure(PassError):
    """Raised inside a pass to name the node it failed on."""

    def __init__(self, message: str, node: Node | None = None):
        super().__init__(message)
        self.node = node


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline strings by its ``name``."""
    _PASSES[cls.name] = cls
    return cls


def get_pass(name: str, **options: Any) -> Pass:
    _load_passes()
    if name not in _PASSES:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_PASSES))}")
    cls = _PASSES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in options:
        if key not in fields:
            raise PassError(f"pass {name} has no option {key!r}; options: {', '.join(fields) or 'none'}")
    return cls(**options)


# -- instruments --------------------------------------------------------------------------
class Instrument:
    """Hooks called around every pass."""

    def before(self, p: Pass, graph: Graph) -> None: ...

    def after(self, p: Pass, graph: Graph, changed: bool) -> None: ...


class Timing(Instrument):
    """Records the wall time of each pass; ``report()`` renders a table."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._start = 0.0

    def before(self, p: Pass, graph: Graph) -> None:
        self._start = time.perf_counter()

    def after(self, p: Pass, graph: Graph, changed: bool) -> None:
        self.times.append((p.name, time.perf_counter() - self._start))

    def report(self) -> str:
        return "\n".join(f"{name:<20} {secs * 1e3:8.2f} ms" for name, secs in self.times)


class PrintAfter(Instrument):
    """Prints the graph after the named passes (all passes when ``names`` is empty)."""

    def __init__(self, names: Sequence[str] = (), write: Callable[[str], Any] = print):
        self.names = set(names)
        self.write = write

    def after(self, p: Pass, graph: Graph, changed: bool) -> None:
        if not self.names or p.name in self.names:
            self.write(f"// after {p.describe()}\n{graph}")


class DumpIR(Instrument):
    """Writes the graph after each pass to ``<dir>/000_input.txt``, ``001_<pass>.txt``, ..."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index = 0

    def dump(self, label: str, graph: Graph) -> None:
        atomic_write(self.directory / f"{self.index:03d}_{label}.txt", str(graph) + "\n")
        self.index += 1

    def before(self, p: Pass, graph: Graph) -> None:
        if self.index == 0:
            self.dump("input", graph)

    def after(self, p: Pass, graph: Graph, changed: bool) -> None:
        self.dump(p.name.replace("-", "_"), graph)


# -- the manager --------------------------------------------------------------------------
class PassManager:
    """Runs passes in order, verifying after each."""

    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = (), verify: bool = True):
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.verify = verify

    @classmethod
    def from_string(
        cls, pipeline: str, instruments: Sequence[Instrument] = (), verify: bool = True
    ) -> PassManager:
        return cls(parse_pipeline(pipeline), instruments, verify)

    def run(self, graph: Graph) -> Graph:
        done: list[str] = []
        for p in self.passes:
            for inst in self.instruments:
                inst.before(p, graph)
            try:
                changed = p.run(graph)
                if self.verify:
                    graph.verify()
            except ConvforgeError as exc:
                node = getattr(exc, "node", None)
                at = f" at node {node.describe()}" if node is not None else ""
                before = ", ".join(done) or "none"
                raise PassError(
                    f"pass {p.describe()} failed{at} (passes before it: {before}): {exc}"
                ) from exc
            for inst in self.instruments:
                inst.after(p, graph, bool(changed))
            done.append(p.name)
        return graph

    def __str__(self) -> str:
        return ",".join(p.describe() for p in self.passes)


def parse_pipeline(pipeline: str) -> list[Pass]:
    """``"cse,fuse{training=true},dce"`` -> pass objects."""
    passes: list[Pass] = []
    for item in _split_top(pipeline):
        item = item.strip()
        if not item:
            continue
        if "{" in item:
            if not item.endswith("}"):
                raise PassError(f"malformed pass options in {item!r}: expected name{{key=value, ...}}")
            name, body = item[:-1].split("{", 1)
            options = {}
            for pair in _split_top(body):
                if not pair.strip():
                    continue
                if "=" not in pair:
                    raise PassError(f"malformed option {pair!r} of pass {name}: expected key=value")
                key, value = pair.split("=", 1)
                options[key.strip()] = _parse_value(value.strip())
            passes.append(get_pass(name.strip(), **options))
        else:
            passes.append(get_pass(item))
    return passes


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip('"')


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _load_passes() -> None:
    import convforge.passes  # noqa: F401  (imports every pass module, which registers its pass)
