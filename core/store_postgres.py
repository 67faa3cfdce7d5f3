"""The PostgreSQL store's schema, connections and the read side of ``vigil report``.

The PostgreSQL store holds the same tables as the local SQLite store: the
column definitions of :data:`llmvigil.core.store_queries.TABLES` are translated
here (:func:`pg_type`) into PostgreSQL DDL, which the Alembic migrations in
``llmvigil/migrations`` apply. The ``postgres`` backend adapter
(:mod:`llmvigil.adapters.postgres`) writes the tables; :func:`report` and
:func:`record_counts` read them and return exactly what
:func:`llmvigil.core.store_queries.report` and
:func:`~llmvigil.core.store_queries.record_counts` return for an SQLite store, so
``vigil report`` prints either one the same way.

Which schema holds the tables is PostgreSQL's ``search_path``: the default one of
the role, the DSN's ``options=-csearch_path%3Dvigil``, or the ``schema`` argument,
which overrides both.

``psycopg`` (v3) is imported lazily: this module imports without the
``[postgres]`` extra, so the migrations can print their SQL offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError, MissingExtraError, VigilError
from .store_queries import NONE_FEATURE, TABLES, TableSpec, _iso

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DSN_ENV_VARS",
    "HEAD_REVISION",
    "VERSION_TABLE",
    "connect",
    "conninfo",
    "display_dsn",
    "is_postgres_dsn",
    "pg_type",
    "quote_ident",
    "record_counts",
    "report",
    "resolve_dsn",
    "table_ddl",
]

#: The newest Alembic revision in ``llmvigil/migrations/versions``; a store at this
#: revision needs no migration, so the writer checks it without importing Alembic.
HEAD_REVISION = "0002"

#: Alembic's version table for the llmvigil schema, named so it never collides
#: with an application's own ``alembic_version`` in the same schema.
VERSION_TABLE = "llmvigil_alembic_version"

#: Environment variables read, in order, when no DSN is configured.
DSN_ENV_VARS: tuple[str, ...] = ("VIGIL_PG_DSN", "PGDSN")

_SQLITE_TO_PG = {
    "TEXT": "TEXT",
    "INTEGER": "BIGINT",  # nanosecond times and token counts need 64 bits
    "REAL": "DOUBLE PRECISION",
    "BLOB": "BYTEA",
}

#: Query columns whose PostgreSQL type is not the plain translation of the SQLite one.
_SPECIAL_TYPES = {"labels": "JSONB"}


def pg_type(column: str, sqlite_type: str) -> str:
    """Translate one SQLite column definition of :data:`TABLES` to PostgreSQL.

    ``INTEGER`` becomes ``BIGINT``, ``REAL`` ``DOUBLE PRECISION``, ``BLOB``
    ``BYTEA``; a metric's ``labels`` become ``JSONB``; constraints such as
    ``NOT NULL`` are kept.

    Raises:
        ValueError: the SQLite type has no translation.
    """
    base, _, constraints = sqlite_type.strip().partition(" ")
    pg = _SPECIAL_TYPES.get(column) or _SQLITE_TO_PG.get(base.upper())
    if pg is None:
        raise ValueError(f"column {column!r}: no PostgreSQL type for SQLite type {base!r}")
    return f"{pg} {constraints}".strip()


def table_ddl(spec: TableSpec) -> list[str]:
    """The ``CREATE TABLE`` and ``CREATE INDEX`` statements of one table on PostgreSQL.

    Column order, names and index names are those of the SQLite store.
    """
    cols = ",\n    ".join(
        [
            "id TEXT PRIMARY KEY",
            *(f"{name} {pg_type(name, sqlite_type)}" for name, sqlite_type in spec.columns),
            "data BYTEA NOT NULL",
        ]
    )
    out = [f"CREATE TABLE {spec.name} (\n    {cols}\n)"]
    for index in spec.indexes:
        out.append(
            f"CREATE INDEX ix_{spec.name}_{'_'.join(index)} ON {spec.name} ({', '.join(index)})"
        )
    return out


# ---------------------------------------------------------------------------
# DSNs and connections
# ---------------------------------------------------------------------------


def is_postgres_dsn(value: str) -> bool:
    """Whether a ``--store`` value names a PostgreSQL store rather than an SQLite file."""
    return value.startswith(("postgresql://", "postgres://"))


def resolve_dsn(dsn: str | None, *, where: str = "dsn") -> str:
    """Return ``dsn``, or the first of :data:`DSN_ENV_VARS` that is set.

    Raises:
        ConfigError: neither is set, or the DSN cannot be parsed; ``where`` names
            the setting in the message.
    """
    value = dsn or next((os.environ[v] for v in DSN_ENV_VARS if os.environ.get(v)), None)
    if not value:
        raise ConfigError(
            f"{where}: no PostgreSQL DSN: set it (postgresql://user@host:5432/dbname) "
            f"or the environment variable {' or '.join(DSN_ENV_VARS)}"
        )
    _require_psycopg()
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except Exception as exc:  # psycopg.ProgrammingError; its text names the bad part
        raise ConfigError(f"{where}: invalid PostgreSQL DSN {display_dsn(value)!r}: {exc}") from exc
    return value


_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def display_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, fit for messages and reports."""
    if "://" not in dsn:
        return _KV_PASSWORD.sub(r"\1***", dsn)
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def conninfo(
    dsn: str,
    *,
    schema: str | None = None,
    settings: Mapping[str, str] | None = None,
    **params: Any,
) -> str:
    """Return a libpq connection string: ``dsn`` plus a schema, server settings and params.

    Args:
        dsn: a ``postgresql://`` URI or a ``key=value`` string.
        schema: put this schema first on the ``search_path`` (created by the writer
            if missing); ``None`` keeps the DSN's or the role's.
        settings: server settings (``statement_timeout`` ...) added to the DSN's
            ``options`` as ``-c name=value``, after any already there.
        **params: connection parameters (``connect_timeout``, ``application_name``)
            that win over the DSN's.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    options = [str(conninfo_to_dict(dsn).get("options") or "")]
    merged = dict(settings or {})
    if schema is not None:
        merged["search_path"] = quote_ident(schema)
    for name, value in merged.items():
        # libpq splits options on spaces; a backslash keeps a space in a value.
        options.append(f"-c {name}={str(value).replace(' ', chr(92) + ' ')}")
    joined = " ".join(o for o in options if o)
    if joined:
        params["options"] = joined
    return make_conninfo(dsn, **params)


def connect(
    dsn: str,
    *,
    schema: str | None = None,
    connect_timeout_s: float = 10.0,
    settings: Mapping[str, str] | None = None,
    **params: Any,
) -> psycopg.Connection[Any]:
    """Open one psycopg connection to the store (see :func:`conninfo` for the arguments).

    Raises:
        MissingExtraError: psycopg is not installed.
        psycopg.OperationalError: the server cannot be reached or refused the login.
    """
    _require_psycopg()
    import psycopg

    info = conninfo(
        dsn, schema=schema, settings=settings,
        connect_timeout=max(1, round(connect_timeout_s)), **params,
    )
    return psycopg.connect(info)


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MissingExtraError("postgres", "postgres", exc.name or "psycopg") from exc


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------
# vigil report / status
# ---------------------------------------------------------------------------


def _open_for_reading(dsn: str, schema: str | None) -> psycopg.Connection[Any]:
    import psycopg

    try:
        conn = connect(dsn, schema=schema, application_name="llmvigil-report")
    except psycopg.OperationalError as exc:
        raise VigilError(
            f"cannot read the PostgreSQL store {display_dsn(dsn)}: {str(exc).strip()}"
        ) from exc
    # One read-only snapshot, so every query of a report sees the same records.
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    return conn


def _existing_tables(conn: psycopg.Connection[Any]) -> set[str]:
    # to_regclass follows the search_path, as the unqualified queries below do.
    rows = conn.execute(
        "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
        (list(TABLES),),
    ).fetchall()
    return {row[0] for row in rows}


def record_counts(dsn: str, *, schema: str | None = None) -> dict[str, int]:
    """Return how many records of each kind the store holds, e.g. ``{"spans": 120, ...}``.

    The PostgreSQL twin of :func:`llmvigil.core.store_queries.record_counts`: every
    kind of :data:`TABLES` is present; a table not created yet counts 0.

    Raises:
        VigilError: the server cannot be reached; the message names the DSN
            (password masked).
        MissingExtraError: psycopg is not installed.
    """
    with _open_for_reading(dsn, schema) as conn:
        existing = _existing_tables(conn)
        counts = {}
        for kind in TABLES:
            if kind in existing:
                row = conn.execute(f"SELECT COUNT(*) FROM {kind}").fetchone()
                counts[kind] = int(row[0]) if row else 0
            else:
                counts[kind] = 0
        return counts


# Figures in the order of _FIELDS; one row per feature label plus the total row
# (GROUPING(label) = 1). Spans without a feature share the NONE_FEATURE label
# with a feature literally named so, as in the SQLite report.
_REPORT = """
SELECT GROUPING(label),
       label,
       COUNT(*),
       COUNT(*) FILTER (WHERE status = 'error'),
       COUNT(*) FILTER (WHERE parent_id IS NULL),
       COUNT(*) FILTER (WHERE parent_id IS NULL AND status = 'error'),
       COUNT(ttft_s),
       SUM(ttft_s),
       COALESCE(SUM(input_tokens), 0)::bigint,
       COALESCE(SUM(output_tokens), 0)::bigint,
       COALESCE(SUM(cache_read_tokens), 0)::bigint,
       COALESCE(SUM(cache_write_tokens), 0)::bigint,
       COALESCE(SUM(cost_usd), 0.0),
       COUNT(*) FILTER (WHERE kind = 'llm' AND cost_usd IS NULL),
       percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY seconds)
           FILTER (WHERE parent_id IS NULL),
       MIN(start_ns),
       MAX(end_ns)
FROM (
    SELECT COALESCE(feature, %(none)s) AS label, status, parent_id, kind, ttft_s,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
           start_ns, end_ns,
           GREATEST(end_ns - start_ns, 0)::float8 / 1e9::float8 AS seconds
    FROM spans
    WHERE start_ns >= %(lower)s
) AS windowed
GROUP BY GROUPING SETS ((label), ())
"""


def report(dsn: str, *, since_ns: int | None = None, schema: str | None = None) -> dict[str, Any]:
    """Summarise the spans of the PostgreSQL store, per feature and overall.

    Returns the structure of :func:`llmvigil.core.store_queries.report`, with the
    same definitions, so ``vigil report`` prints it unchanged; ``path`` holds the
    DSN with its password masked. The aggregation runs in the server (one query,
    ``percentile_cont`` for the latency percentiles, which interpolates linearly as
    numpy's default does), so a report never transfers the spans themselves.
    Floating-point sums and percentiles may differ from the SQLite report's in the
    last bits (summation order).

    Args:
        dsn: the store's DSN (``postgresql://user@host:5432/dbname``).
        since_ns: only spans that started at or after this epoch time in
            nanoseconds; ``None`` for all.
        schema: the schema holding the tables; ``None`` for the DSN's ``search_path``.

    Raises:
        VigilError: the server cannot be reached; the message names the DSN.
        MissingExtraError: psycopg is not installed.
    """
    lower = since_ns if since_ns is not None else -(2**63)
    with _open_for_reading(dsn, schema) as conn:
        rows = (
            conn.execute(_REPORT, {"none": NONE_FEATURE, "lower": lower}).fetchall()
            if "spans" in _existing_tables(conn)
            else []
        )

    totals = _figures(None)
    features: dict[str, dict[str, Any]] = {}
    time_range = None
    for row in rows:
        if row[0]:
            totals = _figures(row)
            if row[15] is not None and row[16] is not None:
                time_range = {
                    "start_ns": int(row[15]),
                    "end_ns": int(row[16]),
                    "start": _iso(int(row[15])),
                    "end": _iso(int(row[16])),
                }
        else:
            features[str(row[1])] = _figures(row)
    return {
        "path": display_dsn(dsn),
        "since_ns": since_ns,
        "time_range": time_range,
        "totals": totals,
        "features": dict(sorted(features.items())),
    }


def _figures(row: tuple[Any, ...] | None) -> dict[str, Any]:
    """One feature's (or the totals') figures, keyed as the SQLite report keys them."""
    if row is None:  # no spans at all: the SQLite report's zero totals
        row = (1, None, 0, 0, 0, 0, 0, None, 0, 0, 0, 0, 0.0, 0, None, None, None)
    (_, _, spans, span_errors, requests, errors, ttft_count, ttft_sum, input_tokens,
     output_tokens, cache_read, cache_write, cost, unpriced, percentiles, _, _) = row
    p50 = p95 = None
    if requests and percentiles is not None:
        p50, p95 = (float(v) for v in percentiles)
    return {
        "requests": int(requests),
        "errors": int(errors),
        "error_rate": int(errors) / int(requests) if requests else None,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "ttft_mean_s": float(ttft_sum or 0.0) / int(ttft_count) if ttft_count else None,
        "ttft_count": int(ttft_count),
        "spans": int(spans),
        "span_errors": int(span_errors),
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "cache_read_tokens": int(cache_read),
        "cache_write_tokens": int(cache_write),
        "cost_usd": float(cost),
        "unpriced_llm_spans": int(unpriced),
    }
