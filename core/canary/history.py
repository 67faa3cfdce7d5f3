"""Past canary runs and golden-set baselines, kept in the local store's SQLite file.

Three tables live next to the ``local`` backend's (same file, ``store.path`` by
default), created with ``CREATE TABLE IF NOT EXISTS`` on first use:

- ``canary_runs``: one row per case per run: pass/fail, the extracted values, the
  failed expectations, the error. The latest row of each case is what the next run
  compares with. The last ``keep_runs`` runs of each suite are kept.
- ``eval_baselines``: the baseline mean score of each golden set, with the
  per-item scores it came from.
- ``eval_runs``: the mean score of every evaluation run.

A new file gets mode 0600 in a 0700 directory, like the local store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import VigilError
from ..store_queries import create_private_file

__all__ = ["Baseline", "History", "HistoryError", "StoredResult"]

_T = TypeVar("_T")

_DDL = (
    """CREATE TABLE IF NOT EXISTS canary_runs (
    suite TEXT NOT NULL,
    case_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    passed INTEGER NOT NULL,
    error TEXT,
    extracted TEXT NOT NULL,
    failures TEXT NOT NULL,
    PRIMARY KEY (suite, case_name, run_id)
)""",
    "CREATE INDEX IF NOT EXISTS canary_runs_latest ON canary_runs (suite, case_name, time_ns)",
    """CREATE TABLE IF NOT EXISTS eval_baselines (
    dataset TEXT PRIMARY KEY,
    mean REAL NOT NULL,
    n INTEGER NOT NULL,
    scores TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    run_id TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS eval_runs (
    dataset TEXT NOT NULL,
    run_id TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    mean REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (dataset, run_id)
)""",
)


class HistoryError(VigilError):
    """The history file cannot be opened or written."""


@dataclass(frozen=True)
class StoredResult:
    """One case's outcome as kept in ``canary_runs``."""

    case: str
    passed: bool
    values: Mapping[str, Any] = field(default_factory=dict)
    failures: tuple[Mapping[str, str], ...] = ()
    error: str | None = None
    time_ns: int = 0
    run_id: str = ""


@dataclass(frozen=True)
class Baseline:
    """A golden set's reference mean score and the item scores behind it."""

    dataset: str
    mean: float
    n: int
    scores: Mapping[str, float]
    time_ns: int
    run_id: str


class History:
    """The canary and evaluation history tables of one SQLite file.

    Args:
        path: the store file; created (mode 0600, directory 0700) when missing.
        busy_timeout_s: how long a write waits for another writer of the file.
        keep_runs: how many runs of each canary suite to keep.

    Raises:
        HistoryError: the file cannot be created or is not an SQLite database.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0,
                 keep_runs: int = 500) -> None:
        self.path = Path(path).expanduser()
        self.keep_runs = keep_runs
        self._lock = threading.Lock()
        try:
            create_private_file(self.path)
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._write(lambda conn: [conn.execute(s) for s in _DDL])
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"{self.path}: cannot open the canary history: {exc}") from exc

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
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
            return result

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- canaries -----------------------------------------------------------------------

    def last_results(self, suite: str) -> dict[str, StoredResult]:
        """The latest stored outcome of each case of ``suite``, by case name."""
        rows = self._read(
            """SELECT r.case_name, r.passed, r.extracted, r.failures, r.error, r.time_ns,
                      r.run_id
               FROM canary_runs r
               JOIN (SELECT case_name, MAX(time_ns) AS t FROM canary_runs
                     WHERE suite = ? GROUP BY case_name) m
                 ON r.case_name = m.case_name AND r.time_ns = m.t
               WHERE r.suite = ?""",
            (suite, suite),
        )
        return {
            row[0]: StoredResult(
                case=row[0], passed=bool(row[1]), values=json.loads(row[2]),
                failures=tuple(json.loads(row[3])), error=row[4], time_ns=row[5],
                run_id=row[6],
            )
            for row in rows
        }

    def record_run(self, suite: str, results: Iterable[StoredResult]) -> None:
        """Store one run's outcomes and forget runs beyond ``keep_runs``."""
        rows = [
            (suite, r.case, r.run_id, r.time_ns, int(r.passed), r.error,
             json.dumps(dict(r.values), default=str, sort_keys=True),
             json.dumps([dict(f) for f in r.failures]))
            for r in results
        ]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO canary_runs (suite, case_name, run_id, time_ns, "
                "passed, error, extracted, failures) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute(
                """DELETE FROM canary_runs WHERE suite = ? AND run_id NOT IN (
                       SELECT run_id FROM canary_runs WHERE suite = ? GROUP BY run_id
                       ORDER BY MAX(time_ns) DESC LIMIT ?)""",
                (suite, suite, self.keep_runs))

        self._write(write)

    def run_count(self, suite: str) -> int:
        """How many runs of ``suite`` are stored."""
        rows = self._read("SELECT COUNT(DISTINCT run_id) FROM canary_runs WHERE suite = ?",
                          (suite,))
        return int(rows[0][0])

    # -- golden-set evaluations -----------------------------------------------------------

    def baseline(self, dataset: str) -> Baseline | None:
        """The stored baseline of ``dataset``, if any."""
        rows = self._read("SELECT mean, n, scores, time_ns, run_id FROM eval_baselines "
                          "WHERE dataset = ?", (dataset,))
        if not rows:
            return None
        mean, n, scores, time_ns, run_id = rows[0]
        return Baseline(dataset, float(mean), int(n), json.loads(scores), int(time_ns), run_id)

    def set_baseline(self, baseline: Baseline) -> None:
        """Store (or replace) the baseline of ``baseline.dataset``."""
        self._write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO eval_baselines (dataset, mean, n, scores, time_ns, run_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (baseline.dataset, baseline.mean, baseline.n,
             json.dumps(dict(baseline.scores), sort_keys=True), baseline.time_ns,
             baseline.run_id)))

    def record_eval(self, dataset: str, run_id: str, time_ns: int, mean: float, n: int) -> None:
        """Store the mean score of one evaluation run."""
        self._write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO eval_runs (dataset, run_id, time_ns, mean, n) "
            "VALUES (?, ?, ?, ?, ?)", (dataset, run_id, time_ns, mean, n)))

    def eval_means(self, dataset: str) -> list[tuple[int, float]]:
        """``(time_ns, mean)`` of every stored run of ``dataset``, oldest first."""
        return [(int(t), float(m)) for t, m in self._read(
            "SELECT time_ns, mean FROM eval_runs WHERE dataset = ? ORDER BY time_ns",
            (dataset,))]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
