"""Public members: ``cf.models``, ``step.graph`` a property as ``net.graph`` is, and callers
that read backend capabilities instead of probing for them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import convforge as cf
from convforge import nn, optim
from convforge.frontend.compile import TrainingGraph
from convforge.ir.graph import Graph


def _model() -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def test_models_come_with_the_package():
    assert isinstance(cf.models.lenet5(), nn.Module)
    assert "models" in cf.__all__


def test_train_step_graph_is_a_property_like_the_compiled_model_graph():
    step = cf.compile_train(_model(), (None, 1, 4, 4), optimizer=optim.SGD(lr=0.1), backend="reference")
    net = step.inference()
    assert isinstance(net.graph, Graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new forms warn about nothing
        graph = step.graph
        joint = step.graph_for("train")
        grad = step.graph_for("grad")
    assert isinstance(graph, TrainingGraph) and isinstance(joint, Graph)
    assert graph == joint and joint == graph and graph == step.graph and hash(graph) == hash(joint)
    assert str(graph) == str(joint) and repr(graph) == repr(joint)
    assert graph.nodes is joint.nodes and graph.name == joint.name
    assert any(n.op == "sgd_update" for n in graph.nodes)
    assert not any(n.op == "sgd_update" for n in grad.nodes)
    assert graph != grad and "nodes" in dir(graph)


def test_the_old_call_still_works_with_a_deprecation_warning():
    step = cf.compile_train(_model(), (None, 1, 4, 4), backend="reference")
    with pytest.warns(DeprecationWarning, match=r"step\.graph_for\(kind\)"):
        assert step.graph() is step.graph_for("train")
    with pytest.warns(DeprecationWarning, match="TrainStep.graph is a property"):
        assert step.graph("grad") is step.graph_for("grad")


def test_training_still_trains_through_the_executable_step():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 4, 4)), np.array([0, 1, 2, 0])
    step = cf.compile_train(_model(), (None, 1, 4, 4), optimizer=optim.SGD(lr=0.5), backend="reference")
    before = step.state_dict()["3.weight"]
    losses = [step(x, y) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not np.allclose(before, step.state_dict()["3.weight"])


def test_no_caller_probes_a_backend():
    root = Path(cf.__file__).parent
    probes = re.compile(
        r"""(getattr|hasattr)\([^)]*["'](supports_out|device_resident|run_device|PIPELINE_\w+|graph)["']"""
    )
    found = [
        f"{path.relative_to(root)}:{i}"
        for path in root.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if probes.search(line)
    ]
    assert not found, found
