"""``convforge.optim``: SGD, Adam, AdamW, RMSprop and Adagrad, with ``torch.optim``'s
arguments, defaults and update order; schedules in :mod:`convforge.optim.lr_scheduler`.

An optimizer here is a description: ``compile_train`` turns it into one IR update node
per parameter (``sgd_update``, ``adam_update``, ``rmsprop_update``, ``adagrad_update``),
so the update runs inside the compiled training step. As in torch, the first argument is
what to optimise::

    optim.SGD(model.parameters(), lr=0.1)                       # these parameters
    optim.SGD([{"params": model[0].parameters(), "lr": 0.01},   # param groups, each
               {"params": model[2].parameters()}], lr=0.1)      # overriding the defaults
    optim.SGD(lr=0.1)                                           # every trainable parameter

``param_groups`` is a list of dicts as torch's (``"params"`` and every option, torch's
names: ``betas``, not ``beta1``); a schedule, or the user, may change an option there
(``opt.param_groups[0]["lr"] = 0.01``): the training steps compiled with the optimizer
read the groups before each step and rebuild their update program when an option
changed, which reuses every compiled kernel. A model parameter in no group is not
trained (as a tensor torch's optimizer was not given).

Defaults are torch 2.x's: ``SGD(lr=1e-3)``, ``Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)``,
``AdamW(weight_decay=1e-2)``, ``RMSprop(lr=1e-2, alpha=0.99)``, ``Adagrad(lr=1e-2, eps=1e-10)``.
Every setting is checked when the optimizer is built: NaN is refused everywhere (as
``torch.optim.Adam`` does; ``torch.optim.SGD`` would accept a NaN and train to NaN), ranges
are torch's (``0 <= beta < 1``; ``dampening`` in ``[0, 1]``), and an infinity that torch
accepts (``lr``, ``eps``, ``momentum``, ``weight_decay``) runs as IEEE arithmetic says.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from convforge.errors import AttributeValueError, ConvforgeError
from convforge.ir.ops import registry
from convforge.ir.ops.common import number

#: what the first argument of an optimizer may be: parameters, or param-group dicts
Params = Iterable[np.ndarray] | Iterable[dict[str, Any]] | None


@dataclasses.dataclass(eq=False)
class Optimizer:
    """Base: ``op`` is the IR update op, ``state`` the names of its per-parameter buffers.

    The dataclass fields are the defaults (``opt.lr``); ``param_groups`` holds each
    group's ``"params"`` (``None``: every trainable parameter) and its options.
    """

    op: ClassVar[str] = ""
    state: ClassVar[tuple[str, ...]] = ()

    params: dataclasses.InitVar[Params] = None

    def attrs(self, group: dict[str, Any] | None = None) -> dict[str, Any]:  # pragma: no cover - abstract
        """The update op's attributes for ``group``'s options (default: the defaults)."""
        raise NotImplementedError

    def __post_init__(self, params: Params) -> None:
        self.defaults = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        self._check(self.defaults, "")
        self.param_groups: list[dict[str, Any]] = []
        if params is None:
            self.param_groups.append({"params": None, **self.defaults})
            return
        if isinstance(params, (np.ndarray, dict)):
            raise ConvforgeError(
                f"{self._name}: params must be an iterable of parameters or of param-group dicts "
                f"(model.parameters()), got a single {type(params).__name__}"
            )
        if not isinstance(params, Iterable):
            raise ConvforgeError(
                f"{self._name}: params must be an iterable of parameters or of param-group dicts "
                f"(model.parameters()), got {params!r}; the learning rate is lr=..."
            )
        given = list(params)
        if not given:
            raise ConvforgeError(f"{self._name}: optimizer got an empty parameter list")
        groups = given if isinstance(given[0], dict) else [{"params": given}]
        for group in groups:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return f"optim.{type(self).__name__}"

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group ``{"params": [...], option: value, ...}``; options not given are the defaults."""
        where = f"param_groups[{len(self.param_groups)}]"
        if not isinstance(group, dict) or "params" not in group:
            raise ConvforgeError(
                f"{self._name}: {where} must be a dict with a 'params' entry, got {type(group).__name__}"
            )
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise ConvforgeError(
                f"{self._name}: {where} has unknown option(s) {', '.join(unknown)}; "
                f"{type(self).__name__} takes {', '.join(self.defaults)}"
            )
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        for p in params:
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise ConvforgeError(
                    f"{self._name}: {where} must hold model parameters, got {type(p).__name__}"
                )
        if any(g["params"] is None for g in self.param_groups):
            raise ConvforgeError(f"{self._name}: a group of every parameter takes no other group")
        full = {**self.defaults, **group, "params": params}
        self._check(full, f" {where}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ConvforgeError(f"{self._name}: some parameters appear in more than one parameter group")
        self.param_groups.append(full)

    def _check(self, options: dict[str, Any], where: str) -> None:
        registry.get(self.op).normalize(self.attrs(options), where=f"{self._name}{where}")

    # -- what compile_train reads ---------------------------------------------------------
    def assign(self, named: Sequence[tuple[str, np.ndarray]], owner: str) -> dict[str, int]:
        """``{parameter name: group index}`` over ``named`` (``model.named_parameters()``);
        a group's parameter that is not among them is an error naming the group."""
        if self.param_groups and self.param_groups[0]["params"] is None:
            return {name: 0 for name, _ in named}
        index = {id(p): name for name, p in named}
        out: dict[str, int] = {}
        for k, group in enumerate(self.param_groups):
            for p in group["params"]:
                if id(p) not in index:
                    raise ConvforgeError(
                        f"{self._name}: param_groups[{k}] holds an array of shape {list(p.shape)} "
                        f"that is not a parameter of {owner} (pass model.parameters())"
                    )
                out[index[id(p)]] = k
        return {name: out[name] for name, _ in named if name in out}

    def group_attrs(self) -> list[dict[str, Any]]:
        """The update op's attributes of every group, as they are now, checked."""
        for k, group in enumerate(self.param_groups):
            self._check(group, f" param_groups[{k}]")
        return [self.attrs(group) for group in self.param_groups]

    def initial_state(self, buffer: str) -> float:
        """The value every element of state ``buffer`` starts at (0 but for Adagrad's sum)."""
        return 0.0

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """Set the learning rate of every group (one number) or of each group (one per group)."""
        values = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(self.param_groups)
        if len(values) != len(self.param_groups):
            raise ConvforgeError(
                f"{self._name}: expected {len(self.param_groups)} learning rates (one per group), "
                f"got {len(values)}"
            )
        for k, (group, value) in enumerate(zip(self.param_groups, values)):
            self._check({**group, "lr": value}, f" param_groups[{k}]")
            group["lr"] = float(value)


@dataclasses.dataclass(eq=False)
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay."""

    op: ClassVar[str] = "sgd_update"
    state: ClassVar[tuple[str, ...]] = ("momentum_buffer",)

    lr: float = 1e-3  # torch.optim.SGD's default since torch 2.x
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def attrs(self, group: dict[str, Any] | None = None) -> dict[str, Any]:
        g = self.defaults if group is None else group
        return {k: g[k] for k in ("lr", "momentum", "dampening", "nesterov", "weight_decay")}


@dataclasses.dataclass(eq=False)
class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay, as ``torch.optim.Adam``;
    ``decoupled_weight_decay=True`` is AdamW."""

    op: ClassVar[str] = "adam_update"
    state: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False

    def attrs(self, group: dict[str, Any] | None = None) -> dict[str, Any]:
        g = self.defaults if group is None else group
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise AttributeValueError(f"{self._name}: betas must be a pair of floats, got {betas!r}")
        return {
            "lr": g["lr"],
            "beta1": betas[0],
            "beta2": betas[1],
            "eps": g["eps"],
            "weight_decay": g["weight_decay"],
            "decoupled_weight_decay": g["decoupled_weight_decay"],
        }


@dataclasses.dataclass(eq=False)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    each step first scales the parameter by ``1 - lr * weight_decay``."""

    weight_decay: float = 1e-2
    decoupled_weight_decay: bool = True


@dataclasses.dataclass(eq=False)
class RMSprop(Optimizer):
    """RMSprop (Hinton), as ``torch.optim.RMSprop``: optional momentum and centering.

    Its state is ``square_avg``, ``momentum_buffer`` and ``grad_avg`` for every parameter
    (the last two stay zero without momentum / centering).
    """

    op: ClassVar[str] = "rmsprop_update"
    state: ClassVar[tuple[str, ...]] = ("square_avg", "momentum_buffer", "grad_avg")

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    def attrs(self, group: dict[str, Any] | None = None) -> dict[str, Any]:
        g = self.defaults if group is None else group
        return {k: g[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")}


@dataclasses.dataclass(eq=False)
class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), as ``torch.optim.Adagrad``: ``lr / (1 + (t - 1) lr_decay)``,
    the sum of squared gradients starting at ``initial_accumulator_value``."""

    op: ClassVar[str] = "adagrad_update"
    state: ClassVar[tuple[str, ...]] = ("sum",)

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    def attrs(self, group: dict[str, Any] | None = None) -> dict[str, Any]:
        g = self.defaults if group is None else group
        return {k: g[k] for k in ("lr", "lr_decay", "weight_decay", "eps")}

    def __post_init__(self, params: Params) -> None:
        super().__post_init__(params)
        # torch starts every group's sum at the constructor's value
        number("initial_accumulator_value", self.initial_accumulator_value, low=0.0, where=self._name)

    def initial_state(self, buffer: str) -> float:
        return float(self.initial_accumulator_value)


from convforge.frontend import lr_scheduler  # noqa: E402  (``optim.lr_scheduler``, as torch's)

# ``import convforge.optim.lr_scheduler`` names the same module (convforge/__init__.py
# registers ``convforge.optim`` itself)
sys.modules.setdefault("convforge.optim.lr_scheduler", lr_scheduler)

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "lr_scheduler"]
