"""Op families. Importing this package registers every op (see ``registry``)."""

from convforge.ir.ops import (  # noqa: F401  (each import registers its family's ops)
    activation,
    collective,
    conv,
    elementwise,
    fusion,
    linear,
    loss,
    norm,
    optim,
    pool,
    resize,
    shape,
)
from convforge.ir.ops.registry import FusionKind, Op, all_ops, get

__all__ = ["FusionKind", "Op", "all_ops", "get"]
