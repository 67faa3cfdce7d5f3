"""The ``postgres`` backend: the local store's tables on a shared PostgreSQL server.

Several processes (replicas of an application, ``vigil serve`` collectors) write
one store, and ``vigil report`` reads it as it reads the SQLite file
(:mod:`llmvigil.core.store_postgres`).

* **Schema**: the SQLite store's tables and indexes (:data:`~llmvigil.core.store_queries.TABLES`,
  translated to PostgreSQL types), created and upgraded by the Alembic migrations
  in ``llmvigil/migrations``. The first connection of a process checks the
  revision in ``llmvigil_alembic_version``; when it is behind, it runs ``upgrade
  head`` under a transaction-level advisory lock, so processes starting together
  migrate once and the others wait, then find the schema current. No
  ``alembic.ini`` is involved (:func:`migrate`).
* **Writes**: each batch is one transaction; per record kind, rows go through a
  binary ``COPY`` into a session temp table and one ``INSERT ... SELECT ... ON
  CONFLICT (id) DO UPDATE``. Rows are upserted in id order, kinds in a fixed
  order, so concurrent writers with overlapping ids take row locks in the same
  order and never deadlock; a re-delivered record identical to the stored one
  changes nothing (the update is skipped when ``data`` is equal).
* **Outcomes**: connection loss, server shutdown, timeouts and other server-side
  conditions return ``RETRY`` (the outbox retries, then journals and replays);
  records PostgreSQL rejects as data (``DataError``, ``IntegrityError``) or that
  cannot be encoded return ``FAILURE``.

Settings: ``dsn`` (else ``$VIGIL_PG_DSN``, then ``$PGDSN``), ``schema`` (else
the DSN's ``search_path``), ``timeout_s`` (statement and connect timeout),
``application_name`` (default ``llmvigil``) and ``migrate`` (default true;
false for a role without DDL rights: the schema must then be migrated by hand).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError, MissingExtraError, VigilError
from ..core.model import Record, decode
from ..core.store_postgres import (
    HEAD_REVISION,
    VERSION_TABLE,
    connect,
    display_dsn,
    pg_type,
    quote_ident,
    resolve_dsn,
)
from ..core.store_queries import TABLES, TableSpec
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities
from ._store_base import RecordTables, StoreExportHooks

# The row layout is the SQLite store's (TableSpec.column_names); one builder per
# kind serves both stores.
from .local import _ROWS

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CAPABILITIES",
    "MIGRATIONS_DIR",
    "PostgresBackend",
    "PostgresStore",
    "migrate",
]

_log = logging.getLogger("llmvigil.adapters.postgres")

CAPABILITIES = Capabilities(
    holds={kind: f"table {kind} of the PostgreSQL store" for kind in TABLES}
)

#: The Alembic script directory (``env.py``, ``versions/``).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

#: ``pg_advisory_xact_lock`` key serialising migrations within one database.
_MIGRATION_LOCK_KEY = -5066015818947623231  # first 8 bytes of sha256(b"llmvigil.migrations")

#: How long a starting process waits for another one's migration.
_MIGRATION_LOCK_TIMEOUT = "120s"

# Kinds in a fixed order so every writer locks tables (and rows) in the same order.
_KIND_ORDER = tuple(sorted(TABLES))


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


def _alembic_config(output: io.StringIO | None = None) -> Any:
    try:
        from alembic.config import Config
    except ModuleNotFoundError as exc:
        raise MissingExtraError("postgres", "postgres", exc.name or "alembic") from exc
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision of the migration scripts (Alembic's ``heads``)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return str(head)


def migrate(
    dsn: str,
    *,
    schema: str | None = None,
    sql: bool = False,
    connect_timeout_s: float = 10.0,
) -> str:
    """Bring the store's schema to the newest revision (Alembic ``upgrade head``).

    Safe to run from several processes at once: the upgrade runs in one
    transaction holding an advisory lock, and a store already at the newest
    revision is left alone. The schema named by ``schema`` (or first on the
    DSN's ``search_path``) is created when missing.

    Args:
        dsn: the store's DSN.
        schema: the schema holding the tables; ``None`` for the DSN's ``search_path``.
        sql: do not connect; return the SQL an upgrade of an empty schema runs
            (Alembic's offline mode), for a DBA to review or apply.
        connect_timeout_s: how long to wait for the server to accept the connection.

    Returns:
        The revision the store is at afterwards, or the SQL text when ``sql``.

    Raises:
        VigilError: the store has a revision this llmvigil does not know (it was
            migrated by a newer llmvigil).
        MissingExtraError: alembic, sqlalchemy or psycopg is not installed.
        psycopg.OperationalError: the server cannot be reached.
    """
    buffer = io.StringIO()
    cfg = _alembic_config(buffer)
    from alembic import command

    if sql:
        command.upgrade(cfg, "head", sql=True)
        return buffer.getvalue()

    from alembic.util.exc import CommandError
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    def open_connection() -> Any:
        return connect(dsn, schema=schema, connect_timeout_s=connect_timeout_s,
                       application_name="llmvigil-migrate")

    engine = create_engine("postgresql+psycopg://", creator=open_connection, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{_MIGRATION_LOCK_TIMEOUT}'"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
            _create_schema_if_missing(conn)
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:
                raise VigilError(
                    f"PostgreSQL store {display_dsn(dsn)}: {exc}; the schema was migrated "
                    "by a newer llmvigil: upgrade llmvigil"
                ) from exc
            row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).fetchone()
    except DBAPIError as exc:
        # Callers classify psycopg's own exceptions (transient or not), not SQLAlchemy's.
        if isinstance(exc.orig, Exception):
            raise exc.orig from exc
        raise
    finally:
        engine.dispose()
    return str(row[0]) if row else ""


def _create_schema_if_missing(conn: Any) -> None:
    """Create the first schema of the ``search_path`` when none of them exists.

    ``conn`` is a SQLAlchemy connection inside the migration transaction.
    """
    from sqlalchemy import text

    if conn.execute(text("SELECT current_schema()")).scalar() is not None:
        return
    path = str(conn.execute(text("SELECT current_setting('search_path')")).scalar())
    for entry in _split_search_path(path):
        if entry != "$user":
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(entry)}"))
            return


def _split_search_path(path: str) -> list[str]:
    """``'"$user", public, "My Schema"'`` -> ``['$user', 'public', 'My Schema']``."""
    names: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(path):
        ch = path[i]
        if quoted:
            if ch == '"' and path[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            names.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    names.append("".join(current).strip())
    return [n for n in names if n]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


def _copy_types(spec: TableSpec) -> list[str]:
    """The binary COPY type of each column of ``spec.column_names``."""
    types = ["text"]
    for name, sqlite_type in spec.columns:
        # labels arrive as the JSON text the SQLite store keeps; cast on insert.
        pg = "TEXT" if name == "labels" else pg_type(name, sqlite_type).split(" NOT NULL")[0]
        types.append({"TEXT": "text", "BIGINT": "int8", "DOUBLE PRECISION": "float8"}[pg])
    types.append("bytea")
    return types


class _Statements:
    """The SQL of one table's batched upsert."""

    def __init__(self, spec: TableSpec) -> None:
        names = spec.column_names
        cols = ", ".join(names)
        temp = f"pg_temp._vigil_in_{spec.name}"
        types = _copy_types(spec)
        self.copy_types = types
        self.text_positions = tuple(i for i, t in enumerate(types) if t == "text")
        self.json_positions = tuple(i for i, n in enumerate(names) if n == "labels")
        self.create_temp = (
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} "
            f"({', '.join(f'{n} {t}' for n, t in zip(names, types, strict=True))}) "
            "ON COMMIT DELETE ROWS"
        )
        self.copy = f"COPY {temp} ({cols}) FROM STDIN (FORMAT BINARY)"
        selected = ", ".join(f"{n}::jsonb" if n == "labels" else n for n in names)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "id")
        self.upsert = (
            f"INSERT INTO {spec.name} ({cols}) SELECT {selected} FROM {temp} ORDER BY id "
            f"ON CONFLICT (id) DO UPDATE SET {updates} "
            f"WHERE {spec.name}.data IS DISTINCT FROM excluded.data"
        )


_STATEMENTS: dict[str, _Statements] = {kind: _Statements(spec) for kind, spec in TABLES.items()}


def _without_nul(row: tuple[Any, ...], statements: _Statements) -> tuple[Any, ...]:
    """Replace NUL, which PostgreSQL text and jsonb refuse, in the query columns.

    The stored record (``data``) keeps it.
    """
    # The query columns come from the record, whose JSON (``data``, last) escapes NUL
    # as \u0000: one bytes search clears almost every row.
    if b"\\u0000" not in row[-1]:
        return row
    out = list(row)
    for i in statements.text_positions:
        if isinstance(out[i], str):
            out[i] = out[i].replace("\x00", "\ufffd")
    for i in statements.json_positions:  # JSON text: NUL is escaped there
        if isinstance(out[i], str):
            out[i] = out[i].replace("\\u0000", "\\ufffd")
    return tuple(out)


class PostgresStore(RecordTables):
    """llmvigil records in PostgreSQL tables, written by many processes at once.

    One connection per store, opened on first use and reopened after a failure;
    calls from several threads take turns. Each new connection checks the schema
    revision once, and migrates when it is behind.

    Args:
        dsn: a ``postgresql://`` URI or ``key=value`` string; ``None`` reads
            ``$VIGIL_PG_DSN`` then ``$PGDSN``.
        schema: the schema holding the tables (created when missing); ``None``
            for the DSN's ``search_path``.
        timeout_s: statement timeout, and the connect timeout (at most 10 s).
        application_name: shown in ``pg_stat_activity`` unless the DSN sets one.
        auto_migrate: run ``upgrade head`` when the schema is behind; when false
            a schema behind raises :class:`VigilError` naming :func:`migrate`.

    Raises:
        ConfigError: no DSN, or the DSN cannot be parsed.
        MissingExtraError: psycopg is not installed.
    """

    _PLACEHOLDER = "%s"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str | None = None,
        timeout_s: float = 10.0,
        application_name: str = "llmvigil",
        auto_migrate: bool = True,
    ) -> None:
        self.dsn = resolve_dsn(dsn)
        self.schema = schema
        self.timeout_s = timeout_s
        self.auto_migrate = auto_migrate
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self.dsn)
        self._params: dict[str, Any] = {}
        if "application_name" not in given:
            self._params["application_name"] = application_name
        # Notice a dead server within the timeout instead of the kernel's minutes.
        for key, value in (("keepalives", 1), ("keepalives_idle", 30),
                           ("keepalives_interval", 10), ("keepalives_count", 3),
                           ("tcp_user_timeout", int(timeout_s * 1000))):
            if key not in given:
                self._params[key] = value
        self._settings = {"statement_timeout": str(int(timeout_s * 1000))}
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._schema_ready = False
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({display_dsn(self.dsn)!r}, schema={self.schema!r})"

    # -- connection ----------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """This store's open connection, (re)connecting and migrating as needed.

        Called with ``self._lock`` held.
        """
        if self._closed:
            raise VigilError(f"{self!r} is closed")
        if self._pid != os.getpid():
            # Forked: the parent's connection is not ours (psycopg will not close
            # it from here, so the parent's session survives).
            self._conn, self._pid, self._schema_ready = None, os.getpid(), False
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._discard()
            conn = None
        if conn is None:
            conn = connect(
                self.dsn, schema=self.schema, connect_timeout_s=min(self.timeout_s, 10.0),
                settings=self._settings, **self._params,
            )
            self._conn = conn
        if not self._schema_ready:
            self._ensure_schema(conn)
            self._schema_ready = True
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        revision = self._revision(conn)
        if revision == HEAD_REVISION:
            return
        if not self.auto_migrate:
            raise VigilError(
                f"PostgreSQL store {display_dsn(self.dsn)} is at revision {revision or 'none'}, "
                f"this llmvigil needs {HEAD_REVISION}: run "
                "llmvigil.adapters.postgres.migrate(dsn) with a role that may create tables"
            )
        migrate(self.dsn, schema=self.schema, connect_timeout_s=min(self.timeout_s, 10.0))

    @staticmethod
    def _revision(conn: psycopg.Connection[Any]) -> str | None:
        with conn.transaction():
            row = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()
            if row is None or row[0] is None:
                return None
            found = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
        return str(found[0]) if found else None

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._schema_ready = False
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken connection must not fail the caller
                _log.debug("closing a broken PostgreSQL connection: %r", exc)

    def _run(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn(conn)`` under the lock; drop the connection when it failed."""
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._discard()
                raise
            except psycopg.errors.UndefinedTable:
                self._schema_ready = False  # dropped under us: migrate again next time
                raise

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the open connection, or ``None``."""
        conn = self._conn
        return None if conn is None or conn.closed else int(conn.info.backend_pid)

    # -- public API --------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Upsert ``records`` (any mix of kinds) in one transaction.

        A record whose id is already stored replaces the stored one (within a
        batch, the last record with an id wins), so writing the same batch twice
        leaves the store as after the first write.

        Raises:
            TypeError: an element is not an llmvigil record, or cannot be encoded.
            psycopg.OperationalError: the server is unreachable, shut down, or the
                statement timed out; nothing of the batch was written.
            psycopg.DataError: PostgreSQL rejected a value; nothing was written.
        """
        if not records:
            return
        rows: dict[str, dict[str, tuple[Any, ...]]] = {}
        for record in records:
            entry = _ROWS.get(type(record))
            if entry is None:
                raise TypeError(f"not an llmvigil record: {type(record).__name__}")
            kind, to_row = entry
            row = _without_nul(to_row(record), _STATEMENTS[kind])
            rows.setdefault(kind, {})[row[0]] = row

        def upsert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                for kind in _KIND_ORDER:
                    batch = rows.get(kind)
                    if not batch:
                        continue
                    statements = _STATEMENTS[kind]
                    cur.execute(statements.create_temp)
                    with cur.copy(statements.copy) as copy:
                        copy.set_types(statements.copy_types)
                        for key in sorted(batch):
                            copy.write_row(batch[key])
                    cur.execute(statements.upsert)

        self._run(upsert)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        def fetch(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.transaction():
                return conn.execute(sql, args or None).fetchall()

        rows: list[Any] = self._run(fetch)
        return rows

    def _record(self, data: Any) -> Record:
        return decode(bytes(data))

    def revision(self) -> str | None:
        """The schema revision of the store (connecting, and migrating, if needed)."""
        result: str | None = self._run(self._revision)
        return result

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection; later calls raise :class:`VigilError`.

        An export still running after ``timeout_s`` has its connection closed under it.
        """
        acquired = self._lock.acquire(timeout=timeout_s)
        try:
            self._closed = True
            if self._pid == os.getpid():
                self._discard()
            else:
                self._conn = None
        finally:
            if acquired:
                self._lock.release()


# ---------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed later unchanged (the records are fine)."""
    import psycopg

    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
        return False
    # Server down, failover to a read-only standby, a table or grant missing,
    # a newer schema: the destination must change, the records need not.
    return isinstance(exc, (psycopg.Error, VigilError))


class PostgresBackend(StoreExportHooks):
    """The ``postgres`` backend: exports every record kind to a :class:`PostgresStore`.

    Nothing is contacted at construction, so an application starts while the
    server is down; its records are journaled until the server answers.

    Raises:
        ConfigError: no DSN, or the DSN cannot be parsed; the message names the setting.
        MissingExtraError: ``pip install 'llmvigil[postgres]'`` is needed.
    """

    _log = _log

    def __init__(self, settings: Mapping[str, Any]) -> None:
        # Alembic and SQLAlchemy are imported only when a migration runs; look them up
        # now so a missing extra is reported at init, not at the first export.
        for module in ("psycopg", "alembic", "sqlalchemy"):
            if importlib.util.find_spec(module) is None:
                raise MissingExtraError("postgres", "postgres", module)
        timeout_s = float(settings.get("timeout_s", 10.0))
        if timeout_s <= 0:
            raise ConfigError(f"backends.postgres.timeout_s: must be > 0, got {timeout_s}")
        schema = settings.get("schema")
        self.store = PostgresStore(
            settings.get("dsn") or None,
            schema=str(schema) if schema else None,
            timeout_s=timeout_s,
            application_name=str(settings.get("application_name", "llmvigil")),
            auto_migrate=bool(settings.get("migrate", True)),
        )

    @property
    def where(self) -> str:
        """The store's DSN without its password, for logs."""
        return f"PostgreSQL store {display_dsn(self.store.dsn)}"

    def _write(self, batch: Sequence[Record]) -> None:
        self.store.write(batch)

    def _transient(self, exc: Exception) -> bool:
        return _is_transient(exc)

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        revision = self.store.revision()
        counts = ", ".join(f"{self.store.count(kind)} {kind}" for kind in TABLES)
        return f"PostgreSQL store {display_dsn(self.store.dsn)} (revision {revision}): {counts}"

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self.store.close(timeout_s)


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="postgres",
            factory=PostgresBackend,
            capabilities=CAPABILITIES,
            description="PostgreSQL store shared by many processes (vigil report reads it)",
            extra="postgres",
            redaction="full",
            merge_records=8192,
        )
    ]
