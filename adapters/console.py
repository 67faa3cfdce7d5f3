"""The console backend: every record as one JSON line on stderr (or a file).

Handy in development and in containers whose log shipper already collects stderr.
Lines use the canonical encoding (:func:`llmvigil.core.model.encode`), so
``vigil import`` reads them back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from ..core.model import encode
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = ["ConsoleBackend"]

CAPABILITIES = Capabilities(holds={
    "spans": "one JSON line each", "scores": "one JSON line each",
    "session_events": "one JSON line each", "metrics": "one JSON line each",
    "alerts": "one JSON line each", "safety_verdicts": "one JSON line each",
})


class ConsoleBackend:
    """Writes records as JSON lines to ``stream`` (default stderr) or ``path``."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        path = settings.get("path")
        self._own = path is not None
        self._out: IO[bytes] = open(path, "ab") if path else sys.stderr.buffer  # noqa: SIM115
        self._lock = threading.Lock()

    def _write(self, records: Sequence[Any]) -> ExportResult:
        data = b"".join(encode(r) + b"\n" for r in records)
        with self._lock:
            self._out.write(data)
            self._out.flush()
        return ExportResult.SUCCESS

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Any]) -> ExportResult:
        return self._write(spans)

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Any]) -> ExportResult:
        return self._write(scores)

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[Any]) -> ExportResult:
        return self._write(events)

    @hookimpl
    def llmvigil_export_metrics(self, metrics: Sequence[Any]) -> ExportResult:
        return self._write(metrics)

    @hookimpl
    def llmvigil_export_alerts(self, alerts: Sequence[Any]) -> ExportResult:
        return self._write(alerts)

    @hookimpl
    def llmvigil_export_safety_verdicts(self, verdicts: Sequence[Any]) -> ExportResult:
        return self._write(verdicts)

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        return getattr(self._out, "name", "stderr")

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        if self._own:
            self._out.close()


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [AdapterInfo(name="console", factory=ConsoleBackend, capabilities=CAPABILITIES,
                        description="JSON lines on stderr (or settings.path)")]
