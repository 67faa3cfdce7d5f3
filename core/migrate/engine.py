"""The streaming migration: an importer's records into destination backends.

Records flow from ``Importer.read(options)`` into the export hooks of each
destination backend in batches (spans before the other kinds), with retries and
backoff on ``RETRY``, bisection on ``FAILURE`` (so one bad record does not sink its
batch), and the destination's redaction level applied as at run time.

Ids are preserved: llmvigil ids are stable and the adapters derive vendor ids from
them deterministically, so delivering a record twice upserts it. That makes resuming
simple and safe: after each delivered batch the :class:`Checkpoint` records, per
record kind, the last delivered ``(time, id)``; a resumed run skips records at or
before it (importers yield each kind in that order, see :mod:`llmvigil.core.migrate`),
and re-delivering a batch the crash interrupted is harmless.

The result is a :class:`MigrationReport`: per kind read / written / skipped with the
reasons, and token and cost totals of what was read against what was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...plugins.types import RECORD_KINDS, AdapterInfo, Capabilities, ExportResult
from ..errors import ConfigError, MissingExtraError, VigilError
from ..model import Span
from . import Skipped, record_key, record_kind, record_time

__all__ = [
    "Checkpoint",
    "Destination",
    "DestinationReport",
    "MigrationReport",
    "RetryPolicy",
    "Selection",
    "Totals",
    "migrate",
]

#: Skip reasons, as shown in the fidelity report.
CANNOT_HOLD = "destination cannot hold them"
REJECTED = "rejected by the destination"
NOT_DELIVERED = "not delivered: the run stopped"
INVALID = "unreadable at the source"

#: After this many records rejected one by one, a rejected batch is skipped whole
#: instead of bisected (a destination refusing everything would cost a call each).
MAX_BISECTED_REJECTS = 100
#: Problem messages kept in the report (all are counted).
MAX_PROBLEMS = 200


@dataclass(frozen=True)
class Selection:
    """Which records to move: a time window, a vendor project, record kinds, a limit."""

    since_ns: int | None = None
    until_ns: int | None = None
    project: str | None = None
    limit: int | None = None
    kinds: tuple[str, ...] | None = None

    def options(self, after: Mapping[str, tuple[int, str]]) -> dict[str, Any]:
        """The ``Importer.read`` options (see :data:`llmvigil.core.migrate.OPTION_KEYS`)."""
        return {
            "since_ns": self.since_ns, "until_ns": self.until_ns, "project": self.project,
            # An importer that ignores ``after`` would count skipped records against
            # its limit, so the limit is left to the engine when resuming.
            "limit": None if after else self.limit,
            "kinds": self.kinds, "after": dict(after),
        }

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (everything but the limit)."""
        return {"since_ns": self.since_ns, "until_ns": self.until_ns,
                "project": self.project, "kinds": list(self.kinds) if self.kinds else None}

    def admits(self, record: Any) -> bool:
        """Whether ``record`` is of a selected kind and inside the time window."""
        if self.kinds and record_kind(record) not in self.kinds:
            return False
        t = record_time(record)
        return ((self.since_ns is None or t >= self.since_ns)
                and (self.until_ns is None or t < self.until_ns))


@dataclass(frozen=True)
class RetryPolicy:
    """How a batch answered ``RETRY`` (or raising) is retried before the run stops."""

    max_retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class Destination:
    """One backend receiving migrated records, built from its adapter like at run time.

    Args:
        name: the backend's label (``langfuse``, ``local:archive``...).
        info: the adapter, from ``plugins.manager.get_adapter``.
        settings: the backend's settings (the config entry's, plus overrides).
        redaction: ``full``, ``masked`` or ``none``: what content the backend receives.
    """

    def __init__(self, name: str, info: AdapterInfo, settings: Mapping[str, Any],
                 redaction: str = "masked") -> None:
        from ..processors import backend_view

        if redaction not in ("full", "masked", "none"):
            raise ConfigError(f"backend {name!r}: redaction {redaction!r}; expected full, "
                              "masked or none")
        self.name = name
        self.info = info
        self.settings = dict(settings)
        self.redaction = redaction
        self._view = backend_view(redaction)
        self._hooks: Any = None

    @property
    def capabilities(self) -> Capabilities:
        """What the destination can hold (its adapter's capability table)."""
        return self.info.capabilities

    def can_hold(self, kind: str) -> bool:
        """Whether records of ``kind`` are delivered to this destination."""
        return self.info.capabilities.can_hold(kind)

    def open(self) -> None:
        """Build the backend instance (connects lazily, as at run time).

        Raises:
            MissingExtraError: the vendor SDK extra is not installed.
            ConfigError: the adapter rejected its settings.
        """
        from ...plugins.manager import backend_hooks

        try:
            instance = self.info.factory(self.settings)
        except ModuleNotFoundError as exc:
            raise MissingExtraError(self.info.name, self.info.extra or self.info.name,
                                    exc.name or "?") from exc
        except VigilError:
            raise
        except Exception as exc:
            raise ConfigError(f"backend {self.name!r}: {exc}") from exc
        self._hooks = backend_hooks(instance, self.name)

    def send(self, kind: str, records: Sequence[Any]) -> Any:
        """Call the export hook of ``kind`` once; its result (``None``: not held)."""
        batch = list(records)
        if self._view is not None:
            batch = self._view(kind, batch)
        hook = getattr(self._hooks, f"llmvigil_export_{kind}")
        return hook(**{_HOOK_ARG[kind]: batch})

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and shut the backend down (its own buffers, connections, threads)."""
        if self._hooks is None:
            return
        hooks, self._hooks = self._hooks, None
        try:
            hooks.llmvigil_flush(timeout_s=timeout_s)
        finally:
            hooks.llmvigil_shutdown(timeout_s=timeout_s)


_HOOK_ARG = {"spans": "spans", "scores": "scores", "session_events": "events",
             "metrics": "metrics", "alerts": "alerts", "safety_verdicts": "verdicts"}


# ---------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------


class Checkpoint:
    """The resume point of a migration, one JSON file rewritten atomically.

    Per record kind: the last delivered ``(time_ns, id)`` and whether the importer
    yielded that kind in order so far (a kind seen out of order is never skipped on
    resume, only re-delivered, which is idempotent).
    """

    VERSION = 1

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = identity
        self.marks: dict[str, dict[str, Any]] = {}
        self.complete = False
        self.resumed = False
        self._resume: dict[str, tuple[int, str]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, source: str, destinations: Sequence[str],
             selection: Selection) -> Checkpoint:
        """Load ``path`` if it exists (checking it is for this migration), else start one.

        Raises:
            ConfigError: the file is unreadable or belongs to another migration.
        """
        p = Path(path).expanduser()
        identity = {"source": source, "destinations": sorted(destinations),
                    "selection": selection.identity()}
        ck = cls(p, identity)
        if not p.exists():
            return ck
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            version, saved, marks = data["version"], data["identity"], data["kinds"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--checkpoint {p}: not a readable llmvigil checkpoint "
                              f"({exc}); delete it or give another file") from None
        if version != cls.VERSION:
            raise ConfigError(f"--checkpoint {p}: version {version}, expected {cls.VERSION}")
        if saved != identity:
            raise ConfigError(
                f"--checkpoint {p} was written for another migration ({_describe(saved)}), "
                f"not this one ({_describe(identity)}); give another file or delete it")
        ck.marks = {k: dict(v) for k, v in marks.items() if k in RECORD_KINDS}
        ck.complete = bool(data.get("complete"))
        ck.resumed = True
        ck._resume = ck.after()
        return ck

    def after(self) -> dict[str, tuple[int, str]]:
        """The resume point of each kind that can be skipped to."""
        return {k: (int(m["time_ns"]), str(m["id"])) for k, m in self.marks.items()
                if m.get("ordered", True) and "time_ns" in m}

    def covers(self, kind: str, key: tuple[int, str]) -> bool:
        """Whether the record with ``key`` was delivered by an earlier run (this run's
        progress does not count: a record this run has not delivered is never skipped)."""
        mark = self._resume.get(kind)
        return mark is not None and key <= mark

    def advance(self, kind: str, key: tuple[int, str], delivered: int) -> None:
        """Note that every record of ``kind`` up to ``key`` is delivered."""
        mark = self.marks.setdefault(kind, {"ordered": True, "delivered": 0})
        mark["delivered"] = int(mark.get("delivered", 0)) + delivered
        if mark.get("ordered", True):
            mark["time_ns"], mark["id"] = key

    def mark_unordered(self, kind: str) -> None:
        """Never skip ``kind`` on resume: its records did not come in order."""
        mark = self.marks.setdefault(kind, {"delivered": 0})
        mark["ordered"] = False
        mark.pop("time_ns", None)
        mark.pop("id", None)

    def save(self, *, complete: bool = False) -> None:
        """Write the checkpoint atomically (a crash leaves the old or the new file)."""
        self.complete = complete
        data = {"version": self.VERSION, "identity": self.identity, "kinds": self.marks,
                "complete": complete, "updated_ns": time.time_ns()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _describe(identity: Mapping[str, Any]) -> str:
    sel = {k: v for k, v in (identity.get("selection") or {}).items() if v is not None}
    dests = ",".join(identity.get("destinations") or ())
    return f"{identity.get('source')} -> {dests}" + (f" {sel}" if sel else "")


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass
class Totals:
    """Token and cost sums over spans."""

    spans: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_llm_spans: int = 0

    def add(self, span: Span) -> None:
        """Count one span."""
        self.spans += 1
        u = span.usage
        if u is not None:
            self.input_tokens += u.input_tokens
            self.output_tokens += u.output_tokens
            self.cache_read_tokens += u.cache_read_tokens
            self.cache_write_tokens += u.cache_write_tokens
        if span.cost_usd is not None:
            self.cost_usd += span.cost_usd
        elif span.kind == "llm":
            self.unpriced_llm_spans += 1

    def as_dict(self) -> dict[str, Any]:
        """The sums as a JSON-able dict."""
        return dict(self.__dict__)


@dataclass
class DestinationReport:
    """What one destination received: written and skipped (with reasons) per kind."""

    name: str
    written: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, Counter[str]] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    cannot_hold: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rejected: int = 0

    def skip(self, kind: str, reason: str, n: int) -> None:
        """Count ``n`` records of ``kind`` not written, for ``reason``."""
        if n:
            self.skipped.setdefault(kind, Counter())[reason] += n

    def skipped_total(self, kind: str) -> int:
        """Records of ``kind`` not written, all reasons."""
        return sum(self.skipped.get(kind, Counter()).values())

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {"name": self.name, "written": dict(self.written),
                "skipped": {k: dict(v) for k, v in self.skipped.items()},
                "totals": self.totals.as_dict(), "cannot_hold": self.cannot_hold,
                "notes": self.notes}


@dataclass
class MigrationReport:
    """The fidelity report of one run.

    ``read`` counts records taken from the source this run; ``invalid`` those the
    source could not read (per kind, ``unknown`` when not even the kind was known);
    ``already_delivered`` those skipped because the checkpoint says an earlier run
    delivered them; ``filtered`` those an importer yielded outside the selection.
    """

    source: str
    destinations: list[DestinationReport]
    dry_run: bool = False
    read: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    already_delivered: Counter[str] = field(default_factory=Counter)
    filtered: int = 0
    source_totals: Totals = field(default_factory=Totals)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    stopped: str | None = None
    interrupted: bool = False
    elapsed_s: float = 0.0
    checkpoint: str | None = None
    resumed: bool = False

    @property
    def total_read(self) -> int:
        """Records read this run, all kinds."""
        return sum(self.read.values())

    @property
    def lossy(self) -> bool:
        """Whether something selected was not delivered for another reason than the
        destination's documented capabilities (bad input, rejections, a stop)."""
        if self.stopped or sum(self.invalid.values()):
            return True
        return any(reason != CANNOT_HOLD for d in self.destinations
                   for reasons in d.skipped.values() for reason in reasons)

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {
            "source": self.source, "dry_run": self.dry_run, "read": dict(self.read),
            "invalid": dict(self.invalid), "already_delivered": dict(self.already_delivered),
            "filtered": self.filtered, "source_totals": self.source_totals.as_dict(),
            "destinations": [d.as_dict() for d in self.destinations],
            "problems": self.problems, "problem_count": self.problem_count,
            "stopped": self.stopped, "interrupted": self.interrupted,
            "elapsed_s": self.elapsed_s, "checkpoint": self.checkpoint,
            "resumed": self.resumed,
        }


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


class _Stop(Exception):
    """A destination kept failing: the run stops here, resumable."""


class _Run:
    def __init__(self, importer: Any, destinations: Sequence[Destination], *, source: str,
                 selection: Selection, checkpoint: Checkpoint | None, dry_run: bool,
                 batch_size: int, retry: RetryPolicy,
                 on_problem: Callable[[str], None] | None,
                 on_progress: Callable[[int], None] | None,
                 sleep: Callable[[float], None]) -> None:
        self.importer = importer
        self.dests = list(destinations)
        self.selection = selection
        self.ck = checkpoint
        self.dry_run = dry_run
        self.batch_size = max(1, batch_size)
        self.retry = retry
        self.on_problem = on_problem
        self.on_progress = on_progress
        self.sleep = sleep
        self.report = MigrationReport(
            source=source, destinations=[DestinationReport(d.name) for d in self.dests],
            dry_run=dry_run, checkpoint=str(checkpoint.path) if checkpoint else None,
            resumed=bool(checkpoint and checkpoint.resumed),
        )
        for d, dr in zip(self.dests, self.report.destinations, strict=True):
            dr.cannot_hold = [k for k in RECORD_KINDS if not d.can_hold(k)]
            dr.notes = list(d.capabilities.notes)
        self.buffers: dict[str, list[Any]] = {}
        self.buffered = 0
        self.last_key: dict[str, tuple[int, str]] = {}
        self.unordered: set[str] = set()

    def problem(self, message: str) -> None:
        r = self.report
        r.problem_count += 1
        if len(r.problems) < MAX_PROBLEMS:
            r.problems.append(message)
        if self.on_problem is not None:
            self.on_problem(message)

    # -- reading ---------------------------------------------------------------

    def run(self) -> MigrationReport:
        started = time.monotonic()
        r = self.report
        after = self.ck.after() if self.ck else {}
        items = iter(self.importer.read(self.selection.options(after)))
        pending_progress = 0
        try:
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except Exception as exc:
                    r.stopped = (f"importer {r.source!r} failed after {r.total_read} records: "
                                 f"{type(exc).__name__}: {exc}")
                    self.problem(r.stopped)
                    break
                pending_progress += 1
                if pending_progress >= 50 and self.on_progress is not None:
                    self.on_progress(pending_progress)
                    pending_progress = 0
                if self.take(item) and self.selection.limit is not None \
                        and r.total_read >= self.selection.limit:
                    break
            self.flush()
        except _Stop as exc:
            r.stopped = str(exc)
            self.problem(r.stopped)
            self.abandon_buffers()
        except KeyboardInterrupt:
            r.stopped = "interrupted"
            r.interrupted = True
            self.abandon_buffers()
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
            if self.on_progress is not None and pending_progress:
                self.on_progress(pending_progress)
            r.elapsed_s = time.monotonic() - started
        if self.ck is not None and not self.dry_run:
            self.ck.save(complete=r.stopped is None)
        return r

    def take(self, item: Any) -> bool:
        """Account for one item from the importer; True when it counts as read."""
        r = self.report
        if isinstance(item, Skipped):
            r.invalid[item.kind or "unknown"] += 1
            self.problem(item.message())
            return False
        kind = record_kind(item)
        if kind is None:
            r.invalid["unknown"] += 1
            self.problem(f"importer {r.source!r} yielded {type(item).__name__!r}, "
                         "not an llmvigil record")
            return False
        if not self.selection.admits(item):
            r.filtered += 1
            return False
        key = record_key(item)
        if self.ck is not None and self.ck.covers(kind, key):
            r.already_delivered[kind] += 1
            return False
        last = self.last_key.get(kind)
        if last is not None and key < last and kind not in self.unordered:
            self.unordered.add(kind)
            if self.ck is not None:
                self.ck.mark_unordered(kind)
            self.problem(f"importer {r.source!r}: {kind} do not come in (time, id) order; "
                         "a resumed run will re-deliver them (idempotent) instead of "
                         "skipping to the checkpoint")
        self.last_key[kind] = max(key, last) if last is not None else key
        r.read[kind] += 1
        if isinstance(item, Span):
            r.source_totals.add(item)
        self.buffers.setdefault(kind, []).append(item)
        self.buffered += 1
        if self.buffered >= self.batch_size:
            self.flush()
        return True

    # -- delivering ------------------------------------------------------------

    def flush(self) -> None:
        """Deliver every buffered batch, spans first, then advance the checkpoint."""
        for kind in RECORD_KINDS:
            batch = self.buffers.get(kind)
            if not batch:
                continue
            for i, (dest, dr) in enumerate(zip(self.dests, self.report.destinations,
                                               strict=True)):
                before = dr.written[kind] + dr.skipped_total(kind)
                try:
                    self.deliver(dest, dr, kind, batch)
                except _Stop:
                    done = dr.written[kind] + dr.skipped_total(kind) - before
                    dr.skip(kind, NOT_DELIVERED, len(batch) - done)
                    for later, ldr in zip(self.dests[i + 1:], self.report.destinations[i + 1:],
                                          strict=True):
                        ldr.skip(kind, NOT_DELIVERED if later.can_hold(kind) else CANNOT_HOLD,
                                 len(batch))
                    del self.buffers[kind]
                    self.buffered -= len(batch)
                    raise
            del self.buffers[kind]
            self.buffered -= len(batch)
            if self.ck is not None and not self.dry_run:
                self.ck.advance(kind, max(record_key(x) for x in batch), len(batch))
        if self.ck is not None and not self.dry_run:
            self.ck.save()

    def abandon_buffers(self) -> None:
        """Count what is still buffered as not delivered, for every destination."""
        for kind, batch in self.buffers.items():
            for dest, dr in zip(self.dests, self.report.destinations, strict=True):
                if dest.can_hold(kind):
                    dr.skip(kind, NOT_DELIVERED, len(batch))
                else:
                    dr.skip(kind, CANNOT_HOLD, len(batch))
        self.buffers.clear()
        self.buffered = 0

    def deliver(self, dest: Destination, dr: DestinationReport, kind: str,
                batch: Sequence[Any]) -> None:
        if not dest.can_hold(kind):
            dr.skip(kind, CANNOT_HOLD, len(batch))
            return
        if self.dry_run:
            self.written(dr, kind, batch)
            return
        outcome = self.send(dest, kind, batch)
        if outcome == "success":
            self.written(dr, kind, batch)
        elif outcome == "none":
            dr.skip(kind, CANNOT_HOLD, len(batch))
        elif len(batch) == 1 or dr.rejected >= MAX_BISECTED_REJECTS:
            dr.rejected += len(batch)
            dr.skip(kind, REJECTED, len(batch))
            ids = ", ".join(x.id for x in batch[:3]) + (", ..." if len(batch) > 3 else "")
            self.problem(f"{dest.name}: {len(batch)} {kind} rejected by the destination "
                         f"(permanent failure): {ids}")
        else:  # find the bad records: the rest of the batch still goes through
            mid = len(batch) // 2
            self.deliver(dest, dr, kind, batch[:mid])
            self.deliver(dest, dr, kind, batch[mid:])

    @staticmethod
    def written(dr: DestinationReport, kind: str, batch: Sequence[Any]) -> None:
        dr.written[kind] += len(batch)
        if kind == "spans":
            for span in batch:
                dr.totals.add(span)

    def send(self, dest: Destination, kind: str, batch: Sequence[Any]) -> str:
        """Export one batch with retries: ``success``, ``failure`` or ``none``.

        Raises:
            _Stop: the destination still asked to retry (or raised) after every attempt.
        """
        p = self.retry
        delay = p.backoff_initial_s
        last = ""
        for attempt in range(1 + p.max_retries):
            if attempt:
                self.sleep(random.uniform(0, delay))  # full jitter, as the outboxes do
                delay = min(delay * 2, p.backoff_max_s)
            try:
                result = dest.send(kind, batch)
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            value = getattr(result, "value", result)
            if value is None:
                return "none"
            if value == ExportResult.SUCCESS.value:
                return "success"
            if value == ExportResult.FAILURE.value:
                return "failure"
            last = "the backend answered RETRY"
        raise _Stop(f"destination {dest.name!r} kept failing ({1 + p.max_retries} attempts "
                    f"on {len(batch)} {kind}): {last}; rerun with the same --checkpoint to "
                    "resume")


def migrate(importer: Any, destinations: Sequence[Destination], *, source: str = "source",
            selection: Selection | None = None, checkpoint: Checkpoint | None = None,
            dry_run: bool = False, batch_size: int = 500, retry: RetryPolicy | None = None,
            on_problem: Callable[[str], None] | None = None,
            on_progress: Callable[[int], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> MigrationReport:
    """Stream the importer's records into every destination and report what happened.

    Destinations are opened here and closed (flushed, shut down) at the end; in a dry
    run nothing is opened or written and ``written`` counts what would be.

    Args:
        importer: has ``read(options)``; yields records and :class:`Skipped`.
        destinations: where the records go.
        source: the importer's name, for messages and the checkpoint.
        selection: the filters (time window, project, kinds, limit).
        checkpoint: resume from and record progress in this checkpoint.
        batch_size: records buffered before a delivery.
        retry: the retry policy for ``RETRY`` answers.
        on_problem: called with each problem message as it happens.
        on_progress: called with the number of items taken from the importer.

    Raises:
        MissingExtraError, ConfigError: a destination cannot be built.
        Whatever ``importer.read(options)`` raises before yielding (a missing store...).
    """
    run = _Run(importer, destinations, source=source, selection=selection or Selection(),
               checkpoint=checkpoint, dry_run=dry_run, batch_size=batch_size,
               retry=retry or RetryPolicy(), on_problem=on_problem,
               on_progress=on_progress, sleep=sleep)
    opened: list[Destination] = []
    try:
        if not dry_run:
            for dest in destinations:
                dest.open()
                opened.append(dest)
        report = run.run()
    finally:
        for dest in opened:
            try:
                dest.close()
            except Exception as exc:
                run.problem(f"{dest.name}: closing failed: {type(exc).__name__}: {exc}")
    return report


def estimate_total(importer: Any, selection: Selection,
                   after: Mapping[str, tuple[int, str]] | None = None) -> int | None:
    """The importer's estimate of how many records a run reads, when it offers one."""
    estimate = getattr(importer, "estimate", None)
    if not callable(estimate):
        return None
    try:
        total = estimate(selection.options(after or {}))
    except Exception:
        return None
    if total is None:
        return None
    total = int(total)
    return min(total, selection.limit) if selection.limit is not None else total


def source_totals(records: Iterable[Any]) -> Totals:
    """Token and cost sums over the spans among ``records``."""
    totals = Totals()
    for record in records:
        if isinstance(record, Span):
            totals.add(record)
    return totals
