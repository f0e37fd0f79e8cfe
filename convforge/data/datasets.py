"""Datasets held in memory: from arrays (``ArrayDataset``) or a folder of class subfolders
(``ImageFolder``, as torchvision's), and ``load_image`` for predicting on one image file.

A dataset is ``x`` (float NCHW, or any ``[N, ...]`` array) and ``y`` (``[N]`` labels or
targets); ``len(ds)``, ``ds[i] -> (x_i, y_i)``, and ``ds.loader(batch_size, ...)`` gives a
:class:`~convforge.data.DataLoader` over it (shuffling and transforms as usual)::

    ds = cf.data.ImageFolder("flowers/train", size=64, channels=3)
    loader = ds.loader(32, transform=cf.data.HorizontalFlip())     # = DataLoader(ds.x, ds.y, 32, ...)
    ds.classes, ds.class_to_idx                                     # ['daisy', 'rose'], {'daisy': 0, ...}
    batch = cf.data.load_image("rose.jpg", size=64, channels=3)     # [1, 3, 64, 64] float32
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convforge.data.loader import DataLoader, Transform, _check_arrays
from convforge.errors import AttributeValueError, ConvforgeError, ShapeError

__all__ = ["IMG_EXTENSIONS", "ArrayDataset", "ImageFolder", "load_image"]

#: the file suffixes ``ImageFolder`` reads (torchvision's list); other files are skipped
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageError(ConvforgeError):
    """An image file that cannot be read or decoded."""


class ArrayDataset:
    """Samples ``x`` with labels (or targets) ``y``, checked to hold the same number of samples."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = _check_arrays(x, y)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        return self.x[index], self.y[index]

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        transform: Transform | None = None,
    ) -> DataLoader:
        """A :class:`DataLoader` over this dataset's arrays."""
        return DataLoader(
            self.x, self.y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, transform=transform
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, x {list(self.x.shape[1:])}, y {self.y.dtype})"


class ImageFolder(ArrayDataset):
    """Images in ``root/<class>/<file>``: class names sorted give the labels 0, 1, ... (as
    torchvision's ``ImageFolder``), each image decoded with Pillow by :func:`load_image`
    (``size``, ``channels``, ``mean``, ``std`` as there) into ``x`` ``[N, C, H, W]`` float32.

    ``classes`` (sorted names), ``class_to_idx`` and ``samples`` (``(path, label)`` in the
    order of ``x``) as torchvision names them. Files whose suffix is not in
    ``IMG_EXTENSIONS`` are skipped; an image that cannot be decoded is an error naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | tuple[int, int],
        channels: int = 3,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConvforgeError(f"ImageFolder: {self.root} is not a folder")
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise ConvforgeError(f"ImageFolder: {self.root} has no class subfolders")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [
            (path, self.class_to_idx[name]) for name in self.classes for path in _images(self.root / name)
        ]
        if not self.samples:
            raise ConvforgeError(
                f"ImageFolder: no image files ({', '.join(IMG_EXTENSIONS)}) under {self.root}"
            )
        x = np.empty((len(self.samples), channels, *_size(size)), dtype=np.float32)
        for i, (path, _) in enumerate(self.samples):
            x[i] = load_image(path, size, channels, mean, std)[0]
        super().__init__(x, np.array([label for _, label in self.samples], dtype=np.int64))


def load_image(
    path: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> np.ndarray:
    """The image file ``path`` as the batch an image model takes: ``[1, channels, H, W]`` float32.

    Decoded by Pillow (PNG, JPEG, ...), converted to grayscale (``channels=1``) or RGB
    (``channels=3``), resized bilinearly to ``size`` (``(H, W)``, or ``S`` for ``S x S``;
    ``None`` keeps the file's size), scaled to ``[0, 1]``, then ``(x - mean) / std`` per
    channel when given (torchvision's ``ToTensor`` + ``Normalize``).

    >>> x = cf.data.load_image("seven.png", size=28, channels=1)   # then: net(x).argmax(1)
    """
    from PIL import Image

    if channels not in (1, 3):
        raise AttributeValueError(
            f"load_image: expected channels 1 (grayscale) or 3 (RGB), given {channels!r}"
        )
    shape = None if size is None else _size(size)
    mean_arr = _per_channel(mean, channels, "mean", 0.0)
    std_arr = _per_channel(std, channels, "std", 1.0)
    if np.any(std_arr == 0):
        raise AttributeValueError(f"load_image: expected std != 0, given {std!r}")
    try:
        with warnings.catch_warnings():
            # an image big enough to warn (Pillow's decompression-bomb limit) is refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if shape is not None and img.size != (shape[1], shape[0]):
                    img = img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ImageError(f"load_image: cannot read the image {path}: {exc}") from None
    pixels = pixels.reshape(*pixels.shape[:2], channels).transpose(2, 0, 1) / np.float32(255.0)
    x = (pixels - mean_arr[:, None, None]) / std_arr[:, None, None]
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _images(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted; symbolic links to folders are not followed
    (a link to a parent would make the walk endless)."""
    found = []
    for here, _, files in os.walk(folder):
        found += [Path(here, f) for f in files if Path(f).suffix.lower() in IMG_EXTENSIONS]
    return sorted(found)


def _size(size: object) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) and 1 <= s <= 2**16 for s in size
        )
    ):
        raise ShapeError(f"expected size as an int or (height, width) in [1, 65536], given {size!r}")
    return int(size[0]), int(size[1])


def _per_channel(value: object, channels: int, name: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(channels, default, dtype=np.float32)
    arr = np.asarray(value, dtype=np.float64).reshape(-1) if _numeric(value) else None
    if arr is None or len(arr) not in (1, channels) or not np.all(np.isfinite(arr)):
        raise AttributeValueError(
            f"load_image: expected {name} as a finite number or {channels} numbers (one per channel), "
            f"given {value!r}"
        )
    return np.broadcast_to(arr, (channels,)).astype(np.float32)


def _numeric(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | np.integer | np.floating):
        return True
    return isinstance(value, Sequence | np.ndarray) and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in value
    )
