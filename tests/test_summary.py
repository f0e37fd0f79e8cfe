"""cf.summary: golden parameter and MAC counts (LeNet-5, AlexNet) and the fused view of a compiled model."""

from __future__ import annotations

import pytest

import convforge as cf
from convforge import nn
from convforge.errors import ConvforgeError
from convforge.models import alexnet, lenet5


def test_lenet5_golden():
    s = cf.summary(lenet5(), input_shape=(1, 1, 28, 28))
    assert s.total_params == s.trainable_params == 61_706
    by_path = {r.path: r for r in s.rows}
    # conv: Cout * Hout * Wout * (Cin / groups) * kh * kw; linear: in * out
    assert by_path["0"].macs == 6 * 28 * 28 * 1 * 5 * 5
    assert by_path["3"].macs == 16 * 10 * 10 * 6 * 5 * 5
    assert [by_path[p].macs for p in ("7", "9", "11")] == [400 * 120, 120 * 84, 84 * 10]
    assert s.total_macs == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520
    assert s.total_flops == 2 * s.total_macs
    assert by_path["0"].params == 6 * 25 + 6 and by_path["1"].params == 0
    assert by_path["2"].output_shape == (1, 6, 14, 14) and by_path["2"].type == "MaxPool2d"
    assert by_path["0"].activation_bytes == 6 * 28 * 28 * 4
    table = str(s)
    assert "Total params: 61,706" in table and "Total MACs: 416.5 K" in table
    assert "[1, 16, 5, 5]" in table


def test_alexnet_golden_at_227():
    s = cf.summary(alexnet(), input_shape=(1, 3, 227, 227))
    conv = {
        "0": 96 * 55 * 55 * 3 * 11 * 11,  # 105.4 M
        "3": 256 * 27 * 27 * 96 * 5 * 5,  # 447.9 M
        "6": 384 * 13 * 13 * 256 * 3 * 3,  # 149.5 M
        "8": 384 * 13 * 13 * 384 * 3 * 3,  # 224.3 M
        "10": 256 * 13 * 13 * 384 * 3 * 3,  # 149.5 M
    }
    fc = 9216 * 4096 + 4096 * 4096 + 4096 * 1000  # 58.6 M
    assert [round(m / 1e5) / 10 for m in conv.values()] == [105.4, 447.9, 149.5, 224.3, 149.5]
    assert round(fc / 1e5) / 10 == 58.6
    by_path = {r.path: r.macs for r in s.rows}
    assert {p: by_path[p] for p in conv} == conv
    assert by_path["15"] + by_path["18"] + by_path["20"] == fc
    assert s.total_macs == sum(conv.values()) + fc == 1_135_256_096
    assert round(s.total_macs / 1e6) / 1e3 == 1.135
    assert "Total MACs: 1.135 G" in str(s)
    assert s.total_params == 62_378_344


def test_summary_of_a_compiled_model_shows_the_fused_kernels():
    net = cf.compile(lenet5(), (None, 1, 28, 28), backend="numba-cpu")
    s = cf.summary(net)
    fused = [(k.layer, k.ops) for k in s.kernels if k.fused]
    assert fused == [
        ("0 (Conv2d)", ("conv2d", "relu", "max_pool2d")),
        ("3 (Conv2d)", ("conv2d", "relu", "max_pool2d")),
        ("7 (Linear)", ("linear", "relu")),
        ("9 (Linear)", ("linear", "relu")),
    ]
    assert s.total_params == 61_706 and s.total_macs == 416_520  # per image, counted in the regions
    assert "conv2d -> relu -> max_pool2d" in str(s) and "4 fused kernels" in str(s)

    step = cf.compile_train(lenet5(), (None, 1, 28, 28), backend="numba-cpu")
    phases = {k.phase for k in cf.summary(step).kernels}
    assert phases == {"forward", "backward", "update"}


def test_custom_module_rows_and_errors():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, groups=2, bias=False)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return self.fc(h * 0.5)

    s = cf.summary(Net(), input_shape=(None, 2, 5, 5))
    assert s.input_shape == (1, 2, 5, 5)
    rows = {r.path: r for r in s.rows}
    assert rows["conv"].macs == 4 * 3 * 3 * (2 // 2) * 3 * 3 and rows["fc"].macs == 12
    assert rows[""].type == "Net" and rows[""].params == 0  # the root's own ops (mean, scale)
    assert s.total_params == 4 * 1 * 9 + 4 * 3 + 3
    with pytest.raises(ConvforgeError, match="needs input_shape"):
        cf.summary(Net())
    with pytest.raises(ConvforgeError, match="expected an nn.Module"):
        cf.summary("lenet5", input_shape=(1, 1, 28, 28))
