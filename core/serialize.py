"""Turning arbitrary application values into safe, bounded, JSON-able data.

Runs in the background worker, never on the hot path. Whatever the value (cyclic,
enormous, bytes, NaN, an object whose ``__repr__`` raises), :func:`to_safe`
returns plain data and never raises.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Limits", "to_safe", "truncate"]

_SCALARS = (bool, int, type(None))


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much of a value is kept: characters per string, nesting depth, items per
    container."""

    max_chars: int = 4096
    max_depth: int = 8
    max_items: int = 100


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to ``max_chars`` characters, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]"


def to_safe(value: Any, limits: Limits = Limits()) -> Any:
    """Return ``value`` as JSON-able data within ``limits``; never raises."""
    try:
        return _convert(value, limits, 0, set())
    except Exception as exc:  # the last line of defence: a value we cannot walk at all
        return f"<unserialisable {type(value).__name__}: {type(exc).__name__}>"


def _convert(value: Any, limits: Limits, depth: int, seen: set[int]) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, str):
        return truncate(value, limits.max_chars)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: limits.max_chars])
        note = "" if len(value) <= limits.max_chars else f"...[{len(value)} bytes]"
        return {"$bytes": base64.b64encode(raw).decode("ascii") + note}
    if depth >= limits.max_depth:
        return f"<{type(value).__name__} nested too deep>"
    key = id(value)
    if key in seen:
        return f"<cycle {type(value).__name__}>"
    seen.add(key)
    try:
        return _convert_container(value, limits, depth, seen)
    finally:
        seen.discard(key)


def _convert_container(value: Any, limits: Limits, depth: int, seen: set[int]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(list(value.items())):
            if i >= limits.max_items:
                out["..."] = f"{len(value) - limits.max_items} more items"
                break
            out[k if isinstance(k, str) else _safe_repr(k, limits)] = _convert(
                v, limits, depth + 1, seen
            )
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        converted = [_convert(v, limits, depth + 1, seen) for v in items[: limits.max_items]]
        if len(items) > limits.max_items:
            converted.append(f"...{len(items) - limits.max_items} more items")
        return converted
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        return _convert(fields, limits, depth, seen)
    dump = getattr(value, "model_dump", None)  # pydantic v2 models, SDK response objects
    if callable(dump):
        try:
            return _convert(dump(), limits, depth, seen)
        except Exception:
            pass
    return _safe_repr(value, limits)


def _safe_repr(value: Any, limits: Limits) -> str:
    try:
        return truncate(repr(value), limits.max_chars)
    except Exception:
        return f"<{type(value).__name__} with failing __repr__>"
