"""The lowering table both Numba backends share: op name -> the function that lowers it.

Each backend's ``kernels`` package creates one table over its family modules (which
mirror ``convforge/ir/ops``); a family module registers a lowering per op with the
table's decorator::

    LOWERINGS = LoweringTable("numba-cpu", __name__, ("conv", "pool", ...))
    lowering = LOWERINGS.register

    @lowering("max_pool2d")            # in kernels/pool.py
    def _(ctx, node, ins, outs): ...

The table does not care what a lowering's arguments are (the CPU passes ``ctx, node,
ins, outs``, CUDA ``ctx, node``). A missing lowering is a hard error naming the backend,
the op and the node: there is no fallback.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING

from convforge.errors import BackendError

if TYPE_CHECKING:
    from convforge.ir.graph import Node

Lowering = Callable[..., object]


class LoweringTable(MutableMapping[str, Lowering]):
    """The lowerings of one backend, filled by importing its family modules.

    A mapping (``op in table``, ``table[op]``, ``del table[op]`` in a test); use
    :meth:`lookup` to get a lowering or the backend's error.
    """

    def __init__(self, backend_name: str, package: str, families: Sequence[str]):
        self.backend_name = backend_name
        #: the package whose submodules ``families`` register the lowerings
        self.package = package
        self.families = tuple(families)
        self._table: dict[str, Lowering] = {}

    def register(self, *ops: str) -> Callable[[Lowering], Lowering]:
        """Decorator: the function is the lowering of each of ``ops``."""

        def decorate(fn: Lowering) -> Lowering:
            for op in ops:
                old = self._table.get(op)
                if old is not None and _origin(old) != _origin(fn):
                    raise ValueError(
                        f"{self.backend_name}: op {op!r} is lowered twice "
                        f"({_origin(old)[0]}.{_origin(old)[1]} and {_origin(fn)[0]}.{_origin(fn)[1]})"
                    )
                self._table[op] = fn
            return fn

        return decorate

    def load(self) -> LoweringTable:
        """Import every family module (each registers its lowerings); returns the table."""
        for family in self.families:
            importlib.import_module(f"{self.package}.{family}")
        return self

    def lookup(self, op: str | Node) -> Lowering:
        """The lowering of ``op`` (an op name or a node); BackendError naming backend, op and node."""
        name = op if isinstance(op, str) else op.op
        fn = self._table.get(name)
        if fn is None:
            where = "" if isinstance(op, str) else f" (at {op.describe()})"
            raise BackendError(f"{self.backend_name} has no kernel for op {name!r}{where}")
        return fn

    # -- mapping -------------------------------------------------------------------------
    def __getitem__(self, op: str) -> Lowering:
        return self._table[op]

    def __setitem__(self, op: str, fn: Lowering) -> None:
        self._table[op] = fn

    def __delitem__(self, op: str) -> None:
        del self._table[op]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"<LoweringTable {self.backend_name}: {len(self._table)} ops>"


class HostCall:
    """A host function a lowering calls instead of a kernel: ``fn(communicator, *args)``,
    for an op that needs a run-time object (a collective needs the executable's
    communicator, ``ir/ops/collective.py``). The executable binds it (:meth:`bind`) when it
    runs, so the same generated code serves any communicator."""

    def __init__(self, fn: Callable[..., object], label: str):
        self.fn = fn
        self.label = label
        #: what a listing of the kernels names (as a Numba dispatcher's ``py_func``)
        self.py_func = fn

    def bind(self, communicator: object) -> Callable[..., object]:
        """``fn`` with ``communicator`` as its first argument."""
        return functools.partial(self.fn, communicator)

    def __repr__(self) -> str:
        return f"<HostCall {self.label}>"


def _origin(fn: Lowering) -> tuple[str, str]:
    """Where a lowering is defined: re-importing a module registers the same function again."""
    return fn.__module__, fn.__qualname__
