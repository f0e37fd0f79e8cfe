"""Node attributes: a frozen, ordered, hashable mapping (see :class:`Attrs`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

AttrValue = Any  # int | float | bool | str | None | tuple of those


class Attrs(Mapping[str, AttrValue]):
    """Frozen, ordered, hashable node attributes; lists become tuples."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, AttrValue] | None = None) -> None:
        self._items = tuple((k, _freeze(v)) for k, v in (items or {}).items())

    def __getitem__(self, key: str) -> AttrValue:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._items) == {k: _freeze(v) for k, v in other.items()}
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({dict(self._items)!r})"

    def replace(self, **changes: AttrValue) -> Attrs:
        merged = dict(self._items)
        merged.update(changes)
        return Attrs(merged)


def _freeze(value: AttrValue) -> AttrValue:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # NumPy scalars
        return value.item()
    return value
