"""Property tests as a user writes them: ``convforge.testing`` without hypothesis, and the
README's hypothesis example run verbatim (its own settings, not this suite's profile)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

BLOCK_HYPOTHESIS = textwrap.dedent(
    """
    import sys

    class NoHypothesis:
        def find_spec(self, name, path=None, target=None):
            if name == "hypothesis" or name.startswith("hypothesis."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoHypothesis())
    import convforge as cf
    from convforge import nn
    from convforge.testing import assert_backends_agree, tolerance

    cf.manual_seed(0)
    assert_backends_agree(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), (2, 3),
                          backends=["reference", "reference"])
    assert tolerance("f32", "reference", "numba-cpu").rtol > 0
    assert "hypothesis" not in sys.modules
    try:
        from convforge.testing import networks
    except ImportError as exc:
        print("IMPORT ERROR:", exc)
    else:
        raise SystemExit("networks imported without hypothesis")
    """
)


def test_testing_imports_without_hypothesis():
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_HYPOTHESIS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.split("IMPORT ERROR:", 1)[1]
    assert "convforge.testing.networks" in message and "pip install hypothesis" in message


def readme_property_example() -> str:
    """The python block of the README section "Property tests for your own model"."""
    text = README.read_text()
    section = text.split("### Property tests for your own model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's property-test section has no python block"
    return match.group(1)


def test_readme_hypothesis_example_runs_verbatim(tmp_path):
    code = readme_property_example()
    assert "@settings(deadline=None" in code
    (tmp_path / "test_readme_example.py").write_text(code)
    # outside tests/ (no conftest: hypothesis's default profile, as a user has it), a fixed seed
    env = dict(os.environ)
    env.pop("HYPOTHESIS_PROFILE", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0",
         "test_readme_example.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
