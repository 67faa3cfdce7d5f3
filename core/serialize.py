"""Turning arbitrary application values into safe, bounded, JSON-able data.

Runs in the background worker, never on the hot path. Whatever the value (cyclic,
enormous, bytes, NaN, an object whose ``__repr__`` raises), :func:`to_safe`
returns plain data and never raises.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["MASKED_VALUE", "Limits", "to_safe", "truncate"]



@dataclasses.dataclass(frozen=True)
class Limits:
    """How much of a value is kept: characters per string, nesting depth, items per
    container, and nodes in all (shared references would otherwise multiply the work)."""

    max_chars: int = 4096
    max_depth: int = 8
    max_items: int = 100
    max_nodes: int = 10_000


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to ``max_chars`` characters, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]"


#: What replaces the value of a mapping key named in ``masked_keys``.
MASKED_VALUE = "[REDACTED]"


def to_safe(value: Any, limits: Limits = Limits(), *,
            text: Callable[[str], str] | None = None,
            masked_keys: Collection[str] = ()) -> Any:
    """Return ``value`` as JSON-able data within ``limits``; never raises.

    One element that cannot be read (its ``__repr__``, ``items()`` or iteration
    raises) becomes a placeholder string; its siblings are kept. ``text``, when
    given, rewrites every string value (redaction, in the same pass); the value of
    a mapping key whose lower-cased name is in ``masked_keys`` becomes
    :data:`MASKED_VALUE`.
    """
    try:
        kind = type(value)
        if kind is str and value.isascii() and len(value) <= limits.max_chars:
            return value if text is None else text(value)  # the common case, no walk
        if kind is list:
            rows = _rows(value, limits, text, masked_keys)
            if rows is not None:
                return rows
        return _Walk(limits, text, masked_keys).convert(value, 0)
    except Exception as exc:  # the last line of defence: a value we cannot walk at all
        return f"<unserialisable {type(value).__name__}: {type(exc).__name__}>"


_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _rows(value: list[Any], limits: Limits, text: Callable[[str], str] | None,
          masked: Collection[str]) -> list[dict[str, Any]] | None:
    """What :class:`_Walk` makes of a list of dicts of short ASCII strings (chat
    messages), or ``None`` when ``value`` is not one and needs the walk.

    Within the limits none of the walk's placeholders can appear, and a list whose
    items are all dicts of strings holds no cycle, so each string is kept as is (or
    rewritten by ``text``) and each masked key's value masked, unread.
    """
    max_chars = limits.max_chars
    max_items = limits.max_items
    if limits.max_depth < 2 or len(value) > max_items:
        return None
    nodes = 1 + len(value)  # at least what the walk would count
    out: list[dict[str, Any]] = []
    try:
        for item in value:
            if type(item) is not dict or len(item) > max_items:
                return None
            nodes += len(item)
            row: dict[str, Any] = {}
            for k, v in item.items():
                if type(k) is not str or not k.isascii() or len(k) > max_chars:
                    return None
                if masked and k.lower() in masked:
                    row[k] = MASKED_VALUE
                elif type(v) is str and v.isascii() and len(v) <= max_chars:
                    row[k] = v if text is None else text(v)
                else:
                    return None
            out.append(row)
    except Exception:  # a failing ``text``: the walk puts the placeholder in its place
        return None
    return out if nodes <= limits.max_nodes else None


def _text(value: str, max_chars: int) -> str:
    text = truncate(str.__str__(value), max_chars)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no encoder would take them
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class _Walk:
    __slots__ = ("limits", "masked_keys", "nodes", "seen", "text")

    def __init__(self, limits: Limits, text: Callable[[str], str] | None = None,
                 masked_keys: Collection[str] = ()) -> None:
        self.limits = limits
        self.text = text
        self.masked_keys = masked_keys
        self.nodes = 0
        self.seen: set[int] = set()

    def convert(self, value: Any, depth: int) -> Any:
        self.nodes += 1
        kind = type(value)
        if kind is str:
            if not (value.isascii() and len(value) <= self.limits.max_chars):
                value = _text(value, self.limits.max_chars)
            return value if self.text is None else self.text(value)
        if kind is dict or kind is list:
            return self._nested(value, depth)
        if value is None or value is True or value is False:
            return value
        if isinstance(value, int):
            if isinstance(value, bool):
                return bool(value)
            value = int(value)
            return value if _INT_MIN <= value <= _INT_MAX else f"<int of {value.bit_length()} bits>"
        if isinstance(value, str):
            value = _text(value, self.limits.max_chars)
            return value if self.text is None else self.text(value)
        if isinstance(value, float):
            value = float(value)  # subclasses (numpy.float64) become plain floats
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            limit = self.limits.max_chars
            raw = bytes(value[:limit])
            note = "" if len(value) <= limit else f"...[{len(value)} bytes]"
            return {"$bytes": base64.b64encode(raw).decode("ascii") + note}
        return self._nested(value, depth)

    def _nested(self, value: Any, depth: int) -> Any:
        if depth >= self.limits.max_depth:
            return f"<{type(value).__name__} nested too deep>"
        if self.nodes > self.limits.max_nodes:
            return "...[truncated: value too large]"
        key = id(value)
        if key in self.seen:
            return f"<cycle {type(value).__name__}>"
        self.seen.add(key)
        try:
            return self._container(value, depth)
        finally:
            self.seen.discard(key)

    def child(self, value: Any, depth: int) -> Any:
        if type(value) is str and value.isascii() and len(value) <= self.limits.max_chars:
            self.nodes += 1  # the common leaf, without the calls below
            return value if self.text is None else self.text(value)
        try:
            return self.convert(value, depth)
        except Exception as exc:
            return f"<unserialisable {type(value).__name__}: {type(exc).__name__}>"

    def _container(self, value: Any, depth: int) -> Any:
        limits = self.limits
        kind = type(value)
        if kind is dict or (kind is not list and isinstance(value, Mapping)):
            out: dict[str, Any] = {}
            masked = self.masked_keys
            for i, (k, v) in enumerate(list(value.items())):
                if i >= limits.max_items or self.nodes > limits.max_nodes:
                    out["..."] = f"{len(value) - i} more items"
                    break
                if type(k) is str and k.isascii() and len(k) <= limits.max_chars:
                    name = k
                    if masked and name.lower() in masked:
                        out[name] = MASKED_VALUE
                        continue
                elif isinstance(k, str):
                    name = _text(k, limits.max_chars)
                    if masked and name.lower() in masked:
                        out[name] = MASKED_VALUE
                        continue
                else:
                    name = self.repr(k)
                if type(v) is str and v.isascii() and len(v) <= limits.max_chars:
                    self.nodes += 1  # child()'s fast path, inlined for the common leaf
                    out[name] = v if self.text is None else self.text(v)
                else:
                    out[name] = self.child(v, depth + 1)
            return out
        if kind is list or isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            converted = []
            for i, v in enumerate(items[: limits.max_items]):
                if self.nodes > limits.max_nodes:
                    converted.append(f"...{len(items) - i} more items")
                    return converted
                converted.append(self.child(v, depth + 1))
            if len(items) > limits.max_items:
                converted.append(f"...{len(items) - limits.max_items} more items")
            return converted
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {}
            for f in dataclasses.fields(value):
                try:
                    fields[f.name] = getattr(value, f.name, None)
                except Exception as exc:
                    fields[f.name] = f"<unreadable: {type(exc).__name__}>"
            return self._container(fields, depth)
        dump = getattr(value, "model_dump", None)  # pydantic v2 models, SDK response objects
        if callable(dump):
            try:
                return self.convert(dump(), depth)
            except Exception:
                pass
        return self.repr(value)

    def repr(self, value: Any) -> str:
        try:
            text = _text(repr(value), self.limits.max_chars)
        except Exception:
            return f"<{type(value).__name__} with failing __repr__>"
        return text if self.text is None else self.text(text)
