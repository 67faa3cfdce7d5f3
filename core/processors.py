"""The processor chain the worker runs on every record before any backend sees it.

A processor is a plain callable ``(record) -> record | None`` (``None`` drops the
record on purpose, and the pipeline counts it). The default chain starts with
:class:`Materialize`, which turns captured references into bounded, JSON-able data
and masks secrets and PII in the same pass; it runs before the journal, so nothing
unredacted is ever written to disk or sent. :class:`Redact` masks records that are
already data (the per-backend ``masked`` view).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec

from .capture import CallArgs, StreamedOutput
from .model import Score, Span
from .redaction import CATEGORIES, Redactor
from .serialize import Limits, to_safe

__all__ = ["Materialize", "Processor", "Redact", "backend_view"]

Processor: TypeAlias = Callable[[Any], Any]


class Materialize:
    """Turns what capture kept by reference into safe data within the size limits.

    With a ``redactor``, secrets and PII are masked in the same pass (every string
    value, and whole values under the redactor's masked keys), so the records that
    leave it are both bounded and redacted.
    """

    __slots__ = ("_masked", "_text", "inputs", "limits", "outputs", "redactor")

    def __init__(self, limits: Limits, *, inputs: bool = True, outputs: bool = True,
                 redactor: Redactor | None = None) -> None:
        self.limits = limits
        self.inputs = inputs
        self.outputs = outputs
        self.redactor = redactor if redactor else None
        self._text = self.redactor.text_function if self.redactor is not None else None
        self._masked = self.redactor.masked_keys if self.redactor is not None else frozenset()

    def __call__(self, record: Any) -> Any:
        safe = self._safe
        if isinstance(record, Span):
            value = record.input
            record.input = self._value(value) if value is not None and self.inputs else None
            value = record.output
            record.output = self._value(value) if value is not None and self.outputs else None
            if record.metadata:
                record.metadata = safe(record.metadata)
            if record.attributes:
                record.attributes = safe(record.attributes)
            if record.tags:
                record.tags = [str(t)[: self.limits.max_chars] for t in record.tags]
            if record.error is not None:
                record.error = safe(record.error)
            return record
        if isinstance(record, Score) and self.redactor is not None:
            if record.comment:
                record.comment = self.redactor.text(record.comment)
            if record.correction:
                record.correction = self.redactor.text(record.correction)
        if getattr(record, "metadata", None):
            record.metadata = safe(record.metadata)
        return record

    def _safe(self, value: Any) -> Any:
        return to_safe(value, self.limits, text=self._text, masked_keys=self._masked)

    def _value(self, value: Any) -> Any:
        kind = type(value)
        if kind is not str and kind is not list:
            if isinstance(value, CallArgs):
                value = value.bound()
            elif isinstance(value, StreamedOutput):
                items = value.items
                if items and all(isinstance(i, str) for i in items):
                    value = "".join(items)
                else:
                    value = list(items)
        return self._safe(value)


class Redact:
    """Masks secrets and PII in every text field of a record."""

    __slots__ = ("redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, record: Any) -> Any:
        r = self.redactor
        if not r:
            return record
        if isinstance(record, Span):
            record.input = r.data(record.input)
            record.output = r.data(record.output)
            if record.error:
                record.error = r.text(record.error)
            if record.metadata:
                record.metadata = r.data(record.metadata)
            if record.attributes:
                record.attributes = r.data(record.attributes)
        elif isinstance(record, Score):
            if record.comment:
                record.comment = r.text(record.comment)
            if record.correction:
                record.correction = r.text(record.correction)
            if record.metadata:
                record.metadata = r.data(record.metadata)
        elif getattr(record, "metadata", None):
            record.metadata = r.data(record.metadata)
        return record


_MASK_ALL = Redact(Redactor(CATEGORIES))


def backend_view(level: str) -> Callable[[str, list[Any]], list[Any]] | None:
    """The per-backend transform for a redaction level, or ``None`` for ``full``.

    ``masked`` masks every built-in PII category on copies of the records; ``none``
    removes inputs, outputs and free-text comments. The shared records are never
    changed, so each backend gets its own view.
    """
    if level == "full":
        return None
    if level == "none":
        return _strip_content
    return _mask_content


def _copy(record: Any) -> Any:
    return msgspec.structs.replace(record)


def _mask_content(kind: str, records: list[Any]) -> list[Any]:
    if kind not in ("spans", "scores"):
        return records
    return [_MASK_ALL(_copy(r)) for r in records]


def _strip_content(kind: str, records: list[Any]) -> list[Any]:
    if kind == "spans":
        return [msgspec.structs.replace(r, input=None, output=None) for r in records]
    if kind == "scores":
        return [msgspec.structs.replace(r, comment=None, correction=None) for r in records]
    return records
