"""The human review queue: flagged responses kept in the local SQLite store for a person.

Items come from the safety check (verdicts whose action is in ``review.actions``,
``review`` by default) and from the LLM judge (responses it flags). They live in the
table ``review_queue`` of the local store file (``store.path``, or
``monitors.safety.review.path``), next to the ``local`` backend's tables, created
with ``CREATE TABLE IF NOT EXISTS`` on first use; a new file gets mode 0600 in a
0700 directory. Content is redacted (``review.redact``, every PII category by
default) and truncated before it is written, and redacted again when shown.

``vigil review list|show|resolve`` (:mod:`llmvigil.core.cli_review`) reads and
decides items; a decision is published as a :class:`~llmvigil.core.model.Score`
(kind ``review``, source ``review``) built by :func:`review_score`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, field_validator

from ..errors import VigilError
from ..model import Score
from ..redaction import CATEGORIES
from ..store_queries import create_private_file
from .rules import Settings

__all__ = [
    "DECISIONS",
    "REVIEW_SCORE_NAME",
    "STATUSES",
    "AlreadyResolved",
    "NewItem",
    "ReviewError",
    "ReviewItem",
    "ReviewQueue",
    "ReviewSettings",
    "UnknownItem",
    "review_score",
]

#: Item states: waiting for a person, or decided.
STATUSES: tuple[str, ...] = ("open", "resolved")
#: What a reviewer may decide.
DECISIONS: tuple[str, ...] = ("allow", "block")
#: The ``name`` of the Score a decision publishes.
REVIEW_SCORE_NAME = "safety_review"
TABLE = "review_queue"

_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    category TEXT,
    reason TEXT NOT NULL,
    decided_by TEXT,
    feature TEXT,
    user_id TEXT,
    trace_id TEXT,
    span_id TEXT,
    verdict_id TEXT,
    prompt TEXT NOT NULL DEFAULT '',
    response TEXT NOT NULL DEFAULT '',
    decision TEXT,
    note TEXT,
    reviewer TEXT,
    resolved_ns INTEGER,
    score_id TEXT
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_status ON {TABLE} (status, feature)",
)


class ReviewSettings(Settings):
    """``monitors.safety.review``: which verdicts are queued, where, and how redacted."""

    enabled: bool = True
    actions: list[Literal["serve", "review", "block"]] = ["review"]
    path: str | None = None
    redact: list[str] = list(CATEGORIES)
    max_chars: int = Field(default=20_000, gt=0)
    max_pending: int = Field(default=1000, ge=1)

    @field_validator("redact")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        """Reject unknown redaction categories."""
        unknown = [c for c in value if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
        return value


class ReviewError(VigilError):
    """A review queue operation a person asked for cannot be done."""


class UnknownItem(ReviewError):
    """No item has the given id."""


class AlreadyResolved(ReviewError):
    """The item was decided before."""


@dataclass(frozen=True)
class NewItem:
    """An item to queue. ``key`` makes queuing idempotent (the verdict id, plus
    ``:judge`` for the judge's flag on the same response)."""

    key: str
    source: str
    action: str
    reason: str
    category: str | None = None
    decided_by: str | None = None
    feature: str | None = None
    user_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    verdict_id: str | None = None
    prompt: str = ""
    response: str = ""
    created_ns: int = 0


@dataclass(frozen=True)
class ReviewItem(NewItem):
    """A queued item as stored."""

    id: int = 0
    status: str = "open"
    decision: str | None = None
    note: str | None = None
    reviewer: str | None = None
    resolved_ns: int | None = None
    score_id: str | None = None


_COLUMNS = tuple(f.name for f in fields(ReviewItem))
_NEW_COLUMNS = tuple(f.name for f in fields(NewItem))


def _row_item(row: sqlite3.Row) -> ReviewItem:
    return ReviewItem(**{name: row[name] for name in _COLUMNS})


class ReviewQueue:
    """The ``review_queue`` table of one SQLite file, safe to share between threads.

    Args:
        path: the store file; created (mode 0600, directory 0700) when missing.
        busy_timeout_s: how long a write waits for another writer of the file.

    Raises:
        ReviewError: the file cannot be opened or is not an SQLite database.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            create_private_file(self.path)
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._write(lambda conn: [conn.execute(s) for s in _DDL])
        except (OSError, sqlite3.Error) as exc:
            raise ReviewError(f"{self.path}: cannot open the review queue: {exc}") from exc

    def _write(self, fn: Any) -> Any:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._secure_sidecars()
        return result

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _secure_sidecars(self) -> None:
        """Give the -wal/-shm files the database file's mode (SQLite uses the umask)."""
        for suffix in ("-wal", "-shm"):
            sidecar = self.path.with_name(self.path.name + suffix)
            try:
                if sidecar.stat().st_mode & 0o777 != 0o600:
                    os.chmod(sidecar, 0o600)
            except OSError:
                pass

    def add(self, item: NewItem) -> int | None:
        """Queue ``item``; return its id, or ``None`` when its key is already queued."""
        values = [getattr(item, name) for name in _NEW_COLUMNS]
        if not item.created_ns:
            values[_NEW_COLUMNS.index("created_ns")] = time.time_ns()
        marks = ", ".join("?" for _ in _NEW_COLUMNS)

        def insert(conn: sqlite3.Connection) -> int | None:
            if conn.execute(f"SELECT 1 FROM {TABLE} WHERE key = ?", (item.key,)).fetchone():
                return None
            cur = conn.execute(
                f"INSERT INTO {TABLE} ({', '.join(_NEW_COLUMNS)}) VALUES ({marks})", values)
            return cur.lastrowid

        result: int | None = self._write(insert)
        return result

    def get(self, item_id: int) -> ReviewItem:
        """The item with id ``item_id``.

        Raises:
            UnknownItem: there is no such item.
        """
        rows = self._read(f"SELECT * FROM {TABLE} WHERE id = ?", (int(item_id),))
        if not rows:
            raise UnknownItem(self._unknown_message(item_id))
        return _row_item(rows[0])

    def _unknown_message(self, item_id: int) -> str:
        rows = self._read(f"SELECT MIN(id), MAX(id), COUNT(*) FROM {TABLE}")
        lo, hi, count = rows[0]
        held = f"ids {lo} to {hi}" if count else "no items"
        return f"no review item with id {item_id} in {self.path} (the queue holds {held})"

    def items(self, status: str | None = "open", *, feature: str | None = None,
              limit: int | None = 100) -> list[ReviewItem]:
        """Items with ``status`` (all when ``None``), oldest first.

        Raises:
            ReviewError: ``status`` is not one of :data:`STATUSES`.
        """
        where, args = [], []
        if status is not None:
            if status not in STATUSES:
                raise ReviewError(f"unknown status {status!r}; expected one of "
                                  f"{', '.join(STATUSES)} or all")
            where.append("status = ?")
            args.append(status)
        if feature is not None:
            where.append("feature = ?")
            args.append(feature)
        sql = f"SELECT * FROM {TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_item(r) for r in self._read(sql, tuple(args))]

    def open_counts(self) -> dict[str | None, int]:
        """Open items per feature (``None`` for items without one)."""
        rows = self._read(
            f"SELECT feature, COUNT(*) FROM {TABLE} WHERE status = 'open' GROUP BY feature"
        )
        return {r[0]: int(r[1]) for r in rows}

    def resolve(self, item_id: int, decision: str, note: str = "", *,
                reviewer: str | None = None, score_id: str | None = None,
                force: bool = False) -> ReviewItem:
        """Record a person's ``decision`` (``allow`` or ``block``) on an item.

        Raises:
            ReviewError: ``decision`` is not one of :data:`DECISIONS`.
            UnknownItem: there is no such item.
            AlreadyResolved: the item was decided before and ``force`` is false.
        """
        if decision not in DECISIONS:
            raise ReviewError(f"unknown decision {decision!r}; expected one of "
                              f"{', '.join(DECISIONS)}")
        now = time.time_ns()

        def update(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row = conn.execute(f"SELECT * FROM {TABLE} WHERE id = ?", (int(item_id),)).fetchone()
            if row is None or (row["status"] == "resolved" and not force):
                return row
            conn.execute(
                f"UPDATE {TABLE} SET status = 'resolved', decision = ?, note = ?, "
                "reviewer = ?, resolved_ns = ?, score_id = ? WHERE id = ?",
                (decision, note, reviewer, now, score_id, int(item_id)),
            )
            return None

        previous = self._write(update)
        if previous is not None:
            raise AlreadyResolved(
                f"review item {item_id} was already resolved as {previous['decision']!r}"
                f"{' by ' + previous['reviewer'] if previous['reviewer'] else ''}; "
                "pass --force to change the decision"
            )
        return self.get(item_id)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def peek_open_counts(path: str | os.PathLike[str]) -> dict[str | None, int] | None:
        """Open items per feature read without creating anything, or ``None`` when the
        file or the table does not exist."""
        p = Path(path).expanduser()
        if not p.is_file():
            return None
        uri = "file:" + quote(str(p.resolve())) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (TABLE,)).fetchone()
            if found is None:
                return None
            rows = conn.execute(f"SELECT feature, COUNT(*) FROM {TABLE} WHERE status = 'open' "
                                "GROUP BY feature").fetchall()
            return {r[0]: int(r[1]) for r in rows}
        finally:
            conn.close()


def review_score(item: ReviewItem, decision: str, note: str = "",
                 reviewer: str | None = None) -> Score:
    """The Score publishing a decision: kind ``review``, source ``review``, label the
    decision, value 1 for ``allow`` and 0 for ``block``, linked to the item's span."""
    return Score(
        name=REVIEW_SCORE_NAME, kind="review", source="review", label=decision,
        value=1.0 if decision == "allow" else 0.0, category=item.category,
        comment=note or None, trace_id=item.trace_id, span_id=item.span_id,
        user_id=item.user_id, feature=item.feature,
        metadata={k: v for k, v in {
            "review_id": item.id, "verdict_id": item.verdict_id, "reviewer": reviewer,
            "flagged_by": item.source, "flagged_action": item.action,
            "flag_reason": item.reason,
        }.items() if v is not None},
    )
