"""The in-memory backend: the reference adapter and the test fixture.

It holds every record it receives in lists, thread-safely, so tests (and people
trying a plugin out) can assert on what a backend really received through the
whole pipeline: capture, worker, redaction, outbox.

Setting ``fail`` to ``"retry"`` or ``"failure"`` makes its exports fail that way
and ``delay_s`` makes them slow, to exercise the outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = ["MemoryBackend", "get_memory_backend"]

CAPABILITIES = Capabilities(
    holds={
        "spans": "list MemoryBackend.spans",
        "scores": "list MemoryBackend.scores",
        "session_events": "list MemoryBackend.session_events",
        "metrics": "list MemoryBackend.metrics",
        "alerts": "list MemoryBackend.alerts",
        "safety_verdicts": "list MemoryBackend.safety_verdicts",
    }
)

_instances: dict[str, MemoryBackend] = {}
_instances_lock = threading.Lock()


class MemoryBackend:
    """Keeps every delivered record in memory, keyed by its ``instance`` setting."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.instance = str(settings.get("instance", "default"))
        self.fail: str | None = settings.get("fail")
        self.delay_s = float(settings.get("delay_s", 0.0))
        self.lock = threading.Lock()
        self.spans: list[Span] = []
        self.scores: list[Score] = []
        self.session_events: list[SessionEvent] = []
        self.metrics: list[Metric] = []
        self.alerts: list[Alert] = []
        self.safety_verdicts: list[SafetyVerdict] = []
        self.export_calls = 0
        with _instances_lock:
            _instances[self.instance] = self

    def _store(self, target: list[Any], batch: Sequence[Any]) -> ExportResult:
        self.export_calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail == "retry":
            return ExportResult.RETRY
        if self.fail == "failure":
            return ExportResult.FAILURE
        if self.fail == "raise":
            raise ConnectionError("memory backend configured to raise")
        with self.lock:
            target.extend(batch)
        return ExportResult.SUCCESS

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self._store(self.spans, spans)

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self._store(self.scores, scores)

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        return self._store(self.session_events, events)

    @hookimpl
    def llmvigil_export_metrics(self, metrics: Sequence[Metric]) -> ExportResult:
        return self._store(self.metrics, metrics)

    @hookimpl
    def llmvigil_export_alerts(self, alerts: Sequence[Alert]) -> ExportResult:
        return self._store(self.alerts, alerts)

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        return self._store(self.safety_verdicts, verdicts)

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        return f"in-memory backend {self.instance!r}"


def get_memory_backend(instance: str = "default") -> MemoryBackend:
    """Return the live in-memory backend created for ``instance``.

    Raises:
        KeyError: no memory backend with that ``instance`` setting exists.
    """
    with _instances_lock:
        return _instances[instance]


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="memory",
            factory=MemoryBackend,
            capabilities=CAPABILITIES,
            description="in-process lists; for tests and trying plugins out",
        )
    ]
