"""MNIST: the bundled 5,000-image subset, and full MNIST from the four standard IDX files.

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00
<dtype code> <ndim>``, then ``ndim`` big-endian uint32 dimensions, then the data in row-major
order, big-endian. ``read_idx`` and ``write_idx`` handle plain and gzip-compressed files.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
import struct
from pathlib import Path

import numpy as np

from convforge.errors import AttributeValueError, DataError
from convforge.fileio import atomic_write

__all__ = ["mnist", "read_idx", "write_idx", "IDX_DTYPES"]

#: IDX dtype code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"

BUNDLED_FILE = "mnist_5k.npz"
BUNDLED_TRAIN = 4000
BUNDLED_TEST = 1000

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _code_for(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    supported = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise DataError(f"IDX cannot store dtype {dtype}; expected one of {supported}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain, detected by content) into a native-endian array."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None

    if len(raw) < 4:
        raise DataError(f"{path}: expected a 4-byte IDX magic number, found a {len(raw)}-byte file")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: bad IDX magic number: expected it to start with bytes 00 00, found {raw[:4].hex(' ')}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({n})" for c, n in _CODE_NAMES.items())
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {known}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path}: truncated header: expected {ndim} dimensions ({header_len} header bytes), "
            f"found {len(raw)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        what = "truncated data" if found < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {what}: shape {list(shape)} of {_CODE_NAMES[code]} needs {expected} data bytes, "
            f"found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path).expanduser()
    array = np.asarray(array)
    if array.ndim > 255:
        raise DataError(f"{path}: IDX stores at most 255 dimensions, given {array.ndim}")
    code = _code_for(array.dtype)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the output byte-for-byte reproducible.
        payload = gzip.compress(payload, mtime=0)
    atomic_write(path, payload)


def _find_idx(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: expected MNIST file {name} or {name}.gz, found neither")


def _read_split(directory: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx(directory, images_name)
    labels_path = _find_idx(directory, labels_name)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{images_path}: expected unsigned-byte images of shape [n, rows, cols], "
            f"found {images.dtype} of shape {list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected unsigned-byte labels of shape [n], "
            f"found {labels.dtype} of shape {list(labels.shape)}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels to match {images_path.name}, found {len(labels)}"
        )
    return images, labels


def _to_model_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("convforge.data").joinpath(BUNDLED_FILE)
    with importlib.resources.as_file(resource) as file:
        if not file.is_file():
            raise DataError(f"{file}: the bundled MNIST subset is missing from the installation")
        with np.load(file, allow_pickle=False) as archive:
            if set(archive.files) != {"images", "labels"}:
                raise DataError(
                    f"{file}: expected arrays 'images' and 'labels', found {sorted(archive.files)}"
                )
            images, labels = archive["images"], archive["labels"]
    total = BUNDLED_TRAIN + BUNDLED_TEST
    if images.shape != (total, 28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{file}: expected uint8 images of shape [{total}, 28, 28], "
            f"found {images.dtype} of shape {list(images.shape)}"
        )
    if labels.shape != (total,) or labels.dtype != np.uint8:
        raise DataError(
            f"{file}: expected uint8 labels of shape [{total}], "
            f"found {labels.dtype} of shape {list(labels.shape)}"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _bundled_split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test parts: 100 test images per class, both parts shuffled."""
    _, labels = _bundled_arrays()
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    test_per_class = BUNDLED_TEST // len(classes)
    train_parts, test_parts = [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        test_parts.append(members[:test_per_class])
        train_parts.append(members[test_per_class:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def mnist(
    path: str | os.PathLike | None = None, *, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``.

    ``x`` is float32 NCHW ``[n, 1, 28, 28]`` in ``[0, 1]``; ``y`` is int64 class labels.

    Without ``path``: the bundled 5,000-image subset (500 per digit), split into 4,000 train
    and 1,000 test images (100 per digit), stratified and shuffled by ``seed``.
    With ``path``: the directory holding the four standard IDX files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), in their official split and order;
    ``seed`` is unused.
    """
    if path is None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise AttributeValueError(f"mnist: expected seed to be a non-negative int, given {seed!r}")
        images, labels = _bundled_arrays()
        train, test = _bundled_split(int(seed))
        return _to_model_arrays(images[train], labels[train]), _to_model_arrays(images[test], labels[test])

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: expected a directory holding the four MNIST IDX files, found none")
    train = _read_split(directory, _FILES["train_images"], _FILES["train_labels"])
    test = _read_split(directory, _FILES["test_images"], _FILES["test_labels"])
    return _to_model_arrays(*train), _to_model_arrays(*test)
