"""The command line on .onnx files: show (IR and picture), evaluate, bench."""

from __future__ import annotations

import pytest

import convforge as cf
from convforge.cli import main
from convforge.models import lenet5


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "lenet.onnx"
    cf.onnx.export(lenet5(), path, input_shape=(None, 1, 28, 28))
    return path


def test_show_prints_the_ir_of_an_onnx_file_and_draws_it(lenet_onnx, tmp_path, capsys):
    picture = tmp_path / "lenet.svg"
    assert main(["show", str(lenet_onnx), "--backend", "reference", "--graph", str(picture)]) == 0
    out = capsys.readouterr().out
    assert "conv2d(" in out and "linear(" in out and "f32[N,1,28,28]" in out
    assert picture.read_text().lstrip().startswith("<?xml")


def test_show_after_a_pass(lenet_onnx, capsys):
    assert main(["show", str(lenet_onnx), "--backend", "numba-cpu", "--after", "fuse"]) == 0
    assert "fusion(" in capsys.readouterr().out


def test_evaluate_an_onnx_classifier(lenet_onnx, capsys):
    assert main(["evaluate", str(lenet_onnx), "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on 1000 test images" in out and "confusion matrix" in out


def test_evaluate_refuses_a_model_that_does_not_take_mnist(tmp_path, capsys):
    path = tmp_path / "rgb.onnx"
    cf.onnx.export(cf.nn.Sequential(cf.nn.Conv2d(3, 4, 3), cf.nn.Flatten()), path, (None, 3, 8, 8))
    assert main(["evaluate", str(path)]) == 1
    assert "needs [N, 1, 28, 28]" in capsys.readouterr().err


def test_bench_an_onnx_file_against_onnxruntime(lenet_onnx, capsys, monkeypatch):
    import numba

    # Numba's thread pool is sized once per process: bench with the count it already has
    threads = str(numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
    argv = [
        "bench",
        str(lenet_onnx),
        "--batch",
        "4",
        "--quick",
        "--threads",
        threads,
        "--backend",
        "reference",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| lenet.onnx | 4 |" in out and "onnxruntime" in out


def test_bad_onnx_paths_are_reported(tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x0a\x05short")
    assert main(["show", str(bad)]) == 1
    assert "convforge: error:" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "model.txt")]) == 1
    assert "is not an .onnx file" in capsys.readouterr().err


TORCH_NET = """
import torch.nn as nn


class Small(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)
        )
"""


def test_bench_an_onnx_file_exported_from_torch_times_torch_too(tmp_path, capsys, monkeypatch):
    """``--torch FILE.py:CLASS`` names the class the file came from: torch eager runs on the
    file's weights (checked against onnxruntime first) in the same alternation."""
    import numba
    import torch

    source = tmp_path / "small.py"
    source.write_text(TORCH_NET)
    namespace: dict = {}
    exec(compile(TORCH_NET, str(source), "exec"), namespace)
    torch.manual_seed(0)
    path = tmp_path / "small.onnx"
    torch.onnx.export(namespace["Small"]().eval(), torch.zeros(1, 1, 28, 28), str(path), dynamo=False)
    threads = str(numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
    argv = ["bench", str(path), "--quick", "--threads", threads, "--backend", "reference"]
    assert main([*argv, "--torch", f"{source}:Small"]) == 0
    out = capsys.readouterr().out
    assert "torch eager" in out and "| small.onnx | 1 |" in out
    assert main([*argv, "--torch", f"{source}:Nope"]) == 2
    assert "has no class 'Nope'" in capsys.readouterr().err
