"""The training program: a forward graph becomes one joint forward + backward + update graph.

:func:`build_training_graph` appends the loss, differentiates it (the ``autodiff`` pass)
and appends one optimizer update node per parameter, and says what each output of the
result means (its *roles*), so a runtime knows which outputs replace which stored arrays.
It takes plain data (the loss name, an :class:`UpdateRule`, input names), not frontend
objects: ``compile_train`` calls it, and so can anything else holding a graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from convforge.errors import ConvforgeError
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH, TensorType
from convforge.passes.autodiff import Autodiff
from convforge.passes.dce import DeadCodeElimination
from convforge.passes.manager import PassManager, parse_pipeline

#: loss name -> the IR op computing it from (output, target)
LOSSES: dict[str, str] = {"cross_entropy": "cross_entropy", "mse": "mse_loss"}


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """An optimizer as IR: ``op(param, grad, *state, step, **attrs)`` returns the new
    parameter and the new value of each state buffer, in ``state`` order."""

    op: str
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: names of the per-parameter state buffers (``"momentum_buffer"``)
    state: tuple[str, ...] = ()
    #: per parameter name, attributes overriding ``attrs`` (its param group's options)
    param_attrs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: scale all gradients by ``clip_grad_norm_coef`` first (torch's ``clip_grad_norm_``)
    clip_grad_norm: float | None = None

    def attrs_for(self, param: str) -> dict[str, Any]:
        """The update attributes of ``param``."""
        return {**self.attrs, **self.param_attrs.get(param, {})}


class Role(NamedTuple):
    """What an output of a training graph is: ``("loss", "")``, ``("grad", input name)``
    or ``("store", key)`` (the new value of the stored array ``key``)."""

    kind: str
    name: str


def state_key(param: str, state: str) -> str:
    """The graph input (and stored array) holding optimizer buffer ``state`` of ``param``."""
    return f"optim.{param}.{state}"


def build_training_graph(
    forward: Graph,
    *,
    loss: str | None,
    params: Sequence[str],
    optimizer: UpdateRule | None = None,
    grads_of: Sequence[str] = (),
    state_updates: Mapping[str, Value] | None = None,
    simplify: str = "canonicalize,cse,dce",
) -> tuple[Graph, list[Role]]:
    """Turn ``forward`` (output 0: the model's output) into a training graph, in place.

    * the loss ``loss`` (a key of :data:`LOSSES`) of output 0 against a new input
      ``target`` (i64 class labels for ``cross_entropy``, else output 0's type) becomes
      output 0; with ``loss=None`` output 0 already is the loss, a scalar (a traced loss
      function of a ``target`` input the graph has);
    * ``simplify``, then ``autodiff`` with respect to ``params`` (and ``grads_of``), then
      ``dce`` run on the graph;
    * with ``optimizer``: with its ``clip_grad_norm``, every gradient times the
      ``clip_grad_norm_coef`` of them all; then one update node per parameter (with
      :meth:`UpdateRule.attrs_for` it, reading the input ``step``, the step counter,
      and the inputs :func:`state_key` names for its state), whose results
      are outputs with role ``("store", name)``, and then ``state_updates`` (stored key ->
      a forward value, e.g. batch-norm running statistics), also ``("store", key)``;
    * without: the gradients are outputs with role ``("grad", name)``, ``params`` first.

    Returns the graph and one :class:`Role` per output.
    """
    if loss is not None and loss not in LOSSES:
        raise ConvforgeError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    graph = forward
    output = graph.outputs[0]
    if loss is None:
        if output.type.shape != ():
            raise ConvforgeError(f"the loss must be a scalar, got {output.type} (output 0 of @{graph.name})")
        loss_value = output
    else:
        if loss == "cross_entropy":
            target = graph.add_input("target", TensorType("i64", (BATCH,)))
        else:
            target = graph.add_input("target", output.type)
        loss_value = graph.call(LOSSES[loss], output, target, meta={"layer": "loss"})
    graph.set_outputs([loss_value])
    wrt = [*params, *grads_of] if optimizer is None else list(params)
    PassManager([*parse_pipeline(simplify), Autodiff(wrt="|".join(wrt)), DeadCodeElimination()]).run(graph)
    roles = [Role("loss", "")]
    if optimizer is None:
        roles += [Role("grad", name) for name in wrt]
        return graph, roles

    grad_index = graph.meta["grads"]
    grads = [graph.outputs[grad_index[name]] for name in params]
    outputs = [loss_value]
    with graph.meta_scope(phase="update"):
        if optimizer.clip_grad_norm is not None and grads:
            meta = {"layer": "clip_grad_norm"}
            coef = graph.call("clip_grad_norm_coef", *grads, max_norm=optimizer.clip_grad_norm, meta=meta)
            grads = [graph.call("mul", grad, coef, meta=meta) for grad in grads]
        names = {v.name for v in graph.inputs}
        step = graph.input("step") if "step" in names else graph.add_input("step", TensorType("i64", ()))
        for name, grad in zip(params, grads):
            param = graph.input(name)
            states = [graph.add_input(state_key(name, s), param.type) for s in optimizer.state]
            new = graph.call(
                optimizer.op,
                param,
                grad,
                *states,
                step,
                meta={"layer": f"optimizer ({name})"},
                **optimizer.attrs_for(name),
            )
            outputs += list(new) if isinstance(new, tuple) else [new]
            roles += [Role("store", name)] + [Role("store", state_key(name, s)) for s in optimizer.state]
    for key, value in (state_updates or {}).items():
        outputs.append(value)
        roles.append(Role("store", key))
    graph.set_outputs(outputs)
    PassManager.from_string("dce").run(graph)
    return graph, roles
