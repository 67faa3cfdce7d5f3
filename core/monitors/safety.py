"""The safety monitor: block, review and judge-flag rates, the review queue and the judge.

It owns what the safety layer does off the request path:

* the configured rules (:attr:`SafetyMonitor.engine`), which
  :func:`llmvigil.safety.check` uses for the runtime the monitor belongs to;
* a bounded worker thread that writes review items (verdicts whose action is in
  ``review.actions``, and responses the judge flags) to the review queue table of
  the local store;
* the sampled judge (:class:`~llmvigil.core.safety.judge.JudgeRunner`), on its own
  bounded worker thread.

On the pipeline worker it only counts: every ``emit_interval_s`` it publishes, per
feature and over ``window_s`` (``feature="_all"`` for the total, ``"_none"`` without a
feature):

* ``safety.checks``, ``safety.errors`` (checks that failed and were served or blocked
  by the ``fail_closed`` policy);
* ``safety.block_rate`` and ``safety.review_rate`` (with ``.n``, the checks);
* ``safety.judge_flag_rate`` (with ``.n``, the judged responses): judge Scores that
  did not serve the response;
* ``safety.flagged_by_category``: block and review verdicts per ``category`` label;
* ``safety.queue_size``: open review items per feature (read from the queue table,
  so items of every process and the ones people resolved are counted).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

from pydantic import Field, PrivateAttr, model_validator

from ..model import Metric, SafetyVerdict, Score
from ..redaction import Redactor
from ..safety.judge import JUDGE_SCORE_NAME, BoundedWorker, JudgeItem, JudgeRunner, JudgeSettings
from ..safety.review import NewItem, ReviewQueue, ReviewSettings
from ..safety.rules import RuleEngine, RuleSetSettings
from ..store_queries import DEFAULT_STORE_PATH
from .windows import RollingCounters, Settings, parse_settings

__all__ = ["SafetyMonitor", "SafetySettings"]

ALL = "_all"
NONE = "_none"
_FIELDS = ("checks", "block", "review", "serve", "errors", "judged", "flagged")


class SafetySettings(Settings):
    """``monitors.safety``: rules, actions, fail policy, windows, judge and review queue."""

    enabled: bool = True
    fail_closed: bool = False
    rules: dict[str, RuleSetSettings] = {}
    actions: dict[str, Literal["serve", "review", "block"]] = {}
    max_scan_chars: int = Field(default=200_000, gt=0)
    max_candidates: int = Field(default=200, ge=1)
    window_s: float = Field(default=3600.0, gt=0)
    bucket_s: float = Field(default=60.0, gt=0)
    emit_interval_s: float = Field(default=60.0, gt=0)
    totals: bool = True
    max_features: int = Field(default=1000, ge=1)
    max_categories: int = Field(default=5000, ge=1)
    judge: JudgeSettings = JudgeSettings()
    review: ReviewSettings = ReviewSettings()

    _engine: RuleEngine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> SafetySettings:
        """Build the rules once (bad categories or actions fail here) and bound memory."""
        if self.window_s / self.bucket_s > 1440:
            raise ValueError("window_s / bucket_s must be at most 1440 buckets")
        self._engine = RuleEngine(self.rules, self.actions, max_scan_chars=self.max_scan_chars,
                                  max_candidates=self.max_candidates)
        return self

    def engine(self) -> RuleEngine:
        """The compiled rules of these settings."""
        if self._engine is None:  # pragma: no cover - set by the validator
            self._engine = RuleEngine(self.rules, self.actions,
                                      max_scan_chars=self.max_scan_chars,
                                      max_candidates=self.max_candidates)
        return self._engine


class SafetyMonitor:
    """Safety rates and queue size as metrics; owner of the judge and review threads.

    Args:
        config: the ``monitors.safety`` mapping (see :class:`SafetySettings`), a
            settings instance, or ``None`` for the defaults.
        where: the config path named in error messages.
        plugin_manager: where the judge is looked up (default: a plugin manager with
            the built-in and entry-point plugins, built at first use).
        store_path: the store file holding the review queue when
            ``review.path`` is not set (default: ``store.path`` of the active runtime).

    Raises:
        ConfigError: the settings are invalid.
    """

    def __init__(self, config: Mapping[str, Any] | SafetySettings | None = None, *,
                 where: str = "monitors.safety", plugin_manager: Any = None,
                 store_path: str | None = None) -> None:
        s = self.settings = parse_settings(SafetySettings, config, where)
        self.engine = s.engine()
        buckets = max(1, math.ceil(s.window_s / s.bucket_s))
        self._recent = RollingCounters(_FIELDS, bucket_s=s.bucket_s, buckets=buckets,
                                       max_keys=s.max_features + 1)
        self._categories = RollingCounters(("n",), bucket_s=s.bucket_s, buckets=buckets,
                                           max_keys=s.max_categories)
        self._rng = random.Random()
        self._review_actions = frozenset(s.review.actions if s.review.enabled else ())
        judge = s.judge
        self._judge_actions = frozenset(judge.actions if judge.enabled and judge.sample_rate
                                        else ())
        self._sample_rate = judge.sample_rate
        self._redactor = Redactor(s.review.redact)
        self._store_path = store_path
        self._queue: ReviewQueue | None = None
        self._queue_sizes: dict[str | None, int] | None = None
        self.judge = JudgeRunner(judge, plugin_manager=plugin_manager,
                                 on_flag=self._on_judge_flag)
        self._writer = BoundedWorker("llmvigil-safety-review", self._store_task,
                                     max_queue=s.review.max_pending)
        self._next_emit_ns = 0
        self.ignored_late = 0
        self.queued = 0
        self.review_errors = 0

    # -- request path (application threads) ------------------------------------------

    def offer(self, verdict: SafetyVerdict, prompt: str, response: str) -> None:
        """Hand a checked response to the review writer and, sampled, to the judge.

        Called by :func:`llmvigil.safety.check` on the application's thread: it only
        queues (bounded, never blocks).
        """
        action = verdict.action
        if action in self._review_actions:
            self._writer.submit((verdict, prompt, response, None))
        if action in self._judge_actions and self._rng.random() < self._sample_rate:
            self.judge.submit(JudgeItem(verdict, prompt, response))

    # -- background threads ------------------------------------------------------------

    def _on_judge_flag(self, item: JudgeItem, verdict: tuple[str, str, str | None]) -> None:
        if self.settings.review.enabled:
            self._writer.submit((item.verdict, item.prompt, item.response, verdict))

    def queue_path(self) -> str:
        """The store file holding the review queue."""
        if self._store_path is None:
            from .. import runtime

            rt = runtime._runtime
            self._store_path = (self.settings.review.path
                                or (rt.config.store.path if rt is not None else None)
                                or DEFAULT_STORE_PATH)
        return self._store_path

    def review_queue(self) -> ReviewQueue:
        """The review queue (opened, and its table created, on first use)."""
        if self._queue is None:
            self._queue = ReviewQueue(self.queue_path())
        return self._queue

    def _clean(self, text: str) -> str:
        limit = self.settings.review.max_chars
        if len(text) > limit:
            text = text[:limit] + f"... [truncated, {len(text) - limit} more characters]"
        return self._redactor.text(text)

    def _store_task(self, task: Any) -> None:
        if task == "count":
            queue = self._queue
            self._queue_sizes = (queue.open_counts() if queue is not None
                                 else ReviewQueue.peek_open_counts(self.queue_path()))
            return
        verdict, prompt, response, judged = task
        if judged is None:
            key, source = verdict.id, "rules"
            action, reason, category = verdict.action, verdict.reason, verdict.category
            decided_by = verdict.decided_by
        else:
            key, source = f"{verdict.id}:judge", "judge"
            action, reason, category = judged
            decided_by = f"judge:{self.settings.judge.name}"
        meta = verdict.metadata or {}
        item = NewItem(
            key=key, source=source, action=action, reason=reason, category=category,
            decided_by=decided_by, feature=meta.get("feature"), user_id=meta.get("user_id"),
            trace_id=verdict.trace_id, span_id=verdict.span_id, verdict_id=verdict.id,
            prompt=self._clean(prompt), response=self._clean(response),
            created_ns=verdict.time_ns,
        )
        try:
            queue = self.review_queue()
            if queue.add(item) is not None:
                self.queued += 1
            self._queue_sizes = queue.open_counts()
        except Exception:
            self.review_errors += 1
            raise

    # -- pipeline worker ---------------------------------------------------------------

    def observe(self, record: Any) -> Iterable[Any]:
        """Count a SafetyVerdict or a safety judge Score; other records are ignored."""
        if isinstance(record, SafetyVerdict):
            self._on_verdict(record)
        elif (isinstance(record, Score) and record.name == JUDGE_SCORE_NAME
              and record.kind == "judge" and record.source == "judge"):
            self._on_judged(record)
        return ()

    def _keys(self, feature: str) -> tuple[str, ...]:
        return (feature, ALL) if self.settings.totals else (feature,)

    def _on_verdict(self, verdict: SafetyVerdict) -> None:
        meta = verdict.metadata or {}
        feature = str(meta.get("feature") or NONE)
        amounts = {"checks": 1.0}
        if verdict.action in ("block", "review", "serve"):
            amounts[verdict.action] = 1.0
        if verdict.decided_by == "error":
            amounts["errors"] = 1.0
        t = verdict.time_ns
        ok = True
        for key in self._keys(feature):
            ok = self._recent.add(key, t, **amounts) and ok
        if not ok:
            self.ignored_late += 1
            return
        if verdict.action in ("block", "review") and verdict.category:
            for key in self._keys(feature):
                self._categories.add((key, verdict.category), t, n=1.0)

    def _on_judged(self, score: Score) -> None:
        feature = score.feature or NONE
        flagged = 1.0 if score.label != "serve" else 0.0
        ok = True
        for key in self._keys(feature):
            ok = self._recent.add(key, score.time_ns, judged=1.0, flagged=flagged) and ok
        if not ok:
            self.ignored_late += 1

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Every ``emit_interval_s``: the window metrics and the queue size."""
        if now_ns < self._next_emit_ns:
            return ()
        self._next_emit_ns = now_ns + int(self.settings.emit_interval_s * 1e9)
        out = self._emit(now_ns)
        if self.settings.review.enabled:
            out.extend(self._queue_metrics(now_ns))
            self._writer.submit("count")  # refreshed off this thread, read next time
        return out

    def _metric(self, name: str, value: float, now_ns: int, unit: str | None,
                **labels: str) -> Metric:
        return Metric(name=name, value=value, time_ns=now_ns, window_s=self.settings.window_s,
                      labels=labels, unit=unit)

    def _emit(self, now_ns: int) -> list[Metric]:
        out: list[Metric] = []
        m = self._metric
        for key in self._recent.live_keys():
            feature = str(key)
            checks, block, review, _serve, errors, judged, flagged = self._recent.totals(
                key, now_ns)
            if checks > 0:
                out.append(m("safety.checks", checks, now_ns, "1", feature=feature))
                out.append(m("safety.errors", errors, now_ns, "1", feature=feature))
                out.append(m("safety.block_rate.n", checks, now_ns, "1", feature=feature))
                out.append(m("safety.block_rate", block / checks, now_ns, "ratio",
                             feature=feature))
                out.append(m("safety.review_rate.n", checks, now_ns, "1", feature=feature))
                out.append(m("safety.review_rate", review / checks, now_ns, "ratio",
                             feature=feature))
            if judged > 0:
                out.append(m("safety.judge_flag_rate.n", judged, now_ns, "1", feature=feature))
                out.append(m("safety.judge_flag_rate", flagged / judged, now_ns, "ratio",
                             feature=feature))
            if checks == 0 and judged == 0:
                out.append(m("safety.checks", 0.0, now_ns, "1", feature=feature))
                self._recent.discard(key)  # published its zero once; forget it
        for key in self._categories.live_keys():
            feature, category = cast("tuple[str, str]", key)
            (n,) = self._categories.totals(key, now_ns)
            out.append(m("safety.flagged_by_category", n, now_ns, "1", feature=feature,
                         category=category))
            if n == 0:
                self._categories.discard(key)
        return out

    def _queue_metrics(self, now_ns: int) -> list[Metric]:
        sizes = self._queue_sizes
        if sizes is None:  # no queue table (yet), or not read yet
            return []
        out = [self._metric("safety.queue_size", float(n), now_ns, "1",
                            feature=str(feature or NONE))
               for feature, n in sorted(sizes.items(), key=lambda kv: str(kv[0]))]
        if self.settings.totals:
            out.append(self._metric("safety.queue_size", float(sum(sizes.values())), now_ns,
                                    "1", feature=ALL))
        return out

    # -- control -----------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the judge and the review writer handled everything handed to them."""
        return self.judge.flush(timeout_s) and self._writer.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued judge and review work (within ``timeout_s``), stop the threads."""
        self.judge.close(timeout_s / 2)
        self._writer.close(timeout_s / 2)
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def stats(self) -> dict[str, Any]:
        """Memory, loss and background-work counters, for status pages."""
        return {
            "features": len(self._recent), "categories": len(self._categories),
            "features_evicted": self._recent.evicted,
            "categories_evicted": self._categories.evicted,
            "ignored_late": self.ignored_late, "review_queued": self.queued,
            "review_errors": self.review_errors,
            **{f"review_writer_{k}": v for k, v in self._writer.stats().items()},
            **{f"judge_{k}": v for k, v in self.judge.stats().items()},
        }
