"""The worker's batch loop: processors, monitors and counters, record by record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmvigil.core.journal import Journal
from llmvigil.core.model import Alert, Metric, Score, Span
from llmvigil.core.outbox import Outbox
from llmvigil.core.pipeline import Pipeline


def _drop_odd(record: Any) -> Any:
    if isinstance(record, Span) and record.name.endswith(("1", "3", "5", "7", "9")):
        return None
    return record


def _fail_on_sixes(record: Any) -> Any:
    if isinstance(record, Span) and "6" in record.name:
        raise ValueError("six")
    return record


class _Counting:
    """Emits a metric for every span; fails on every fourth record it sees."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, record: Any) -> list[Any]:
        self.seen.append(record)
        if len(self.seen) % 4 == 0:
            raise RuntimeError("fourth")
        if isinstance(record, Span):
            return [Metric(name=f"m.{record.name}", value=1.0, time_ns=1)]
        return []

    def tick(self, now_ns: int) -> list[Any]:
        return []


class _Alerting:
    """Turns metrics into alerts; its output breaks after the first item for scores."""

    observes = (Metric, Score)

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, record: Any) -> Any:
        self.seen.append(record)
        if isinstance(record, Score):
            return self._broken(record)
        return [Alert(rule=record.name, severity="info", message="m", time_ns=1)]

    def _broken(self, record: Any) -> Any:
        yield Metric(name=f"from.{record.name}", value=2.0, time_ns=1)
        raise RuntimeError("half way")

    def tick(self, now_ns: int) -> list[Any]:
        return []


def _records() -> list[Any]:
    out: list[Any] = [Span(trace_id="t" * 32, id=f"{i:016x}", name=f"s{i}", start_ns=1, end_ns=2)
                      for i in range(40)]
    out.insert(5, Score(name="sc", kind="rating", value=1.0, time_ns=1))
    out.insert(20, Score(name="sc2", kind="rating", value=0.0, time_ns=1))
    return out


def _keys(records: list[Any]) -> list[tuple[str, str]]:
    """What tells records apart across the two runs (ids are random)."""
    return [(type(r).__name__, r.rule if isinstance(r, Alert) else r.name) for r in records]


def _reference(pipe: Pipeline, raw: list[Any]) -> dict[str, list[Any]]:
    """The loop as the pipeline's per-record helpers define it."""
    grouped: dict[str, list[Any]] = {}
    for record in raw:
        processed = pipe._process(record)
        if processed is None:
            continue
        pipe._add(grouped, processed)
        for derived in pipe._observe(processed):
            pipe._add(grouped, derived)
    return grouped


def _pipeline(tmp_path: Path, name: str,
              sink: list[tuple[str, list[Any]]]) -> tuple[Pipeline, list[Any]]:
    def export(kind: str, records: list[Any]) -> str:
        sink.append((kind, list(records)))
        return "success"

    monitors = [_Counting(), _Alerting(), _Counting()]
    box = Outbox(name, export, Journal(tmp_path / name, 10_000_000))
    pipe = Pipeline([box], [_drop_odd, _fail_on_sixes], monitors=monitors,
                    flush_interval_s=60)
    return pipe, monitors


def test_batch_loop_equals_the_per_record_helpers(tmp_path: Path) -> None:
    sent: list[tuple[str, list[Any]]] = []
    pipe, monitors = _pipeline(tmp_path, "a", sent)
    ref_pipe, ref_monitors = _pipeline(tmp_path, "b", [])
    try:
        pipe._handle(_records())
        expected = _reference(ref_pipe, _records())
        deadline = time.monotonic() + 10
        while len(sent) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [kind for kind, _ in sent] == ["spans", "scores", "metrics", "alerts"]
        assert {kind: _keys(got) for kind, got in sent} == {
            kind: _keys(got) for kind, got in expected.items()}
        for mon, ref in zip(monitors, ref_monitors, strict=True):
            assert _keys(mon.seen) == _keys(ref.seen)
        for attr in ("processed", "dropped_by_processor", "processor_errors",
                     "monitor_errors"):
            assert getattr(pipe.counters, attr) == getattr(ref_pipe.counters, attr), attr
        c = pipe.counters
        # 20 odd spans dropped; of the 20 even ones s6, s16, s26 and s36 fail; 2 scores
        assert (c.processed, c.dropped_by_processor, c.processor_errors) == (18, 20, 4)
        assert c.monitor_errors == ref_pipe.counters.monitor_errors > 0
        assert len(dict(sent)["metrics"]) > len(dict(sent)["spans"])  # derived, kept
    finally:
        pipe.close(1)
        ref_pipe.close(1)
