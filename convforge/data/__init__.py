"""Data: MNIST (bundled 5,000-image subset or the IDX files), datasets from arrays or image
folders, mini-batching, augmentation."""

from convforge.data import augment
from convforge.data.augment import *  # noqa: F403 (the names augment.__all__ lists)
from convforge.data.datasets import IMG_EXTENSIONS, ArrayDataset, ImageFolder, load_image
from convforge.data.loader import DataLoader, batches
from convforge.data.mnist import mnist, read_idx, write_idx

__all__ = [
    "mnist",
    "read_idx",
    "write_idx",
    "DataLoader",
    "batches",
    "ArrayDataset",
    "ImageFolder",
    "IMG_EXTENSIONS",
    "load_image",
    *augment.__all__,
]
