"""Compile visibly: ``eager=True`` compiles before the first call, and a cold kernel cache
shows progress on stderr (silent when every kernel loads from the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import convforge as cf
from convforge import nn, optim
from convforge.backends import progress

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import convforge as cf
    from convforge import nn, optim
    from convforge.backends import cache

    kind = sys.argv[1]
    cf.manual_seed(0)
    if kind == "infer":
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        run = cf.compile(model, (None, 4), backend="numba-cpu", eager=True)
        call = lambda: run(np.ones((5, 4), np.float32))
    else:
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        run = cf.compile_train(model, (None, 4), optimizer=optim.Adam(lr=0.01), backend="numba-cpu",
                               eager=True)
        before = {k: v.copy() for k, v in model.state_dict().items()}
        same = all(np.array_equal(before[k], v) for k, v in run.state_dict().items())
        assert same and run.steps == 0, "eager compile changed the weights"
        call = lambda: run(np.ones((5, 4), np.float32), np.array([0, 1, 2, 0, 1]))
    eager = cache.stats()
    call()
    after = cache.stats()
    print(json.dumps({"eager": [eager["compiled"], eager["loaded"]],
                      "after": [after["compiled"], after["loaded"]]}))
    """
)


def _child(kind: str, cache_dir, env_progress: str, workers: str | None = "0") -> tuple[dict, str]:
    env = dict(os.environ, CONVFORGE_CACHE_DIR=str(cache_dir), CONVFORGE_PROGRESS=env_progress)
    env.pop("CONVFORGE_DEBUG", None)
    env.pop("CONVFORGE_COMPILE_WORKERS", None)
    if workers is not None:
        env["CONVFORGE_COMPILE_WORKERS"] = workers
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("kind", ["infer", "train"])
def test_eager_compiles_before_the_first_call_and_shows_progress(tmp_path, kind):
    cache_dir = tmp_path / "cache"
    counts, err = _child(kind, cache_dir, "1")
    compiled, loaded = counts["eager"]
    assert compiled > 0 and loaded == 0  # an empty cache: everything compiled, by compile*()
    assert counts["after"] == counts["eager"]  # the first call compiled nothing more
    assert f"first run compiles kernels, later runs load them from the cache ({cache_dir})" in err
    assert "compiling @sequential" in err and "kernels" in err and "compiled in" in err

    counts, err = _child(kind, cache_dir, "1")  # a warm cache: everything loads, nothing shown
    assert counts["eager"][0] == 0 and counts["eager"][1] > 0
    assert "compiling" not in err and "first run" not in err


def test_compile_workers_fill_the_cache_before_the_first_call_and_show_progress(tmp_path):
    """With workers (the default: one per CPU) this process only loads what they compiled."""
    cache_dir = tmp_path / "cache"
    counts, err = _child("train", cache_dir, "1", workers="2")
    compiled, loaded = counts["eager"]
    assert compiled == 0 and loaded >= 4 and counts["after"] == counts["eager"]
    assert "compiling @sequential on 2 workers" in err and "kernels" in err


def test_progress_is_off_unless_a_terminal_or_asked(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.enabled()
    assert progress.enabled(True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.enabled() and not progress.enabled(False)
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() and not progress.enabled(False)


def test_eager_on_the_reference_backend_leaves_the_weights(capsys):
    cf.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    step = cf.compile_train(
        model, (None, 1, 4, 4), optimizer=optim.SGD(lr=0.1, momentum=0.9), backend="reference", eager=True
    )
    assert step.steps == 0
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(step.state_dict()[key], value)
    net = cf.compile(model, (None, 1, 4, 4), backend="reference", eager=True, progress=True)
    assert net(np.zeros((1, 1, 4, 4), np.float32)).shape == (1, 3)
    assert "compiling" not in capsys.readouterr().err  # nothing compiles on the reference backend
