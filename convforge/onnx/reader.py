"""Reading ONNX files safely: protobuf parsing by ``onnx`` only, external data kept inside
the model's folder, and the translation of ONNX dtypes, attributes and tensors to NumPy.

Nothing here runs code from the file: ``onnx`` parses protobuf messages, tensors become
NumPy arrays through ``onnx.numpy_helper`` (never pickle), and a tensor stored outside
the file is read only from a plain file inside the model's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from convforge.errors import ConvforgeError, DTypeError

#: ONNX element types convforge computes with at run time, and their IR names
RUNTIME_DTYPES = {1: "f32", 11: "f64"}
#: element types a folded constant (shapes, indices, axes) may have
CONSTANT_KINDS = "fiub"


class OnnxError(ConvforgeError):
    """An ONNX model convforge cannot read or run; the message names the node or input."""


class UnsupportedError(OnnxError):
    """An op, attribute value, dtype or dynamic shape outside what convforge runs."""


def dtype_label(elem_type: int) -> str:
    """The ONNX name of an element type (``FLOAT16``), for messages."""
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"element type {elem_type}"


def read_model(source: Any) -> Any:
    """A checked ``onnx.ModelProto`` from a path, bytes or a ModelProto.

    A file that does not parse, or whose graph the ONNX checker rejects, is an
    :class:`OnnxError`; so is external data that points outside the model's folder.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, onnx.ModelProto):
        model, base = source, None
    elif isinstance(source, (bytes, bytearray)):
        model, base = _parse(bytes(source), "the given bytes"), None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise OnnxError(f"ONNX model file {str(path)!r} does not exist or is not a file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OnnxError(f"cannot read ONNX model {str(path)!r}: {exc}") from None
        model, base = _parse(data, repr(str(path))), path.parent
    else:
        raise OnnxError(
            f"cf.onnx.load expects a path, bytes or an onnx.ModelProto, got {type(source).__name__}"
        )
    external = _external_tensors(model)
    if external:
        if base is None:
            names = ", ".join(repr(t.name) for t in external[:3])
            raise OnnxError(
                f"the model keeps tensor(s) {names} in external data files; load it from its path "
                "so that they can be found next to it"
            )
        for tensor in external:
            _check_external(tensor, base)
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(base))
        except (OSError, ValueError, DecodeError) as exc:
            raise OnnxError(f"cannot read the model's external data: {exc}") from None
    if not model.HasField("graph"):
        raise OnnxError("not an ONNX model: the file has no graph (truncated or not an .onnx file?)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxError(f"not a valid ONNX model: {first}") from None
    return model


def _parse(data: bytes, what: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise OnnxError(f"{what} is empty, not an ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxError(f"{what} is not a readable ONNX model (truncated or corrupt): {exc}") from None


def _external_tensors(model: Any) -> list:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _check_external(tensor: Any, base: Path) -> None:
    """Refuse external data outside ``base`` (an absolute path, ``..``, or a link out)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    root = base.resolve()
    if not location or os.path.isabs(location) or Path(location).drive:
        raise OnnxError(
            f"initializer {tensor.name!r}: external data location {location!r} must be a relative "
            "path inside the model's folder"
        )
    target = (root / location).resolve()
    if root != target and root not in target.parents:
        raise OnnxError(
            f"initializer {tensor.name!r}: external data location {location!r} leaves the model's "
            f"folder {str(root)!r}; refused"
        )
    if not target.is_file():
        raise OnnxError(f"initializer {tensor.name!r}: external data file {location!r} not found")


def tensor_array(tensor: Any, where: str) -> np.ndarray:
    """A TensorProto as a NumPy array; only numeric element types convforge can fold."""
    from onnx import numpy_helper

    if tensor.data_type in (8,):  # STRING
        raise UnsupportedError(f"{where}: string tensors are not supported")
    try:
        arr = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as exc:
        raise OnnxError(f"{where}: tensor {tensor.name!r} cannot be read: {exc}") from None
    if arr.dtype.kind not in CONSTANT_KINDS:
        raise UnsupportedError(f"{where}: tensor {tensor.name!r} has dtype {dtype_label(tensor.data_type)}")
    return np.array(arr)  # writable and owned


def attributes(node: Any, where: str) -> dict[str, Any]:
    """A node's attributes as Python values (ints, floats, strings, lists, arrays)."""
    import onnx

    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.ref_attr_name:
            raise UnsupportedError(f"{where}: attribute {attr.name!r} refers to a function attribute")
        if attr.type == onnx.AttributeProto.TENSOR:
            out[attr.name] = tensor_array(attr.t, f"{where}, attribute {attr.name!r}")
        elif attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedError(f"{where}: attribute {attr.name!r} holds a subgraph (control flow)")
        elif attr.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
            raise UnsupportedError(f"{where}: attribute {attr.name!r} holds a sparse tensor")
        else:
            value = onnx.helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            elif isinstance(value, list):
                value = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
            out[attr.name] = value
    return out


def value_shape(info: Any) -> tuple[int | str | None, ...] | None:
    """A ValueInfo's shape: ints, dim_param strings, ``None`` for an unknown dim; ``None``
    when the rank is unknown."""
    t = info.type
    if not t.HasField("tensor_type"):
        return None
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def value_dtype(info: Any, where: str) -> str:
    """The IR dtype of a graph input or output (float32 or float64), or a DTypeError."""
    t = info.type
    if not t.HasField("tensor_type"):
        raise UnsupportedError(f"{where}: only tensor inputs and outputs are supported (no sequences, maps)")
    elem = t.tensor_type.elem_type
    if elem not in RUNTIME_DTYPES:
        raise DTypeError(
            f"{where}: dtype {dtype_label(elem)} is not supported; convforge runs FLOAT (float32) "
            "and DOUBLE (float64) tensors"
        )
    return RUNTIME_DTYPES[elem]
