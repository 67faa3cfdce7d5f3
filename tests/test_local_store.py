"""The local SQLite store, its adapter, and the report queries over it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import llmvigil.plugins.hookspecs
import numpy as np
import pluggy
import pytest
from llmvigil.adapters import local as local_module
from llmvigil.adapters.local import LocalBackend, LocalStore
from llmvigil.core import store_queries
from llmvigil.core.errors import ConfigError, VigilError
from llmvigil.core.model import (
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    StreamStats,
    Usage,
)
from llmvigil.core.store_queries import TABLES, parse_since, record_counts, report
from llmvigil.plugins.types import RECORD_KINDS, AdapterInfo, ExportResult

T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z


def sample_records() -> dict[str, list[Record]]:
    """Two records of every kind, with most optional fields set."""
    spans: list[Record] = [
        Span(
            id="s1", trace_id="t1", name="answer", kind="chain", start_ns=T0,
            end_ns=T0 + 2_000_000_000, status="ok", feature="chat", user_id="u1",
            session_id="sess1", environment="prod", release="1.2.3", tags=["a", "b"],
            metadata={"k": [1, 2]}, input={"q": "hi"}, output="hello",
        ),
        Span(
            id="s2", trace_id="t1", parent_id="s1", name="anthropic.messages", kind="llm",
            start_ns=T0 + 100, end_ns=T0 + 1_500_000_000, status="error",
            error="overloaded", error_type="OverloadedError", model="claude-x",
            response_model="claude-x-2024", provider="anthropic",
            usage=Usage(input_tokens=10, output_tokens=20, cache_read_tokens=3,
                        cache_write_tokens=4),
            cost_usd=0.0123, price_source="builtin", ttft_s=0.25,
            stream=StreamStats(items=5, n=4, mean_s=0.1, p50_s=0.1, p95_s=0.2, max_s=0.3),
            feature="chat", user_id="u1", session_id="sess1",
        ),
    ]
    return {
        "spans": spans,
        "scores": [
            Score(id="sc1", name="thumbs", kind="thumbs_up", value=1.0, time_ns=T0 + 5,
                  trace_id="t1", span_id="s1", user_id="u1", session_id="sess1",
                  feature="chat", source="user"),
            Score(id="sc2", name="judge", kind="judge", label="bad", time_ns=T0 + 6,
                  comment="wrong date", metadata={"model": "m"}),
        ],
        "session_events": [
            SessionEvent(id="e1", session_id="sess1", event="start", time_ns=T0 + 1,
                         user_id="u1", feature="chat"),
            SessionEvent(id="e2", session_id="sess1", event="task_complete", time_ns=T0 + 9,
                         trace_id="t1"),
        ],
        "metrics": [
            Metric(id="m1", name="ttft_p95_s", value=0.4, time_ns=T0 + 2, window_s=60.0,
                   labels={"feature": "chat", "model": "claude-x"}, unit="s"),
            Metric(id="m2", name="cost_usd_per_hour", value=1.5, time_ns=T0 + 3),
        ],
        "alerts": [
            Alert(id="a1", rule="ttft_p95", severity="warning", message="slow",
                  time_ns=T0 + 4, value=3.0, threshold=2.0, labels={"feature": "chat"}),
            Alert(id="a2", rule="cost", severity="critical", message="over budget",
                  time_ns=T0 + 8),
        ],
        "safety_verdicts": [
            SafetyVerdict(id="v1", action="block", time_ns=T0 + 7, reason="pii",
                          category="pii", decided_by="regex:ssn", trace_id="t1",
                          span_id="s2"),
            SafetyVerdict(id="v2", action="serve", time_ns=T0 + 10),
        ],
    }


def all_records() -> list[Record]:
    return [r for batch in sample_records().values() for r in batch]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = LocalStore(tmp_path / "vigil.db")
    yield s
    s.close()


# ---------------------------------------------------------------------------
# LocalStore
# ---------------------------------------------------------------------------


def test_every_kind_round_trips(store: LocalStore) -> None:
    store.write(all_records())
    for kind, records in sample_records().items():
        assert list(store.read(kind)) == records
        assert store.count(kind) == len(records)


def test_query_columns_hold_the_record_fields(store: LocalStore, tmp_path: Path) -> None:
    store.write(all_records())
    span = sample_records()["spans"][1]
    assert isinstance(span, Span) and span.usage is not None
    expected_span = {
        "trace_id": span.trace_id, "parent_id": span.parent_id, "name": span.name,
        "kind": span.kind, "start_ns": span.start_ns, "end_ns": span.end_ns,
        "status": span.status, "error_type": span.error_type, "model": span.model,
        "provider": span.provider, "feature": span.feature, "user_id": span.user_id,
        "session_id": span.session_id, "input_tokens": 10, "output_tokens": 20,
        "cache_read_tokens": 3, "cache_write_tokens": 4, "cost_usd": span.cost_usd,
        "ttft_s": span.ttft_s,
    }
    conn = sqlite3.connect(tmp_path / "vigil.db")
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM spans WHERE id = 's2'").fetchone()
        assert {k: row[k] for k in expected_span} == expected_span
        metric = conn.execute("SELECT * FROM metrics WHERE id = 'm1'").fetchone()
        assert (metric["name"], metric["value"], metric["time_ns"]) == ("ttft_p95_s", 0.4, T0 + 2)
        assert metric["labels"] == '{"feature":"chat","model":"claude-x"}'
        score = conn.execute("SELECT * FROM scores WHERE id = 'sc1'").fetchone()
        assert (score["trace_id"], score["span_id"], score["kind"], score["value"],
                score["feature"]) == ("t1", "s1", "thumbs_up", 1.0, "chat")
        verdict = conn.execute("SELECT * FROM safety_verdicts WHERE id = 'v1'").fetchone()
        assert (verdict["action"], verdict["category"], verdict["trace_id"]) == (
            "block", "pii", "t1")
        alert = conn.execute("SELECT * FROM alerts WHERE id = 'a2'").fetchone()
        assert (alert["rule"], alert["severity"], alert["time_ns"]) == ("cost", "critical",
                                                                        T0 + 8)
        event = conn.execute("SELECT * FROM session_events WHERE id = 'e1'").fetchone()
        assert (event["session_id"], event["event"], event["user_id"]) == ("sess1", "start",
                                                                            "u1")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_queries.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_upsert_is_idempotent_and_replaces(store: LocalStore) -> None:
    records = all_records()
    store.write(records)
    store.write(records)
    assert {k: store.count(k) for k in TABLES} == {k: 2 for k in TABLES}

    old = sample_records()["spans"][1]
    assert isinstance(old, Span)
    updated = Span(id=old.id, trace_id=old.trace_id, parent_id=old.parent_id, name=old.name,
                   kind="llm", start_ns=old.start_ns, end_ns=old.end_ns, status="ok",
                   cost_usd=0.5, feature="search")
    store.write([updated])
    assert store.count("spans") == 2
    assert list(store.read("spans"))[1] == updated
    figures = report(store.path)["features"]
    assert figures["search"]["cost_usd"] == 0.5 and figures["search"]["span_errors"] == 0


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1_000, 4_099])
def test_batches_of_any_size_with_repeated_ids_keep_the_last(store: LocalStore, n: int) -> None:
    """Rows go many to a statement; sizes around the chunk and ids repeated in a batch."""
    start = 1_700_000_000 * 10**9
    spans = [Span(trace_id=f"{i:032x}", name=f"s{i}", start_ns=start + i, end_ns=start + i + 1,
                  cost_usd=i / 7) for i in range(n)]
    again = [Span(id=s.id, trace_id=s.trace_id, name="again", start_ns=s.start_ns,
                  end_ns=s.end_ns, cost_usd=1.0) for s in spans[: n // 3]]
    store.write([*spans, *again])
    assert store.count("spans") == n
    by_id = {s.id: s for s in store.read("spans")}
    assert [by_id[s.id].name for s in spans] == ["again"] * len(again) + [
        s.name for s in spans[len(again):]]
    assert by_id[spans[-1].id] == spans[-1]
    assert report(store.path)["totals"]["cost_usd"] == pytest.approx(
        len(again) + sum(s.cost_usd or 0 for s in spans[len(again):]))


def test_read_windows_limits_and_pages(store: LocalStore) -> None:
    spans = [Span(id=f"x{i:05d}", trace_id="t", start_ns=T0 + i // 2, end_ns=T0 + i)
             for i in range(2500)]
    store.write(list(reversed(spans)))
    assert [s.id for s in store.read("spans")] == [s.id for s in spans]
    assert [s.id for s in store.read("spans", limit=1500)] == [s.id for s in spans[:1500]]
    window = list(store.read("spans", since_ns=T0 + 100, until_ns=T0 + 1100))
    assert [s.id for s in window] == [s.id for s in spans if T0 + 100 <= s.start_ns < T0 + 1100]
    assert list(store.read("spans", limit=0)) == []


def test_unknown_kind_and_non_records_are_rejected(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="known kinds: spans, scores"):
        store.count("span")
    with pytest.raises(ValueError, match="unknown record kind"):
        list(store.read("nope"))
    with pytest.raises(TypeError, match="not an llmvigil record: dict"):
        store.write([{"id": "x"}])  # type: ignore[list-item]
    store.write([])


def test_file_modes_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        path = tmp_path / "deep" / "er" / "vigil.db"
        s = LocalStore(path)
        s.write(all_records())
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        wal = path.with_name("vigil.db-wal")
        shm = path.with_name("vigil.db-shm")
        assert wal.exists() and shm.exists()  # WAL mode, connection still open
        assert wal.stat().st_mode & 0o777 == 0o600
        assert shm.stat().st_mode & 0o777 == 0o600
        s.close()
    finally:
        os.umask(old_umask)


def test_many_threads_one_store(store: LocalStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for b in range(10):
                store.write([Span(id=f"th{n}-{b}-{i}", trace_id="t", start_ns=i)
                             for i in range(50)])
                store.count("spans")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count("spans") == 6 * 10 * 50


# Spawned children cannot import a test module loaded by pytest's importlib mode, so
# the worker is source text run by the builtin exec (picklable by reference).
_WORKER = """
from llmvigil.adapters.local import LocalStore
from llmvigil.core.model import Span

barrier.wait(timeout=60)  # every process opens the brand-new file at once
store = LocalStore(path)
spans = [
    Span(id=(f"shared-{i // 10}" if i % 10 == 0 else f"w{worker}-{i}"), trace_id=f"w{worker}",
         start_ns=i, end_ns=i + 1, feature=f"w{worker}")
    for i in range(n_spans)
]
for start in range(0, len(spans), batch):
    store.write(spans[start:start + batch])
store.close()
"""


def test_several_processes_write_one_store(tmp_path: Path) -> None:
    workers, n_spans, batch = 4, 2000, 100
    path = tmp_path / "shared" / "vigil.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [
        ctx.Process(
            target=exec,
            args=(_WORKER, {"path": str(path), "worker": w, "n_spans": n_spans,
                            "batch": batch, "barrier": barrier}),
        )
        for w in range(workers)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers  # nothing escaped, no lock errors
    assert time.monotonic() - started < 60

    expected = {f"shared-{i // 10}" for i in range(0, n_spans, 10)} | {
        f"w{w}-{i}" for w in range(workers) for i in range(n_spans) if i % 10
    }
    assert len(expected) == workers * n_spans * 9 // 10 + n_spans // 10
    assert record_counts(path)["spans"] == len(expected)
    with LocalStore(path) as s:
        assert {sp.id for sp in s.read("spans")} == expected


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    LocalStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {store_queries.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(VigilError, match="upgrade llmvigil"):
        LocalStore(path)
    with pytest.raises(VigilError, match="upgrade llmvigil"):
        report(path)


# ---------------------------------------------------------------------------
# report / record_counts
# ---------------------------------------------------------------------------


def make_traffic(rng: np.random.Generator) -> list[Span]:
    """Requests (a root chain span + one llm child) over three features, one None."""
    spans: list[Span] = []
    for i in range(300):
        feature = ("chat", "search", None)[i % 3]
        start = T0 + i * 1_000_000_000
        duration = int(rng.lognormal(20, 0.6))
        root = Span(id=f"r{i}", trace_id=f"t{i}", name="handle", kind="chain",
                    start_ns=start, end_ns=start + duration,
                    status="error" if rng.random() < 0.12 else "ok", feature=feature)
        priced = rng.random() < 0.9
        child = Span(
            id=f"c{i}", trace_id=f"t{i}", parent_id=root.id, name="llm", kind="llm",
            start_ns=start + 10, end_ns=start + duration - 10,
            status="error" if rng.random() < 0.05 else "ok", feature=feature,
            usage=Usage(input_tokens=int(rng.integers(10, 2000)),
                        output_tokens=int(rng.integers(1, 800)),
                        cache_read_tokens=int(rng.integers(0, 100)),
                        cache_write_tokens=int(rng.integers(0, 50))),
            cost_usd=float(rng.random() / 100) if priced else None,
            ttft_s=float(rng.random()) if rng.random() < 0.7 else None,
        )
        spans += [root, child]
    return spans


def expected_figures(spans: list[Span]) -> dict[str, Any]:
    roots = [s for s in spans if s.parent_id is None]
    errors = sum(s.status == "error" for s in roots)
    durations = [(s.end_ns - s.start_ns) / 1e9 for s in roots]
    ttfts = [s.ttft_s for s in spans if s.ttft_s is not None]
    usages = [s.usage for s in spans if s.usage is not None]
    return {
        "requests": len(roots),
        "errors": errors,
        "error_rate": errors / len(roots),
        "latency_p50_s": pytest.approx(float(np.percentile(durations, 50)), rel=1e-12),
        "latency_p95_s": pytest.approx(float(np.percentile(durations, 95)), rel=1e-12),
        "ttft_mean_s": pytest.approx(statistics.fmean(ttfts), rel=1e-12),
        "ttft_count": len(ttfts),
        "spans": len(spans),
        "span_errors": sum(s.status == "error" for s in spans),
        "input_tokens": sum(u.input_tokens for u in usages),
        "output_tokens": sum(u.output_tokens for u in usages),
        "cache_read_tokens": sum(u.cache_read_tokens for u in usages),
        "cache_write_tokens": sum(u.cache_write_tokens for u in usages),
        "cost_usd": pytest.approx(sum(s.cost_usd or 0.0 for s in spans), rel=1e-12),
        "unpriced_llm_spans": sum(s.kind == "llm" and s.cost_usd is None for s in spans),
    }


def test_report_matches_an_independent_computation(store: LocalStore) -> None:
    spans = make_traffic(np.random.default_rng(7))
    store.write(spans)
    store.write(all_records()[2:])  # non-span records must not disturb the figures

    got = report(store.path)
    assert got["path"] == str(store.path)
    assert got["since_ns"] is None
    assert got["totals"] == expected_figures(spans)
    assert list(got["features"]) == ["(none)", "chat", "search"]
    for label, feature in (("(none)", None), ("chat", "chat"), ("search", "search")):
        assert got["features"][label] == expected_figures(
            [s for s in spans if s.feature == feature]
        )
    assert got["time_range"]["start_ns"] == min(s.start_ns for s in spans)
    assert got["time_range"]["end_ns"] == max(s.end_ns for s in spans)
    assert got["time_range"]["start"] == "2024-05-01T12:00:00Z"

    since = T0 + 150 * 1_000_000_000
    windowed = report(store.path, since_ns=since)
    later = [s for s in spans if s.start_ns >= since]
    assert windowed["totals"] == expected_figures(later)
    assert windowed["features"]["chat"] == expected_figures(
        [s for s in later if s.feature == "chat"]
    )


def test_report_of_empty_and_missing_stores(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "vigil.db"
    with pytest.raises(FileNotFoundError, match="no records yet") as info:
        report(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="no records yet"):
        record_counts(missing)
    assert not missing.parent.exists()  # reading never creates the store

    LocalStore(tmp_path / "empty.db").close()
    empty = report(tmp_path / "empty.db")
    assert empty["features"] == {} and empty["time_range"] is None
    assert empty["totals"]["requests"] == 0
    assert empty["totals"]["error_rate"] is None and empty["totals"]["latency_p95_s"] is None
    assert record_counts(tmp_path / "empty.db") == dict.fromkeys(TABLES, 0)

    (tmp_path / "blank.db").touch()  # created but not yet initialised by a writer
    assert record_counts(tmp_path / "blank.db") == dict.fromkeys(TABLES, 0)
    assert report(tmp_path / "blank.db")["totals"]["spans"] == 0

    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError, match=r"junk\.db"):
        record_counts(tmp_path / "junk.db")


def test_record_counts(store: LocalStore) -> None:
    store.write([*all_records(), Metric(name="x", value=1.0)])
    counts = record_counts(store.path)
    assert counts == {**dict.fromkeys(TABLES, 2), "metrics": 3}


def test_report_reads_while_a_writer_holds_the_write_lock(store: LocalStore) -> None:
    store.write(make_traffic(np.random.default_rng(1))[:20])
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM spans")
    try:
        assert report(store.path)["totals"]["spans"] == 20  # WAL: readers see the snapshot
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# ---------------------------------------------------------------------------
# parse_since
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 7 * 86400), ("1w", 7 * 86400),
     ("1.5h", 5400), (" 2H ", 7200), ("0m", 0)],
)
def test_parse_since_durations(text: str, seconds: int) -> None:
    now = T0 + 123
    assert parse_since(text, now_ns=now) == now - seconds * 10**9


def test_parse_since_defaults_to_the_clock() -> None:
    before = time.time_ns()
    got = parse_since("1h")
    assert before - 3600 * 10**9 <= got <= time.time_ns() - 3600 * 10**9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T12:00:00+00:00", T0),
        ("2024-05-01T14:00:00+02:00", T0),
        ("2024-05-01 12:00:00.250z", T0 + 250_000_000),
        ("2024-05-01", int(datetime(2024, 5, 1).timestamp()) * 10**9),
        ("2024-05-01T12:30", int(datetime(2024, 5, 1, 12, 30).timestamp()) * 10**9),
    ],
)
def test_parse_since_iso_8601(text: str, expected: int) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "-5m", "", "15x", "2024-13-01", "h"])
def test_parse_since_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration back from now \(30s, 15m, 2h, 7d") as info:
        parse_since(text)
    assert repr(text) in str(info.value) and "ISO-8601" in str(info.value)


# ---------------------------------------------------------------------------
# The adapter, through a real plugin manager
# ---------------------------------------------------------------------------


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(llmvigil.plugins.hookspecs.PROJECT_NAME)
    pm.add_hookspecs(llmvigil.plugins.hookspecs)
    pm.register(local_module, name="llmvigil.adapters.local")
    return pm


def test_adapter_info() -> None:
    pm = plugin_manager()
    (infos,) = pm.hook.llmvigil_adapters()
    (info,) = infos
    assert isinstance(info, AdapterInfo)
    assert info.name == "local" and info.factory is LocalBackend
    assert info.description == "SQLite file on this machine (default)"
    assert set(info.capabilities.holds) == set(RECORD_KINDS)


def test_backend_exports_every_kind_through_hooks(tmp_path: Path) -> None:
    pm = plugin_manager()
    info = pm.hook.llmvigil_adapters()[0][0]
    path = tmp_path / "store" / "vigil.db"
    backend = info.factory({"path": str(path)})
    pm.register(backend, name="backend:local")
    records = sample_records()
    hook = pm.hook
    assert hook.llmvigil_export_spans(spans=records["spans"]) is ExportResult.SUCCESS
    assert hook.llmvigil_export_scores(scores=records["scores"]) is ExportResult.SUCCESS
    assert (hook.llmvigil_export_session_events(events=records["session_events"])
            is ExportResult.SUCCESS)
    assert hook.llmvigil_export_metrics(metrics=records["metrics"]) is ExportResult.SUCCESS
    assert hook.llmvigil_export_alerts(alerts=records["alerts"]) is ExportResult.SUCCESS
    assert (hook.llmvigil_export_safety_verdicts(verdicts=records["safety_verdicts"])
            is ExportResult.SUCCESS)
    assert hook.llmvigil_flush(timeout_s=1.0) is True
    description = hook.llmvigil_check(timeout_s=1.0)
    assert str(path) in description and "2 spans" in description
    assert "2 safety_verdicts" in description
    hook.llmvigil_shutdown(timeout_s=1.0)
    assert record_counts(path) == dict.fromkeys(TABLES, 2)
    with LocalStore(path) as s:
        for kind, batch in records.items():
            assert list(s.read(kind)) == batch


def test_backend_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = LocalBackend({})
    try:
        assert backend.store.path == Path(".vigil/vigil.db")
        assert (tmp_path / ".vigil" / "vigil.db").is_file()
    finally:
        backend.store.close()


def test_backend_retries_when_the_store_stays_locked(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    backend = LocalBackend({"path": str(path), "busy_timeout_s": 0.2})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert backend.llmvigil_export_spans(sample_records()["spans"]) is ExportResult.RETRY
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert backend.llmvigil_export_spans(sample_records()["spans"]) is ExportResult.SUCCESS
    backend.llmvigil_shutdown(1.0)


def test_backend_reports_permanent_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = LocalBackend({"path": str(tmp_path / "vigil.db")})
    unencodable = Span(trace_id="t", input=object())
    with caplog.at_level(logging.WARNING, logger="llmvigil.adapters.local"):
        result = backend.llmvigil_export_spans([unencodable])
    assert result is ExportResult.FAILURE
    assert "1 of 1 spans could not be stored and are dropped" in caplog.text
    assert backend.store.count("spans") == 0
    backend.llmvigil_shutdown(1.0)
    assert backend.llmvigil_export_spans(sample_records()["spans"]) is ExportResult.FAILURE


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_record_the_store_refuses_loses_only_itself_not_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    backend = LocalBackend({"path": str(tmp_path / "vigil.db"), "writer": writer})
    good = [SessionEvent(session_id=f"s{i}", event="start") for i in range(5)]
    poison = SessionEvent(session_id="s-bad", event=None)  # type: ignore[arg-type]
    batch = [*good[:2], poison, *good[2:]]
    try:
        with caplog.at_level(logging.WARNING, logger="llmvigil.adapters.local"):
            assert backend.llmvigil_export_session_events(batch) is ExportResult.SUCCESS
        stored = {e.id for e in backend.store.read("session_events")}
        assert stored == {e.id for e in good}
        assert f"1 of 6 session_events could not be stored and are dropped (first: " \
               f"SessionEvent {poison.id}" in caplog.text
    finally:
        backend.llmvigil_shutdown(5.0)


def test_backend_bad_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"store\.path"):
        LocalBackend({"path": str(tmp_path / "file" / "vigil.db")})


def test_builtin_plugin_manager_offers_local() -> None:
    pytest.importorskip("llmvigil.adapters.console")
    from llmvigil.plugins.manager import adapter_infos, new_plugin_manager

    pm = new_plugin_manager(load_entrypoints=False)
    assert adapter_infos(pm)["local"].factory is LocalBackend
