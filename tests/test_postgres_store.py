"""The PostgreSQL store: migrations, concurrent writers, upserts, report, outages.

Runs against the real server on 127.0.0.1:5432 (``$VIGIL_TEST_PG_DSN`` to point
elsewhere); every test works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL store needs llmvigil[postgres]")
pytest.importorskip("alembic", reason="the PostgreSQL store needs llmvigil[postgres]")
pytest.importorskip("sqlalchemy", reason="the PostgreSQL store needs llmvigil[postgres]")

import llmvigil  # noqa: E402
from llmvigil.adapters import postgres as pg_module  # noqa: E402
from llmvigil.adapters.local import LocalStore  # noqa: E402
from llmvigil.adapters.memory import get_memory_backend  # noqa: E402
from llmvigil.adapters.postgres import (  # noqa: E402
    PostgresBackend,
    PostgresStore,
    head_revision,
    migrate,
)
from llmvigil.core import store_postgres, store_queries  # noqa: E402
from llmvigil.core.errors import ConfigError, VigilError  # noqa: E402
from llmvigil.core.model import (  # noqa: E402
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    Usage,
)
from llmvigil.core.store_queries import TABLES  # noqa: E402
from llmvigil.plugins.types import RECORD_KINDS, ExportResult  # noqa: E402

pytestmark = pytest.mark.fleet

BASE_DSN = os.environ.get("VIGIL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` alone on the search_path (libpq ``options``)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    """An autocommit connection for setting up and inspecting the test schemas."""
    try:
        conn = psycopg.connect(BASE_DSN, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL does not answer at {store_postgres.display_dsn(BASE_DSN)} "
            f"({' '.join(str(exc).split())}); start it (./run test does) or set VIGIL_TEST_PG_DSN"
        )
    yield conn
    conn.close()


@pytest.fixture
def schema(admin: Any) -> Iterator[str]:
    """A fresh schema name, not created yet (the store creates it); dropped afterwards."""
    name = f"vigil_test_{secrets.token_hex(6)}"
    yield name
    # Sessions still open in it (a crashed worker) must not block the drop.
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND query LIKE %s", (f"%{name}%",),
    )
    admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def dsn(schema: str) -> str:
    return with_schema(BASE_DSN, schema)


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresStore]:
    s = PostgresStore(dsn, timeout_s=10)
    yield s
    s.close()


def sample_records() -> dict[str, list[Record]]:
    """Two records of every kind, with most optional fields set."""
    return {
        "spans": [
            Span(id="s1", trace_id="t1", name="answer", kind="chain", start_ns=T0,
                 end_ns=T0 + 2_000_000_000, status="ok", feature="chat", user_id="u1",
                 session_id="sess1", environment="prod", tags=["a"], metadata={"k": [1, 2]},
                 input={"q": "hi"}, output="hello"),
            Span(id="s2", trace_id="t1", parent_id="s1", name="anthropic.messages", kind="llm",
                 start_ns=T0 + 100, end_ns=T0 + 1_500_000_000, status="error",
                 error="overloaded", error_type="OverloadedError", model="claude-x",
                 provider="anthropic",
                 usage=Usage(input_tokens=10, output_tokens=20, cache_read_tokens=3,
                             cache_write_tokens=4),
                 cost_usd=0.0123, ttft_s=0.25, feature="chat", user_id="u1",
                 session_id="sess1"),
        ],
        "scores": [
            Score(id="sc1", name="thumbs", kind="thumbs_up", value=1.0, time_ns=T0 + 5,
                  trace_id="t1", span_id="s1", user_id="u1", feature="chat", source="user"),
            Score(id="sc2", name="judge", kind="judge", label="bad", time_ns=T0 + 6),
        ],
        "session_events": [
            SessionEvent(id="e1", session_id="sess1", event="start", time_ns=T0 + 1,
                         user_id="u1", feature="chat"),
            SessionEvent(id="e2", session_id="sess1", event="task_complete", time_ns=T0 + 9),
        ],
        "metrics": [
            Metric(id="m1", name="ttft_p95_s", value=0.4, time_ns=T0 + 2, window_s=60.0,
                   labels={"model": "claude-x", "feature": "chat"}, unit="s"),
            Metric(id="m2", name="cost_usd_per_hour", value=1.5, time_ns=T0 + 3),
        ],
        "alerts": [
            Alert(id="a1", rule="ttft_p95", severity="warning", message="slow",
                  time_ns=T0 + 4, value=3.0, threshold=2.0, labels={"feature": "chat"}),
            Alert(id="a2", rule="cost", severity="critical", message="over", time_ns=T0 + 8),
        ],
        "safety_verdicts": [
            SafetyVerdict(id="v1", action="block", time_ns=T0 + 7, reason="pii",
                          category="pii", decided_by="regex:ssn", trace_id="t1"),
            SafetyVerdict(id="v2", action="serve", time_ns=T0 + 10),
        ],
    }


def all_records() -> list[Record]:
    return [r for batch in sample_records().values() for r in batch]


# ---------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------


def test_the_schema_has_the_sqlite_stores_columns_and_indexes(
    store: PostgresStore, admin: Any, schema: str, tmp_path: Path
) -> None:
    assert store.revision() == store_postgres.HEAD_REVISION == head_revision()
    LocalStore(tmp_path / "vigil.db").close()
    lite = sqlite3.connect(tmp_path / "vigil.db")
    try:
        for name, spec in TABLES.items():
            lite_cols = [(r[1], r[2], bool(r[3] or r[5])) for r in
                         lite.execute(f"PRAGMA table_info({name})")]
            pg_cols = admin.execute(
                "SELECT column_name, data_type, is_nullable = 'NO' FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (schema, name),
            ).fetchall()
            assert [c[0] for c in pg_cols] == [c[0] for c in lite_cols] == list(spec.column_names)
            # NOT NULL where SQLite has it (or the primary key)
            assert [c[2] for c in pg_cols] == [c[2] for c in lite_cols]
            expected_types = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision",
                              "BLOB": "bytea"}
            for (col, pg_type, _), (_, lite_type, _) in zip(pg_cols, lite_cols, strict=True):
                want = "jsonb" if col == "labels" else expected_types[lite_type]
                assert pg_type == want, (name, col)
            lite_indexes = {r[0] for r in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND name LIKE 'ix_%'", (name,))}
            pg_indexes = {r[0] for r in admin.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                "AND indexname LIKE 'ix_%%'", (schema, name))}
            assert pg_indexes == lite_indexes and pg_indexes
    finally:
        lite.close()


def test_the_released_migration_still_matches_the_tables() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(pg_module._alembic_config())
    initial = script.get_revision("0001").module
    assert initial.fingerprint() == initial.SCHEMA_FINGERPRINT, (
        "revision 0001 changed after its release: add a new revision instead"
    )


def test_migrations_create_the_schema_and_rerunning_is_a_no_op(
    dsn: str, admin: Any, schema: str
) -> None:
    assert admin.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None
    assert migrate(dsn) == head_revision() == store_postgres.HEAD_REVISION

    def tables() -> dict[str, int]:
        rows = admin.execute(
            "SELECT c.relname, c.oid::int FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (schema,))
        return dict(rows.fetchall())

    created = tables()
    assert set(created) == {*TABLES, store_postgres.VERSION_TABLE}
    with PostgresStore(dsn) as s:
        s.write(all_records())
    assert migrate(dsn) == head_revision()
    assert tables() == created  # nothing dropped or recreated
    assert admin.execute(
        f'SELECT version_num FROM "{schema}".{store_postgres.VERSION_TABLE}').fetchall() == [
        (head_revision(),)]
    assert store_postgres.record_counts(dsn) == dict.fromkeys(TABLES, 2)


def test_a_store_at_revision_0001_is_upgraded_without_losing_records(
    dsn: str, admin: Any, schema: str
) -> None:
    # A store an earlier llmvigil created and filled: revision 0001 with its trace index.
    with PostgresStore(dsn) as s:
        s.write(all_records())
    admin.execute(f'CREATE INDEX ix_spans_trace_id ON "{schema}".spans (trace_id)')
    admin.execute(f'UPDATE "{schema}".{store_postgres.VERSION_TABLE} SET version_num = %s',
                  ("0001",))

    def indexes() -> set[str]:
        rows = admin.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s "
                             "AND tablename = 'spans'", (schema,))
        return {r[0] for r in rows}

    assert "ix_spans_trace_id" in indexes()
    with PostgresStore(dsn) as s:  # the writer migrates on first use
        s.write([Span(id="s3", trace_id="t3", name="later", kind="llm", start_ns=T0 + 11,
                      end_ns=T0 + 12, status="ok")])
        assert s.revision() == head_revision() == "0002"
    assert "ix_spans_trace_id" not in indexes()
    counts = store_postgres.record_counts(dsn)
    assert counts == {**dict.fromkeys(TABLES, 2), "spans": 3}


def test_the_schema_setting_and_an_unrelated_alembic_version_table(
    schema: str, admin: Any
) -> None:
    # An application's own Alembic history in the same schema is left alone.
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".alembic_version (version_num varchar(32))')
    admin.execute(f"INSERT INTO \"{schema}\".alembic_version VALUES ('app_rev_42')")
    with PostgresStore(BASE_DSN, schema=schema) as s:
        s.write(all_records())
        assert s.revision() == head_revision()
    assert admin.execute(f'SELECT * FROM "{schema}".alembic_version').fetchall() == [
        ("app_rev_42",)]
    assert store_postgres.record_counts(BASE_DSN, schema=schema)["spans"] == 2


def test_migration_sql_for_a_dba_and_an_unreachable_server() -> None:
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        migrate(closed)  # psycopg's own error, which the backend classifies as RETRY
    text = migrate(closed, sql=True)
    assert "CREATE TABLE llmvigil_alembic_version" in text
    assert "CREATE TABLE spans (" in text and "labels JSONB NOT NULL" in text
    assert "INSERT INTO llmvigil_alembic_version (version_num) VALUES ('0001')" in text


def test_a_newer_schema_is_refused_and_records_are_kept(
    dsn: str, admin: Any, schema: str
) -> None:
    migrate(dsn)
    admin.execute(f"UPDATE \"{schema}\".{store_postgres.VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(VigilError, match="upgrade llmvigil"), PostgresStore(dsn) as s:
        s.write(all_records())
    backend = PostgresBackend({"dsn": dsn})
    assert backend.llmvigil_export_spans(sample_records()["spans"]) is ExportResult.RETRY
    backend.llmvigil_shutdown(1.0)

    no_ddl = PostgresStore(dsn, auto_migrate=False)
    admin.execute(f"DELETE FROM \"{schema}\".{store_postgres.VERSION_TABLE}")
    needs = rf"revision none, this llmvigil needs {head_revision()}: run"
    with pytest.raises(VigilError, match=needs):
        no_ddl.write(all_records())
    no_ddl.close()


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------


def test_every_kind_round_trips_and_fills_the_query_columns(
    store: PostgresStore, admin: Any, schema: str
) -> None:
    store.write(all_records())
    for kind, records in sample_records().items():
        assert list(store.read(kind)) == records
        assert store.count(kind) == 2
    span = admin.execute(
        f'SELECT trace_id, parent_id, kind, start_ns, status, error_type, model, feature, '
        f'input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, ttft_s '
        f'FROM "{schema}".spans WHERE id = %s', ("s2",)).fetchone()
    assert span == ("t1", "s1", "llm", T0 + 100, "error", "OverloadedError", "claude-x", "chat",
                    10, 20, 3, 4, 0.0123, 0.25)
    labels = admin.execute(f'SELECT labels FROM "{schema}".metrics ORDER BY id').fetchall()
    assert labels == [({"feature": "chat", "model": "claude-x"},), ({},)]
    assert [s.id for s in store.read("spans", since_ns=T0 + 1, limit=5)] == ["s2"]


def test_upsert_is_idempotent_replaces_and_skips_identical_rows(
    store: PostgresStore, admin: Any, schema: str
) -> None:
    records = all_records()
    store.write(records)

    def versions() -> dict[str, str]:
        return dict(admin.execute(f'SELECT id, xmin::text FROM "{schema}".spans').fetchall())

    before = versions()
    store.write(records)
    assert {k: store.count(k) for k in TABLES} == dict.fromkeys(TABLES, 2)
    assert versions() == before  # an identical re-delivery writes no new row version

    old = sample_records()["spans"][1]
    assert isinstance(old, Span)
    first = Span(id=old.id, trace_id=old.trace_id, parent_id=old.parent_id, name=old.name,
                 kind="llm", start_ns=old.start_ns, end_ns=old.end_ns, status="ok",
                 cost_usd=0.25, feature="search")
    second = Span(id=old.id, trace_id=old.trace_id, parent_id=old.parent_id, name=old.name,
                  kind="llm", start_ns=old.start_ns, end_ns=old.end_ns, status="ok",
                  cost_usd=0.5, feature="search")
    store.write([first, second])  # the same id twice in one batch: the last one wins
    assert store.count("spans") == 2
    assert list(store.read("spans"))[1] == second
    after = versions()
    assert after["s1"] == before["s1"] and after["s2"] != before["s2"]
    figures = store_postgres.report(store.dsn)["features"]
    assert figures["search"]["cost_usd"] == 0.5 and figures["search"]["span_errors"] == 0


def test_nul_characters_do_not_lose_a_batch(store: PostgresStore) -> None:
    spans = [Span(id="n1", trace_id="t", name="a\x00b", feature="f\x00", start_ns=T0),
             Span(id="n2", trace_id="t", name="fine", start_ns=T0 + 1)]
    metric = Metric(id="m", name="x\x00", value=1.0, labels={"feature": "a\x00b"})
    store.write([*spans, metric])
    assert list(store.read("spans")) == spans  # the record itself keeps its text
    assert list(store.read("metrics")) == [metric]
    assert list(store_postgres.report(store.dsn)["features"]) == ["(none)", "f\ufffd"]


# Spawned children cannot import a test module loaded by pytest's importlib mode, so
# the worker is source text run by the builtin exec (picklable by reference).
_WORKER = """
from llmvigil.adapters.postgres import PostgresStore
from llmvigil.core.model import Span

barrier.wait(timeout=60)  # every process migrates the brand-new schema at once
store = PostgresStore(dsn)
spans = [
    Span(id=(f"shared-{i // 10}" if i % 10 == 0 else f"w{worker}-{i}"), trace_id=f"w{worker}",
         start_ns=i, end_ns=i + 1, feature=f"w{worker}")
    for i in range(n_spans)
]
# overlapping ids in a different order in every process
order = list(range(0, len(spans), batch))
order = order[worker % 2::2] + order[(worker + 1) % 2::2]
for start in order:
    store.write(spans[start:start + batch])
store.close()
"""


def test_several_processes_write_one_store(dsn: str) -> None:
    workers, n_spans, batch = 4, 3000, 150
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=exec, args=(_WORKER, {"dsn": dsn, "worker": w, "n_spans": n_spans,
                                                 "batch": batch, "barrier": barrier}))
        for w in range(workers)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0] * workers  # no deadlock, no migration race
    assert time.monotonic() - started < 60

    expected = {f"shared-{i // 10}" for i in range(0, n_spans, 10)} | {
        f"w{w}-{i}" for w in range(workers) for i in range(n_spans) if i % 10
    }
    assert len(expected) == workers * n_spans * 9 // 10 + n_spans // 10
    assert store_postgres.record_counts(dsn)["spans"] == len(expected)
    with PostgresStore(dsn) as s:
        assert {sp.id for sp in s.read("spans")} == expected


# ---------------------------------------------------------------------------
# report / record_counts: the same figures as the SQLite store's
# ---------------------------------------------------------------------------


def make_traffic(rng: np.random.Generator) -> list[Span]:
    """Requests (a root span + one llm child) over four features, with the odd cases."""
    spans: list[Span] = []
    for i in range(400):
        feature = ("chat", "search", None, "(none)")[i % 4]  # "(none)" merges with None
        start = T0 + i * 1_000_000_000
        duration = int(rng.lognormal(20, 0.6)) if i % 50 else -5  # a clock step backwards
        root = Span(id=f"r{i}", trace_id=f"t{i}", name="handle", kind="chain",
                    start_ns=start, end_ns=start + duration,
                    status="error" if rng.random() < 0.12 else "ok", feature=feature)
        child = Span(
            id=f"c{i}", trace_id=f"t{i}", parent_id=root.id, name="llm", kind="llm",
            start_ns=start + 10, end_ns=start + max(duration, 20) - 10,
            status="error" if rng.random() < 0.05 else "ok", feature=feature,
            usage=Usage(input_tokens=int(rng.integers(10, 2000)),
                        output_tokens=int(rng.integers(1, 800)),
                        cache_read_tokens=int(rng.integers(0, 100)),
                        cache_write_tokens=int(rng.integers(0, 50))),
            cost_usd=float(rng.random() / 100) if rng.random() < 0.9 else None,
            ttft_s=float(rng.random()) if rng.random() < 0.7 else None,
        )
        spans += [root, child]
    return spans


def assert_same(pg: Any, lite: Any, where: str = "report") -> None:
    """Equal structure, types and values; floats to 1e-12 (summation order differs)."""
    assert type(pg) is type(lite), f"{where}: {type(pg).__name__} != {type(lite).__name__}"
    if isinstance(pg, dict):
        assert list(pg) == list(lite), where
        for key in pg:
            assert_same(pg[key], lite[key], f"{where}.{key}")
    elif isinstance(pg, float):
        assert math.isclose(pg, lite, rel_tol=1e-12, abs_tol=1e-15), f"{where}: {pg} != {lite}"
    else:
        assert pg == lite, where


def test_report_equals_the_sqlite_report_of_the_same_records(
    store: PostgresStore, tmp_path: Path
) -> None:
    spans = make_traffic(np.random.default_rng(11))
    lite = LocalStore(tmp_path / "vigil.db")
    for target in (lite, store):
        for start in range(0, len(spans), 128):
            target.write(spans[start:start + 128])
        target.write(all_records()[2:])  # other kinds must not disturb the figures
    lite.close()

    for since in (None, T0 + 150 * 1_000_000_000, T0 + 10**15):
        expected = store_queries.report(tmp_path / "vigil.db", since_ns=since)
        got = store_postgres.report(store.dsn, since_ns=since)
        assert got["path"] == store_postgres.display_dsn(store.dsn)
        assert_same({**got, "path": ""}, {**expected, "path": ""})
    full = store_postgres.report(store.dsn)
    assert list(full["features"]) == ["(none)", "chat", "search"]
    assert full["totals"]["requests"] == 400 and full["time_range"]["start"] == (
        "2024-05-01T12:00:00Z")
    assert store_postgres.record_counts(store.dsn) == store_queries.record_counts(
        tmp_path / "vigil.db")


def test_report_of_a_store_without_tables_or_server(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "blank.db").touch()
    assert_same({**store_postgres.report(dsn), "path": ""},
                {**store_queries.report(tmp_path / "blank.db"), "path": ""})
    assert store_postgres.record_counts(dsn) == dict.fromkeys(TABLES, 0)

    closed = f"postgresql://vigil:s3cret@127.0.0.1:{free_port()}/test"
    with pytest.raises(VigilError, match="cannot read the PostgreSQL store") as info:
        store_postgres.report(closed)
    assert "s3cret" not in str(info.value) and "vigil:***@127.0.0.1" in str(info.value)


# ---------------------------------------------------------------------------
# The backend: outcomes, outages, the journal
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backend_settings_and_dsn_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    monkeypatch.delenv("VIGIL_PG_DSN", raising=False)
    monkeypatch.delenv("PGDSN", raising=False)
    with pytest.raises(ConfigError, match=r"VIGIL_PG_DSN or PGDSN"):
        PostgresBackend({})
    with pytest.raises(ConfigError, match=r"invalid PostgreSQL DSN 'host=x password=\*\*\*"):
        PostgresBackend({"dsn": "host=x password=hunter2 nonsense"})
    monkeypatch.setenv("PGDSN", dsn)
    backend = PostgresBackend({"timeout_s": 3})
    assert backend.store.dsn == dsn
    assert backend.llmvigil_export_spans(sample_records()["spans"]) is ExportResult.SUCCESS
    description = backend.llmvigil_check(timeout_s=1.0)
    assert f"(revision {head_revision()}): 2 spans, 0 scores" in description
    backend.llmvigil_shutdown(1.0)
    (info,) = pg_module.llmvigil_adapters()
    assert info.name == "postgres" and info.factory is PostgresBackend
    assert info.extra == "postgres" and set(info.capabilities.holds) == set(RECORD_KINDS)


def test_a_terminated_connection_is_retried_and_data_errors_are_failures(
    dsn: str, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = PostgresBackend({"dsn": dsn, "application_name": "vigil-terminate-test"})
    records = sample_records()
    assert backend.llmvigil_export_spans(records["spans"]) is ExportResult.SUCCESS
    pid = backend.store.backend_pid
    assert pid is not None
    assert admin.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                         (pid,)).fetchone() == ("vigil-terminate-test",)
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with caplog.at_level(logging.WARNING, logger="llmvigil.adapters.postgres"):
        assert backend.llmvigil_export_scores(records["scores"]) is ExportResult.RETRY
    assert "will retry" in caplog.text
    assert backend.llmvigil_export_scores(records["scores"]) is ExportResult.SUCCESS
    assert backend.store.backend_pid not in (None, pid)

    too_big = Span(id="big", trace_id="t", start_ns=2**70)
    unencodable = Span(id="bad", trace_id="t", input=object())
    with caplog.at_level(logging.WARNING, logger="llmvigil.adapters.postgres"):
        for bad in (too_big, unencodable):
            batch = [Span(id="good", trace_id="t"), bad]
            # the batch goes record by record: only the bad one is lost
            assert backend.llmvigil_export_spans(batch) is ExportResult.SUCCESS
            assert f"1 of 2 spans could not be stored and are dropped (first: Span " \
                   f"{bad.id}" in caplog.text
        assert backend.llmvigil_export_spans([unencodable]) is ExportResult.FAILURE
    assert backend.store.count("spans") == 3  # the two of before and "good", once
    assert backend.store.count("scores") == 2
    backend.llmvigil_shutdown(1.0)


class TcpProxy:
    """A loopback TCP forwarder to the server that can be taken down and brought back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones, as a server crash does."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown wakes the accept() blocked in the other thread; close alone does not
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def wait_until(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_an_outage_is_journaled_and_redelivered_through_the_pipeline(
    tmp_path: Path, schema: str
) -> None:
    from llmvigil.plugins.manager import adapter_infos, new_plugin_manager

    pm = new_plugin_manager(load_entrypoints=False)
    if "postgres" not in adapter_infos(pm):  # until the adapter is a built-in plugin
        pm.register(pg_module, name="llmvigil.adapters.postgres")
    host = psycopg.conninfo.conninfo_to_dict(BASE_DSN)
    proxy = TcpProxy((str(host.get("host", "127.0.0.1")), int(host.get("port", 5432))))
    proxy.up()
    proxied = with_schema(
        f"postgresql://{host.get('user', 'postgres')}@127.0.0.1:{proxy.port}/"
        f"{host.get('dbname', 'test')}", schema)
    try:
        llmvigil.init(
            plugin_manager=pm,
            backends=[{"name": "memory", "instance": "pg-outage", "redaction": "full"},
                      {"name": "postgres", "dsn": proxied, "timeout_s": 3}],
            pipeline={"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05,
                      "batch_size": 50, "max_retries": 1, "backoff_initial_s": 0.01,
                      "backoff_max_s": 0.05, "breaker_failures": 2, "breaker_reset_s": 0.3},
            store={"path": str(tmp_path / "vigil.db")},
        )
        mem = get_memory_backend("pg-outage")

        def emit(prefix: str, n: int) -> None:
            for i in range(n):
                with llmvigil.span(f"{prefix}{i}", feature="outage"):
                    pass

        emit("before", 100)
        assert llmvigil.flush(10)
        assert store_postgres.record_counts(with_schema(BASE_DSN, schema))["spans"] == 100

        proxy.down()
        emit("during", 300)
        assert llmvigil.flush(10)
        assert len(mem.spans) == 400  # the other backend is not held up
        rt = llmvigil.core.runtime.get_runtime()
        assert rt is not None
        status = rt.pipeline.status()["backends"]["postgres"]
        assert status["journaled"] > 0 and status["dropped"] == 0

        proxy.up()
        emit("after", 100)
        direct = with_schema(BASE_DSN, schema)
        assert wait_until(lambda: store_postgres.record_counts(direct)["spans"] == 500)
        status = rt.pipeline.status()["backends"]["postgres"]
        assert status["replayed"] > 0 and status["dropped"] == 0
    finally:
        llmvigil.shutdown(timeout=5)
        proxy.down()
    with PostgresStore(with_schema(BASE_DSN, schema)) as s:
        names = sorted(sp.name for sp in s.read("spans"))
    assert names == sorted(sp.name for sp in mem.spans)  # each span exactly once
    assert not list((tmp_path / "journal" / "postgres").glob("*.batch"))


def test_throughput_of_batches_of_512(store: PostgresStore, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    n, batch = 20_480, 512
    spans = [Span(id=f"{i:016x}", trace_id=f"{i // 4:032x}",
                  parent_id=None if i % 4 == 0 else f"{i - i % 4:016x}",
                  name="llm", kind="llm", start_ns=T0 + i, end_ns=T0 + i + 10**8,
                  model="claude-x", provider="anthropic", feature=f"f{i % 8}", user_id="u",
                  usage=Usage(input_tokens=100, output_tokens=50), cost_usd=0.001, ttft_s=0.2,
                  input={"q": "hello " * 20}, output="world " * 40) for i in range(n)]
    store.write(spans[:batch])  # connect and migrate outside the timing
    started = time.perf_counter()
    for start in range(batch, n, batch):
        store.write(spans[start:start + batch])
    pg_rate = (n - batch) / (time.perf_counter() - started)

    lite = LocalStore(tmp_path / "vigil.db")
    started = time.perf_counter()
    for start in range(0, n, batch):
        lite.write(spans[start:start + batch])
    lite_rate = n / (time.perf_counter() - started)
    lite.close()
    with capsys.disabled():
        print(f"\nPostgreSQL store: {pg_rate:,.0f} spans/s in batches of {batch} "
              f"(SQLite store on this machine: {lite_rate:,.0f} spans/s)")
    assert store.count("spans") == n
    assert pg_rate > 1000, "far below the ~15k spans/s measured on a 2-core machine"


def test_vigil_report_reads_a_postgres_store(store: PostgresStore, dsn: str) -> None:
    """`vigil report --store postgresql://...` reads the fleet's store."""
    import json
    import subprocess
    import sys

    from llmvigil.core.model import Span, Usage, new_trace_id

    spans = [Span(trace_id=new_trace_id(), name="req", start_ns=10**18 + i,
                  end_ns=10**18 + i + 10**8, feature="f", status="error" if i == 0 else "ok",
                  usage=Usage(3, 4)) for i in range(4)]
    store.write(spans)
    result = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", "report", "--json",
                             "--store", dsn], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["features"]["f"]["requests"] == 4 and data["features"]["f"]["errors"] == 1
    assert data["totals"]["input_tokens"] == 12
    table = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", "report", "--store", dsn],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "120"})
    assert table.returncode == 0 and "f" in table.stdout
