"""Hot-path queue -> worker thread -> one outbox per backend.

:meth:`Pipeline.submit` is the only thing application threads call: one length
check and one ``deque.append`` (atomic under the GIL, so no lock). The worker
drains the queue, runs the processor chain (materialise, redact), feeds the
monitors, groups records by kind and offers each batch to every outbox.

A full queue never blocks: by policy the record is dropped and counted, or spilled
(materialised, redacted and journaled from the calling thread, which trades that
call's latency for completeness).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from .journal import Journal
from .model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span
from .outbox import Outbox
from .processors import Processor

__all__ = ["KIND_OF", "Monitor", "Pipeline", "PipelineCounters"]

_log = logging.getLogger("llmvigil.pipeline")

#: Record class -> the kind name used by hooks, journals and capability tables.
KIND_OF: dict[type, str] = {
    Span: "spans", Score: "scores", SessionEvent: "session_events",
    Metric: "metrics", Alert: "alerts", SafetyVerdict: "safety_verdicts",
}


_DISPATCH_ORDER = tuple(KIND_OF.values())


class Monitor(Protocol):
    """A background computation fed with every processed record.

    Both methods run on the worker thread, must not block, and return the derived
    records (metrics, alerts, scores) to publish; the pipeline feeds those to the
    other monitors too, but never back to the one that produced them.

    A monitor may declare ``observes``, a tuple of the record classes it looks at;
    the pipeline then offers it no others. Without it, it is offered every record.
    """

    def observe(self, record: Any) -> Iterable[Any]:
        """Update state with one record."""
        ...

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Called about once a second: emit window metrics and alerts."""
        ...


class PipelineCounters:
    """Counts kept by the pipeline itself (per-backend counts live in each outbox)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.dropped_queue_full = 0
        self.spilled = 0
        self.dropped_by_processor = 0
        self.sampled_out = 0
        self.processor_errors = 0
        self.monitor_errors = 0


class Pipeline:
    """The bounded queue, the worker thread and the outboxes of one runtime."""

    def __init__(self, outboxes: Sequence[Outbox], processors: Sequence[Processor], *,
                 queue_size: int = 100_000, batch_size: int = 512,
                 flush_interval_s: float = 1.0, on_full: str = "drop",
                 spill_journal: Journal | None = None,
                 monitors: Sequence[Monitor] = (),
                 status_dir: str | os.PathLike[str] | None = None,
                 status_interval_s: float = 5.0,
                 extra_status: Any = None) -> None:
        self.outboxes = list(outboxes)
        self.processors = list(processors)
        self.monitors = list(monitors)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.on_full = on_full
        self.spill_journal = spill_journal
        self.counters = PipelineCounters()
        self._failures_logged: set[tuple[str, str, str, str]] = set()
        self.status_path = (
            Path(status_dir) / f"{os.getpid()}.json" if status_dir is not None else None
        )
        self.status_interval_s = status_interval_s
        self._extra_status = extra_status
        self._observers: dict[type, list[Monitor]] = {
            cls: [m for m in self.monitors
                  if getattr(m, "observes", None) is None or cls in m.observes]  # type: ignore[attr-defined]
            for cls in KIND_OF
        }
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._working = False
        self._last_tick = 0.0
        self._last_status = 0.0
        self.started_ns = time.time_ns()
        self._thread = threading.Thread(target=self._run, name="llmvigil-worker", daemon=True)
        self._thread.start()

    # -- hot path ---------------------------------------------------------------------

    def submit(self, record: Any) -> None:
        """Enqueue one finished record; never blocks, never raises."""
        q = self._queue
        n = len(q)
        if n >= self.queue_size:
            self._full(record)
            return
        q.append(record)
        if n == self.batch_size:
            self._wake.set()

    def _full(self, record: Any) -> None:
        if self.on_full == "spill" and self.spill_journal is not None:
            try:
                processed = self._process(record)
                if processed is not None and self.spill_journal.append(
                    KIND_OF[type(processed)], [processed]
                ):
                    with self.counters.lock:
                        self.counters.spilled += 1
                    return
            except Exception:
                pass
        with self.counters.lock:
            self.counters.dropped_queue_full += 1

    # -- worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            self._working = True
            try:
                self._drain()
                self._respool()
                self._periodic()
            except Exception as exc:  # the worker must survive anything
                _log.exception("llmvigil worker error: %r", exc)
            finally:
                self._working = False
            if stopping and not self._queue:
                return

    def _drain(self) -> None:
        q = self._queue
        while q:
            batch: list[Any] = []
            popleft = q.popleft
            try:
                for _ in range(self.batch_size):
                    batch.append(popleft())
            except IndexError:
                pass
            self._handle(batch)
            # Under sustained load the queue never empties: keep window metrics, alerts
            # and the status file on time anyway (cheap when nothing is due).
            self._periodic()

    def _handle(self, raw: list[Any]) -> None:
        # What _process, _observe and _add do record by record, inlined: this loop runs
        # once per record at the worker's full rate.
        processors = self.processors
        observers = self._observers
        span_monitors = observers[Span]
        monitors = self.monitors
        observe = self._observe
        add = self._add
        spans: list[Any] = []
        grouped: dict[str, list[Any]] = {"spans": spans}
        processed = 0
        try:
            for record in raw:
                for proc in processors:
                    try:
                        record = proc(record)
                    except Exception as exc:
                        self._processor_failed(proc, exc)
                        break
                    if record is None:
                        with self.counters.lock:
                            self.counters.dropped_by_processor += 1
                        break
                else:
                    processed += 1
                    if type(record) is Span:
                        spans.append(record)
                        mons = span_monitors
                    else:
                        add(grouped, record)
                        mons = observers.get(type(record), monitors)
                    derived: list[Any] | None = None
                    for mon in mons:
                        try:
                            out = mon.observe(record)
                            if out:
                                if derived is None:
                                    derived = []
                                for new in out:
                                    derived.append(new)
                                    derived.extend(observe(new, skip=mon))
                        except Exception as exc:
                            self._monitor_failed(mon, exc)
                    if derived:
                        for new in derived:
                            add(grouped, new)
        finally:
            self.counters.processed += processed
        self._dispatch(grouped)

    def _process(self, record: Any) -> Any:
        for proc in self.processors:
            try:
                record = proc(record)
            except Exception as exc:
                self._processor_failed(proc, exc)
                return None
            if record is None:
                with self.counters.lock:
                    self.counters.dropped_by_processor += 1
                return None
        self.counters.processed += 1
        return record

    def _processor_failed(self, proc: Processor, exc: Exception) -> None:
        with self.counters.lock:
            self.counters.processor_errors += 1
        self._log_failure("processor", getattr(proc, "__name__", type(proc).__name__),
                          "on a record", exc, "processor_errors")

    def _monitor_failed(self, mon: Monitor, exc: Exception, during: str = "") -> None:
        self.counters.monitor_errors += 1
        self._log_failure("monitor", type(mon).__name__, during, exc, "monitor_errors")

    def _log_failure(self, what: str, name: str, during: str, exc: Exception,
                     counter: str) -> None:
        """Log a failure the first time it is seen (per part, place and exception type):
        a broken plugin fails on every record, and the counter says how often."""
        key = (what, name, during, type(exc).__name__)
        if key in self._failures_logged or len(self._failures_logged) >= 1000:
            return
        self._failures_logged.add(key)
        _log.warning("llmvigil %s %s failed%s: %r (logged once; every failure is counted "
                     "in `vigil status` as %s)", what, name, f" {during}" if during else "",
                     exc, counter)

    def _observe(self, record: Any, skip: Any = None) -> list[Any]:
        derived: list[Any] = []
        for mon in self._observers.get(type(record), self.monitors):
            if mon is skip:
                continue
            try:
                out = mon.observe(record)
                if out:
                    for new in out:
                        derived.append(new)
                        derived.extend(self._observe(new, skip=mon))
            except Exception as exc:
                self._monitor_failed(mon, exc)
        return derived

    @staticmethod
    def _add(grouped: dict[str, list[Any]], record: Any) -> None:
        grouped.setdefault(KIND_OF[type(record)], []).append(record)

    def _dispatch(self, grouped: dict[str, list[Any]]) -> None:
        # Spans first: scores and verdicts refer to them, and some vendors reject a
        # score whose span they have not received yet.
        for kind in _DISPATCH_ORDER:
            records = grouped.get(kind)
            if records:
                for box in self.outboxes:
                    box.offer(kind, records)

    def _respool(self) -> None:
        """Feed spilled records back once the queue has room again."""
        spill = self.spill_journal
        if spill is None or len(self._queue) > self.queue_size // 2:
            return
        while len(self._queue) < self.queue_size // 2:
            entry = spill.claim_next()
            if entry is None:
                return
            grouped: dict[str, list[Any]] = {}
            for record in entry.records:
                self._add(grouped, record)
                for derived in self._observe(record):
                    self._add(grouped, derived)
            self._dispatch(grouped)
            spill.done(entry)

    def _periodic(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_tick >= 1.0:
            self._last_tick = now
            grouped: dict[str, list[Any]] = {}
            for mon in self.monitors:
                try:
                    for rec in mon.tick(time.time_ns()) or ():
                        self._add(grouped, rec)
                        for derived in self._observe(rec, skip=mon):
                            self._add(grouped, derived)
                except Exception as exc:
                    self._monitor_failed(mon, exc, "in tick()")
            if grouped:
                self._dispatch(grouped)
        if force or now - self._last_status >= self.status_interval_s:
            self._last_status = now
            self.write_status()

    def queued(self) -> int:
        """Records waiting in the hot-path queue."""
        return len(self._queue)

    # -- control ------------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far reached the backends or the journal.

        Returns ``True`` when done within ``timeout_s``; replay of older journaled
        batches goes on in the background.
        """
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self._queue or self._working:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.002)
        for box in self.outboxes:
            box.wake()
        while not all(box.idle() for box in self.outboxes):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        self.write_status()
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Drain the queue, close every outbox within ``timeout_s`` and stop the worker."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # the worker is stuck; spill what is left
            leftover = len(self._queue)
            with self.counters.lock:
                self.counters.dropped_queue_full += leftover
        with contextlib.suppress(Exception):
            self._periodic(force=True)
        share = max(0.1, (deadline - time.monotonic()) / max(1, len(self.outboxes)))
        for box in self.outboxes:
            box.close(share)
        self.write_status()

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters of the pipeline and of every backend, as plain data."""
        c = self.counters
        backends = {}
        for box in self.outboxes:
            counts = asdict(box.counters)
            counts.update(
                backlog=box.backlog(),
                journal_batches=box.journal.pending_count(),
                journal_bytes=box.journal.size_bytes(),
                journal_error=box.journal.last_error,
                journal_corrupt=box.journal.corrupt,
                breaker_open=box.breaker_open,
            )
            backends[box.name] = counts
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "started_ns": self.started_ns,
            "updated_ns": time.time_ns(),
            "queued": len(self._queue),
            "queue_size": self.queue_size,
            "processed": c.processed,
            "dropped_queue_full": c.dropped_queue_full,
            "spilled": c.spilled,
            "dropped_by_processor": c.dropped_by_processor,
            "sampled_out": c.sampled_out,
            "processor_errors": c.processor_errors,
            "monitor_errors": c.monitor_errors,
            "backends": backends,
        }
        if self._extra_status is not None:
            with contextlib.suppress(Exception):
                out.update(self._extra_status())
        return out

    def self_metrics(self) -> list[Metric]:
        """The pipeline's own counters as Metric records (``llmvigil.*``)."""
        st = self.status()
        metrics = [
            Metric(name=f"llmvigil.pipeline.{key}", value=float(st[key]))
            for key in ("queued", "processed", "dropped_queue_full", "spilled",
                        "sampled_out", "processor_errors")
        ]
        for name, counts in st["backends"].items():
            for key in ("delivered", "retried", "journaled", "dropped", "cannot_hold",
                        "backlog", "journal_batches"):
                metrics.append(Metric(name=f"llmvigil.backend.{key}",
                                      value=float(counts[key]), labels={"backend": name}))
        return metrics

    def write_status(self) -> None:
        """Write :meth:`status` to this process's status file (for ``vigil status``)."""
        if self.status_path is None:
            return
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.status_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(self.status(), fh)
            os.replace(tmp, self.status_path)
        except OSError as exc:
            _log.debug("llmvigil cannot write status file: %r", exc)
