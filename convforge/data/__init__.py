"""Data: MNIST (bundled 5,000-image subset or the IDX files), mini-batching, augmentation."""

from convforge.data.augment import (
    Augmentation,
    Compose,
    GaussianNoise,
    HorizontalFlip,
    RandomAffine,
    RandomRotation,
    RandomScaling,
    RandomTranslation,
    SaltAndPepper,
    VerticalFlip,
    default_mnist_augmentation,
)
from convforge.data.loader import DataLoader, batches
from convforge.data.mnist import mnist, read_idx, write_idx

__all__ = [
    "mnist",
    "read_idx",
    "write_idx",
    "DataLoader",
    "batches",
    "Augmentation",
    "Compose",
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomScaling",
    "RandomAffine",
    "SaltAndPepper",
    "GaussianNoise",
    "default_mnist_augmentation",
]
