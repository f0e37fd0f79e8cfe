"""Weights and optimizer state on disk: ``.npz`` or ``.safetensors``, never pickle.

``cf.save(step, "lenet.npz")`` writes the model's ``state_dict`` and, for a training
step, the optimizer state under keys prefixed ``optimizer/``, atomically: the file on disk
is always a complete save, the new one or (if the save was interrupted) the previous one.
``cf.load(path)`` returns a flat ``{name: ndarray}``; loading never executes code.
"""

from __future__ import annotations

import lzma
import math
import os
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from convforge.errors import SerializationError
from convforge.fileio import atomic_write
from convforge.ir.types import MAX_ELEMENTS

OPTIMIZER_PREFIX = "optimizer/"
FORMATS = (".npz", ".safetensors")
#: the largest optimizer step counter a file may hold: the counter is an int64 that every
#: training step increments
MAX_STEP = 2**62
#: what reading a damaged zip member raises (zipfile, its decompressors, numpy's header parser)
_DECODING_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


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
            arrays = OrderedDict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
            raise SerializationError(f"cannot read {path} as safetensors: {exc}") from None
        return _checked(path, arrays)
    raise SerializationError(
        f"unknown weights format {suffix or '(none)'} for {path}; use .npz or .safetensors"
    )


def split_state(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Separate model entries from ``optimizer/`` entries."""
    model = {k: v for k, v in arrays.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optim = {k[len(OPTIMIZER_PREFIX) :]: v for k, v in arrays.items() if k.startswith(OPTIMIZER_PREFIX)}
    return model, optim


def _load_npz(path: Path) -> OrderedDict[str, np.ndarray]:
    """Every member of the zip must be a ``.npy`` array of a numeric dtype, no larger than a
    tensor may be and no larger than the bytes the member holds (checked from its header
    before anything is allocated); anything else is a SerializationError naming the member."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise SerializationError(f"{path} is a single .npy array, not an .npz archive; save it with cf.save")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = _npz_key(path, info.filename)
                if key in out:
                    raise SerializationError(f"{path}: entry {key!r} appears twice; refused")
                out[key] = _read_member(path, zf, info, key)
    except (*_DECODING_ERRORS, zipfile.LargeZipFile) as exc:
        raise SerializationError(f"cannot read {path} as .npz: {exc}") from None
    except NotImplementedError as exc:  # a zip feature zipfile lacks ("zip file version 8.7")
        raise SerializationError(f"cannot read {path} as .npz: unsupported zip feature: {exc}") from None
    return _checked(path, out)


def _npz_key(path: Path, member: str) -> str:
    if not member.endswith(".npy"):
        raise SerializationError(f"{path}: member {member!r} is not a .npy array; refused")
    return member[: -len(".npy")]


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    where = f"{path}: entry {key!r}"
    try:
        member = zf.open(info)
    except NotImplementedError as exc:  # a compression method zipfile cannot decompress
        raise SerializationError(
            f"{where} uses an unsupported zip compression (method {info.compress_type}): {exc}"
        ) from None
    except RuntimeError as exc:  # an encrypted member
        raise SerializationError(f"{where} cannot be read: {exc}") from None
    with member:
        fmt = np.lib.format
        try:
            version = fmt.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(member)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (*_DECODING_ERRORS, SyntaxError, TypeError) as exc:
            raise SerializationError(f"{where} has no valid .npy header: {exc}") from None
        if dtype.hasobject:
            raise SerializationError(f"{where} holds Python objects (it would need pickle to load); refused")
        if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
            raise SerializationError(f"{where} has non-numeric dtype {dtype}; refused")
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise SerializationError(
                f"{where} declares shape {list(shape)} ({count} elements), more than the limit "
                f"of {MAX_ELEMENTS} elements per tensor; refused"
            )
        held = info.file_size - member.tell()
        if count * dtype.itemsize > held:
            raise SerializationError(
                f"{where} is truncated: its header declares shape {list(shape)} of {dtype} "
                f"({count * dtype.itemsize} bytes), but the member holds {max(held, 0)}"
            )
        try:
            data = member.read(count * dtype.itemsize)
        except _DECODING_ERRORS as exc:  # e.g. a bad CRC, a damaged deflate stream
            raise SerializationError(f"{where} is damaged: {exc}") from None
    if len(data) != count * dtype.itemsize:
        raise SerializationError(
            f"{where} is truncated: expected {count * dtype.itemsize} bytes, got {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return np.array(arr, dtype=dtype.newbyteorder("="), order="C")  # a native, writable copy


def _checked(path: Path, arrays: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """What every format must satisfy: numeric arrays, and an optimizer step counter that the
    next steps cannot overflow."""
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise SerializationError(f"{path}: entry {key!r} has non-numeric dtype {arr.dtype}; refused")
    step = arrays.get(OPTIMIZER_PREFIX + "step")
    if step is not None:
        if step.shape != () or step.dtype.kind not in "iu" or not 0 <= int(step) <= MAX_STEP:
            shown = step.tolist() if step.size <= 4 else f"an array of shape {list(step.shape)}"
            raise SerializationError(
                f"{path}: entry {OPTIMIZER_PREFIX + 'step'!r} must be an integer in [0, 2**62], "
                f"got {shown!r} ({step.dtype})"
            )
    return arrays


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
