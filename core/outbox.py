"""One outbox per active backend: its own thread, retries, circuit breaker and journal.

The worker :meth:`Outbox.offer`\\ s homogeneous batches (one record kind each). The
outbox thread exports them through the backend's export hook, retrying transient
failures with exponential backoff. A batch that still fails is journaled; while the
breaker is open, new batches go straight to the journal; when the backend answers
again, the journal is replayed oldest first.

A backend that hangs blocks only its own thread: :meth:`offer` never waits, and a
backlog over ``max_records`` goes to the journal from the worker instead of growing
memory.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .journal import Journal

__all__ = ["Batch", "Outbox", "OutboxCounters", "OutboxSettings"]

_log = logging.getLogger("llmvigil.outbox")

SUCCESS, RETRY, FAILURE = "success", "retry", "failure"

#: ``export(kind, records) -> "success" | "retry" | "failure" | None`` (``None``: not held)
ExportFn = Callable[[str, Sequence[Any]], str | None]


@dataclass(frozen=True)
class OutboxSettings:
    """Delivery policy of one outbox (from the ``pipeline:`` config section)."""

    max_retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_records: int = 50_000
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    #: Queued batches of one kind are merged into one export up to this many records
    #: (1: never); a backend that pays per export catches up faster when behind.
    merge_records: int = 1


@dataclass
class OutboxCounters:
    """What happened to the records offered to one backend."""

    offered: int = 0
    delivered: int = 0
    retried: int = 0
    journaled: int = 0
    replayed: int = 0
    dropped: int = 0
    cannot_hold: int = 0
    failed_exports: int = 0
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class Batch:
    """Records of one kind on their way to one backend."""

    kind: str
    records: list[Any]


class Outbox:
    """Delivers batches to one backend from a dedicated daemon thread."""

    def __init__(self, name: str, export: ExportFn, journal: Journal,
                 settings: OutboxSettings = OutboxSettings(),
                 can_hold: Callable[[str], bool] = lambda kind: True,
                 transform: Callable[[str, list[Any]], list[Any]] | None = None) -> None:
        self.name = name
        self._export = export
        self.journal = journal
        self.settings = settings
        self._can_hold = can_hold
        self._transform = transform
        self.counters = OutboxCounters()
        self._pending: collections.deque[Batch] = collections.deque()
        self._pending_records = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        self._in_flight: Batch | None = None
        self._consecutive_failures = 0
        self._open_until = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"llmvigil-outbox-{name}", daemon=True
        )
        self.journal.reclaim_stale()
        self._thread.start()

    # -- worker side -------------------------------------------------------------------

    def offer(self, kind: str, records: list[Any]) -> None:
        """Queue a batch for delivery; never blocks (journals when backed up or open)."""
        c = self.counters
        if not self._can_hold(kind):
            c.cannot_hold += len(records)
            return
        if self._transform is not None:
            records = self._transform(kind, records)
        c.offered += len(records)
        backed_up = self._pending_records + len(records) > self.settings.max_records
        if backed_up or self.breaker_open:
            self._to_journal(Batch(kind, records))
            return
        with self._lock:
            self._pending.append(Batch(kind, records))
            self._pending_records += len(records)
        self._wake.set()

    @property
    def breaker_open(self) -> bool:
        """Whether the backend is considered down (batches go straight to the journal)."""
        return time.monotonic() < self._open_until

    def idle(self) -> bool:
        """Whether nothing is queued in memory or being exported."""
        return not self._pending and not self._busy

    def backlog(self) -> int:
        """Records waiting in memory for this backend."""
        return self._pending_records

    # -- outbox thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if batch is not None:
                self._deliver(batch)
                continue
            if not self.breaker_open and self._replay_one():
                continue
            self._wake.wait(0.5 if self.journal.pending_count() else 5.0)
            self._wake.clear()

    def _next_batch(self) -> Batch | None:
        with self._lock:
            if not self._pending:
                return None
            batch = self._pending.popleft()
            pending, kind, limit = self._pending, batch.kind, self.settings.merge_records

            def next_fits(count: int) -> bool:
                return bool(pending) and pending[0].kind == kind \
                    and count + len(pending[0].records) <= limit

            if next_fits(len(batch.records)):
                records = list(batch.records)
                while next_fits(len(records)):
                    records += pending.popleft().records
                batch = Batch(kind, records)
            self._pending_records -= len(batch.records)
            self._busy = True
            self._in_flight = batch
            return batch

    def _deliver(self, batch: Batch) -> None:
        try:
            if self.breaker_open:
                self._to_journal(batch)
                return
            result = self._export_with_retry(batch.kind, batch.records)
            if result == SUCCESS:
                self.counters.delivered += len(batch.records)
            elif result == FAILURE:
                self.counters.dropped += len(batch.records)
            else:
                self._to_journal(batch)
        finally:
            self._in_flight = None
            self._busy = False

    def _replay_one(self) -> bool:
        entry = self.journal.claim_next()
        if entry is None:
            return False
        self._busy = True
        try:
            result = self._export_with_retry(entry.kind, entry.records, retries=0)
            if result == SUCCESS:
                self.journal.done(entry)
                self.counters.replayed += len(entry.records)
                self.counters.delivered += len(entry.records)
            elif result == FAILURE:
                self.journal.done(entry)
                self.counters.dropped += len(entry.records)
            else:
                self.journal.defer(entry)
                return False
        finally:
            self._busy = False
        return True

    def _export_with_retry(self, kind: str, records: Sequence[Any],
                           retries: int | None = None) -> str:
        s = self.settings
        attempts = 1 + (s.max_retries if retries is None else retries)
        delay = s.backoff_initial_s
        for attempt in range(attempts):
            if attempt:
                self.counters.retried += len(records)
                # Full jitter; interruptible so shutdown never waits a whole backoff.
                if self._stop.wait(random.uniform(0, delay)):
                    return RETRY
                delay = min(delay * 2, s.backoff_max_s)
            result = self._call(kind, records)
            if result in (SUCCESS, None):
                self._consecutive_failures = 0
                if result is None:
                    self.counters.cannot_hold += len(records)
                return SUCCESS
            if result == FAILURE:
                return FAILURE
        self._consecutive_failures += 1
        if self._consecutive_failures >= s.breaker_failures:
            self._open_until = time.monotonic() + s.breaker_reset_s
            _log.warning("llmvigil backend %r is down; journaling for %.3gs",
                         self.name, s.breaker_reset_s)
        return RETRY

    def _call(self, kind: str, records: Sequence[Any]) -> str | None:
        try:
            return self._export(kind, records)
        except Exception as exc:
            self.counters.failed_exports += 1
            message = f"{type(exc).__name__}: {exc}"
            if self.counters.last_error != message:
                _log.warning("llmvigil backend %r export failed: %s", self.name, message)
            self.counters.last_error = message
            return RETRY

    def _to_journal(self, batch: Batch) -> None:
        ok = self.journal.append(batch.kind, batch.records)
        with self._lock:  # called from both the worker and the outbox thread
            if ok:
                self.counters.journaled += len(batch.records)
            else:
                self.counters.dropped += len(batch.records)

    # -- lifecycle -------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask the thread to look at its queue and journal now."""
        self._wake.set()

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued within ``timeout_s``, journal the rest, stop the thread."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._pending)
            self._pending.clear()
            self._pending_records = 0
            in_flight = self._in_flight if self._thread.is_alive() else None
        if in_flight is not None:  # a hung export: keep its batch, ids make a resend safe
            leftovers.insert(0, in_flight)
        for batch in leftovers:
            self._to_journal(batch)
