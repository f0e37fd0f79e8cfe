"""Every op's numba-cuda kernel against the NumPy reference (simulator, tiny shapes)."""

from __future__ import annotations

import numpy as np
import pytest

F = "f32"
N = "N"

# (id, op, inputs {name: (dtype, shape)}, attrs)
CASES = [
    # conv
    ("conv2d-plain", "conv2d", {"x": (F, (N, 2, 6, 6)), "w": (F, (3, 2, 3, 3)), "b": (F, (3,))}, {}),
    (
        "conv2d-stride2-pad",
        "conv2d",
        {"x": (F, (N, 2, 6, 6)), "w": (F, (2, 2, 3, 3))},
        {"stride": (2, 2), "padding": (1, 1)},
    ),
    (
        "conv2d-dilation2",
        "conv2d",
        {"x": (F, (N, 1, 6, 6)), "w": (F, (2, 1, 2, 2)), "b": (F, (2,))},
        {"dilation": (2, 2), "padding": (1, 0)},
    ),
    (
        "conv2d-groups2",
        "conv2d",
        {"x": (F, (N, 4, 5, 5)), "w": (F, (4, 2, 3, 3)), "b": (F, (4,))},
        {"groups": 2, "stride": (2, 1)},
    ),
    (
        "conv2d-asym-pad",
        "conv2d",
        {"x": (F, (N, 1, 5, 5)), "w": (F, (2, 1, 2, 2))},
        {"padding": (0, 1, 1, 0)},
    ),
    ("conv2d-f64", "conv2d", {"x": ("f64", (N, 2, 5, 5)), "w": ("f64", (2, 2, 3, 3))}, {"padding": (1, 1)}),
    (
        "conv1d",
        "conv1d",
        {"x": (F, (N, 2, 7)), "w": (F, (4, 1, 3)), "b": (F, (4,))},
        {"groups": 2, "stride": (2,), "padding": (1,), "dilation": (2,)},
    ),
    (
        "conv2d_backward_input",
        "conv2d_backward_input",
        {"gy": (F, (N, 4, 3, 3)), "w": (F, (4, 2, 3, 3))},
        {"stride": (2, 2), "padding": (1, 1), "groups": 2, "input_size": (6, 6)},
    ),
    (
        "conv2d_backward_input-dil",
        "conv2d_backward_input",
        {"gy": (F, (N, 2, 4, 4)), "w": (F, (2, 1, 2, 2))},
        {"dilation": (2, 2), "input_size": (6, 6)},
    ),
    (
        "conv2d_backward_weight",
        "conv2d_backward_weight",
        {"x": (F, (N, 4, 6, 6)), "gy": (F, (N, 4, 3, 3))},
        {"stride": (2, 2), "padding": (1, 1), "groups": 2, "kernel_size": (3, 3)},
    ),
    (
        "conv2d_backward_weight-dil",
        "conv2d_backward_weight",
        {"x": (F, (N, 1, 6, 6)), "gy": (F, (N, 2, 4, 4))},
        {"dilation": (2, 2), "kernel_size": (2, 2)},
    ),
    (
        "conv1d_backward_input",
        "conv1d_backward_input",
        {"gy": (F, (N, 2, 3)), "w": (F, (2, 2, 3))},
        {"stride": (2,), "padding": (1,), "input_size": (6,)},
    ),
    (
        "conv1d_backward_weight",
        "conv1d_backward_weight",
        {"x": (F, (N, 2, 6)), "gy": (F, (N, 2, 3))},
        {"stride": (2,), "padding": (1,), "kernel_size": (3,)},
    ),
    # linear
    ("linear", "linear", {"x": (F, (N, 5)), "w": (F, (3, 5)), "b": (F, (3,))}, {}),
    ("linear-nobias", "linear", {"x": (F, (N, 6)), "w": (F, (7, 6))}, {}),
    ("matmul-nn", "matmul", {"a": (F, (3, 5)), "b": (F, (5, 6))}, {}),
    ("matmul-nt", "matmul", {"a": (F, (3, 5)), "b": (F, (6, 5))}, {"transpose_b": True}),
    ("matmul-tn", "matmul", {"a": (F, (5, 3)), "b": (F, (5, 6))}, {"transpose_a": True}),
    ("matmul-tt", "matmul", {"a": (F, (5, 3)), "b": (F, (6, 5))}, {"transpose_a": True, "transpose_b": True}),
    # pool
    ("max_pool2d", "max_pool2d", {"x": (F, (N, 2, 6, 6))}, {"kernel_size": (2, 2)}),
    (
        "max_pool2d-pad-ceil",
        "max_pool2d",
        {"x": (F, (N, 1, 6, 6))},
        {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True},
    ),
    (
        "max_pool2d-dil",
        "max_pool2d",
        {"x": (F, (N, 1, 6, 6))},
        {"kernel_size": (2, 2), "stride": (1, 1), "dilation": (2, 2)},
    ),
    (
        "max_pool2d_backward",
        "max_pool2d_backward",
        {"gy": (F, (N, 1, 3, 3)), "x": (F, (N, 1, 6, 6))},
        {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)},
    ),
    ("avg_pool2d", "avg_pool2d", {"x": (F, (N, 2, 6, 6))}, {"kernel_size": (2, 2)}),
    (
        "avg_pool2d-pad-nocount",
        "avg_pool2d",
        {"x": (F, (N, 1, 6, 6))},
        {
            "kernel_size": (3, 3),
            "stride": (2, 2),
            "padding": (1, 1),
            "count_include_pad": False,
            "ceil_mode": True,
        },
    ),
    (
        "avg_pool2d-divisor",
        "avg_pool2d",
        {"x": (F, (N, 1, 5, 5))},
        {"kernel_size": (2, 2), "divisor_override": 3},
    ),
    (
        "avg_pool2d_backward",
        "avg_pool2d_backward",
        {"gy": (F, (N, 1, 3, 3))},
        {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "input_size": (6, 6)},
    ),
    ("adaptive_avg_pool2d", "adaptive_avg_pool2d", {"x": (F, (N, 2, 5, 6))}, {"output_size": (2, 4)}),
    (
        "adaptive_avg_pool2d_backward",
        "adaptive_avg_pool2d_backward",
        {"gy": (F, (N, 2, 2, 4))},
        {"output_size": (2, 4), "input_size": (5, 6)},
    ),
    ("max_pool2d_argmax", "max_pool2d_argmax", {"x": (F, (N, 1, 6, 6))}, {"kernel_size": (2, 2)}),
    # norm
    (
        "batch_norm-4d",
        "batch_norm",
        {"x": (F, (N, 3, 2, 2)), "w": (F, (3,)), "b": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))},
        {"eps": 1e-3},
    ),
    (
        "batch_norm_train-4d",
        "batch_norm_train",
        {"x": (F, (N, 3, 2, 2)), "w": (F, (3,)), "b": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))},
        {"momentum": 0.2},
    ),
    (
        "batch_norm_train-2d",
        "batch_norm_train",
        {"x": (F, (N, 4)), "w": (F, (4,)), "b": (F, (4,)), "m": (F, (4,)), "v": (F, (4,))},
        {},
    ),
    (
        "batch_norm_backward",
        "batch_norm_backward",
        {"gy": (F, (N, 3, 2, 2)), "x": (F, (N, 3, 2, 2)), "w": (F, (3,)), "m": (F, (3,)), "i": (F, (3,))},
        {},
    ),
    (
        "batch_norm_eval_backward",
        "batch_norm_eval_backward",
        {"gy": (F, (N, 3, 5)), "x": (F, (N, 3, 5)), "w": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))},
        {},
    ),
    # activations
    *((op, op, {"x": (F, (N, 3, 4))}, {}) for op in ("relu", "sigmoid", "tanh")),
    ("leaky_relu", "leaky_relu", {"x": (F, (N, 5))}, {"negative_slope": 0.2}),
    *(
        (op, op, {"gy": (F, (N, 3, 4)), "y": (F, (N, 3, 4))}, {})
        for op in ("relu_backward", "sigmoid_backward", "tanh_backward")
    ),
    (
        "leaky_relu_backward",
        "leaky_relu_backward",
        {"gy": (F, (N, 5)), "x": (F, (N, 5))},
        {"negative_slope": 0.1},
    ),
    ("softmax", "softmax", {"x": (F, (N, 5))}, {}),
    ("softmax-dim2", "softmax", {"x": (F, (N, 3, 4))}, {"dim": 2}),
    ("log_softmax", "log_softmax", {"x": (F, (N, 3, 4))}, {"dim": 1}),
    ("softmax_backward", "softmax_backward", {"gy": (F, (N, 3, 4)), "y": (F, (N, 3, 4))}, {"dim": -1}),
    ("log_softmax_backward", "log_softmax_backward", {"gy": (F, (N, 5)), "y": (F, (N, 5))}, {}),
    # elementwise
    ("add", "add", {"a": (F, (N, 3)), "b": (F, (N, 3))}, {}),
    ("mul", "mul", {"a": ("f64", (N, 3)), "b": ("f64", (N, 3))}, {}),
    ("scale", "scale", {"x": (F, (N, 4))}, {"factor": -2.5}),
    ("reduce_sum-bias", "reduce_sum", {"x": (F, (N, 3, 2, 2))}, {"dims": (0, 2, 3)}),
    ("reduce_sum-keepdim", "reduce_sum", {"x": (F, (N, 3, 4))}, {"dims": (1,), "keepdim": True}),
    ("reduce_sum-all", "reduce_sum", {"x": (F, (N, 3))}, {"dims": (0, 1)}),
    ("ones_like", "ones_like", {"x": (F, (N, 3))}, {}),
    ("zeros_like", "zeros_like", {"x": ("i64", (N, 3))}, {}),
    ("cast-f64", "cast", {"x": (F, (N, 3))}, {"dtype": "f64"}),
    ("cast-i64", "cast", {"x": (F, (N, 3))}, {"dtype": "i64"}),
    # shape
    ("flatten", "flatten", {"x": (F, (N, 2, 2, 3))}, {}),
    ("reshape", "reshape", {"x": (F, (N, 6))}, {"shape": (N, 2, 3)}),
    ("concat", "concat", {"a": (F, (N, 1, 3)), "b": (F, (N, 2, 3))}, {"dim": 1}),
    ("concat-last", "concat", {"a": (F, (N, 2, 1)), "b": (F, (N, 2, 2)), "c": (F, (N, 2, 3))}, {"dim": -1}),
    ("slice", "slice", {"x": (F, (N, 5, 2))}, {"dim": 1, "start": 1, "stop": 4}),
    # loss
    ("mse_loss", "mse_loss", {"x": (F, (N, 3)), "t": (F, (N, 3))}, {}),
    ("mse_loss-sum", "mse_loss", {"x": (F, (N, 3)), "t": (F, (N, 3))}, {"reduction": "sum"}),
    ("mse_loss_backward", "mse_loss_backward", {"g": (F, ()), "x": (F, (N, 3)), "t": (F, (N, 3))}, {}),
]
CASES = [pytest.param(op, inputs, attrs, id=name) for name, op, inputs, attrs in CASES]


@pytest.mark.parametrize("op, inputs, attrs", CASES)
def test_op_matches_reference(cu, rng, op, inputs, attrs):
    graph = cu.op_graph(op, inputs, **attrs)
    arrays = cu.inputs(graph, rng)
    if op in ("batch_norm", "batch_norm_eval_backward"):
        arrays["v"] = np.abs(arrays["v"]) + 0.5
    if op == "batch_norm_backward":
        arrays["i"] = np.abs(arrays["i"]) + 0.5
    cu.check(graph, arrays)


def test_max_pool2d_backward_argmax(cu, rng):
    attrs = {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)}
    graph = cu.op_graph(
        "max_pool2d_backward_argmax",
        {"gy": (F, (N, 1, 3, 3)), "am": ("u8", (N, 1, 3, 3))},
        input_size=(6, 6),
        **attrs,
    )
    arrays = cu.inputs(graph, rng)
    arrays["am"] = rng.integers(0, 9, size=(2, 1, 3, 3)).astype(np.uint8)
    cu.check(graph, arrays)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_and_backward(cu, rng, reduction):
    graph = cu.op_graph(
        "cross_entropy", {"logits": (F, (N, 4)), "target": ("i64", (N,))}, reduction=reduction
    )
    arrays = {"logits": rng.standard_normal((3, 4)).astype(np.float32), "target": np.array([0, 3, 1])}
    cu.check(graph, arrays)
    graph = cu.op_graph(
        "cross_entropy_backward",
        {"g": (F, ()), "logits": (F, (N, 4)), "target": ("i64", (N,))},
        reduction=reduction,
    )
    arrays["g"] = np.asarray(1.5, dtype=np.float32)
    cu.check(graph, arrays)


@pytest.mark.parametrize("op", ["dropout", "dropout_backward"])
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout_same_mask_as_reference(cu, rng, op, p):
    graph = cu.op_graph(op, {"x": (F, (N, 3, 4)), "step": ("i64", ())}, p=p, seed=7)
    arrays = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "step": np.asarray(5, dtype=np.int64)}
    (out,) = cu.check(graph, arrays, rtol=0, atol=0)
    if p < 1.0:
        assert 0 < np.count_nonzero(out) < out.size


@pytest.mark.parametrize(
    "attrs, step",
    [
        ({"lr": 0.1}, 1),
        ({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, 1),
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1}, 3),
        ({"lr": 0.05, "momentum": 0.9, "nesterov": True}, 2),
    ],
)
def test_sgd_update(cu, rng, attrs, step):
    graph = cu.op_graph(
        "sgd_update", {"p": (F, (3, 2)), "g": (F, (3, 2)), "buf": (F, (3, 2)), "step": ("i64", ())}, **attrs
    )
    arrays = cu.inputs(graph, rng)
    arrays["step"] = np.asarray(step, dtype=np.int64)
    cu.check(graph, arrays)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_update(cu, rng, weight_decay):
    graph = cu.op_graph(
        "adam_update",
        {"p": (F, (4,)), "g": (F, (4,)), "m": (F, (4,)), "v": (F, (4,)), "step": ("i64", ())},
        lr=0.01,
        weight_decay=weight_decay,
    )
    arrays = cu.inputs(graph, rng)
    arrays["v"] = np.abs(arrays["v"])
    arrays["step"] = np.asarray(3, dtype=np.int64)
    cu.check(graph, arrays)


@pytest.mark.parametrize("with_bias", [True, False])
def test_bn_fold_ops(cu, rng, with_bias):
    c = {"w": (F, (3,)), "bb": (F, (3,)), "m": (F, (3,)), "v": (F, (3,))}
    graph = cu.op_graph("bn_fold_bias", {**c, **({"b": (F, (3,))} if with_bias else {})}, eps=1e-3)
    arrays = cu.inputs(graph, rng)
    arrays["v"] = np.abs(arrays["v"]) + 0.1
    cu.check(graph, arrays)
    graph = cu.op_graph("bn_fold_weight", {"cw": (F, (3, 2, 2, 2)), "w": (F, (3,)), "v": (F, (3,))}, eps=1e-3)
    arrays = cu.inputs(graph, rng)
    arrays["v"] = np.abs(arrays["v"]) + 0.1
    cu.check(graph, arrays)
