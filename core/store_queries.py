"""The local store's schema and the read-side queries behind ``vigil report``/``status``.

The local store is one SQLite file (default ``.vigil/vigil.db``) written by the
``local`` backend adapter. Its schema lives here, in core, because core may not
import an adapter by name yet has to read the store for ``vigil report`` and
``vigil status``; :mod:`llmvigil.adapters.local` imports the DDL from this module so
the schema has a single home.

Every record kind has one table named after it (:data:`TABLES`). A table holds
``id TEXT PRIMARY KEY``, the columns the reports filter and aggregate on, and
``data BLOB``: the whole record as written by :func:`llmvigil.core.model.encode`, so
reading a record back never depends on the query columns.

The functions here open the file read-only (``mode=ro``), so a report never takes
a write lock and never creates a store that does not exist yet.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from .errors import VigilError

__all__ = [
    "DEFAULT_STORE_PATH",
    "DROPPED_INDEXES",
    "NONE_FEATURE",
    "REPORT_INDEXES",
    "REPORT_STATEMENTS",
    "ROLLUP_CATCH_UP",
    "ROLLUP_FIELDS",
    "ROLLUP_SLOT_NS",
    "SCHEMA_STATEMENTS",
    "SCHEMA_VERSION",
    "SESSION_FIELDS",
    "TABLES",
    "TableSpec",
    "Window",
    "alert_rows",
    "connect_readonly",
    "feedback_rows",
    "parse_since",
    "rebuild_rollup",
    "record_counts",
    "report",
    "report_tables",
    "roll_up_spans",
    "root_by_trace",
    "root_durations",
    "safety_rows",
    "session_sums",
    "span_sums",
    "time_bounds",
    "top_users",
    "ttft_values",
    "upsert_rows",
    "write_spans",
]

#: ``PRAGMA user_version`` of the schema below; bump it with a migration step.
#: A writer opening an older store runs every statement of :data:`SCHEMA_STATEMENTS`
#: (all idempotent) once. Version 2 added the report structures
#: (:data:`REPORT_STATEMENTS`) and backfilled the rollup; version 3 replaced the
#: index of every span's trace id by :func:`root_by_trace` (:data:`DROPPED_INDEXES`).
SCHEMA_VERSION = 3

#: Where the local store lives when the config does not say (``store.path``).
DEFAULT_STORE_PATH = ".vigil/vigil.db"

#: How ``report`` labels spans that carry no ``feature``.
NONE_FEATURE = "(none)"


@dataclass(frozen=True)
class TableSpec:
    """One table of the local store.

    ``columns`` are the query columns, in row order, between ``id`` (first) and
    ``data`` (last); ``time_column`` orders and windows the records;
    ``indexes`` are the column lists to index.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    time_column: str
    indexes: tuple[tuple[str, ...], ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """All columns of a row, in insert order: ``id``, the query columns, ``data``."""
        return ("id", *(name for name, _ in self.columns), "data")

    def upsert_sql(self, rows: int = 1) -> str:
        """One statement upserting ``rows`` rows by id (see :func:`upsert_rows`)."""
        names = self.column_names
        marks = f"({', '.join('?' * len(names))})"
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "id")
        return (
            f"INSERT INTO {self.name} ({', '.join(names)}) "
            f"VALUES {', '.join([marks] * rows)} ON CONFLICT(id) DO UPDATE SET {updates}"
        )

    def ddl(self) -> list[str]:
        """The idempotent ``CREATE TABLE``/``CREATE INDEX`` statements of this table."""
        cols = ",\n    ".join(
            ["id TEXT PRIMARY KEY", *(f"{n} {t}" for n, t in self.columns), "data BLOB NOT NULL"]
        )
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {cols}\n)"]
        for index in self.indexes:
            out.append(
                f"CREATE INDEX IF NOT EXISTS ix_{self.name}_{'_'.join(index)} "
                f"ON {self.name} ({', '.join(index)})"
            )
        return out


#: The tables of the local store, keyed by record kind (the names of
#: :data:`llmvigil.plugins.types.RECORD_KINDS`).
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            name="spans",
            columns=(
                ("trace_id", "TEXT NOT NULL"),
                ("parent_id", "TEXT"),
                ("name", "TEXT NOT NULL"),
                ("kind", "TEXT NOT NULL"),
                ("start_ns", "INTEGER NOT NULL"),
                ("end_ns", "INTEGER NOT NULL"),
                ("status", "TEXT NOT NULL"),
                ("error_type", "TEXT"),
                ("model", "TEXT"),
                ("provider", "TEXT"),
                ("feature", "TEXT"),
                ("user_id", "TEXT"),
                ("session_id", "TEXT"),
                ("input_tokens", "INTEGER"),
                ("output_tokens", "INTEGER"),
                ("cache_read_tokens", "INTEGER"),
                ("cache_write_tokens", "INTEGER"),
                ("cost_usd", "REAL"),
                ("ttft_s", "REAL"),
            ),
            time_column="start_ns",
            indexes=(("start_ns",), ("feature", "start_ns")),
        ),
        TableSpec(
            name="scores",
            columns=(
                ("trace_id", "TEXT"),
                ("span_id", "TEXT"),
                ("name", "TEXT NOT NULL"),
                ("kind", "TEXT NOT NULL"),
                ("value", "REAL"),
                ("time_ns", "INTEGER NOT NULL"),
                ("user_id", "TEXT"),
                ("session_id", "TEXT"),
                ("feature", "TEXT"),
            ),
            time_column="time_ns",
            indexes=(("time_ns",), ("feature", "time_ns"), ("trace_id",)),
        ),
        TableSpec(
            name="session_events",
            columns=(
                ("session_id", "TEXT NOT NULL"),
                ("event", "TEXT NOT NULL"),
                ("time_ns", "INTEGER NOT NULL"),
                ("user_id", "TEXT"),
                ("feature", "TEXT"),
            ),
            time_column="time_ns",
            indexes=(("time_ns",), ("feature", "time_ns"), ("session_id",)),
        ),
        TableSpec(
            name="metrics",
            columns=(
                ("name", "TEXT NOT NULL"),
                ("value", "REAL"),
                ("time_ns", "INTEGER NOT NULL"),
                ("labels", "TEXT NOT NULL"),
            ),
            time_column="time_ns",
            indexes=(("time_ns",), ("name", "time_ns")),
        ),
        TableSpec(
            name="alerts",
            columns=(
                ("rule", "TEXT NOT NULL"),
                ("severity", "TEXT NOT NULL"),
                ("time_ns", "INTEGER NOT NULL"),
            ),
            time_column="time_ns",
            indexes=(("time_ns",),),
        ),
        TableSpec(
            name="safety_verdicts",
            columns=(
                ("action", "TEXT NOT NULL"),
                ("category", "TEXT"),
                ("time_ns", "INTEGER NOT NULL"),
                ("trace_id", "TEXT"),
            ),
            time_column="time_ns",
            indexes=(("time_ns",),),
        ),
    )
}

# ---------------------------------------------------------------------------
# SQLite-only report structures: covering indexes and the spans rollup
# ---------------------------------------------------------------------------

#: Width of one ``spans_rollup`` slot: 5 minutes, so report buckets that are
#: multiples of 5 minutes are summed from the rollup instead of the spans.
ROLLUP_SLOT_NS = 300 * 1_000_000_000

#: ``spans_rollup`` columns after ``feature`` and ``slot``: (name, SQLite type, the
#: contribution of one span, an expression over the ``spans`` columns). Every figure
#: is a plain sum, so a replaced span's old contribution can be taken back.
ROLLUP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("spans", "INTEGER", "1"),
    ("span_errors", "INTEGER", "status = 'error'"),
    ("requests", "INTEGER", "parent_id IS NULL"),
    ("errors", "INTEGER", "parent_id IS NULL AND status = 'error'"),
    ("input_tokens", "INTEGER", "IFNULL(input_tokens, 0)"),
    ("output_tokens", "INTEGER", "IFNULL(output_tokens, 0)"),
    ("cache_read_tokens", "INTEGER", "IFNULL(cache_read_tokens, 0)"),
    ("cache_write_tokens", "INTEGER", "IFNULL(cache_write_tokens, 0)"),
    ("cost_usd", "REAL", "IFNULL(cost_usd, 0.0)"),
    ("priced_spans", "INTEGER", "cost_usd IS NOT NULL"),
    ("unpriced_llm_spans", "INTEGER", "kind = 'llm' AND cost_usd IS NULL"),
    ("ttft_count", "INTEGER", "ttft_s IS NOT NULL"),
    ("ttft_sum_s", "REAL", "IFNULL(ttft_s, 0.0)"),
)
ROLLUP_FIELDS: tuple[str, ...] = tuple(name for name, _, _ in ROLLUP_COLUMNS)

# The rollup keys spans without a feature as '' (a NULL key would never conflict).
_ROLLUP_KEY = "IFNULL(feature, ''), start_ns / " + str(ROLLUP_SLOT_NS)
_ROLLUP_UPDATES = ", ".join(f"{n} = {n} + excluded.{n}" for n in ROLLUP_FIELDS)
_WATERMARK = "(SELECT last_rowid FROM spans_rollup_state)"


def _rollup_upsert(where: str, sign: str = "") -> str:
    """Add (or with ``sign="-"`` take back) the spans matching ``where`` to the rollup."""
    sums = ", ".join(f"{sign}SUM({expr})" for _, _, expr in ROLLUP_COLUMNS)
    return (
        f"INSERT INTO spans_rollup (feature, slot, {', '.join(ROLLUP_FIELDS)}) "
        f"SELECT {_ROLLUP_KEY}, {sums} FROM spans WHERE {where} GROUP BY 1, 2 "
        f"ON CONFLICT (feature, slot) DO UPDATE SET {_ROLLUP_UPDATES}"
    )


#: Rolls the spans not in ``spans_rollup`` yet (rowid above the watermark) into it
#: and moves the watermark past them.
ROLLUP_CATCH_UP: tuple[str, ...] = (
    _rollup_upsert(f"rowid > {_WATERMARK}"),
    "UPDATE spans_rollup_state SET last_rowid = "
    "MAX(last_rowid, (SELECT IFNULL(MAX(rowid), 0) FROM spans))",
)

_ROLLUP_TABLES = (
    "CREATE TABLE IF NOT EXISTS spans_rollup (\n    feature TEXT NOT NULL,\n"
    "    slot INTEGER NOT NULL,\n    "
    + ",\n    ".join(f"{n} {t} NOT NULL DEFAULT 0" for n, t, _ in ROLLUP_COLUMNS)
    + ",\n    PRIMARY KEY (feature, slot)\n) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS spans_rollup_state (\n"
    "    id INTEGER PRIMARY KEY CHECK (id = 0),\n    last_rowid INTEGER NOT NULL\n)",
    "INSERT OR IGNORE INTO spans_rollup_state (id, last_rowid) VALUES (0, 0)",
)

# At most this many ids per "id IN (...)" (SQLite before 3.32 allows 999 parameters).
_IDS_PER_QUERY = 500


def roll_up_spans(conn: sqlite3.Connection) -> None:
    """Add the spans inserted since the last call to ``spans_rollup``.

    Only spans with a new rowid are added: a span *replaced* by an upsert keeps its
    rowid and must go through :func:`write_spans`. Call it inside the writing
    transaction.
    """
    for statement in ROLLUP_CATCH_UP:
        conn.execute(statement)


#: Values one statement may bind: SQLite's limit (999 before 3.32).
_MAX_VARIABLES = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


def upsert_rows(conn: sqlite3.Connection, spec: TableSpec,
                rows: list[tuple[Any, ...]]) -> None:
    """Upsert ``rows`` (values in :attr:`TableSpec.column_names` order) by id.

    As many rows go in one statement as SQLite binds values (1,489 spans), so the GIL
    is released once per chunk. ``executemany`` releases and retakes it for every
    row, and while another thread of the process runs Python each retake waits out a
    switch interval (5 ms): a busy application would hold the store to a few hundred
    rows a second.
    """
    i, n = 0, len(rows)
    # A whole chunk, then halves for the rest: a dozen statement shapes per table at most.
    size = _MAX_VARIABLES // len(spec.column_names)
    while i < n:
        while size > n - i:
            size //= 2
        chunk = rows[i : i + size]
        conn.execute(_upsert_statement(spec, size), list(itertools.chain.from_iterable(chunk)))
        i += size


@functools.lru_cache(maxsize=128)
def _upsert_statement(spec: TableSpec, rows: int) -> str:
    return spec.upsert_sql(rows)


def write_spans(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Upsert span rows (see :func:`upsert_rows`) and keep ``spans_rollup`` in step, in
    the caller's transaction.

    The common case, every span new, costs one rollup statement per batch. When the
    batch replaced spans already rolled up (a re-delivery, an import re-run), the
    batch is redone: their old figures are taken back, then their new ones added.
    """
    conn.execute("SAVEPOINT vigil_write_spans")
    try:
        before = conn.execute("SELECT IFNULL(MAX(rowid), 0) FROM spans").fetchone()[0]
        spans = TABLES["spans"]
        upsert_rows(conn, spans, rows)
        after = conn.execute("SELECT IFNULL(MAX(rowid), 0) FROM spans").fetchone()[0]
        if after - before != len(rows):  # some rows were updates, not inserts
            conn.execute("ROLLBACK TO vigil_write_spans")
            ids = [row[0] for row in rows]
            chunks = [ids[i : i + _IDS_PER_QUERY] for i in range(0, len(ids), _IDS_PER_QUERY)]

            def rolled(chunk: list[str]) -> str:
                marks = ", ".join("?" * len(chunk))
                return f"id IN ({marks}) AND rowid <= {_WATERMARK}"

            for chunk in chunks:
                conn.execute(_rollup_upsert(rolled(chunk), "-"), chunk)
            upsert_rows(conn, spans, rows)
            for chunk in chunks:
                conn.execute(_rollup_upsert(rolled(chunk)), chunk)
        roll_up_spans(conn)
    except BaseException:
        # SQLite may already have rolled the whole transaction back (disk full).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK TO vigil_write_spans")
            conn.execute("RELEASE vigil_write_spans")
        raise
    conn.execute("RELEASE vigil_write_spans")


def rebuild_rollup(conn: sqlite3.Connection) -> None:
    """Recompute ``spans_rollup`` from the spans (after spans were deleted by hand)."""
    conn.execute("DELETE FROM spans_rollup")
    conn.execute("UPDATE spans_rollup_state SET last_rowid = 0")
    roll_up_spans(conn)


#: Partial covering indexes behind ``vigil report`` (SQLite only; named ``rx_`` so
#: they are not mistaken for the ``ix_`` indexes both stores share): each answers
#: one report query from the index alone, without reading the records' data.
REPORT_INDEXES: tuple[tuple[str, str, str, str], ...] = (
    # name, table, columns, condition
    ("rx_spans_roots", "spans", "feature, start_ns, end_ns", "parent_id IS NULL"),
    ("rx_spans_ttft", "spans", "feature, start_ns, ttft_s, end_ns", "ttft_s IS NOT NULL"),
    ("rx_spans_user_cost", "spans", "user_id, start_ns, cost_usd", "cost_usd IS NOT NULL"),
    ("rx_spans_session_turns", "spans", "session_id, start_ns, end_ns, feature",
     "session_id IS NOT NULL AND parent_id IS NULL"),
    ("rx_session_events_time", "session_events", "time_ns, session_id, event, feature", ""),
    # Roots whose id is not the first half of their trace id (spans imported from
    # another tool); :func:`root_by_trace` finds the others by primary key.
    ("rx_spans_foreign_roots", "spans", "trace_id",
     "parent_id IS NULL AND id <> substr(trace_id, 1, 16)"),
)

#: Indexes of earlier schema versions that a writer drops when it upgrades a store:
#: ``ix_spans_trace_id`` (version 3) cost every span row a random-order B-tree insert
#: for one lookup, a trace's root, that :func:`root_by_trace` answers without it.
DROPPED_INDEXES: tuple[str, ...] = ("ix_spans_trace_id",)


def root_by_trace(column: str, trace: str) -> str:
    """SQL for the first of the trace ``trace``'s root spans with ``column`` set, as a
    scalar subquery: one primary-key lookup for a root that llmvigil made (its id is
    the first half of its trace id), else one probe of ``rx_spans_foreign_roots``."""
    return (
        f"COALESCE((SELECT r.{column} FROM spans r WHERE r.id = substr({trace}, 1, 16)"
        f" AND r.trace_id = {trace} AND r.parent_id IS NULL),"
        f" (SELECT r.{column} FROM spans r WHERE r.trace_id = {trace}"
        f" AND r.parent_id IS NULL AND r.id <> substr(r.trace_id, 1, 16)"
        f" AND r.{column} IS NOT NULL LIMIT 1))"
    )


#: The statements that add the report structures to a store; each is idempotent.
REPORT_STATEMENTS: tuple[str, ...] = (
    *(
        f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"
        + (f" WHERE {where}" if where else "")
        for name, table, columns, where in REPORT_INDEXES
    ),
    *_ROLLUP_TABLES,
    *ROLLUP_CATCH_UP,  # rolls up a store created before the rollup existed
    *(f"DROP INDEX IF EXISTS {name}" for name in DROPPED_INDEXES),
)

#: Every DDL statement of the schema, in order; each is idempotent.
SCHEMA_STATEMENTS: tuple[str, ...] = (
    *(stmt for spec in TABLES.values() for stmt in spec.ddl()),
    *REPORT_STATEMENTS,
)


# ---------------------------------------------------------------------------
# Opening the store read-only
# ---------------------------------------------------------------------------


def connect_readonly(path: str | Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open the local store read-only.

    Args:
        path: the SQLite file (``store.path`` in the config).
        busy_timeout_s: how long to wait when a writer briefly holds a lock that a
            reader needs (WAL recovery after a crash).

    Raises:
        FileNotFoundError: the store does not exist yet (nothing was recorded).
        VigilError: the store was written by a newer llmvigil with a newer schema.
        sqlite3.DatabaseError: the file is not an SQLite database; the message names it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"no records yet: the local store {str(p)!r} does not exist "
            "(it is created by the first run of an application with the 'local' backend)"
        )
    uri = "file:" + quote(str(p.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise sqlite3.DatabaseError(f"{p}: not an llmvigil local store ({exc})") from exc
    if version > SCHEMA_VERSION:
        conn.close()
        raise VigilError(
            f"{p}: the local store has schema version {version}, this llmvigil reads up to "
            f"{SCHEMA_VERSION}; upgrade llmvigil"
        )
    return conn


def _existing_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def record_counts(path: str | Path) -> dict[str, int]:
    """Return how many records of each kind the store holds, e.g. ``{"spans": 120, ...}``.

    Every kind of :data:`TABLES` is present; a table not created yet counts 0.

    Raises:
        FileNotFoundError: the store does not exist yet.
    """
    conn = connect_readonly(path)
    try:
        existing = _existing_tables(conn)
        return {
            kind: (
                int(conn.execute(f"SELECT COUNT(*) FROM {kind}").fetchone()[0])
                if kind in existing
                else 0
            )
            for kind in TABLES
        }
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# vigil report
# ---------------------------------------------------------------------------

_AGGREGATES = """
SELECT feature,
       COUNT(*),
       COALESCE(SUM(status = 'error'), 0),
       COALESCE(SUM(parent_id IS NULL), 0),
       COALESCE(SUM(parent_id IS NULL AND status = 'error'), 0),
       COUNT(ttft_s),
       SUM(ttft_s),
       COALESCE(SUM(input_tokens), 0),
       COALESCE(SUM(output_tokens), 0),
       COALESCE(SUM(cache_read_tokens), 0),
       COALESCE(SUM(cache_write_tokens), 0),
       COALESCE(SUM(cost_usd), 0.0),
       COALESCE(SUM(kind = 'llm' AND cost_usd IS NULL), 0),
       MIN(start_ns),
       MAX(end_ns)
FROM spans
WHERE start_ns >= ?
GROUP BY feature
"""

_ROOT_DURATIONS = """
SELECT feature, end_ns - start_ns FROM spans WHERE parent_id IS NULL AND start_ns >= ?
"""

# Column positions in _AGGREGATES rows, after ``feature``.
_SUM_FIELDS = (
    "spans",
    "span_errors",
    "requests",
    "errors",
    "ttft_count",
    "_ttft_sum",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_llm_spans",
)


def report(path: str | Path, *, since_ns: int | None = None) -> dict[str, Any]:
    """Summarise the spans of the local store, per feature and overall.

    Definitions (all over spans that started at or after ``since_ns``):

    * ``requests``: spans with no parent (root spans), one per handled request;
      ``errors`` counts those with ``status == "error"`` and ``error_rate`` is
      ``errors / requests`` (``None`` without requests). ``spans``/``span_errors``
      count every span, children included.
    * ``latency_p50_s``/``latency_p95_s``: percentiles (numpy's default linear
      interpolation) of root span durations in seconds; ``None`` without requests.
    * ``ttft_mean_s``: mean time to first token over the ``ttft_count`` spans that
      recorded one.
    * token totals and ``cost_usd``: sums over every span (capture puts usage and
      cost on model-call spans only); ``unpriced_llm_spans`` counts ``llm`` spans
      whose cost is unknown, so a cost total is never silently partial.

    Spans are grouped by their own ``feature``; spans without one are grouped under
    :data:`NONE_FEATURE`.

    Args:
        path: the local store file.
        since_ns: only spans that started at or after this epoch time in
            nanoseconds (see :func:`parse_since`); ``None`` for all.

    Returns:
        A JSON-able dict: ``path``, ``since_ns``, ``time_range`` (``start_ns``,
        ``end_ns`` and ISO-8601 UTC ``start``/``end`` of the spans covered, or
        ``None`` without spans), ``totals`` and ``features`` (feature -> the same
        figures as ``totals``, sorted by feature).

    Raises:
        FileNotFoundError: the store does not exist yet.
    """
    conn = connect_readonly(path)
    try:
        lower = since_ns if since_ns is not None else -(2**63)
        if "spans" in _existing_tables(conn):
            # One read transaction so aggregates and durations see the same snapshot.
            conn.execute("BEGIN")
            aggregates = conn.execute(_AGGREGATES, (lower,)).fetchall()
            durations = conn.execute(_ROOT_DURATIONS, (lower,)).fetchall()
            conn.execute("COMMIT")
        else:
            aggregates, durations = [], []
    finally:
        conn.close()

    by_feature: dict[str, list[int]] = {}
    all_durations: list[int] = []
    for feature, duration_ns in durations:
        by_feature.setdefault(_label(feature), []).append(duration_ns)
        all_durations.append(duration_ns)

    feature_sums: dict[str, dict[str, Any]] = {}
    first_ns: int | None = None
    last_ns: int | None = None
    totals_sums: dict[str, Any] = dict.fromkeys(_SUM_FIELDS, 0)
    for row in sorted(aggregates, key=lambda r: _label(r[0])):
        label = _label(row[0])
        sums = dict(zip(_SUM_FIELDS, row[1:13], strict=True))
        sums["_ttft_sum"] = sums["_ttft_sum"] or 0.0
        totals_sums = _add(totals_sums, sums)
        # A real feature literally named "(none)" shares the label with NULL: merge.
        previous = feature_sums.get(label)
        feature_sums[label] = sums if previous is None else _add(previous, sums)
        first_ns = row[13] if first_ns is None else min(first_ns, row[13])
        last_ns = row[14] if last_ns is None else max(last_ns, row[14])

    out_features = {
        label: _figures(sums, by_feature.get(label, ())) for label, sums in feature_sums.items()
    }
    time_range = None
    if first_ns is not None and last_ns is not None:
        time_range = {
            "start_ns": first_ns,
            "end_ns": last_ns,
            "start": _iso(first_ns),
            "end": _iso(last_ns),
        }
    return {
        "path": str(Path(path).expanduser()),
        "since_ns": since_ns,
        "time_range": time_range,
        "totals": _figures(totals_sums, all_durations),
        "features": out_features,
    }


def _label(feature: str | None) -> str:
    return NONE_FEATURE if feature is None else feature


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {key: a[key] + b[key] for key in a}


def _figures(sums: dict[str, Any], durations_ns: Iterable[int]) -> dict[str, Any]:
    import numpy as np  # only the report needs numpy; keep importing the store light

    durations = np.fromiter(durations_ns, dtype=np.float64)
    requests = int(sums["requests"])
    ttft_count = int(sums["ttft_count"])
    p50 = p95 = None
    if durations.size:
        seconds = np.maximum(durations, 0.0) / 1e9
        p50, p95 = (float(v) for v in np.percentile(seconds, [50, 95]))
    return {
        "requests": requests,
        "errors": int(sums["errors"]),
        "error_rate": int(sums["errors"]) / requests if requests else None,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "ttft_mean_s": float(sums["_ttft_sum"]) / ttft_count if ttft_count else None,
        "ttft_count": ttft_count,
        "spans": int(sums["spans"]),
        "span_errors": int(sums["span_errors"]),
        "input_tokens": int(sums["input_tokens"]),
        "output_tokens": int(sums["output_tokens"]),
        "cache_read_tokens": int(sums["cache_read_tokens"]),
        "cache_write_tokens": int(sums["cache_write_tokens"]),
        "cost_usd": float(sums["cost_usd"]),
        "unpriced_llm_spans": int(sums["unpriced_llm_spans"]),
    }


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc) + timedelta(microseconds=rest // 1000)
    return dt.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# Report reads (llmvigil.core.report): raw figures per (feature, time bucket)
# ---------------------------------------------------------------------------
#
# Every function below takes a connection inside a read transaction (one snapshot)
# and a Window; features are keyed '' when the records carry none. Span figures
# come from spans_rollup for whole 5-minute slots and from the spans themselves
# for the partial slots at the edges and for spans not rolled up yet.


@dataclass(frozen=True)
class Window:
    """A report's time range ``[lo_ns, hi_ns)``, cut into buckets of ``bucket_ns``.

    Bucket ``i`` starts at ``origin_ns + i * bucket_ns``; ``origin_ns`` is a multiple
    of ``bucket_ns`` at or before ``lo_ns``.
    """

    lo_ns: int
    hi_ns: int
    origin_ns: int
    bucket_ns: int

    @property
    def buckets(self) -> int:
        """How many buckets cover the range (at least one)."""
        return max(1, -(-(self.hi_ns - self.origin_ns) // self.bucket_ns))


def report_tables(conn: sqlite3.Connection) -> set[str]:
    """The tables present in the store (a store may predate some of them)."""
    return _existing_tables(conn)


def time_bounds(
    conn: sqlite3.Connection, lo_ns: int, hi_ns: int, tables: set[str]
) -> tuple[int, int] | None:
    """The first and last record time in ``[lo_ns, hi_ns)``, or ``None`` without records.

    Spans count by start time; scores, session events, alerts and safety verdicts
    by their time. Each bound is one index seek.
    """
    firsts: list[int] = []
    lasts: list[int] = []
    for kind in ("spans", "scores", "session_events", "alerts", "safety_verdicts"):
        if kind not in tables:
            continue
        t = TABLES[kind].time_column
        for order, found in (("ASC", firsts), ("DESC", lasts)):
            row = conn.execute(
                f"SELECT {t} FROM {kind} WHERE {t} >= ? AND {t} < ? ORDER BY {t} {order} LIMIT 1",
                (lo_ns, hi_ns),
            ).fetchone()
            if row is not None:
                found.append(int(row[0]))
    if not firsts:
        return None
    return min(firsts), max(lasts)


_RAW_SUMS = (
    "SELECT IFNULL(feature, ''), (start_ns - ?) / ?, "
    + ", ".join(f"SUM({expr})" for _, _, expr in ROLLUP_COLUMNS)
    + " FROM spans WHERE {cond} GROUP BY 1, 2"
)
_ROLLED_SUMS = (
    f"SELECT feature, (slot * {ROLLUP_SLOT_NS} - ?) / ?, "
    + ", ".join(f"SUM({name})" for name in ROLLUP_FIELDS)
    + " FROM spans_rollup WHERE slot >= ? AND slot < ? GROUP BY 1, 2"
)


def span_sums(
    conn: sqlite3.Connection, window: Window, tables: set[str]
) -> dict[tuple[str, int], list[float]]:
    """Sum the :data:`ROLLUP_FIELDS` of the spans started in the window, per (feature, bucket)."""
    w = window
    out: dict[tuple[str, int], list[float]] = {}

    def add(sql: str, params: tuple[Any, ...]) -> None:
        for row in conn.execute(sql, params):
            acc = out.get((row[0], row[1]))
            if acc is None:
                out[(row[0], row[1])] = list(row[2:])
            else:
                for i, value in enumerate(row[2:]):
                    acc[i] += value

    def raw(lo: int, hi: int) -> None:
        if lo < hi:
            cond = "start_ns >= ? AND start_ns < ?"
            add(_RAW_SUMS.format(cond=cond), (w.origin_ns, w.bucket_ns, lo, hi))

    first_slot = -(-w.lo_ns // ROLLUP_SLOT_NS)
    end_slot = w.hi_ns // ROLLUP_SLOT_NS
    usable = (
        {"spans_rollup", "spans_rollup_state"} <= tables
        and w.bucket_ns % ROLLUP_SLOT_NS == 0
        and first_slot < end_slot
    )
    if not usable:
        if "spans" in tables:
            raw(w.lo_ns, w.hi_ns)
        return out
    mid_lo, mid_hi = first_slot * ROLLUP_SLOT_NS, end_slot * ROLLUP_SLOT_NS
    add(_ROLLED_SUMS, (w.origin_ns, w.bucket_ns, first_slot, end_slot))
    raw(w.lo_ns, mid_lo)
    raw(mid_hi, w.hi_ns)
    mark = conn.execute("SELECT last_rowid FROM spans_rollup_state").fetchone()
    # Spans not rolled up yet: a rowid range, so never the start_ns index (the +).
    cond = "rowid > ? AND +start_ns >= ? AND +start_ns < ?"
    add(_RAW_SUMS.format(cond=cond),
        (w.origin_ns, w.bucket_ns, mark[0] if mark else 0, mid_lo, mid_hi))
    return out


def _feature_params(feature: str) -> tuple[str | None, ...]:
    # Key '' stands for NULL and for a literal '' feature: two index seeks.
    return (None, "") if feature == "" else (feature,)


def _concat(text: str | None, dtype: Any) -> Any:
    import numpy as np  # the report needs numpy; keep importing the store light

    if not text:
        return np.empty(0, dtype=dtype)
    return np.fromstring(text, dtype=dtype, sep=",")


def root_durations(conn: sqlite3.Connection, feature: str, window: Window) -> tuple[Any, Any]:
    """``(buckets, durations_ns)`` of the root spans of ``feature`` started in the window.

    Two int64 numpy arrays in the same order. The durations come from the
    ``rx_spans_roots`` index, concatenated by SQLite and parsed by numpy: about 20x
    faster than fetching one Python tuple per span.
    """
    import numpy as np

    w = window
    buckets, durations = [], []
    for value in _feature_params(feature):
        row = conn.execute(
            "SELECT group_concat((start_ns - ?) / ?), group_concat(end_ns - start_ns) "
            "FROM spans WHERE parent_id IS NULL AND feature IS ? "
            "AND start_ns >= ? AND start_ns < ?",
            (w.origin_ns, w.bucket_ns, value, w.lo_ns, w.hi_ns),
        ).fetchone()
        buckets.append(_concat(row[0], np.int64))
        durations.append(_concat(row[1], np.int64))
    return np.concatenate(buckets), np.concatenate(durations)


def ttft_values(
    conn: sqlite3.Connection, feature: str, window: Window
) -> tuple[Any, Any, Any]:
    """``(buckets, ttft_ns, durations_ns)`` of the spans of ``feature`` that recorded a TTFT.

    Three int64 numpy arrays; ``durations_ns`` is the total latency of the same
    streamed calls. The TTFT is read in whole nanoseconds (SQLite turns integers
    into text four times faster than floats).
    """
    import numpy as np

    w = window
    parts: list[tuple[Any, Any, Any]] = []
    for value in _feature_params(feature):
        row = conn.execute(
            "SELECT group_concat((start_ns - ?) / ?), "
            "group_concat(CAST(ROUND(ttft_s * 1e9) AS INTEGER)), "
            "group_concat(end_ns - start_ns) FROM spans WHERE ttft_s IS NOT NULL "
            "AND feature IS ? AND start_ns >= ? AND start_ns < ?",
            (w.origin_ns, w.bucket_ns, value, w.lo_ns, w.hi_ns),
        ).fetchone()
        parts.append((_concat(row[0], np.int64), _concat(row[1], np.int64),
                      _concat(row[2], np.int64)))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def top_users(
    conn: sqlite3.Connection, window: Window, limit: int
) -> tuple[list[tuple[str, float, int]], int]:
    """The ``limit`` users with the highest cost in the window, and how many users had a cost.

    Each entry is ``(user_id, cost_usd, priced_spans)``, highest cost first (ties by
    user id); spans without a user are left out.
    """
    rows = conn.execute(
        "SELECT user_id, cost, n, COUNT(*) OVER () FROM ("
        " SELECT user_id, TOTAL(cost_usd) AS cost, COUNT(*) AS n FROM spans"
        " WHERE cost_usd IS NOT NULL AND user_id IS NOT NULL"
        " AND +start_ns >= ? AND +start_ns < ? GROUP BY user_id"
        ") ORDER BY cost DESC, user_id LIMIT ?",
        (window.lo_ns, window.hi_ns, limit),
    ).fetchall()
    users = int(rows[0][3]) if rows else 0
    return [(str(r[0]), float(r[1]), int(r[2])) for r in rows], users


class _Category(msgspec.Struct):
    category: Any = None


_category_decoder = msgspec.json.Decoder(_Category)


def _category(data: bytes | str | None) -> str | None:
    """The category of a stored score's ``data``, as text; ``None`` when it has none or
    the row cannot be read (a report never fails on one bad row)."""
    if data is None:
        return None
    try:
        category = _category_decoder.decode(data).category
    except msgspec.MsgspecError:
        return None
    return None if category is None else str(category)


def feedback_rows(
    conn: sqlite3.Connection, window: Window, kinds: Iterable[str],
    positive: Iterable[str] = (),
) -> list[tuple[str, str, float | None, int, str | None]]:
    """The feedback scores of ``kinds`` in the window: ``(feature, kind, value, bucket, category)``.

    A score without a feature takes its span's, else its trace's root span's feature
    (as the feedback monitor does). The category is read for every kind but the
    ``positive`` ones (a satisfied user gives no category).
    """
    kinds = sorted(kinds)
    if not kinds:
        return []
    marks = ", ".join("?" * len(kinds))
    positive = sorted(positive)
    skip = ", ".join("?" * len(positive))
    rows = conn.execute(
        "SELECT IFNULL(COALESCE(sc.feature,"
        " (SELECT s.feature FROM spans s WHERE s.id = sc.span_id),"
        f" {root_by_trace('feature', 'sc.trace_id')}), ''),"
        " sc.kind, sc.value, (sc.time_ns - ?) / ?,"
        f" CASE WHEN sc.kind NOT IN ({skip or 'NULL'}) THEN sc.data END FROM scores sc"
        f" WHERE sc.time_ns >= ? AND sc.time_ns < ? AND sc.kind IN ({marks})",
        (window.origin_ns, window.bucket_ns, *positive, window.lo_ns, window.hi_ns, *kinds),
    ).fetchall()
    # A value column holding text (written by something other than llmvigil.feedback,
    # or by a version before it checked values) reads as no value.
    return [
        (str(r[0]), str(r[1]), r[2] if isinstance(r[2], (int, float)) else None, int(r[3]),
         _category(r[4]))
        for r in rows
    ]


#: Per (feature, bucket of the session's first activity): the fields of a
#: :func:`session_sums` entry.
SESSION_FIELDS = (
    "sessions", "completed", "abandoned_explicit", "abandoned_timeout", "turns",
    "completion_ns",
)

_SESSIONS = """
WITH activity AS (
    SELECT session_id AS sid, feature, 1 AS turns, start_ns AS first_ns,
           MAX(end_ns, start_ns) AS last_ns, NULL AS done_ns, 0 AS abandoned
    FROM spans
    WHERE session_id IS NOT NULL AND parent_id IS NULL
      AND +start_ns >= :lo AND +start_ns < :hi
    UNION ALL
    SELECT session_id, feature, event = 'turn', time_ns, time_ns,
           CASE WHEN event = 'task_complete' THEN time_ns END, event = 'abandon'
    FROM session_events WHERE time_ns >= :lo AND time_ns < :hi
), s AS (
    SELECT MIN(feature) AS feature, SUM(turns) AS turns, MIN(first_ns) AS first_ns,
           MAX(last_ns) AS last_ns, MIN(done_ns) AS done_ns, MAX(abandoned) AS abandoned
    FROM activity GROUP BY sid
)
SELECT IFNULL(feature, ''), (first_ns - :origin) / :bucket, COUNT(*),
       SUM(done_ns IS NOT NULL),
       SUM(done_ns IS NULL AND abandoned),
       SUM(done_ns IS NULL AND NOT abandoned AND last_ns <= :deadline),
       SUM(turns), TOTAL(done_ns - first_ns)
FROM s GROUP BY 1, 2
"""


def session_sums(
    conn: sqlite3.Connection, window: Window, *, now_ns: int, idle_timeout_ns: int,
    tables: set[str],
) -> dict[tuple[str, int], list[float]]:
    """Sessions active in the window, per (feature, bucket of their first activity).

    A session is active when one of its session events or root spans falls in the
    window; a root span is one turn, and so is a ``turn`` event. It *completed* when
    a ``task_complete`` event is in the window; it was *abandoned* explicitly by an
    ``abandon`` event (and no completion), or by timeout when neither happened and its
    last activity is at least ``idle_timeout_ns`` before ``now_ns``; otherwise it is
    still open. ``completion_ns`` sums the time from first activity to completion.
    Values follow :data:`SESSION_FIELDS`.
    """
    if not {"spans", "session_events"} <= tables:
        return {}
    w = window
    rows = conn.execute(_SESSIONS, {
        "lo": w.lo_ns, "hi": w.hi_ns, "origin": w.origin_ns, "bucket": w.bucket_ns,
        "deadline": now_ns - idle_timeout_ns,
    }).fetchall()
    return {(str(r[0]), int(r[1])): [float(v or 0) for v in r[2:]] for r in rows}


def alert_rows(
    conn: sqlite3.Connection, window: Window
) -> list[tuple[str, str, int, int, bytes]]:
    """Alerts in the window per (rule, severity): count, last time, last alert's record data."""
    # SQLite takes the bare column ``data`` from the row holding MAX(time_ns).
    rows = conn.execute(
        "SELECT rule, severity, COUNT(*), MAX(time_ns), data FROM alerts "
        "WHERE time_ns >= ? AND time_ns < ? GROUP BY rule, severity",
        (window.lo_ns, window.hi_ns),
    ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), bytes(r[4])) for r in rows]


def safety_rows(conn: sqlite3.Connection, window: Window) -> list[tuple[str, str, int]]:
    """Safety verdicts in the window per (action, category; '' for none): their count."""
    rows = conn.execute(
        "SELECT action, IFNULL(category, ''), COUNT(*) FROM safety_verdicts "
        "WHERE time_ns >= ? AND time_ns < ? GROUP BY 1, 2",
        (window.lo_ns, window.hi_ns),
    ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


# ---------------------------------------------------------------------------
# --since
# ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_since(text: str, *, now_ns: int | None = None) -> int:
    """Turn a ``--since`` argument into an epoch time in nanoseconds.

    Accepted forms: a duration back from now, ``30s``, ``15m``, ``2h``, ``7d``,
    ``1w`` (a decimal amount such as ``1.5h`` works too), or an ISO-8601 date or
    date-time (``2024-05-01``, ``2024-05-01T12:00``, ``2024-05-01T12:00:00Z``,
    ``2024-05-01 12:00:00+02:00``); a date-time without an offset is local time.

    Args:
        text: the argument as typed.
        now_ns: the current time, for durations; defaults to the clock.

    Raises:
        ValueError: ``text`` is neither form; the message lists the accepted forms.
    """
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        now = now_ns if now_ns is not None else time.time_ns()
        return now - round(amount * _UNIT_S[unit] * 1_000_000_000)
    stripped = text.strip()
    # Python 3.10's fromisoformat does not take a trailing "Z".
    if stripped[-1:] in ("z", "Z"):
        stripped = stripped[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: give a duration back from now "
            "(30s, 15m, 2h, 7d, 1w) or an ISO-8601 date or date-time "
            "(2024-05-01, 2024-05-01T12:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive means local time
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600; new parent folders 0700).

    An existing file is left as it is. Every SQLite file llmvigil writes (the store,
    the review queue, the canary history) goes through here: they hold prompts and
    outputs.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)  # os.open's mode is filtered by the umask
