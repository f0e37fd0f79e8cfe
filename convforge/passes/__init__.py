"""Graph passes. Importing this package registers every pass by name."""

import importlib

from convforge.passes.manager import (
    DumpIR,
    Instrument,
    Pass,
    PassManager,
    PrintAfter,
    Timing,
    get_pass,
    parse_pipeline,
    register_pass,
)

for _module in ("dce", "cse", "canonicalize", "autodiff", "fold_batchnorm", "fuse", "memory_plan"):
    try:
        importlib.import_module(f"convforge.passes.{_module}")
    except ModuleNotFoundError as _exc:  # a pass module still being written must not break the rest
        if _exc.name != f"convforge.passes.{_module}":
            raise

__all__ = [
    "DumpIR",
    "Instrument",
    "Pass",
    "PassManager",
    "PrintAfter",
    "Timing",
    "get_pass",
    "parse_pipeline",
    "register_pass",
]
