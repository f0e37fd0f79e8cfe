"""What ``convforge show`` prints: a zoo model's (or an ``.onnx`` file's) IR after any pass,
and its generated code."""

from __future__ import annotations

from convforge.backends import get_backend, resolve
from convforge.errors import ConvforgeError
from convforge.frontend.compile import FRONT_PIPELINE, compile, compile_train, trace_model
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType
from convforge.models import get_model
from convforge.passes import PassManager, parse_pipeline


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
) -> tuple[Graph, str]:
    """The IR of zoo model ``name`` or ONNX file ``name`` (after pass ``after``, or after all
    passes) and its source."""
    model, shape = model_and_shape(name)
    backend = resolve(backend)
    if training:
        if after is not None:
            raise ConvforgeError(
                "--after applies to the inference pipeline; the training program is shown whole"
            )
        step = compile_train(model, (None, *shape), backend=backend)
        return step.graph_for("train"), step.source() if want_source else ""
    if after is None:
        net = compile(model, (None, *shape), backend=backend)
        return net.graph, net.source() if want_source else ""
    passes = parse_pipeline(pipeline_for(backend, training=False))
    names = [p.name for p in passes]
    if after not in names:
        raise ConvforgeError(f"pass {after!r} is not in the {backend} pipeline: {', '.join(names)}")
    graph, _ = trace_model(model, TensorType("f32", ("N", *shape)), training=False)
    PassManager(passes[: names.index(after) + 1]).run(graph)
    return graph, ""


def model_and_shape(name: str) -> tuple:
    """A zoo model and its input shape without the batch, or the model of an ``.onnx`` file."""
    if not name.lower().endswith(".onnx"):
        return get_model(name)
    from convforge.onnx import load

    model = load(name)
    return model, tuple(model.input_shape[1:])
