"""The command line: a short training run, show, evaluate."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

import convforge as cf
from convforge.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "train",
            "--epochs",
            "1",
            "--limit",
            "320",
            "--batch-size",
            "32",
            "--backend",
            "reference",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_train_writes_weights_curves_and_history(trained, capsys):
    weights = cf.load(trained / "weights.npz")
    assert weights["0.weight"].shape == (6, 1, 5, 5)
    assert "optimizer/step" in weights
    image = mpimg.imread(trained / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 100
    history = json.loads((trained / "history.json").read_text())
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0


def test_evaluate_prints_accuracy_and_confusion_matrix(trained, capsys):
    assert main(["evaluate", str(trained / "weights.npz"), "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on 1000 test images" in out and "confusion matrix" in out
    rows = [line for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert sum(int(v) for row in rows[1:11] for v in row.split()[1:]) == 1000


def test_show_prints_ir_and_writes_a_picture(tmp_path, capsys):
    picture = tmp_path / "lenet.png"
    assert main(["show", "lenet5", "--backend", "reference", "--graph", str(picture)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @sequential(%x: f32[N,1,28,28]")
    assert mpimg.imread(picture).shape[0] > 100
    assert main(["show", "lenet5", "--backend", "reference", "--after", "canonicalize"]) == 0
    assert "reshape" in capsys.readouterr().out
    assert main(["show", "lenet5", "--backend", "reference", "--train"]) == 0
    assert "sgd_update" in capsys.readouterr().out


def test_errors_are_reported_not_raised(capsys):
    assert main(["show", "lenet5", "--backend", "reference", "--after", "nonsense"]) == 1
    assert "not in the reference pipeline" in capsys.readouterr().err


def test_svg_picture(tmp_path):
    from convforge.show import model_graph
    from convforge.viz import draw_graph

    graph, _ = model_graph("resnet-small", backend="reference")
    path = draw_graph(graph, tmp_path / "resnet.svg")
    assert path.read_text().lstrip().startswith("<?xml")
    assert np.isfinite(path.stat().st_size)


def test_ctrl_c_keeps_the_last_completed_epoch(tmp_path, monkeypatch):
    from convforge import training

    real = training._run_epoch

    def interrupt_second(step, net, loader, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(step, net, loader, epoch, *args)

    monkeypatch.setattr(training, "_run_epoch", interrupt_second)
    config = training.TrainConfig(
        epochs=3, limit=128, batch_size=32, backend="reference", out=str(tmp_path), progress=False
    )
    result = training.train(config, log=lambda _: None)
    assert result.interrupted and len(result.history) == 1
    assert cf.load(tmp_path / "weights.npz")["optimizer/step"] == 4  # 128 images / 32 per step
    # --epochs 0 would train nothing and overwrite history.json with []: refused (issue 12)
    with pytest.raises(SystemExit) as refused:
        main(
            [
                "train",
                "--epochs",
                "0",
                "--backend",
                "reference",
                "--out",
                str(tmp_path / "none"),
                "--no-progress",
            ]
        )
    assert refused.value.code == 2 and not (tmp_path / "none").exists()
