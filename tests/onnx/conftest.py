"""ONNX tests: their helper module (``onnx_models``) is imported from this folder."""

from __future__ import annotations

import os
import sys

# appended, not prepended: tests/conftest.py must stay the module `conftest` for other tests
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
