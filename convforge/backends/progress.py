"""Compile progress on the terminal: a kernel-compile stall is shown, never silent.

Numba compiles a kernel the first time it is called with new argument types; on an
empty (or stale) kernel cache the first run of a program therefore spends seconds to
minutes in the compiler. :func:`compiling` wraps that first run: if any Numba compile
starts inside it, one line says why (``first run compiles kernels, later runs load them
from the cache (<dir>)``) and a tqdm bar on stderr counts the program's kernels ready /
total with the elapsed time. When every kernel loads from the cache nothing is printed.

It listens to Numba's ``numba:compile`` event, which fires only on a real compile (a
cache hit does not), so it needs nothing from the backend but its kernels' dispatchers.

Shown when stderr is a terminal; ``CONVFORGE_PROGRESS=1`` forces it on (``0`` off), and
``progress=True`` / ``False`` on ``cf.compile`` / ``cf.compile_train`` overrides both.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

#: the environment variable that forces compile progress on (``1``) or off (``0``)
ENV = "CONVFORGE_PROGRESS"

_EXPLAINED = False  # the "first run compiles" line is printed once per process


def enabled(explicit: bool | None = None) -> bool:
    """Whether to show compile progress: ``explicit`` if given, else ``$CONVFORGE_PROGRESS``
    if set, else whether stderr is a terminal."""
    import os

    if explicit is not None:
        return bool(explicit)
    env = os.environ.get(ENV, "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def explain() -> None:
    """Say once per process why the first run compiles (and where the cache is)."""
    from convforge.backends.cache import cache_dir

    global _EXPLAINED
    if not _EXPLAINED:
        _EXPLAINED = True
        print(
            f"convforge: first run compiles kernels, later runs load them from the cache ({cache_dir()})",
            file=sys.stderr,
            flush=True,
        )


def kernel_bar(total: int, desc: str, initial: int = 0) -> Any:
    """A tqdm bar on stderr counting kernels: ``desc: 3/11 kernels |###   | 00:04``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="kernel",
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} kernels |{bar}| {elapsed}{postfix}",
    )


@contextlib.contextmanager
def compiling(what: str, dispatchers: Iterable[Any], explicit: bool | None = None) -> Iterator[Watcher]:
    """Show progress while the block compiles any of ``dispatchers`` (Numba functions).

    ``what`` names the program (``@lenet``); ``explicit`` is the caller's ``progress=``. A
    kernel counts as ready once it has a compiled overload; a caller that compiles copies
    of its kernels (numba-cuda's ``specialize``) calls :meth:`Watcher.ready_now` instead.
    """
    watcher = Watcher(what, dispatchers)
    if not enabled(explicit):
        yield watcher
        return
    with contextlib.ExitStack() as stack:
        for module in _event_modules():
            stack.enter_context(module.install_listener("numba:compile", watcher.listener(module)))
        try:
            yield watcher
        finally:
            watcher.close()


def _event_modules() -> list[Any]:
    """Numba's event module, and numba-cuda's copy of it if CUDA is already in use (importing
    it here would fix the CUDA simulator switch too early)."""
    from numba.core import event

    modules = [event]
    cuda_event = sys.modules.get("numba.cuda.core.event")
    if cuda_event is not None and cuda_event is not event:
        modules.append(cuda_event)
    return modules


class Watcher:
    """Opens the bar at the first compile, advances it as the program's kernels get ready."""

    def __init__(self, what: str, dispatchers: Iterable[Any]):
        self.what = what
        self.kernels = list({id(d): d for d in dispatchers}.values())
        self.ids = {id(d) for d in self.kernels}
        self.done: set[int] = set()
        self.bar: Any = None
        self.compiled = 0
        self.depth = 0  # nested compiles (helpers a kernel calls) are part of their caller's
        self.start = time.perf_counter()

    def listener(self, module: Any) -> Any:
        watcher = self

        class CompileListener(module.Listener):
            def on_start(self, event: Any) -> None:
                watcher.started()

            def on_end(self, event: Any) -> None:
                watcher.finished(event.data.get("dispatcher") if isinstance(event.data, dict) else None)

        return CompileListener()

    def ready(self) -> int:
        return sum(1 for d in self.kernels if id(d) in self.done or getattr(d, "overloads", None))

    def ready_now(self, dispatcher: Any) -> None:
        """Count ``dispatcher`` as ready (a compiled copy of it exists)."""
        self.done.add(id(dispatcher))
        if self.bar is not None:
            self.bar.n = self.ready()
            self.bar.refresh()

    def started(self) -> None:
        self.depth += 1
        if self.bar is not None:
            return
        explain()
        self.bar = kernel_bar(max(len(self.kernels), 1), f"compiling {self.what}", self.ready())

    def finished(self, dispatcher: Any) -> None:
        self.depth = max(self.depth - 1, 0)
        if id(dispatcher) in self.ids:
            self.done.add(id(dispatcher))
        if self.bar is None or self.depth:
            return
        self.compiled += 1
        self.bar.n = self.ready()
        self.bar.set_postfix_str(f"{self.compiled} compiled", refresh=True)

    def close(self) -> None:
        if self.bar is None:
            return
        self.bar.n = self.ready() if self.kernels else self.bar.total
        seconds = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"{self.compiled} compiled in {seconds:.1f} s", refresh=False)
        self.bar.close()
        self.bar = None
