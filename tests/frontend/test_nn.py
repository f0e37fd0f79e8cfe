"""Modules: PyTorch's state_dict keys, default initialisation, modes and eager functional ops."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, to_torch

import convforge as cf
from convforge import nn
from convforge.models import deep_mnist, lenet5, resnet_small


def test_state_dict_keys_and_shapes_match_torch():
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 24 * 24, 3)
    )
    ours = model.state_dict()
    theirs = to_torch(model).state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert tuple(ours[key].shape) == tuple(theirs[key].shape), key
    assert ours["1.num_batches_tracked"].dtype == np.int64


def test_parameter_counts():
    assert lenet5().num_parameters() == 61_706
    assert deep_mnist().num_parameters() == 3_274_634
    assert resnet_small().num_parameters() < 200_000


def test_default_initialisation_bounds_like_torch():
    cf.manual_seed(0)
    conv = nn.Conv2d(6, 16, 5)
    bound = 1 / np.sqrt(6 * 25)
    assert np.abs(conv.weight).max() <= bound and np.abs(conv.weight).max() > 0.9 * bound
    assert np.abs(conv.bias).max() <= bound
    lin = nn.Linear(400, 120)
    assert np.abs(lin.weight).max() <= 1 / np.sqrt(400)
    assert abs(float(np.std(lin.weight)) - (1 / np.sqrt(400)) / np.sqrt(3)) < 2e-3  # uniform's std
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight, 1)
    np.testing.assert_array_equal(bn.running_var, 1)


def test_deep_mnist_initialisation():
    model = deep_mnist(seed=0)
    w = model[0].weight
    assert np.abs(w).max() <= 0.2 + 1e-6  # truncated at two standard deviations
    assert abs(float(w.std()) - 0.088) < 0.01  # std of N(0, 0.1) truncated at +-2 sigma
    np.testing.assert_array_equal(model[0].bias, np.float32(0.1))


def test_load_state_dict_into_module_and_torch_weights():
    src, dst = lenet5(), lenet5()
    dst.load_state_dict(src.state_dict())
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    twin = to_torch(src)
    dst.load_state_dict(twin.state_dict())  # torch tensors are accepted


def test_train_eval_modes_and_dropout_off_in_eval():
    model = deep_mnist(seed=0)
    assert model.training
    model.eval()
    assert not any(m.training for m in model.modules())
    net = cf.compile(model, (None, 1, 28, 28), backend="reference")
    assert "dropout" not in str(net.graph)


def test_eager_functional_matches_torch(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    tx, tw, tb = map(torch.from_numpy, (x, w, b))
    tf = torch.nn.functional
    assert_close(
        F.conv2d(x, w, b, padding="same", backend="reference"), tf.conv2d(tx, tw, tb, padding="same")
    )
    assert_close(F.conv2d(x, w, b, stride=2, padding=1, backend="reference"), tf.conv2d(tx, tw, tb, 2, 1))
    assert_close(F.max_pool2d(x, 3, 2, 1, backend="reference"), tf.max_pool2d(tx, 3, 2, 1))
    assert_close(F.avg_pool2d(x, 2, backend="reference"), tf.avg_pool2d(tx, 2))
    assert_close(F.adaptive_avg_pool2d(x, 1, backend="reference"), tf.adaptive_avg_pool2d(tx, 1))
    assert_close(F.softmax(x, 1, backend="reference"), tf.softmax(tx, 1))
    assert_close(F.log_softmax(x, 1, backend="reference"), tf.log_softmax(tx, 1))
    assert_close(F.leaky_relu(x, 0.2, backend="reference"), tf.leaky_relu(tx, 0.2))
    flat = x.reshape(2, -1)
    lw = rng.standard_normal((5, flat.shape[1])).astype(np.float32)
    assert_close(
        F.linear(flat, lw, backend="reference"), tf.linear(torch.from_numpy(flat), torch.from_numpy(lw))
    )
    y = np.array([1, 4])
    assert_close(
        F.cross_entropy(flat[:, :5], y, backend="reference"),
        tf.cross_entropy(torch.from_numpy(flat[:, :5]), torch.from_numpy(y)),
    )
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = F.batch_norm(x, rm, rv, training=True, backend="reference")
    trm, trv = torch.zeros(3), torch.ones(3)
    assert_close(out, tf.batch_norm(tx, trm, trv, training=True))
    assert_close(rm, trm, what="running mean updated in place")
    assert_close(rv, trv, what="running var updated in place")


def test_dropout_eager_is_deterministic_for_a_seed():
    x = np.ones((4, 100), np.float32)
    a = F.dropout(x, 0.5, seed=3, step=1, backend="reference")
    b = F.dropout(x, 0.5, seed=3, step=1, backend="reference")
    c = F.dropout(x, 0.5, seed=3, step=2, backend="reference")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 2.0}
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False), x)


def test_residual_model_ir_records_layers_and_lines():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return x + F.relu(self.conv(x))

    net = cf.compile(Block(), (None, 2, 5, 5), backend="reference")
    text = str(net.graph)
    assert "# conv (Conv2d) at test_nn.py:" in text
    assert "add(" in text and "# <root> (Block) at test_nn.py:" in text


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_any_batch_size(batch):
    net = cf.compile(lenet5(), (None, 1, 28, 28), backend="reference")
    assert net(np.zeros((batch, 1, 28, 28), np.float32)).shape == (batch, 10)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: lenet5(), (1, 28, 28)),
        (lambda: deep_mnist(), (1, 28, 28)),
        (lambda: resnet_small(), (1, 28, 28)),
        (lambda: resnet_small(in_channels=3), (3, 32, 32)),
    ],
)
def test_zoo_output_shapes(build, shape):
    net = cf.compile(build(), (None, *shape), backend="reference")
    assert net.graph.outputs[0].type.shape == ("N", 10)
    assert net(np.zeros((2, *shape), np.float32)).shape == (2, 10)
