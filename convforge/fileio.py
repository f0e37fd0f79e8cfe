"""Atomic file writes: a reader (or the next run) sees the old complete file or the new one.

Every file convforge writes (weights, optimizer state, ``history.json``, ``curves.png``,
graph pictures, the kernel cache and its manifest) goes through :func:`atomic_write`: the
bytes go to a temporary file in the destination's folder, which is flushed, ``fsync``'d
and then ``os.replace``'d over the destination (an atomic rename on POSIX and Windows).
An interruption at any moment (Ctrl-C, ``SIGKILL``, a full disk, an exception in the
writer) leaves the previous file untouched; the temporary file is removed unless the
process was killed outright, and it is hidden (``.<name>.<random>.tmp``) if it remains.
A Ctrl-C is re-raised as ``KeyboardInterrupt`` even when the writer's own cleanup failed
on the way out (``zipfile`` raises ``ValueError`` when interrupted inside ``open``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]

_UMASK: int | None = None


def atomic_write(path: str | os.PathLike, data: bytes | str | Writer, *, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; return ``path``.

    ``data`` is ``bytes``, a ``str`` (written as UTF-8) or a callable that writes to the
    binary file object it is given (``lambda f: np.savez(f, **arrays)``). The new file gets
    ``mode`` (default: what ``open()`` would give, ``0o666`` less the umask). The folder
    must exist; ``OSError`` from creating, writing or renaming is raised as is.
    """
    path = Path(path)
    folder = path.parent
    # named before it exists, so that an interrupt at any point after `try` can remove it
    tmp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt too: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:  # a writer's cleanup failed on the way out of a Ctrl-C
            raise interrupt.with_traceback(interrupt.__traceback__) from None
        raise
    _fsync_folder(folder)
    return path


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that ``exc`` (not one itself) was raised while handling."""
    seen: set[int] = set()
    inner = exc.__context__
    while not isinstance(exc, KeyboardInterrupt) and inner is not None and id(inner) not in seen:
        if isinstance(inner, KeyboardInterrupt):
            return inner
        seen.add(id(inner))
        inner = inner.__context__
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = _read_umask()
    return 0o666 & ~_UMASK


def _read_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
