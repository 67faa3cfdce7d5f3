"""What the ``local`` (SQLite) and ``postgres`` stores share.

Both hold one table per record kind (:data:`~llmvigil.core.store_queries.TABLES`)
with the same columns, so reading them differs only in the SQL placeholder and in
how one query runs: :class:`RecordTables` holds the keyset-paged :meth:`read` and
:meth:`count` over a store's ``_query``. :class:`StoreExportHooks` is the backend
side: every record kind's export hook handing its batch to the backend's ``_export``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, TypeVar

from ..core.model import (
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    decode,
)
from ..core.store_queries import TABLES, TableSpec
from ..plugins.hookspecs import hookimpl
from ..plugins.types import ExportResult

__all__ = ["PAGE_ROWS", "RecordTables", "StoreExportHooks", "table_spec"]

#: Rows fetched per query by :meth:`RecordTables.read`.
PAGE_ROWS = 1000

_Store = TypeVar("_Store", bound="RecordTables")


def table_spec(kind: str) -> TableSpec:
    """The table holding records of ``kind``.

    Raises:
        ValueError: ``kind`` is not a record kind.
    """
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(
            f"unknown record kind {kind!r}; known kinds: {', '.join(TABLES)}"
        ) from None


class RecordTables(ABC):
    """Reading a store whose tables are :data:`~llmvigil.core.store_queries.TABLES`.

    A subclass names its driver's query placeholder and runs one query
    (``_query``); it also provides ``close``, which leaving a ``with`` block calls.
    """

    #: The driver's positional parameter marker (``?`` for sqlite3, ``%s`` for psycopg).
    _PLACEHOLDER: ClassVar[str]

    @abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Run one read-only query and return all its rows."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""

    def _record(self, data: Any) -> Record:
        """The record stored in a row's ``data`` column."""
        return decode(data)

    def read(
        self,
        kind: str,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """Yield the stored records of ``kind`` in time order (ties by id).

        Args:
            kind: a record kind: ``spans``, ``scores``, ``session_events``,
                ``metrics``, ``alerts`` or ``safety_verdicts``.
            since_ns: only records at or after this epoch time in ns (spans by
                ``start_ns``, other records by ``time_ns``).
            until_ns: only records strictly before this time.
            limit: at most this many records.

        Raises:
            ValueError: ``kind`` is not a record kind.
        """
        spec = table_spec(kind)
        t = spec.time_column
        p = self._PLACEHOLDER
        conditions: list[str] = []
        params: list[Any] = []
        if since_ns is not None:
            conditions.append(f"{t} >= {p}")
            params.append(since_ns)
        if until_ns is not None:
            conditions.append(f"{t} < {p}")
            params.append(until_ns)
        return self._pages(spec, conditions, params, limit)

    def _pages(
        self, spec: TableSpec, conditions: list[str], params: list[Any], limit: int | None
    ) -> Iterator[Record]:
        # Keyset pages: no read transaction stays open while the caller iterates.
        t = spec.time_column
        p = self._PLACEHOLDER
        remaining = limit
        last: tuple[Any, Any] | None = None
        while remaining is None or remaining > 0:
            size = PAGE_ROWS if remaining is None else min(PAGE_ROWS, remaining)
            where = list(conditions)
            args = list(params)
            if last is not None:
                where.append(f"({t}, id) > ({p}, {p})")
                args.extend(last)
            sql = (
                f"SELECT {t}, id, data FROM {spec.name}"
                + (f" WHERE {' AND '.join(where)}" if where else "")
                + f" ORDER BY {t}, id LIMIT {p}"
            )
            rows = self._query(sql, (*args, size))
            for row in rows:
                yield self._record(row[2])
            if len(rows) < size:
                return
            last = (rows[-1][0], rows[-1][1])
            if remaining is not None:
                remaining -= len(rows)

    def count(self, kind: str) -> int:
        """Return how many records of ``kind`` the store holds.

        Raises:
            ValueError: ``kind`` is not a record kind.
        """
        spec = table_spec(kind)
        return int(self._query(f"SELECT COUNT(*) FROM {spec.name}", ())[0][0])

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StoreExportHooks(ABC):
    """A store backend's export hooks: each record kind's batch is written by
    ``_write``; a failure that ``_transient`` calls passing is retried, any other one
    makes the batch go record by record, so that only what the store refuses is lost.

    Every export is committed before it returns, so flushing has nothing to do.
    """

    #: Logs of the backend; ``where`` names the store in them.
    _log: ClassVar[logging.Logger]

    @property
    @abstractmethod
    def where(self) -> str:
        """The store, as the logs name it (a path, a DSN without its password)."""

    @abstractmethod
    def _write(self, batch: Sequence[Record]) -> None:
        """Write ``batch`` in one transaction, or raise and write nothing."""

    @abstractmethod
    def _transient(self, exc: Exception) -> bool:
        """Whether writing again later may succeed (busy, locked, disconnected)."""

    def _export(self, kind: str, batch: Sequence[Record]) -> ExportResult:
        """Write one batch of ``kind`` and say whether it was stored."""
        try:
            self._write(batch)
        except Exception as exc:
            if self._transient(exc):
                self._log.warning("%s: writing %d %s failed, will retry: %s", self.where,
                                  len(batch), kind, str(exc).strip())
                return ExportResult.RETRY
            return self._export_one_by_one(kind, batch, exc)
        return ExportResult.SUCCESS

    def _export_one_by_one(self, kind: str, batch: Sequence[Record],
                           error: Exception) -> ExportResult:
        """A batch the store refused for good: its records one at a time, so that only
        those the store cannot take are lost (logged), not the whole batch."""
        refused: list[tuple[Record, Exception]] = []
        if len(batch) == 1:
            refused.append((batch[0], error))
        else:
            for record in batch:
                try:
                    self._write([record])
                except Exception as exc:
                    if self._transient(exc):  # busy again: the whole batch later
                        return ExportResult.RETRY
                    refused.append((record, exc))
        if not refused:
            return ExportResult.SUCCESS
        first, reason = refused[0]
        self._log.warning(
            "%s: %d of %d %s could not be stored and are dropped (first: %s %s: %s: %.300s)",
            self.where, len(refused), len(batch), kind, type(first).__name__,
            getattr(first, "id", "?"), type(reason).__name__, str(reason).strip())
        return ExportResult.FAILURE if len(refused) == len(batch) else ExportResult.SUCCESS

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self._export("spans", spans)

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self._export("scores", scores)

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        return self._export("session_events", events)

    @hookimpl
    def llmvigil_export_metrics(self, metrics: Sequence[Metric]) -> ExportResult:
        return self._export("metrics", metrics)

    @hookimpl
    def llmvigil_export_alerts(self, alerts: Sequence[Alert]) -> ExportResult:
        return self._export("alerts", alerts)

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        return self._export("safety_verdicts", verdicts)

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        return True
