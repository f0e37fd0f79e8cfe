"""Weights and optimizer state on disk: ``.npz`` or ``.safetensors``, never pickle.

``cf.save(step, "lenet.npz")`` writes the model's ``state_dict`` and, for a training
step, the optimizer state under keys prefixed ``optimizer/``, atomically: the file on disk
is always a complete save, the new one or (if the save was interrupted) the previous one.
``cf.load(path)`` returns a flat ``{name: ndarray}``; loading never executes code.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from convforge.errors import SerializationError
from convforge.fileio import atomic_write

OPTIMIZER_PREFIX = "optimizer/"
FORMATS = (".npz", ".safetensors")


def save(obj: Any, path: str | os.PathLike) -> Path:
    """Save a module, compiled model, training step or ``{name: array}`` mapping."""
    path = Path(path).expanduser()
    arrays = _collect(obj)
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise SerializationError(
                f"cannot save {key!r}: expected a numeric array, got {type(arr).__name__}"
            )
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SerializationError(
            f"unknown weights format {suffix or '(none)'} for {path}; use .npz or .safetensors"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole to a temporary file beside ``path``, then renamed over it: an
    # interrupted save (Ctrl-C, kill, full disk) leaves the previous complete file
    if suffix == ".npz":
        atomic_write(path, lambda f: _write_npz(f, arrays))
    else:
        from safetensors.numpy import save as safetensors_bytes

        atomic_write(path, safetensors_bytes({k: np.asarray(v, order="C") for k, v in arrays.items()}))
    return path


def _write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez``'s format (uncompressed ``.npy`` members, zip64), abandoned cleanly when
    interrupted: ``np.savez`` closes its zip in a ``finally``, and a Ctrl-C inside
    ``ZipFile.open`` then surfaces as ``ValueError: Can't close the ZIP file ...``."""
    zf = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    try:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
    except BaseException:
        zf.fp = None  # abandoned, not closed: atomic_write deletes the temporary file
        raise
    zf.close()


def load(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Read a ``.npz`` or ``.safetensors`` file into ``{name: array}`` without executing code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SerializationError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return OrderedDict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
            raise SerializationError(f"cannot read {path} as safetensors: {exc}") from None
    raise SerializationError(
        f"unknown weights format {suffix or '(none)'} for {path}; use .npz or .safetensors"
    )


def split_state(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Separate model entries from ``optimizer/`` entries."""
    model = {k: v for k, v in arrays.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optim = {k[len(OPTIMIZER_PREFIX) :]: v for k, v in arrays.items() if k.startswith(OPTIMIZER_PREFIX)}
    return model, optim


def _load_npz(path: Path) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                try:
                    arr = data[key]
                except ValueError as exc:  # object arrays need pickle: refused
                    raise SerializationError(
                        f"{path}: entry {key!r} holds Python objects (it would need pickle to load); refused"
                    ) from exc
                if arr.dtype.kind not in "fiub":
                    raise SerializationError(
                        f"{path}: entry {key!r} has non-numeric dtype {arr.dtype}; refused"
                    )
                out[key] = arr
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # ValueError: pickled data
        raise SerializationError(f"cannot read {path} as .npz: {exc}") from None
    return out


def _collect(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        return {str(k): np.asarray(v) for k, v in obj.items()}
    if hasattr(obj, "state_dict"):
        arrays = dict(obj.state_dict())
        if hasattr(obj, "optimizer_state_dict"):
            arrays.update({OPTIMIZER_PREFIX + k: v for k, v in obj.optimizer_state_dict().items()})
        return arrays
    raise SerializationError(
        f"cannot save a {type(obj).__name__}: expected a model, a training step or a dict"
    )
