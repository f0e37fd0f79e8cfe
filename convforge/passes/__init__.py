"""Graph passes. Importing this package registers every pass by name."""

from convforge.passes import (  # noqa: F401  (each import registers its pass)
    autodiff,
    canonicalize,
    cse,
    data_parallel,
    dce,
    fold_batchnorm,
    fuse,
    memory_plan,
)
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
