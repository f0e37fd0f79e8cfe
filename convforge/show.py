"""What ``convforge show`` prints: a zoo model's (or an ``.onnx`` file's) IR after any pass,
and its generated code."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from convforge.backends import get_backend, resolve
from convforge.errors import ConvforgeError
from convforge.frontend.compile import FRONT_PIPELINE, compile, compile_train, trace_model
from convforge.frontend.optim import Optimizer
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType
from convforge.passes import PassManager, parse_pipeline
from convforge.usermodel import resolve_model


def pipeline_for(backend: str | None, training: bool) -> str:
    """The whole pipeline a backend runs (inference or training): the front passes, then its own."""
    own = get_backend(backend).pipeline(training)
    return ",".join(p for p in (FRONT_PIPELINE, own) if p)


def model_graph(
    name: str,
    *,
    after: str | None = None,
    training: bool = False,
    backend: str | None = None,
    want_source: bool = False,
    input_shape: Sequence[int] | None = None,
    optimizer: Optimizer | None = None,
    tune: bool = False,
) -> tuple[Graph, str]:
    """The IR of model ``name`` (zoo name, ``.onnx`` file or ``file.py:ClassName``) after
    pass ``after`` (or after all passes), and its source. ``input_shape`` (without the
    batch) replaces the model's own; ``optimizer`` is the training program's (default:
    what ``convforge train`` uses, :func:`training_settings`); ``tune`` picks each layer's
    algorithm by measurement (``compile(..., tune=True)``)."""
    model, shape = model_and_shape(name)
    shape = tuple(input_shape) if input_shape is not None else shape
    backend = resolve(backend)
    if training:
        if after is not None:
            raise ConvforgeError(
                "--after applies to the inference pipeline; the training program is shown whole"
            )
        optimizer = optimizer if optimizer is not None else training_settings().optimizer
        step = compile_train(model, (None, *shape), optimizer=optimizer, backend=backend, tune=tune)
        return step.graph_for("train"), step.source() if want_source else ""
    if after is None:
        net = compile(model, (None, *shape), backend=backend, tune=tune)
        return net.graph, net.source() if want_source else ""
    passes = parse_pipeline(pipeline_for(backend, training=False))
    names = [p.name for p in passes]
    if after not in names:
        raise ConvforgeError(f"pass {after!r} is not in the {backend} pipeline: {', '.join(names)}")
    graph, _ = trace_model(model, TensorType("f32", ("N", *shape)), training=False)
    PassManager(passes[: names.index(after) + 1]).run(graph)
    return graph, ""


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The optimizer and schedule ``convforge train`` runs for a set of flags."""

    optimizer: Optimizer
    schedule: str

    def describe(self) -> str:
        """``training program of `convforge train`: SGD(lr=0.05, ...), cosine schedule ...``"""
        if self.schedule == "cosine":
            when = f"cosine schedule per epoch from lr={self.optimizer.lr:g} down to 5 % of it"
        else:
            when = f"constant lr={self.optimizer.lr:g}"
        return f"training program of `convforge train` (epoch 1): {self.optimizer!r}; {when}"


def training_settings(
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
) -> TrainingSettings:
    """What ``convforge train`` builds from these flags (its defaults included)."""
    from convforge.training import make_optimizer, scheduled_lr

    opt = make_optimizer(optimizer, lr, momentum, weight_decay)
    scheduled_lr(opt.lr, 1, 2, schedule)  # refuses an unknown schedule; epoch 1 runs at opt.lr
    return TrainingSettings(opt, schedule)


def model_and_shape(name: str) -> tuple:
    """A model and its input shape without the batch: from the zoo, an ``.onnx`` file, or
    ``path/to/file.py:ClassName``."""
    if not name.lower().endswith(".onnx"):
        return resolve_model(name)
    from convforge.onnx import load

    model = load(name)
    return model, tuple(model.input_shape[1:])
