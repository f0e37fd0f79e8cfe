"""Networks from the course notes, built with ``convforge.nn``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import truncnorm

from convforge.errors import ConvforgeError
from convforge.frontend import functional as F
from convforge.frontend import nn


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """Modern LeNet-5 for 1x28x28 input: 61,706 parameters with 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def deep_mnist(num_classes: int = 10, seed: int | None = None) -> nn.Sequential:
    """The TensorFlow "Deep MNIST" tutorial network: 28x28 -> 14x14x32 -> 7x7x64 -> 1024 -> 10.

    Its initialisation: weights from a normal distribution truncated at two standard
    deviations (stddev 0.1), biases 0.1. Train it with Adam (lr 1e-4), batch 32.
    """
    model = nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, num_classes),
    )
    rng = np.random.default_rng(seed) if seed is not None else nn.generator()
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            p[...] = truncnorm.rvs(-2, 2, scale=0.1, size=p.shape, random_state=rng).astype(np.float32)
        else:
            p[...] = 0.1
    return model


def alexnet(num_classes: int = 1000) -> nn.Sequential:
    """AlexNet (Krizhevsky et al. 2012) for 3x227x227 input, about 60 M parameters.

    Feature maps: 55x55x96 -> 27x27x96 -> 27x27x256 -> 13x13x256 -> 13x13x384 -> 13x13x384
    -> 13x13x256 -> 6x6x256 -> 4096 -> 4096 -> classes.
    """
    return nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(6 * 6 * 256, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a residual connection ``x + f(x)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small ResNet for 28x28 (MNIST) or 32x32 (CIFAR) input: 3 stages of basic blocks."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.flatten(self.pool(x), 1))


def resnet_small(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> ResNetSmall:
    return ResNetSmall(in_channels, num_classes, width)


#: name -> (constructor, input shape without the batch)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet5": (lenet5, (1, 28, 28)),
    "deep-mnist": (deep_mnist, (1, 28, 28)),
    "resnet-small": (resnet_small, (1, 28, 28)),
    "alexnet": (alexnet, (3, 227, 227)),
}


def get_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh model from the zoo and its input shape (without the batch)."""
    if name not in MODELS:
        raise ConvforgeError(f"unknown model {name!r}; the zoo has {', '.join(MODELS)}")
    build, shape = MODELS[name]
    return build(), shape
