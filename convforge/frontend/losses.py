"""Loss modules with torch's names, arguments and defaults (``nn.CrossEntropyLoss``, ...),
and what ``compile_train(loss=...)`` makes of a loss.

A loss module is a :class:`~convforge.frontend.nn.Module` whose ``weight`` / ``pos_weight``
are buffers, so in a compiled training step they are graph inputs (named ``loss.weight``),
never values baked into kernels. ``compile_train`` accepts a name (:data:`LOSS_NAMES`), a
loss module, or a callable ``(output, target) -> scalar`` written with ``F`` ops and
tensor arithmetic; each is traced after the model's ``forward`` (:func:`trace_loss`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from convforge.errors import ConvforgeError
from convforge.frontend import functional as F
from convforge.frontend.nn import Module
from convforge.frontend.trace import SymbolicTensor, Tracer, tracing
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH, TensorType

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "HuberLoss",
    "L1Loss",
    "MSELoss",
    "NLLLoss",
    "SmoothL1Loss",
]


class _Loss(Module):
    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean"):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)

    def _set_weight(self, name: str, value: Any) -> None:
        if value is None:
            object.__setattr__(self, name, None)
        else:
            self.register_buffer(name, np.asarray(value, dtype=np.float32))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """torch's ``nn.CrossEntropyLoss``: integer labels or class probabilities (a float target)."""

    #: the target is class labels (an integer target) or probabilities (a float one)
    labels = None

    def __init__(
        self,
        weight: Any = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__(size_average, reduce, reduction)
        self._set_weight("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input: Any, target: Any) -> Any:
        return F.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class NLLLoss(_Loss):
    """torch's ``nn.NLLLoss`` of log-probabilities and integer labels."""

    labels = True

    def __init__(
        self,
        weight: Any = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
    ):
        super().__init__(size_average, reduce, reduction)
        self._set_weight("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, input: Any, target: Any) -> Any:
        return F.nll_loss(
            input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction
        )


class MSELoss(_Loss):
    """torch's ``nn.MSELoss``."""

    labels = False

    def forward(self, input: Any, target: Any) -> Any:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """torch's ``nn.L1Loss``."""

    labels = False

    def forward(self, input: Any, target: Any) -> Any:
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """torch's ``nn.SmoothL1Loss(beta=1.0)``."""

    labels = False

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        beta: float = 1.0,
    ):
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Any, target: Any) -> Any:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss):
    """torch's ``nn.HuberLoss(delta=1.0)``."""

    labels = False

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Any, target: Any) -> Any:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class BCEWithLogitsLoss(_Loss):
    """torch's ``nn.BCEWithLogitsLoss``; ``weight`` / ``pos_weight`` of a shape ending the
    input's (``pos_weight``: one per class)."""

    labels = False

    def __init__(
        self,
        weight: Any = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Any = None,
    ):
        super().__init__(size_average, reduce, reduction)
        self._set_weight("weight", weight)
        self._set_weight("pos_weight", pos_weight)

    def forward(self, input: Any, target: Any) -> Any:
        return F.binary_cross_entropy_with_logits(
            input, target, weight=self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


#: ``compile_train``'s loss names -> the loss module each stands for
LOSS_NAMES: dict[str, Callable[[], Module]] = {
    "cross_entropy": CrossEntropyLoss,
    "mse": MSELoss,
    "l1": L1Loss,
    "smooth_l1": SmoothL1Loss,
    "huber": HuberLoss,
    "nll": NLLLoss,
    "bce_with_logits": BCEWithLogitsLoss,
}


# =========================================================================================
# compile_train's loss
# =========================================================================================
@dataclasses.dataclass(frozen=True)
class TrainingLoss:
    """A loss as a training step runs it: ``fn(output, target)``, traced; ``labels`` True when
    the target is integer class labels, False when it is a float tensor of the output's
    shape, None when the target's dtype decides (``CrossEntropyLoss``, a callable)."""

    fn: Callable[[Any, Any], Any]
    labels: bool | None
    ignore_index: int | None = None

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """The loss's constant arrays (a weight), keyed as graph inputs (``loss.weight``)."""
        if not isinstance(self.fn, Module):
            return {}
        return {f"loss.{key}": arr for key, arr in self.fn.named_buffers()}

    def target_is_labels(self, y: Any, output_rank: int) -> bool:
        """Whether the target ``y`` (None: not seen yet) is class labels for this loss: where
        its dtype decides, a float target of the output's rank is not (one of another
        rank is, and its check then names the integer labels it should be)."""
        if self.labels is not None:
            return self.labels
        if y is None:
            return True
        arr = F.as_numeric(y, "target y")
        return arr.dtype.kind in "iub" or arr.ndim != output_rank


def training_loss(loss: Any, owner: str = "compile_train") -> TrainingLoss:
    """``loss`` (a name of :data:`LOSS_NAMES`, a loss module or a callable) as a :class:`TrainingLoss`."""
    if isinstance(loss, str):
        if loss not in LOSS_NAMES:
            raise ConvforgeError(
                f"{owner}: loss must be a loss module, a callable (output, target) -> scalar, "
                f"or one of {', '.join(LOSS_NAMES)}, got {loss!r}"
            )
        loss = LOSS_NAMES[loss]()
    if isinstance(loss, _Loss):
        if loss.reduction == "none":
            raise ConvforgeError(
                f'{owner}: {type(loss).__name__}(reduction="none") gives one loss per element; '
                'a training step needs a scalar: use reduction="mean" or "sum"'
            )
        return TrainingLoss(loss, type(loss).labels, getattr(loss, "ignore_index", None))
    if callable(loss):
        return TrainingLoss(loss, None)
    raise ConvforgeError(
        f"{owner}: loss must be a loss module, a callable (output, target) -> scalar, or one of "
        f"{', '.join(LOSS_NAMES)}, got {type(loss).__name__}"
    )


def trace_loss(graph: Graph, tracer: Tracer, loss: TrainingLoss, labels: bool, owner: str) -> Value:
    """Trace ``loss`` of ``graph``'s output 0 against a new input ``target`` (i64 class
    labels ``[N]`` when ``labels``, else the output's type) and return the loss value."""
    output = graph.outputs[0]
    target_type = TensorType("i64", (BATCH,)) if labels else output.type
    target = graph.add_input("target", target_type)
    tracer.names.update({id(arr): key for key, arr in loss.buffers.items()})
    with tracing(tracer):
        if isinstance(loss.fn, Module):  # its nodes belong to the layer "loss", not to the model
            with tracer.module_scope("loss", loss.fn):
                value = loss.fn.forward(tracer.wrap(output), tracer.wrap(target))
        else:
            value = loss.fn(tracer.wrap(output), tracer.wrap(target))
    if not isinstance(value, SymbolicTensor) or value.shape != ():
        shown = (
            f"a tensor of shape {list(value.shape)}"
            if isinstance(value, SymbolicTensor)
            else type(value).__name__
        )
        raise ConvforgeError(
            f"{owner}: the loss must return a scalar computed from (output, target), got {shown}"
            + (
                ' (reduction="none"? a training step needs "mean" or "sum")'
                if isinstance(value, SymbolicTensor)
                else ""
            )
        )
    return value.value
