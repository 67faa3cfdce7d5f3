"""The slow path of the safety layer: a sampled judge run on a background thread.

A *judge* is any callable ``judge(prompt, response) -> (action, reason, category)``
offered by a plugin through the ``llmvigil_safety_judges`` hook (the built-in one,
``anthropic``, lives in :mod:`llmvigil.plugins.judges`). :class:`JudgeRunner` owns
one small daemon thread and a bounded queue: the safety check hands it a sampled
response without waiting, the thread asks the judge, publishes its verdict as a
:class:`~llmvigil.core.model.Score` (name ``safety_judge``, kind ``judge``, source
``judge``, ``value`` 1 when the judge serves the response and 0 when it flags it) and,
when the judge flags, hands the item to the review queue. A full queue drops the item
and counts it; a failing judge is counted and logged once per kind of failure, and
never reaches the application.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from .. import capture
from ..errors import ConfigError, VigilError
from ..model import SafetyVerdict, Score
from .rules import Settings

__all__ = [
    "JUDGE_SCORE_NAME",
    "BoundedWorker",
    "JudgeError",
    "JudgeItem",
    "JudgeRunner",
    "JudgeSettings",
    "coerce_verdict",
    "judge_infos",
    "judge_score",
]

_log = logging.getLogger("llmvigil.safety")

#: The ``name`` of the Score a judge verdict publishes.
JUDGE_SCORE_NAME = "safety_judge"
_ACTIONS = ("serve", "review", "block")

JudgeFn = Callable[[str, str], Any]


class JudgeSettings(Settings):
    """``monitors.safety.judge``: which judge, how often, and its own settings.

    ``settings`` go to the judge's factory (for ``anthropic``: ``model``, ``api_key``,
    ``base_url``, ``max_tokens``, ``timeout_s``, ``max_retries``, ``max_chars``).
    ``actions`` are the rule verdicts whose responses may be sampled.
    """

    enabled: bool = False
    name: str = Field(default="anthropic", min_length=1)
    sample_rate: float = Field(default=0.01, ge=0, le=1)
    actions: list[Literal["serve", "review", "block"]] = ["serve"]
    max_queue: int = Field(default=100, ge=1)
    settings: dict[str, Any] = {}


class JudgeError(VigilError):
    """A judge answered something that is not a verdict."""


@dataclass(frozen=True)
class JudgeItem:
    """A response sampled for the judge, with the rule verdict it got."""

    verdict: SafetyVerdict
    prompt: str
    response: str


def coerce_verdict(result: Any) -> tuple[str, str, str | None]:
    """Check a judge's answer: ``(action, reason, category)`` with a known action.

    Raises:
        JudgeError: the answer has another shape or an unknown action.
    """
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise JudgeError(f"a judge must return (action, reason, category), got {result!r}")
    action, reason, category = result
    if action not in _ACTIONS:
        raise JudgeError(f"judge action must be one of {', '.join(_ACTIONS)}, got {action!r}")
    return str(action), str(reason or ""), None if category is None else str(category)


def judge_score(item: JudgeItem, verdict: tuple[str, str, str | None], judge: str) -> Score:
    """The Score publishing a judge verdict on ``item`` (value 1 serve, 0 flagged)."""
    action, reason, category = verdict
    v = item.verdict
    meta = v.metadata or {}
    return Score(
        name=JUDGE_SCORE_NAME, kind="judge", source="judge", label=action,
        value=1.0 if action == "serve" else 0.0, category=category, comment=reason or None,
        trace_id=v.trace_id, span_id=v.span_id, feature=meta.get("feature"),
        user_id=meta.get("user_id"),
        metadata={"judge": judge, "verdict_id": v.id, "rule_action": v.action,
                  "flagged": action != "serve"},
    )


def judge_infos(plugin_manager: Any) -> dict[str, Any]:
    """Every safety judge the registered plugins offer, by name (first one wins)."""
    found: dict[str, Any] = {}
    for impl in plugin_manager.hook.llmvigil_safety_judges.get_hookimpls():
        try:
            offered = impl.function()
        except Exception as exc:
            _log.warning("llmvigil plugin %r: llmvigil_safety_judges() raised %r",
                         impl.plugin_name, exc)
            continue
        for info in offered or ():
            found.setdefault(info.name, info)
    return found


class BoundedWorker:
    """A daemon thread draining a bounded queue through ``handle(item)``.

    :meth:`submit` never blocks: a full queue drops the item and counts it. The
    thread starts on the first item and exits after ``idle_s`` without work, so an
    unused worker holds no thread.
    """

    def __init__(self, name: str, handle: Callable[[Any], None], *, max_queue: int,
                 idle_s: float = 5.0) -> None:
        self.name = name
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.done = 0
        self.dropped = 0
        self.errors = 0

    def submit(self, item: Any) -> bool:
        """Queue ``item``; ``False`` (and counted) when the queue is full or closed."""
        if self._closed:
            self._drop()
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop()
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return True

    def _drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def _run(self) -> None:
        q = self._queue
        while True:
            try:
                item = q.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if q.empty() or self._closed:
                        self._thread = None
                        return
                continue
            try:
                if item is not _STOP:
                    self._handle(item)
                    self.done += 1
            except Exception as exc:
                self.errors += 1
                _log.warning("llmvigil %s failed on an item: %r", self.name, exc)
            finally:
                q.task_done()
            if item is _STOP:
                with self._lock:
                    self._thread = None
                return

    @property
    def pending(self) -> int:
        """Items queued or being handled."""
        return self._queue.unfinished_tasks

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued item was handled; ``True`` when done in time."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Handle what is queued (within ``timeout_s``), then stop the thread."""
        done = self.flush(timeout_s)
        self._closed = True
        with self._lock:
            thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
            thread.join(max(0.0, timeout_s))
        return done

    def stats(self) -> dict[str, int]:
        """Counters: handled, dropped (queue full), failed, pending."""
        return {"done": self.done, "dropped": self.dropped, "errors": self.errors,
                "pending": self.pending}


_STOP = object()


class JudgeRunner:
    """Runs the configured judge on sampled responses, on its own bounded thread.

    Args:
        settings: the ``monitors.safety.judge`` settings.
        plugin_manager: where judges are looked up; a default plugin manager (built-in
            and entry-point plugins) is built on the worker thread at first use.
        emit: where the verdict Scores go (the pipeline, by default).
        on_flag: called on the worker thread with an item the judge flagged and the
            judge's verdict.
    """

    def __init__(self, settings: JudgeSettings, *, plugin_manager: Any = None,
                 emit: Callable[[Any], None] | None = None,
                 on_flag: Callable[[JudgeItem, tuple[str, str, str | None]], None]
                 | None = None) -> None:
        self.settings = settings
        self._pm = plugin_manager
        self._emit = emit
        self._on_flag = on_flag
        self._judge: JudgeFn | None = None
        self.unavailable: str | None = None
        self.judged = 0
        self.flagged = 0
        self.failures = 0
        self._logged: set[str] = set()
        self.worker = BoundedWorker("llmvigil-safety-judge", self._run,
                                    max_queue=settings.max_queue)

    def submit(self, item: JudgeItem) -> bool:
        """Hand ``item`` to the judge thread without waiting; ``False`` when dropped."""
        return self.worker.submit(item)

    def _get_judge(self) -> JudgeFn:
        if self._judge is not None:
            return self._judge
        if self.unavailable is not None:
            raise JudgeError(self.unavailable)
        try:
            pm = self._pm
            if pm is None:
                from ...plugins.manager import new_plugin_manager

                pm = self._pm = new_plugin_manager()
            infos = judge_infos(pm)
            info = infos.get(self.settings.name)
            if info is None:
                raise ConfigError(
                    f"monitors.safety.judge.name: unknown judge {self.settings.name!r}; "
                    f"known judges: {', '.join(sorted(infos)) or '(none registered)'}"
                )
            self._judge = info.factory(dict(self.settings.settings))
        except Exception as exc:
            self.unavailable = f"the safety judge {self.settings.name!r} is unavailable: {exc}"
            _log.error("llmvigil: %s", self.unavailable)
            raise JudgeError(self.unavailable) from exc
        return self._judge

    def _run(self, item: JudgeItem) -> None:
        try:
            judge = self._get_judge()
            verdict = coerce_verdict(judge(item.prompt, item.response))
        except Exception as exc:
            self.failures += 1
            kind = type(exc).__name__
            if kind not in self._logged and self.unavailable is None:
                self._logged.add(kind)
                _log.warning("llmvigil safety judge %r failed (counted, logged once per "
                             "kind): %r", self.settings.name, exc)
            return
        self.judged += 1
        score = judge_score(item, verdict, self.settings.name)
        if self._emit is not None:
            self._emit(score)
        else:
            capture.emit(score)
        if verdict[0] != "serve":
            self.flagged += 1
            if self._on_flag is not None:
                self._on_flag(item, verdict)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every submitted item was judged."""
        return self.worker.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Judge what is queued (within ``timeout_s``) and stop the thread."""
        return self.worker.close(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters of the judge and its queue."""
        return {"judged": self.judged, "flagged": self.flagged, "failures": self.failures,
                "unavailable": self.unavailable, **{f"queue_{k}": v
                                                     for k, v in self.worker.stats().items()}}

