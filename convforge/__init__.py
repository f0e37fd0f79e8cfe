"""convforge: a compiler for convolutional neural networks."""

from convforge.errors import ConvforgeError

__version__ = "0.1.0"
__all__ = ["ConvforgeError", "__version__"]
