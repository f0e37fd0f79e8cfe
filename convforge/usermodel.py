"""Models named on the command line: a zoo name, or ``path/to/file.py:ClassName``.

``convforge train --model my_net.py:Net`` imports ``my_net.py`` and builds ``Net()``.
That runs the user's own code, which is what they asked for by naming it; nothing else
convforge loads (weights, ONNX files, the kernel cache) ever executes code.

The class is built without arguments and must be a ``convforge.nn.Module``; its input
shape (without the batch) is its ``input_shape`` attribute if it has one, else MNIST's
``(1, 28, 28)``, what ``train`` and ``evaluate`` feed it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from convforge.errors import ConvforgeError
from convforge.frontend.nn import Module
from convforge.models import get_model

#: the input shape (without the batch) of a user class that declares none
DEFAULT_INPUT_SHAPE = (1, 28, 28)


class ModelSpecError(ConvforgeError):
    """A ``--model`` that names no usable model (missing file or class, not a Module)."""


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` names a class in a Python file (``path/to/file.py:ClassName``)."""
    path, sep, name = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(name)


def display_name(spec: str) -> str:
    """What ``{model}`` in ``--out`` becomes: the zoo name, or the class name of a file spec."""
    return spec.rpartition(":")[2] if is_file_spec(spec) else spec


def load_class(
    spec: str, base: type = Module, what: str = "--model", kind: str = "convforge.nn.Module"
) -> type:
    """The class ``ClassName`` of ``path/to/file.py:ClassName``, a subclass of ``base``
    (importing the file runs it: the user named it)."""
    path_text, _, class_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"{what} {spec}: no such file {path}")
    module_name = f"convforge_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelSpecError(f"{what} {spec}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, not a traceback
        sys.modules.pop(module_name, None)
        raise ModelSpecError(f"{what} {spec}: importing {path} raised {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, base))
        short = kind.removeprefix("convforge.")
        hint = f"; its {short} classes: {', '.join(found)}" if found else f"; it defines no {short} class"
        raise ModelSpecError(f"{what} {spec}: {path} has no class {class_name!r}{hint}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ModelSpecError(f"{what} {spec}: {class_name} is a {type(cls).__name__}, not a {kind} subclass")
    return cls


def resolve_model(spec: str) -> tuple[Module, tuple[int, ...]]:
    """A fresh model and its input shape (without the batch) for a zoo name or a file spec."""
    if not is_file_spec(spec):
        return get_model(spec)
    class_name = spec.rpartition(":")[2]
    cls = load_class(spec)
    try:
        model = cls()
    except Exception as exc:  # noqa: BLE001 - as above: the user's constructor failed
        raise ModelSpecError(
            f"--model {spec}: {class_name}() raised {type(exc).__name__}: {exc} "
            "(the class is built without arguments)"
        ) from None
    shape = getattr(model, "input_shape", DEFAULT_INPUT_SHAPE)
    if not (isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ModelSpecError(
            f"--model {spec}: {class_name}.input_shape must be a tuple of positive ints "
            f"without the batch, like (1, 28, 28); got {shape!r}"
        )
    return model, tuple(shape)
