"""``convforge.optim``: SGD and Adam, with ``torch.optim``'s arguments and update order.

An optimizer here is a description: ``compile_train`` turns it into one IR update node
per parameter (``sgd_update`` / ``adam_update``), so the update runs inside the compiled
training step.

Defaults are torch 2.x's: ``SGD(lr=1e-3)``, ``Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)``.
Every setting is checked when the optimizer is built: NaN is refused everywhere (as
``torch.optim.Adam`` does; ``torch.optim.SGD`` would accept a NaN and train to NaN), ranges
are torch's (``0 <= beta < 1``; ``dampening`` in ``[0, 1]``), and an infinity that torch
accepts (``lr``, ``eps``, ``momentum``, ``weight_decay``) runs as IEEE arithmetic says.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from convforge.errors import AttributeValueError, ConvforgeError


@dataclasses.dataclass
class Optimizer:
    """Base: ``op`` is the IR update op, ``state`` the names of its per-parameter buffers."""

    op: ClassVar[str] = ""
    state: ClassVar[tuple[str, ...]] = ()

    def attrs(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __post_init__(self) -> None:
        from convforge.ir.ops import registry

        try:
            registry.get(self.op).normalize(self.attrs(), where=type(self).__name__)
        except ConvforgeError as exc:
            name = type(self).__name__
            raise type(exc)(str(exc).replace(f"{name}: ", f"optim.{name}: ", 1)) from None


@dataclasses.dataclass
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay."""

    op: ClassVar[str] = "sgd_update"
    state: ClassVar[tuple[str, ...]] = ("momentum_buffer",)

    lr: float = 1e-3  # torch.optim.SGD's default since torch 2.x
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def attrs(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


@dataclasses.dataclass
class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay, as ``torch.optim.Adam``."""

    op: ClassVar[str] = "adam_update"
    state: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def attrs(self) -> dict[str, Any]:
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise AttributeValueError(f"optim.Adam: betas must be a pair of floats, got {self.betas!r}")
        return {
            "lr": self.lr,
            "beta1": self.betas[0],
            "beta2": self.betas[1],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }
