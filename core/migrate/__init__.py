"""Moving history between backends: files, importers, ``vigil migrate`` and ``compare``.

This package is the vendor-neutral half of migration. Importers (a vendor's history
-> canonical records) are plugins implementing ``llmvigil_importers``; the built-in
``file`` and ``local`` importers live in :mod:`.files`, the streaming copy with
checkpoints and a fidelity report in :mod:`.engine`, shadow-mode comparison in
:mod:`.compare`.

This module holds only the small contract every importer shares, and imports nothing
heavy, so an importer plugin can depend on it cheaply:

* the **read options** an importer receives (:data:`OPTION_KEYS`);
* :class:`Skipped`, what an importer yields for a record it could not read, so the
  run counts it and names it instead of stopping or dropping it silently;
* :func:`record_kind`, :func:`record_time` and :func:`record_key`, the ordering every
  importer follows: within each record kind, records come in ``(time, id)`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span

__all__ = [
    "KIND_OF",
    "OPTION_KEYS",
    "Skipped",
    "record_key",
    "record_kind",
    "record_time",
]

#: Record class -> record kind, as named in capability tables and the local store.
KIND_OF: dict[type[Any], str] = {
    Span: "spans",
    Score: "scores",
    SessionEvent: "session_events",
    Metric: "metrics",
    Alert: "alerts",
    SafetyVerdict: "safety_verdicts",
}

#: The keys of the ``options`` mapping given to ``Importer.read(options)``; an importer
#: ignores keys it does not know, and the engine re-applies the filters it can check
#: itself (time window, kinds, resume point, limit) to whatever an importer yields.
OPTION_KEYS: dict[str, str] = {
    "since_ns": "int | None: only records at or after this epoch time in ns "
                "(spans by start time, other records by their time)",
    "until_ns": "int | None: only records strictly before this time",
    "project": "str | None: the vendor project (dataset, app...) to read",
    "limit": "int | None: at most this many records (a hint: the engine stops anyway)",
    "kinds": "tuple[str, ...] | None: only these record kinds (spans, scores, ...)",
    "after": "dict[kind, (time_ns, id)]: resume point; records of that kind at or "
             "before the key were delivered already",
}


@dataclass(frozen=True)
class Skipped:
    """A record an importer could not read: yielded instead of it, never raised.

    ``where`` locates it for a person (``history.jsonl:17``, ``run 1f2e...``),
    ``record_id`` is its id when known, ``kind`` its record kind when known.
    """

    reason: str
    where: str = ""
    record_id: str | None = None
    kind: str | None = None

    def message(self) -> str:
        """One line naming where, which record and why."""
        parts = [self.where] if self.where else []
        if self.record_id:
            parts.append(f"{(self.kind or 'record').rstrip('s')} {self.record_id}")
        head = ": ".join(parts)
        return f"{head}: {self.reason}" if head else self.reason


def record_kind(record: Any) -> str | None:
    """The record kind (``spans``, ``scores``...) or ``None`` if ``record`` is not one."""
    return KIND_OF.get(type(record))


def record_time(record: Any) -> int:
    """The time that orders and windows a record: a span's start, any other's time."""
    if isinstance(record, Span):
        return record.start_ns
    return int(record.time_ns)


def record_key(record: Any) -> tuple[int, str]:
    """``(time, id)``: the order importers yield each kind in, and the resume point."""
    return record_time(record), record.id
