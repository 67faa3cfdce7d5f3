"""Reading JSON-lines export files.

One record per line, as :func:`llmvigil.core.model.encode` writes it (tagged by
``type``). Lossless: a record read back equals the record written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ..model import Record, decode
from . import Skipped

__all__ = ["read_jsonl"]

_TAGS = {"span": "spans", "score": "scores", "session_event": "session_events",
         "metric": "metrics", "alert": "alerts", "safety_verdict": "safety_verdicts"}


def _jsonl_problem(where: str, line: bytes, exc: Exception) -> Skipped:
    """A clear message for a line that is not a valid llmvigil record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return Skipped(f"malformed JSON ({exc})", where)
    if not isinstance(obj, dict):
        return Skipped(f"expected a JSON object (a record), got {type(obj).__name__}", where)
    rid = obj.get("id") if isinstance(obj.get("id"), str) else None
    tag = obj.get("type")
    known = ", ".join(_TAGS)
    if tag is None:
        return Skipped(f"no 'type' field (expected one of {known})", where, rid)
    if tag not in _TAGS:
        return Skipped(f"unknown record type {tag!r} (known: {known})", where, rid)
    return Skipped(f"invalid {tag}: {exc}", where, rid, _TAGS[tag])


def read_jsonl(path: Path) -> Iterator[Record | Skipped]:
    """Yield the records of a JSON-lines file; a bad line yields a :class:`Skipped`."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                yield _jsonl_problem(f"{path}:{lineno}", line, exc)
