"""The fast tier: a graph's calls run on the reference interpreter while its kernels compile.

A training program on an empty kernel cache would otherwise stall for its whole compile
(half a minute for LeNet-5) before the first step. With ``tiered`` the numba-cpu
executable starts the compile on worker processes (:mod:`.precompile`) and hands each call
to a :class:`Tier` until they are done: the graph (the same optimised graph, fusion
regions included) runs through the ops' NumPy references, which need no compiling.

The switch changes nothing but speed. Training steps on the tier are logged (their
per-batch inputs, and the state before the first); at the switch the state is put back
and the logged steps run again on the compiled kernels, so from then on the state is
bit for bit what the compiled kernels alone would have made of it. The log is dropped
(the switch then keeps the tier's state, equal to the last float32 rounding) when
someone else changed the state meanwhile, or when it would hold more than
:data:`LOG_BYTES`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from convforge.backends import progress
from convforge.backends.base import HostState
from convforge.backends.numba_cpu.precompile import Background
from convforge.backends.reference import run_graph
from convforge.ir.graph import Graph

#: the most bytes the replay log (batches and the starting state) may hold
LOG_BYTES = 256 * 2**20
#: after a call on the tier, sleep this many times its duration: the tier then takes at
#: most a quarter of a core from the workers
YIELD = 3.0


class Tier:
    """Runs ``graph`` on the reference interpreter while ``background`` compiles its kernels."""

    def __init__(self, graph: Graph, background: Background, what: str, explicit: bool | None):
        self.graph = graph
        self.background = background
        self.in_step = False
        #: the state arrays the graph reads, as they were before the first logged step
        self.start: dict[str, np.ndarray] | None = None
        self.log: list[dict[str, np.ndarray]] | None = []
        self.version: int | None = None
        self.bytes = 0
        self.bar = progress_bar(background, what, explicit)

    def run(self, inputs: Mapping[str, np.ndarray], out: Mapping[int, np.ndarray] | None) -> list[np.ndarray]:
        """One call on the reference interpreter (``out`` arrays written as the kernels would)."""
        if self.bar is not None:
            self.bar.update()
        began = time.perf_counter()
        results = [np.asarray(r) for r in run_graph(self.graph, inputs)]
        # the workers' compile is worth more than a tier step (the kernels run tens of
        # times faster): yield them the cores for a while after each step
        time.sleep(YIELD * (time.perf_counter() - began))
        for j, arr in (out or {}).items():
            np.copyto(arr, results[j])
            results[j] = arr
        return results

    # -- the replay log ----------------------------------------------------------------------
    def begin(self, state: HostState) -> None:
        """Before a step on the tier: keep the state the first one starts from, or drop the
        log if the state changed since the last logged step (a replay would undo that)."""
        if self.log is None:
            return
        if self.start is None:
            names = [v.name for v in self.graph.inputs if v.name in state.arrays]
            self.start = {name: state.arrays[name].copy() for name in names}
            self.version = state.version
            self.bytes = sum(a.nbytes for a in self.start.values())
        elif state.version != self.version:
            self.log = None

    def record(self, inputs: Mapping[str, Any], state: HostState) -> None:
        """After a step on the tier succeeded: log its per-batch ``inputs`` (copies)."""
        if self.log is None:
            return
        batch = {k: np.array(v, copy=True) for k, v in inputs.items()}
        self.bytes += sum(a.nbytes for a in batch.values())
        if self.bytes > LOG_BYTES:
            self.log = None
            return
        self.log.append(batch)
        self.version = state.version

    def replay(
        self, state: HostState, written: Collection[str], step: Callable[[Mapping[str, np.ndarray]], object]
    ) -> bool:
        """Put the state back as it was before the first logged step and run the log again
        with ``step`` (now on the compiled kernels); ``written`` names the state arrays the
        steps replace. False (nothing done) when the log was dropped or the state changed
        since the last logged step."""
        if not self.log or self.start is None or state.version != self.version:
            return False
        state.sync()
        written = set(written)
        for name, before in self.start.items():
            # what the steps do not write must be as the log found it (a counter the caller
            # advances outside the graph would be replayed at its final value)
            if name not in written and not np.array_equal(state.arrays[name], before):
                return False
        for name, before in self.start.items():
            np.copyto(state.arrays[name], before)
        state.changed()
        log, self.log = self.log, None
        for batch in log:
            step(batch)
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BackgroundBar:
    """``compiling @net on 2 workers: 12/31 kernels | 8.2 s``: the workers' progress on stderr."""

    def __init__(self, background: Background, what: str, waiting: bool):
        progress.explain()
        workers = len(background.procs)
        mode = "" if waiting else ", running on the reference interpreter meanwhile"
        self.background = background
        desc = f"compiling {what} on {workers} worker{'s' if workers != 1 else ''}{mode}"
        self.bar = progress.kernel_bar(len(background.jobs), desc)

    def update(self) -> None:
        done = self.background.progress()
        if done != self.bar.n:
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        self.bar.n = self.background.progress()
        self.bar.close()


def progress_bar(
    background: Background, what: str, explicit: bool | None, waiting: bool = False
) -> BackgroundBar | None:
    """The bar for ``background`` when compile progress is shown (``progress.enabled``)."""
    return BackgroundBar(background, what, waiting) if progress.enabled(explicit) else None
