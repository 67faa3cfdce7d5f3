"""Canonical files and the built-in importers ``file`` and ``local``.

Two file formats hold llmvigil history outside any backend:

* **JSON lines** (``jsonl``): one record per line, exactly as
  :func:`llmvigil.core.model.encode` writes it (tagged by ``type``). Lossless: a
  record read back equals the record written.
* **OTLP/JSON** (``otlp-json``): the OpenTelemetry JSON encoding of
  ``ExportTraceServiceRequest``/``ExportMetricsServiceRequest``, one request per line
  as the OpenTelemetry Collector's file exporter writes it (hex trace and span ids,
  integer enums), readable by any OpenTelemetry tool. Spans, scores, session events,
  safety verdicts and metrics are encoded as the ``otlp`` backend sends them (GenAI
  attribute names; point-in-time records as zero-length spans); alerts become
  zero-length ``llmvigil.alert`` spans. A few ``llmvigil.*`` hint attributes (which
  attribute values are JSON, which were derived for OpenTelemetry tools, ids that are
  not W3C hex) make a re-import give back the records that were written; files from
  other OpenTelemetry sources import on a best-effort mapping.

The importers: ``file`` reads either format (detected from the content), ``local``
reads the local SQLite store read-only. A line or row that cannot be read is yielded
as a :class:`~llmvigil.core.migrate.Skipped` naming the line (or row) and the record
id, and reading goes on.

This module holds the two importers (it is the plugin that offers them) and is the
public face of the files: whole files are read and written by :mod:`.export_files`,
JSON lines by :mod:`.jsonl`, OTLP/JSON by :mod:`.otlp_json` (writing in
:mod:`.otlp_json_write`, reading in :mod:`.otlp_json_read`, their shared attribute
names in :mod:`.otlp_json_attrs`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from ...plugins.hookspecs import hookimpl
from ...plugins.types import RECORD_KINDS, Importer, ImporterInfo
from ..errors import ConfigError, InputFileError
from ..model import Record, decode
from ..store_queries import DEFAULT_STORE_PATH, TABLES, connect_readonly
from . import Skipped, record_kind, record_time
from .export_files import (
    FORMATS,
    ExportSummary,
    Item,
    detect_format,
    read_file,
    write_file,
)
from .otlp_json import OtlpJsonCodec

__all__ = [
    "FORMATS",
    "ExportSummary",
    "FileImporter",
    "LocalImporter",
    "OtlpJsonCodec",
    "detect_format",
    "llmvigil_importers",
    "read_file",
    "write_file",
]

_log = logging.getLogger("llmvigil.migrate")


# ---------------------------------------------------------------------------
# Filters shared by the importers
# ---------------------------------------------------------------------------


def _kinds(options: Mapping[str, Any]) -> tuple[str, ...]:
    kinds = options.get("kinds")
    if not kinds:
        return RECORD_KINDS
    unknown = [k for k in kinds if k not in RECORD_KINDS]
    if unknown:
        raise ValueError(f"unknown record kind(s) {', '.join(unknown)}; known kinds: "
                         f"{', '.join(RECORD_KINDS)}")
    return tuple(k for k in RECORD_KINDS if k in kinds)


def _in_window(record: Record, options: Mapping[str, Any]) -> bool:
    t = record_time(record)
    since, until = options.get("since_ns"), options.get("until_ns")
    return (since is None or t >= since) and (until is None or t < until)


def _filtered(items: Iterable[Item], options: Mapping[str, Any]) -> Iterator[Item]:
    """Apply the kinds, time window and limit options to a stream of file records."""
    kinds = set(_kinds(options))
    limit = options.get("limit")
    n = 0
    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        if record_kind(item) not in kinds or not _in_window(item, options):
            continue
        yield item
        n += 1
        if limit is not None and n >= limit:
            return


# ---------------------------------------------------------------------------
# The importers
# ---------------------------------------------------------------------------


class FileImporter:
    """The ``file`` importer: an export file (JSON lines or OTLP/JSON).

    Settings: ``path`` (required) and ``format`` (``auto`` default, ``jsonl``,
    ``otlp-json``). Honours ``since_ns``/``until_ns``, ``kinds`` and ``limit``.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        path = settings.get("path")
        if not path:
            raise ConfigError("importer 'file' needs the file: give path=FILE "
                              "(e.g. --from-opt path=history.jsonl)")
        self.path = Path(str(path)).expanduser()
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "no such file"
            raise InputFileError(f"{self.path}: {what}; give an export file (JSON lines "
                                 "or OTLP/JSON, as `vigil export` writes)")
        self.format = str(settings.get("format") or "auto")
        if self.format != "auto" and self.format not in FORMATS:
            raise ConfigError(f"importer 'file': format {self.format!r}; expected auto, "
                              f"{', '.join(FORMATS)}")

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the file's records matching ``options`` (file order)."""
        return _filtered(read_file(self.path, self.format), options)

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """The number of lines of a JSON-lines file (one record each), else ``None``."""
        try:
            fmt = self.format if self.format != "auto" else detect_format(self.path)
            if fmt != "jsonl" or options.get("since_ns") or options.get("until_ns") \
                    or options.get("kinds"):
                return None
            with self.path.open("rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except (OSError, InputFileError):
            return None
        limit = options.get("limit")
        return min(lines, limit) if limit is not None else lines


class LocalImporter:
    """The ``local`` importer: the local SQLite store, read-only, kind by kind.

    Settings: ``path`` (default ``store.path``). Each kind comes in ``(time, id)``
    order; honours ``since_ns``/``until_ns``, ``kinds``, ``after`` and ``limit``.
    ``project`` does not apply (the store has no projects) and is ignored.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.path = Path(str(settings.get("path") or DEFAULT_STORE_PATH)).expanduser()

    def _where(self, kind: str, options: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        t = TABLES[kind].time_column
        conditions: list[str] = []
        params: list[Any] = []
        if options.get("since_ns") is not None:
            conditions.append(f"{t} >= ?")
            params.append(int(options["since_ns"]))
        if options.get("until_ns") is not None:
            conditions.append(f"{t} < ?")
            params.append(int(options["until_ns"]))
        after = (options.get("after") or {}).get(kind)
        if after is not None:
            conditions.append(f"({t}, id) > (?, ?)")
            params.extend((int(after[0]), str(after[1])))
        return conditions, params

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """How many records :meth:`read` will yield."""
        try:
            conn = connect_readonly(self.path)
        except (FileNotFoundError, sqlite3.Error):
            return None
        try:
            existing = _tables(conn)
            total = 0
            for kind in _kinds(options):
                if kind not in existing:
                    continue
                conditions, params = self._where(kind, options)
                where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
                total += int(conn.execute(f"SELECT COUNT(*) FROM {kind}{where}",
                                          params).fetchone()[0])
        finally:
            conn.close()
        limit = options.get("limit")
        return min(total, limit) if limit is not None else total

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the stored records matching ``options``: spans first, then each kind.

        Raises:
            FileNotFoundError: the store does not exist.
        """
        if options.get("project"):
            _log.warning("the local store has no projects: project=%r is ignored",
                         options["project"])
        kinds = _kinds(options)
        conn = connect_readonly(self.path)
        return self._rows(conn, kinds, options)

    def _rows(self, conn: sqlite3.Connection, kinds: Sequence[str],
              options: Mapping[str, Any]) -> Iterator[Item]:
        limit = options.get("limit")
        n = 0
        try:
            existing = _tables(conn)
            for kind in kinds:
                if kind not in existing:
                    continue
                t = TABLES[kind].time_column
                conditions, params = self._where(kind, options)
                last: tuple[int, str] | None = None
                while True:
                    where = list(conditions)
                    args = list(params)
                    if last is not None:
                        where.append(f"({t}, id) > (?, ?)")
                        args.extend(last)
                    sql = (f"SELECT {t}, id, data FROM {kind}"
                           + (f" WHERE {' AND '.join(where)}" if where else "")
                           + f" ORDER BY {t}, id LIMIT {_PAGE}")
                    rows = conn.execute(sql, args).fetchall()
                    for _time, rid, data in rows:
                        try:
                            yield decode(data)
                        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                            yield Skipped(f"undecodable row: {exc}", f"{self.path} {kind}",
                                          rid, kind)
                        n += 1
                        if limit is not None and n >= limit:
                            return
                    if len(rows) < _PAGE:
                        break
                    last = (rows[-1][0], rows[-1][1])
        finally:
            conn.close()


_PAGE = 1000


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _importer(cls: type) -> Callable[[Mapping[str, Any]], Importer]:
    # Importer.read is typed Iterator[Record]; these also yield Skipped (see the package
    # docstring), which the engine expects from any importer.
    return cast("Callable[[Mapping[str, Any]], Importer]", cls)


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [
        ImporterInfo(name="file", factory=_importer(FileImporter),
                     description="an export file: JSON lines of llmvigil records or OTLP/JSON"),
        ImporterInfo(name="local", factory=_importer(LocalImporter),
                     description="the local SQLite store (store.path)"),
    ]
