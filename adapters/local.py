"""The local backend: every record in one SQLite file on this machine (the default).

:class:`LocalStore` is the store itself; :class:`LocalBackend` is the adapter the
plugin manager registers for the ``local`` entry of the YAML ``backends:`` list.

The file (``store.path``, default ``.vigil/vigil.db``) is created with mode 0600,
in WAL mode so ``vigil report`` reads while applications write, and is safe for
several processes writing at once: each batch is one ``BEGIN IMMEDIATE``
transaction (writers queue on SQLite's busy timeout instead of deadlocking), and
every write is an upsert by record id, so a re-delivered batch changes nothing.

The schema lives in :mod:`llmvigil.core.store_queries`, which ``vigil report``
reads without importing this module.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..core.errors import ConfigError, VigilError
from ..core.model import (
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    encode,
)
from ..core.store_queries import (
    DEFAULT_STORE_PATH,
    SCHEMA_STATEMENTS,
    SCHEMA_VERSION,
    TABLES,
    create_private_file,
    upsert_rows,
    write_spans,
)
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities
from ._store_base import RecordTables, StoreExportHooks
from .local_writer import WriterError, WriterProcess

__all__ = ["CAPABILITIES", "LocalBackend", "LocalStore"]

_log = logging.getLogger("llmvigil.adapters.local")

CAPABILITIES = Capabilities(
    holds={kind: f"table {kind} of the SQLite store" for kind in TABLES}
)

_T = TypeVar("_T")

#: Extra attempts when SQLite reports "locked"/"busy" without waiting out its
#: busy timeout (WAL recovery, a concurrent journal-mode change).
_MAX_RETRIES = 8


# Row builders: the value order follows TableSpec.column_names in core/store_queries.py.


def _span_row(s: Span) -> tuple[Any, ...]:
    u = s.usage
    return (
        s.id, s.trace_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns, s.status,
        s.error_type, s.model, s.provider, s.feature, s.user_id, s.session_id,
        u.input_tokens if u else None,
        u.output_tokens if u else None,
        u.cache_read_tokens if u else None,
        u.cache_write_tokens if u else None,
        s.cost_usd, s.ttft_s, encode(s),
    )


def _score_row(s: Score) -> tuple[Any, ...]:
    return (
        s.id, s.trace_id, s.span_id, s.name, s.kind, s.value, s.time_ns, s.user_id,
        s.session_id, s.feature, encode(s),
    )


def _session_event_row(e: SessionEvent) -> tuple[Any, ...]:
    return (e.id, e.session_id, e.event, e.time_ns, e.user_id, e.feature, encode(e))


_labels_encoder = msgspec.json.Encoder(order="sorted")


def _metric_row(m: Metric) -> tuple[Any, ...]:
    labels = _labels_encoder.encode(m.labels).decode()
    return (m.id, m.name, m.value, m.time_ns, labels, encode(m))


def _alert_row(a: Alert) -> tuple[Any, ...]:
    return (a.id, a.rule, a.severity, a.time_ns, encode(a))


def _safety_verdict_row(v: SafetyVerdict) -> tuple[Any, ...]:
    return (v.id, v.action, v.category, v.time_ns, v.trace_id, encode(v))


_ROWS: dict[type[Any], tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    Span: ("spans", _span_row),
    Score: ("scores", _score_row),
    SessionEvent: ("session_events", _session_event_row),
    Metric: ("metrics", _metric_row),
    Alert: ("alerts", _alert_row),
    SafetyVerdict: ("safety_verdicts", _safety_verdict_row),
}


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


class LocalStore(RecordTables):
    """An SQLite file holding llmvigil records, shared safely by threads and processes.

    Each thread gets its own connection. Writes are idempotent upserts by record id.

    Args:
        path: the database file; parent directories are created (mode 0700) and a
            new file gets mode 0600, whatever the umask.
        busy_timeout_s: how long a write waits for another writer before failing
            with ``sqlite3.OperationalError: database is locked``.

    Raises:
        OSError: the file or its directory cannot be created.
        sqlite3.DatabaseError: the file is not an SQLite database.
        VigilError: the store was created by a newer llmvigil (newer schema).
    """

    _PLACEHOLDER = "?"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conns: dict[int, sqlite3.Connection] = {}
        self._pid = os.getpid()
        self._closed = False
        self._sidecar_modes_fixed = False

        create_private_file(self.path)
        self._init_schema()

    # -- connections -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        key = threading.get_ident()
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"local store {self.path} is closed")
            if self._pid != os.getpid():
                # Forked: the parent's connections must not be used (or closed) here.
                self._conns = {}
                self._pid = os.getpid()
            conn = self._conns.get(key)
            if conn is None:
                conn = sqlite3.connect(
                    str(self.path),
                    timeout=self.busy_timeout_s,
                    isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT below
                    check_same_thread=False,  # so close() can close every thread's
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA cache_size = -32768")
                self._conns[key] = conn
            return conn

    def _retry(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)``, retrying with jittered backoff while SQLite says busy."""
        deadline = time.monotonic() + self.busy_timeout_s
        attempt = 0
        while True:
            try:
                return fn(self._conn())
            except sqlite3.OperationalError as exc:
                attempt += 1
                if not _is_busy(exc) or attempt > _MAX_RETRIES or time.monotonic() > deadline:
                    raise
                time.sleep(min(0.5, 0.005 * 2**attempt) * random.uniform(0.5, 1.5))

    def _transaction(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, with retries."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._retry(run)

    def _init_schema(self) -> None:
        def wal(conn: sqlite3.Connection) -> str:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])

        mode = self._retry(wal)
        if mode.lower() != "wal":
            _log.warning(
                "local store %s: journal mode is %s, not WAL; readers will block writers",
                self.path, mode,
            )

        def user_version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

        version = self._retry(user_version)
        if version > SCHEMA_VERSION:
            self.close()
            raise VigilError(
                f"{self.path}: the local store has schema version {version}, this "
                f"llmvigil writes version {SCHEMA_VERSION}; upgrade llmvigil"
            )
        if version < SCHEMA_VERSION:

            def create(conn: sqlite3.Connection) -> None:
                # Re-check inside the write lock: another process may have won the race.
                if user_version(conn) >= SCHEMA_VERSION:
                    return
                for statement in SCHEMA_STATEMENTS:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

            self._transaction(create)
            self._fix_sidecar_modes()

    def _fix_sidecar_modes(self) -> None:
        """Give the -wal/-shm files the database file's permissions, once they exist."""
        if self._sidecar_modes_fixed:
            return
        try:
            mode = self.path.stat().st_mode & 0o777
        except OSError:
            return
        found = 0
        for suffix in ("-wal", "-shm"):
            sidecar = self.path.with_name(self.path.name + suffix)
            try:
                if sidecar.stat().st_mode & 0o777 != mode:
                    os.chmod(sidecar, mode)
                found += 1
            except OSError:  # not there (checkpointed away) or not ours: nothing to fix
                pass
        self._sidecar_modes_fixed = found == 2

    # -- public API --------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Upsert ``records`` (any mix of kinds) in one transaction.

        A record whose id is already stored replaces the stored one, so writing
        the same batch twice leaves the store as after the first write.

        Raises:
            TypeError: an element is not an llmvigil record, or cannot be encoded.
            sqlite3.OperationalError: the store stayed locked past the busy timeout,
                or the disk failed; nothing of the batch was written.
        """
        if not records:
            return
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for record in records:
            entry = _ROWS.get(type(record))
            if entry is None:
                raise TypeError(f"not an llmvigil record: {type(record).__name__}")
            kind, to_row = entry
            rows.setdefault(kind, []).append(to_row(record))

        def upsert(conn: sqlite3.Connection) -> None:
            for kind, batch in rows.items():
                if kind == "spans":  # keeps the report's rollup current in this transaction
                    write_spans(conn, batch)
                else:
                    upsert_rows(conn, TABLES[kind], batch)

        self._transaction(upsert)
        self._fix_sidecar_modes()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self._retry(lambda conn: conn.execute(sql, args).fetchall())

    def close(self) -> None:
        """Close every thread's connection; later calls raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._closed = True
            conns = list(self._conns.values()) if self._pid == os.getpid() else []
            self._conns = {}
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error as exc:  # closing must not fail shutdown
                _log.warning("local store %s: closing a connection failed: %s", self.path, exc)


class LocalBackend(StoreExportHooks):
    """The ``local`` backend: exports every record kind to a :class:`LocalStore`.

    Settings: ``path``, the SQLite file (the runtime passes the config's
    ``store.path``; default ``.vigil/vigil.db``), optionally ``busy_timeout_s``, and
    ``writer``: ``thread`` (default, the outbox thread writes) or ``process`` (a child
    process writes, see :mod:`llmvigil.adapters.local_writer`, for more than about
    15,000 spans a second).

    Raises:
        ConfigError: the store file cannot be created or opened (names the path), or
            ``writer`` is not ``thread`` or ``process``, or its process cannot start.
    """

    _log = _log

    def __init__(self, settings: Mapping[str, Any]) -> None:
        raw = settings.get("path") or DEFAULT_STORE_PATH
        busy_timeout_s = float(settings.get("busy_timeout_s", 30.0))
        writer = str(settings.get("writer") or "thread")
        if writer not in ("thread", "process"):
            raise ConfigError(f"backends.local.writer: {writer!r}; expected thread or process")
        try:
            self.store = LocalStore(raw, busy_timeout_s=busy_timeout_s)
        except VigilError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"store.path {str(raw)!r}: cannot open the local store: {exc}"
            ) from exc
        self.writer: WriterProcess | None = None
        if writer == "process":
            try:
                self.writer = WriterProcess(self.store.path, busy_timeout_s=busy_timeout_s)
            except OSError as exc:
                raise ConfigError(f"backends.local.writer: process: cannot start the store "
                                  f"writer ({sys.executable} -m llmvigil.adapters."
                                  f"local_writer): {exc}") from exc

    @property
    def where(self) -> str:
        """The store's path, for logs."""
        return f"local store {self.store.path}"

    def _write(self, batch: Sequence[Record]) -> None:
        if self.writer is not None:
            self.writer.write(batch)
        else:
            self.store.write(batch)

    def _transient(self, exc: Exception) -> bool:
        if isinstance(exc, WriterError):
            return exc.retry
        return isinstance(exc, sqlite3.OperationalError)

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        counts = ", ".join(f"{self.store.count(kind)} {kind}" for kind in TABLES)
        return f"SQLite store {self.store.path}: {counts}"

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        if self.writer is not None:
            self.writer.close(timeout_s)
        self.store.close()


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="local",
            factory=LocalBackend,
            capabilities=CAPABILITIES,
            description="SQLite file on this machine (default)",
            redaction="full",
            merge_records=8192,
        )
    ]
