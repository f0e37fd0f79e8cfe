"""The import layering of pyproject.toml's ``[tool.importlinter]`` contracts holds: ``ir`` imports
nothing of ``passes``, ``backends`` or ``frontend``; ``passes`` nothing of ``backends`` or
``frontend``; ``backends`` nothing of ``frontend``; nothing but the command line imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # run from the repository root, so the contracts read its pyproject.toml and the
    # convforge found first on the path is this checkout's
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, f"import-linter contracts broken:\n{run.stdout}{run.stderr}"
    assert " kept, 0 broken" in run.stdout, run.stdout
