"""The command line, continued: --version, models from a user's file, --resume, the
bounds of --epochs / --limit, and `show --train` showing what `train` runs."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

import convforge as cf
from convforge.cli import main

USER_MODEL = textwrap.dedent(
    """
    from convforge import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(self.flat(x))

    class Wide(nn.Module):
        input_shape = (1, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

    NOT_A_MODULE = 3

    class Plain:
        pass
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODEL)
    return path


def _train(*args: str) -> int:
    return main(["train", "--batch-size", "32", "--backend", "reference", "--no-progress", *args])


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"convforge {cf.__version__}"


def test_a_model_from_a_users_file_trains_shows_and_evaluates(tmp_path, user_file, capsys):
    out = tmp_path / "run"
    assert _train("--model", f"{user_file}:TinyNet", "--epochs", "1", "--limit", "64", "--out", str(out)) == 0
    log = capsys.readouterr().out
    assert f"history: {out / 'history.json'}" in log  # where the history went
    assert (out / "weights.npz").is_file() and (out / "history.json").is_file()

    assert (
        main(
            [
                "evaluate",
                str(out / "weights.npz"),
                "--model",
                f"{user_file}:TinyNet",
                "--backend",
                "reference",
            ]
        )
        == 0
    )
    assert "accuracy on 1000 test images" in capsys.readouterr().out

    assert main(["show", "--model", f"{user_file}:TinyNet", "--backend", "reference"]) == 0
    assert capsys.readouterr().out.startswith("graph @tinynet(%x: f32[N,1,28,28]")
    assert main(["show", f"{user_file}:Wide", "--backend", "reference"]) == 0  # its own input_shape
    assert "f32[N,1,8,8]" in capsys.readouterr().out
    assert main(["show", f"{user_file}:Wide", "--input-shape", "1,5,5", "--backend", "reference"]) == 0
    assert "f32[N,1,5,5]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.py:Net", "no such file"),
        ("{file}:Nope", "has no class 'Nope'; its nn.Module classes: TinyNet, Wide"),
        ("{file}:NOT_A_MODULE", "NOT_A_MODULE is a int, not a convforge.nn.Module subclass"),
        ("{file}:Plain", "Plain is a type, not a convforge.nn.Module subclass"),
    ],
)
@pytest.mark.parametrize("command", ["train", "show", "evaluate"])
def test_a_bad_model_file_is_a_usage_error(tmp_path, user_file, capsys, spec, message, command):
    spec = spec.format(file=user_file)
    argv = {
        "train": ["train", "--model", spec, "--out", str(tmp_path / "x"), "--backend", "reference"],
        "show": ["show", "--model", spec, "--backend", "reference"],
        "evaluate": ["evaluate", "w.npz", "--model", spec, "--backend", "reference"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_model_file_that_raises_is_reported(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('oops')\n")
    assert main(["show", "--model", f"{broken}:Net"]) == 2
    assert "importing" in (err := capsys.readouterr().err) and "RuntimeError: oops" in err


@pytest.mark.parametrize("flag", ["--epochs", "--limit"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_epochs_and_limit_must_be_at_least_one(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as refused:
        _train(flag, value, "--out", str(tmp_path / "none"))
    assert refused.value.code == 2 and not (tmp_path / "none").exists()
    assert f"argument {flag}" in capsys.readouterr().err


def test_resume_continues_a_run(tmp_path, user_file, capsys):
    run = tmp_path / "run"
    model = f"{user_file}:TinyNet"
    assert _train("--model", model, "--epochs", "1", "--limit", "64", "--out", str(run)) == 0
    first = cf.load(run / "weights.npz")
    assert int(first["optimizer/step"]) == 2
    capsys.readouterr()
    assert _train("--model", model, "--epochs", "3", "--limit", "64", "--resume", str(run)) == 0
    log = capsys.readouterr().out
    assert "resuming after epoch 1 of 3" in log
    assert re.search(r"epoch  2/3", log) and not re.search(r"epoch  1/3", log)
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert int(cf.load(run / "weights.npz")["optimizer/step"]) == 6  # 2 steps per epoch, continued

    assert _train("--model", model, "--resume", str(tmp_path / "nowhere")) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _train("--model", model, "--resume", str(tmp_path / "empty")) == 1
    assert "it has no weights.npz" in capsys.readouterr().err


def test_show_train_shows_the_optimizer_train_runs(capsys):
    assert main(["show", "lenet5", "--backend", "reference", "--train"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("# training program of `convforge train`")
    assert "SGD(lr=0.05, momentum=0.9" in header and "cosine" in header  # train's defaults
    assert "lr=0.05" in out.split("sgd_update", 1)[1].splitlines()[0]
    argv = ["show", "lenet5", "--backend", "reference", "--train", "--optimizer", "adam", "--lr", "0.002"]
    assert main([*argv, "--schedule", "constant"]) == 0
    out = capsys.readouterr().out
    assert "Adam(lr=0.002" in out.splitlines()[0] and "constant lr=0.002" in out.splitlines()[0]
    assert "adam_update" in out


def test_show_graph_views(tmp_path, capsys):
    both = tmp_path / "train.png"
    fwd = tmp_path / "fwd.png"
    assert main(["show", "lenet5", "--backend", "reference", "--train", "--graph", str(both)]) == 0
    assert (
        main(["show", "lenet5", "--backend", "reference", "--train", "--graph", str(fwd), "--forward-only"])
        == 0
    )
    assert both.stat().st_size > fwd.stat().st_size > 0
