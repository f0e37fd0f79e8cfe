"""``convforge.nn``: PyTorch-style modules with PyTorch's constructor signatures,
parameter names and default initialisation.

    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
    model.state_dict().keys()   # ['0.weight', '0.bias']

Write a non-sequential model by subclassing :class:`Module` and calling
``convforge.functional`` (``F``) in ``forward``; ``x + y`` and ``cf.concat`` work there.
"""

from __future__ import annotations

import inspect
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from convforge.errors import AttributeValueError, ConvforgeError, StateDictError, wrap_error
from convforge.frontend import functional as F
from convforge.frontend import trace
from convforge.ir.ops import registry
from convforge.ir.ops.common import int_tuple
from convforge.ir.types import check_elements
from convforge.serialization import OPTIMIZER_PREFIX

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator used for parameter initialisation."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _rng


class Parameter(np.ndarray):
    """A trainable float32 array owned by a module (an ``ndarray`` subclass).

    Arithmetic on a parameter gives a plain ``ndarray``; the parameter itself keeps its
    identity, which is how tracing finds its ``state_dict`` name.
    """

    def __new__(cls, data: Any) -> Parameter:
        return np.array(data, dtype=np.float32, copy=True).view(cls)

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return arr.view(np.ndarray) if isinstance(arr, np.ndarray) else arr

    def __reduce__(self):  # pickling is never used by convforge; keep plain semantics
        return (np.asarray, (np.asarray(self).copy(),))


class Module:
    """Base class of layers and models: registers parameters, buffers and submodules."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cf_loc", _construction_site())

    # -- registration -----------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise ConvforgeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if name in self._buffers and isinstance(value, np.ndarray) and not isinstance(value, Parameter):
            self._buffers[name] = value  # ``self.num_batches_tracked += 1`` keeps it a buffer
            object.__setattr__(self, name, value)
            return
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-trainable array saved in ``state_dict`` (running statistics)."""
        arr = np.array(value, copy=True)
        self._buffers[name] = arr
        object.__setattr__(self, name, arr)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        if value is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, value if isinstance(value, Parameter) else Parameter(value))

    def add_module(self, name: str, module: Module) -> None:
        setattr(self, name, module)

    # -- traversal --------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for path, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield (f"{path}.{name}" if path else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for path, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield (f"{path}.{name}" if path else name), b

    def num_parameters(self) -> int:
        return sum(int(p.size) for p in self.parameters())

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed as PyTorch keys them."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for path, m in self.named_modules():
            for name, p in m._parameters.items():
                out[f"{path}.{name}" if path else name] = np.array(p, copy=True).view(np.ndarray)
            for name, b in m._buffers.items():
                out[f"{path}.{name}" if path else name] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays into this module's parameters and buffers (checked first, then copied)."""
        targets = dict(self._state_targets())
        checked = check_state_dict(targets, state_dict, type(self).__name__, strict=strict)
        for key, arr in checked.items():
            np.copyto(targets[key], arr, casting="unsafe")

    def _state_targets(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.named_parameters()
        yield from self.named_buffers()

    # -- modes ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -- calling ----------------------------------------------------------------------
    def forward(self, *args: Any) -> Any:
        raise ConvforgeError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = trace.active()
        if tracer is None:
            return self.forward(*args, **kwargs)
        path = _path_of(self, tracer)
        with tracer.module_scope(path, self):
            return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            lines[0] = f"{type(self).__name__}("
            for name, m in self._modules.items():
                child = repr(m).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child}")
            lines.append(")")
            return "\n".join(lines)
        return lines[0] + ")"


def check_state_dict(
    targets: Mapping[str, np.ndarray], state_dict: Mapping[str, Any], owner: str, strict: bool = True
) -> dict[str, np.ndarray]:
    """Validate ``state_dict`` against ``targets`` (name -> array); return arrays to copy."""
    if not isinstance(state_dict, Mapping):
        raise StateDictError(f"{owner}: expected a mapping of name -> array, got {type(state_dict).__name__}")
    # a file saved from a training step also holds optimizer state; a model ignores it
    state_dict = {k: v for k, v in state_dict.items() if not str(k).startswith(OPTIMIZER_PREFIX)}
    if strict:
        missing = [k for k in targets if k not in state_dict]
        extra = [k for k in state_dict if k not in targets]
        if missing:
            raise StateDictError(f"{owner}: state_dict is missing key(s) {', '.join(map(repr, missing))}")
        if extra:
            raise StateDictError(
                f"{owner}: state_dict has unexpected key(s) {', '.join(map(repr, extra))}; "
                f"expected keys: {', '.join(targets)}"
            )
    out = {}
    for key, value in state_dict.items():
        if key not in targets:
            continue
        target = targets[key]
        if hasattr(value, "detach"):  # a torch tensor, accepted for convenience
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001
            raise StateDictError(f"{owner}: entry {key!r} is not an array: {exc}") from None
        if arr.dtype.kind not in "fiub":
            raise StateDictError(
                f"{owner}: entry {key!r} must be numeric like {target.dtype}, got dtype {arr.dtype}"
            )
        if target.dtype.kind == "f" and arr.dtype.kind not in "fiu":
            raise StateDictError(f"{owner}: entry {key!r} must be a float array, got dtype {arr.dtype}")
        if arr.shape != target.shape:
            raise StateDictError(
                f"{owner}: entry {key!r} has shape {list(arr.shape)}, expected {list(target.shape)}"
            )
        if not np.all(np.isfinite(arr)) and arr.dtype.kind == "f":
            raise StateDictError(f"{owner}: entry {key!r} holds NaN or infinite values")
        if target.dtype.kind == "f" and arr.size and arr.dtype.kind in "fiu":
            # 1e300 is finite in float64 but infinite once copied into float32
            limit = float(np.finfo(target.dtype).max)
            biggest = float(np.max(np.abs(arr)))
            if biggest > limit:
                raise StateDictError(
                    f"{owner}: entry {key!r} holds values beyond the {target.dtype} range "
                    f"(|value| up to {biggest:g}, the largest {target.dtype} is {limit:g})"
                )
        out[key] = arr
    return out


def _path_of(module: Module, tracer: trace.Tracer) -> str:
    return tracer.module_paths.get(id(module), type(module).__name__)


def _construction_site() -> str | None:
    """``file.py:line`` where this module was built (for IR provenance): the first frame
    outside ``convforge/frontend``, so zoo models point into ``models/zoo.py``."""
    frontend = os.path.dirname(os.path.abspath(__file__))
    for frame_info in inspect.stack(context=0)[2:]:
        path = os.path.abspath(frame_info.filename)
        if not path.startswith(frontend) and not frame_info.filename.startswith("<"):
            return f"{os.path.basename(path)}:{frame_info.lineno}"
    return None


# =========================================================================================
# Containers
# =========================================================================================
class Sequential(Module):
    """Modules applied in order; children are named ``0``, ``1``, ... as in PyTorch."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise ConvforgeError(f"Sequential: item {name} must be a Module, got {type(m).__name__}")
            self.add_module(name, m)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, index: int | slice) -> Module:
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*mods[index])
        return mods[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of submodules, registered as ``0``, ``1``, ..."""

    def __init__(self, modules: Any = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


# =========================================================================================
# Layers
# =========================================================================================
def _uniform(shape: tuple[int, ...], bound: float, where: str = "parameter") -> Parameter:
    _bounded(shape, where)
    return Parameter(_rng.uniform(-bound, bound, size=shape).astype(np.float32))


def _bounded(shape: tuple[int, ...], where: str, what: str = "parameter") -> tuple[int, ...]:
    """``shape``, refused (a ShapeError naming ``where``) before anything is allocated when it
    would exceed the per-tensor limit (``ir.types.MAX_ELEMENTS``)."""
    try:
        check_elements(shape, what)
    except ConvforgeError as exc:
        raise wrap_error(exc, where) from None
    return shape


def _check_channels(name: str, in_channels: int, out_channels: int, groups: int) -> None:
    for label, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise AttributeValueError(f"{name}: {label} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise AttributeValueError(
            f"{name}: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )


def _weight_and_bias(layer: Module, shape: tuple[int, ...], bias: int | None) -> None:
    """``layer.weight`` of ``shape`` and ``layer.bias`` of ``bias`` features (None: no bias),
    initialised as PyTorch's kaiming_uniform(a=sqrt(5)): uniform in +-1/sqrt(fan_in), fan_in
    being the weight's size over its dim 0 (for a transposed conv too, as PyTorch counts it)."""
    name = type(layer).__name__
    _bounded(shape, name, "weight")
    bound = 1.0 / math.sqrt(math.prod(shape) // shape[0])
    layer.weight = _uniform(shape, bound, name)
    if bias is not None:
        layer.bias = _uniform((bias,), bound, name)
    else:
        layer.register_parameter("bias", None)


#: Conv padding modes, as PyTorch's (``"zeros"`` pads inside the convolution)
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    _dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        n = self._dims
        _check_channels(name, in_channels, out_channels, groups)
        if padding_mode not in _PADDING_MODES:
            raise AttributeValueError(
                f"{name}: padding_mode must be one of {', '.join(map(repr, _PADDING_MODES))}, "
                f"got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_tuple("kernel_size", kernel_size, n, bound="positive", where=name)
        self.stride = int_tuple("stride", stride, n, bound="positive", where=name)
        self.dilation = int_tuple("dilation", dilation, n, bound="positive", where=name)
        self.padding: Any = (
            padding
            if isinstance(padding, str)
            else int_tuple("padding", padding, n, minimum=None, where=name)
        )
        # the op checks the rest ("same"/"valid" resolved as at call time, pads >= 0)
        pads = F.resolve_padding(self.padding, self.kernel_size, self.dilation, self.stride, name)
        attrs = {"stride": self.stride, "padding": pads, "dilation": self.dilation, "groups": groups}
        registry.get(f"conv{n}d").normalize(attrs, where=name)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        _weight_and_bias(self, shape, out_channels if bias else None)

    def _padded(self, x: Any) -> tuple[Any, Any]:
        """(input, conv padding): with a padding_mode other than zeros the input is padded by
        ``F.pad`` in that mode and the convolution pads nothing, as PyTorch does."""
        if self.padding_mode == "zeros":
            return x, self.padding
        n = self._dims
        pads = F.resolve_padding(
            self.padding, self.kernel_size, self.dilation, self.stride, type(self).__name__
        )
        lo, hi = (pads, pads) if len(pads) == n else (pads[:n], pads[n:])
        flat = [p for d in reversed(range(n)) for p in (lo[d], hi[d])]
        return (F.pad(x, flat, mode=self.padding_mode) if any(flat) else x), 0

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,) * self._dims):
            s += f", padding={self.padding}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation) over NCHW input."""

    _dims = 2

    def forward(self, x: Any) -> Any:
        x, padding = self._padded(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation) over NCL input."""

    _dims = 1

    def forward(self, x: Any) -> Any:
        x, padding = self._padded(x)
        return F.conv1d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class _PadNd(Module):
    """``F.pad`` of the last ``_dims`` dims; ``padding`` is an int or ``(left, right[, top, bottom])``."""

    _dims = 2
    _mode = "constant"

    def __init__(self, padding: Any, value: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        n = 2 * self._dims
        self.padding = int_tuple("padding", padding, n, minimum=None, where=name)
        self.value = value
        if self._mode != "constant" and min(self.padding) < 0:
            raise AttributeValueError(f"{name}: padding must be >= 0, got {padding!r}")

    def forward(self, x: Any) -> Any:
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        if len(shape) not in (self._dims + 1, self._dims + 2):
            raise ConvforgeError(
                f"{_where(self)}: expected input of rank {self._dims + 1} or {self._dims + 2}, "
                f"got shape {list(shape)}"
            )
        value = self.value if self._mode == "constant" else None
        return F.pad(x, list(self.padding), self._mode, value)

    def extra_repr(self) -> str:
        return f"{self.padding}" + (f", value={self.value}" if self._mode == "constant" else "")


class ZeroPad2d(_PadNd):
    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)


class ConstantPad2d(_PadNd):
    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding, value)


class ReflectionPad2d(_PadNd):
    _mode = "reflect"


class ReplicationPad2d(_PadNd):
    _mode = "replicate"


class CircularPad2d(_PadNd):
    _mode = "circular"


class ZeroPad1d(_PadNd):
    _dims = 1

    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)


class ConstantPad1d(_PadNd):
    _dims = 1

    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding, value)


class ReflectionPad1d(_PadNd):
    _dims, _mode = 1, "reflect"


class ReplicationPad1d(_PadNd):
    _dims, _mode = 1, "replicate"


class CircularPad1d(_PadNd):
    _dims, _mode = 1, "circular"


class ConvTranspose2d(Module):
    """The transposed 2-D convolution; ``weight`` is ``[in_channels, out_channels / groups, kh, kw]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_channels(name, in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise AttributeValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_tuple("kernel_size", kernel_size, 2, bound="positive", where=name)
        self.stride = int_tuple("stride", stride, 2, bound="positive", where=name)
        self.padding = int_tuple("padding", padding, 2, minimum=0, where=name)
        self.output_padding = int_tuple("output_padding", output_padding, 2, minimum=0, where=name)
        self.dilation = int_tuple("dilation", dilation, 2, bound="positive", where=name)
        attrs = {
            "stride": self.stride,
            "padding": self.padding,
            "output_padding": self.output_padding,
            "dilation": self.dilation,
            "groups": groups,
        }
        registry.get("conv_transpose2d").normalize(attrs, where=name)
        shape = (in_channels, out_channels // groups, *self.kernel_size)
        _weight_and_bias(self, shape, out_channels if bias else None)

    def forward(self, x: Any) -> Any:
        return F.conv_transpose2d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class Linear(Module):
    """``y = x @ weight.T + bias``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        for label, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise AttributeValueError(f"Linear: {label} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        _weight_and_bias(self, (out_features, in_features), out_features if bias else None)

    def forward(self, x: Any) -> Any:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class MaxPool2d(Module):
    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode, self.return_indices = dilation, ceil_mode, bool(return_indices)
        _validate_pool(self)

    def forward(self, x: Any) -> Any:
        """The pooled values, or with ``return_indices`` the pair (values, int64 indices)."""
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )

    def extra_repr(self) -> str:
        return _pool_repr(self)


class MaxUnpool2d(Module):
    """The partial inverse of ``MaxPool2d(return_indices=True)``: ``unpool(x, indices)``."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        name = "MaxUnpool2d"
        self.kernel_size = int_tuple("kernel_size", kernel_size, 2, bound="positive", where=name)
        self.stride = self.kernel_size if stride is None else int_tuple("stride", stride, 2, where=name)
        self.padding = int_tuple("padding", padding, 2, minimum=0, where=name)

    def forward(self, x: Any, indices: Any, output_size: Any = None) -> Any:
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = (
            ceil_mode,
            count_include_pad,
            divisor_override,
        )
        _validate_pool(self)

    def forward(self, x: Any) -> Any:
        return F.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def extra_repr(self) -> str:
        return _pool_repr(self)


def _pool_repr(layer: Module) -> str:
    stride = layer.stride or layer.kernel_size
    return f"kernel_size={layer.kernel_size}, stride={stride}, padding={layer.padding}"


def _validate_pool(layer: Module) -> None:
    attrs = {
        k: getattr(layer, k)
        for k in (
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        )
        if hasattr(layer, k)
    }
    op = "max_pool2d" if isinstance(layer, MaxPool2d) else "avg_pool2d"
    registry.get(op).normalize(attrs, where=type(layer).__name__)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size; ``AdaptiveAvgPool2d(1)`` is global pooling."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Any) -> Any:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Max pooling to a fixed output size that divides the input size; ``AdaptiveMaxPool2d(1)``
    is global max pooling."""

    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        super().__init__()
        if return_indices:
            raise AttributeValueError("AdaptiveMaxPool2d: return_indices=True is not supported")
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x: Any) -> Any:
        return F.adaptive_max_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Upsample(Module):
    """Resize by ``scale_factor`` or to ``size`` (``nearest``, ``nearest-exact``, ``bilinear``)."""

    def __init__(
        self,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> None:
        super().__init__()
        F.check_resize(type(self).__name__, size, scale_factor, mode, align_corners)
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, x: Any) -> Any:
        return F.interpolate(
            x, self.size, self.scale_factor, self.mode, self.align_corners, self.recompute_scale_factor
        )

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


class UpsamplingNearest2d(Upsample):
    def __init__(self, size: Any = None, scale_factor: Any = None) -> None:
        super().__init__(size, scale_factor, "nearest")


class UpsamplingBilinear2d(Upsample):
    """Bilinear with ``align_corners=True``, as PyTorch's."""

    def __init__(self, size: Any = None, scale_factor: Any = None) -> None:
        super().__init__(size, scale_factor, "bilinear", align_corners=True)


class _BatchNorm(Module):
    _ranks: tuple[int, ...] = (4,)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise AttributeValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        if not affine or not track_running_stats:
            raise AttributeValueError(f"{name}: only affine=True, track_running_stats=True is supported")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:  # NaN too
            raise AttributeValueError(f"{name}: eps must be > 0, got {eps!r}")
        if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise AttributeValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        _bounded((num_features,), name, "weight")
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x: Any) -> Any:
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        if len(shape) not in self._ranks:
            want = " or ".join(str(r) for r in self._ranks)
            raise ConvforgeError(
                f"{_where(self)}: expected input of rank {want}, got rank {len(shape)} (shape {list(shape)})"
            )
        if self.training and trace.active() is None:
            self.num_batches_tracked += 1
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over NCHW input, per channel."""

    _ranks = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over [N, C] or [N, C, L] input, per feature (channel)."""

    _ranks = (2, 3)


class LocalResponseNorm(Module):
    """Normalise each element by the squares of its ``size`` neighbouring channels (AlexNet)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        attrs = {"size": size, "alpha": alpha, "beta": beta, "k": k}
        registry.get("local_response_norm").normalize(attrs, where="LocalResponseNorm")

    def forward(self, x: Any) -> Any:
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` dims; ``weight`` / ``bias`` of that shape."""

    def __init__(
        self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        attrs = registry.get("layer_norm").normalize(
            {"normalized_shape": normalized_shape, "eps": eps}, where="LayerNorm"
        )
        self.normalized_shape, self.eps = attrs["normalized_shape"], attrs["eps"]
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, tuple(self.normalized_shape), elementwise_affine, bias)

    def forward(self, x: Any) -> Any:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Normalise each group of ``num_channels / num_groups`` channels; weight and bias per channel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        attrs = registry.get("group_norm").normalize(
            {"num_groups": num_groups, "eps": eps}, where="GroupNorm"
        )
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise AttributeValueError(f"GroupNorm: num_channels must be a positive int, got {num_channels!r}")
        if num_channels % num_groups:
            raise AttributeValueError(
                f"GroupNorm: num_groups={num_groups} must divide num_channels={num_channels}"
            )
        self.num_groups, self.num_channels, self.eps, self.affine = (
            num_groups,
            num_channels,
            attrs["eps"],
            affine,
        )
        _affine_parameters(self, (num_channels,), affine, True)

    def forward(self, x: Any) -> Any:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


def _affine_parameters(norm: Module, shape: tuple[int, ...], affine: bool, bias: bool) -> None:
    """A normalisation layer's ``weight`` (ones) and ``bias`` (zeros) of ``shape``, PyTorch's
    initialisation; ``None`` where ``affine`` (or ``bias``) is off."""
    if affine:
        _bounded(shape, type(norm).__name__, "weight")
        norm.weight = Parameter(np.ones(shape, np.float32))
    else:
        norm.register_parameter("weight", None)
    if affine and bias:
        norm.bias = Parameter(np.zeros(shape, np.float32))
    else:
        norm.register_parameter("bias", None)


class Dropout(Module):
    """Zero elements with probability ``p`` in training; the identity in eval."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise AttributeValueError(f"Dropout: p must be between 0 and 1, got {p!r}")
        self.p = float(p)

    def forward(self, x: Any) -> Any:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Any) -> Any:
        return F.flatten(x, self.start_dim, self.end_dim)


class _Activation(Module):
    """A pointwise layer: ``forward`` is ``F.<_op>(x, *_attrs)``, then PyTorch's ``inplace``
    flag where the function takes one (``_inplace``); a subclass that sets ``_check_attrs``
    has its attributes checked by the op when it is built."""

    _op = ""
    _attrs: tuple[str, ...] = ()
    _inplace = True
    _check_attrs = False

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def _set(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            setattr(self, k, v)
        if self._check_attrs:
            values = {k: getattr(self, k) for k in self._attrs}
            registry.get(self._op).normalize(values, where=type(self).__name__)

    def forward(self, x: Any) -> Any:
        args = [getattr(self, k) for k in self._attrs]
        return getattr(F, self._op)(x, *args, *([self.inplace] if self._inplace else []))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._attrs)


class ReLU(_Activation):
    _op, _inplace = "relu", False


class ReLU6(_Activation):
    _op, _inplace = "relu6", False


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Any) -> Any:
        return F.leaky_relu(x, self.negative_slope)


class Sigmoid(Module):
    def forward(self, x: Any) -> Any:
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Any) -> Any:
        return F.tanh(x)


class ELU(_Activation):
    _op, _attrs, _check_attrs = "elu", ("alpha",), True

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self._set(alpha=alpha)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise AttributeValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Activation):
    _op = "silu"


class Hardswish(_Activation):
    _op = "hardswish"


class Hardsigmoid(_Activation):
    _op = "hardsigmoid"


class Mish(_Activation):
    _op = "mish"


class Hardtanh(_Activation):
    _op, _attrs, _check_attrs = "hardtanh", ("min_val", "max_val"), True

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self._set(min_val=min_val, max_val=max_val)


class Softplus(_Activation):
    _op, _attrs, _inplace, _check_attrs = "softplus", ("beta", "threshold"), False, True

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self._set(beta=beta, threshold=threshold)


class Softmax(_Activation):
    _op, _attrs, _inplace = "softmax", ("dim",), False

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim


class LogSoftmax(_Activation):
    _op, _attrs, _inplace = "log_softmax", ("dim",), False

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim


class Identity(Module):
    def forward(self, x: Any) -> Any:
        return x


def _where(module: Module) -> str:
    tracer = trace.active()
    return tracer.where() if tracer is not None else type(module).__name__


from convforge.frontend.losses import *  # noqa: E402, F401, F403  (the loss modules; they import nn)
from convforge.frontend.sync_batchnorm import SyncBatchNorm  # noqa: E402, F401  (needs _BatchNorm above)
