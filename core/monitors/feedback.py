"""The feedback monitor: satisfaction, feedback rate, negative categories, corrections.

It reads user-feedback :class:`~llmvigil.core.model.Score` records (kinds
``thumbs_up``, ``thumbs_down``, ``rating``, ``correction``, ``report``) and the
request spans (to count requests per feature), and every ``emit_interval_s``
publishes, per feature and over ``window_s``:

* ``feedback.satisfaction_rate``: satisfied / (satisfied + unsatisfied). ``0.0`` is a
  real rate (every answer was disliked); when there is no judged feedback at all no
  rate is published. ``feedback.satisfaction_rate.n`` carries the sample count.
* ``feedback.rate``: feedback per request (only when requests were seen), with
  ``feedback.rate.n`` (the request count) and ``feedback.count``.
* ``feedback.negative_by_category``: negative feedback count per ``category`` label.
* ``feedback.satisfaction_drop_p_value`` and a ``feedback.satisfaction_drop`` Alert
  when the recent satisfaction is significantly below the baseline (one-sided Fisher
  exact test at ``drop.alpha``, with minimum sample counts and a minimum drop).

A Score without a feature gets the feature of the span or trace it points at, when
that span went through the monitor. Metrics carry ``feature="_none"`` for unknown
features and ``feature="_all"`` for the total over every feature.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

from pydantic import Field, model_validator

from ..model import Alert, Metric, Score, Span
from .windows import RollingCounters, Settings, parse_settings

__all__ = [
    "FEEDBACK_KINDS",
    "DropSettings",
    "FeedbackMonitor",
    "FeedbackSettings",
    "fisher_less_p_value",
]

#: The Score kinds this monitor reads.
FEEDBACK_KINDS: frozenset[str] = frozenset(
    ("thumbs_up", "thumbs_down", "rating", "correction", "report")
)
ALL = "_all"
NONE = "_none"
UNCATEGORIZED = "uncategorized"
_FIELDS = ("pos", "neg", "feedback", "requests")


class DropSettings(Settings):
    """``monitors.feedback.drop``: the satisfaction drop detector."""

    enabled: bool = True
    baseline_s: float = Field(default=86_400.0, gt=0)
    alpha: float = Field(default=0.001, gt=0, lt=1)
    min_samples: int = Field(default=30, ge=1)
    min_baseline_samples: int = Field(default=100, ge=1)
    min_drop: float = Field(default=0.05, ge=0, le=1)
    check_interval_s: float = Field(default=900.0, gt=0)
    cooldown_s: float = Field(default=3600.0, ge=0)
    severity: str = Field(default="warning", min_length=1)


class FeedbackSettings(Settings):
    """``monitors.feedback``: windows, what counts as satisfied, memory bounds."""

    enabled: bool = True
    window_s: float = Field(default=3600.0, gt=0)
    bucket_s: float = Field(default=60.0, gt=0)
    emit_interval_s: float = Field(default=60.0, gt=0)
    positive_kinds: list[str] = ["thumbs_up"]
    negative_kinds: list[str] = ["thumbs_down", "correction", "report"]
    rating_positive_min: float = 4.0
    requests: Literal["root", "llm", "all"] = "root"
    totals: bool = True
    max_features: int = Field(default=1000, ge=1)
    max_categories: int = Field(default=5000, ge=1)
    link_cache_size: int = Field(default=100_000, ge=0)
    corrections_per_feature: int = Field(default=20, ge=0)
    drop: DropSettings = DropSettings()

    @model_validator(mode="after")
    def _check(self) -> FeedbackSettings:
        """Reject unknown or overlapping kinds and windows too fine to hold in memory."""
        for name in ("positive_kinds", "negative_kinds"):
            unknown = set(getattr(self, name)) - FEEDBACK_KINDS
            if unknown:
                raise ValueError(f"{name}: unknown kinds {sorted(unknown)}; "
                                 f"known kinds: {', '.join(sorted(FEEDBACK_KINDS))}")
        both = set(self.positive_kinds) & set(self.negative_kinds)
        if both:
            raise ValueError(f"kinds {sorted(both)} are both positive and negative")
        if self.window_s / self.bucket_s > 1440:
            raise ValueError("window_s / bucket_s must be at most 1440 buckets")
        if self.drop.enabled and self.drop.baseline_s / self.window_s > 1440:
            raise ValueError("drop.baseline_s / window_s must be at most 1440")
        return self


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_less_p_value(pos_recent: int, n_recent: int, pos_base: int, n_base: int) -> float:
    """One-sided Fisher exact test that the recent success rate is below the baseline.

    Returns P(X <= pos_recent) for X hypergeometric with the table's margins: the
    probability, if both samples share one rate, of a recent count this low or lower.
    """
    total, successes, draws = n_recent + n_base, pos_recent + pos_base, n_recent
    lo, hi = max(0, draws - (total - successes)), min(draws, successes)
    if pos_recent >= hi:
        return 1.0
    if pos_recent < lo:
        return 0.0
    failures = total - successes

    def log_pmf(x: int) -> float:
        return (_log_choose(successes, x) + _log_choose(failures, draws - x)
                - _log_choose(total, draws))

    mode = (draws + 1) * (successes + 1) // (total + 2)
    if pos_recent < mode:  # sum the lower tail downwards: terms shrink as x falls
        x, term, acc = pos_recent, 1.0, 1.0
        while x > lo:
            term *= x * (failures - draws + x) / ((successes - x + 1) * (draws - x + 1))
            acc += term
            x -= 1
            if term < acc * 1e-17:
                break
        return min(1.0, math.exp(log_pmf(pos_recent)) * acc)
    x, term, acc = pos_recent + 1, 1.0, 1.0  # 1 - upper tail, summed upwards
    while x < hi:
        term *= (successes - x) * (draws - x) / ((x + 1) * (failures - draws + x + 1))
        acc += term
        x += 1
        if term < acc * 1e-17:
            break
    return max(0.0, 1.0 - math.exp(log_pmf(pos_recent + 1)) * acc)


class _Reservoir:
    """A uniform sample of at most ``size`` items of a stream (Vitter's algorithm R)."""

    __slots__ = ("items", "seen", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen = 0
        self.items: list[dict[str, Any]] = []

    def offer(self, item: dict[str, Any], rng: random.Random) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


class FeedbackMonitor:
    """Turns user feedback and request spans into satisfaction and feedback metrics.

    Args:
        config: the ``monitors.feedback`` mapping (see :class:`FeedbackSettings`),
            a settings instance, or ``None`` for the defaults.
        where: the config path named in error messages.

    Raises:
        ConfigError: the settings are invalid.
    """

    def __init__(self, config: Mapping[str, Any] | FeedbackSettings | None = None, *,
                 where: str = "monitors.feedback") -> None:
        s = self.settings = parse_settings(FeedbackSettings, config, where)
        self._window_buckets = max(1, math.ceil(s.window_s / s.bucket_s))
        self._recent = RollingCounters(_FIELDS, bucket_s=s.bucket_s,
                                       buckets=self._window_buckets,
                                       max_keys=s.max_features + 1)
        # The baseline uses buckets one window wide: it reads the buckets that end
        # before the recent window starts, so the two samples never overlap.
        self._base_buckets = max(1, math.ceil(s.drop.baseline_s / s.window_s))
        self._base_skip = 1 + math.ceil(self._window_buckets * s.bucket_s / s.window_s)
        self._baseline = RollingCounters(("pos", "n"), bucket_s=s.window_s,
                                         buckets=self._base_buckets + self._base_skip,
                                         max_keys=s.max_features + 1)
        self._categories = RollingCounters(("n",), bucket_s=s.bucket_s,
                                           buckets=self._window_buckets,
                                           max_keys=s.max_categories)
        self._links: OrderedDict[str, str] = OrderedDict()
        self._corrections: OrderedDict[str, _Reservoir] = OrderedDict()
        self._rng = random.Random()
        self._positive = frozenset(s.positive_kinds)
        self._negative = frozenset(s.negative_kinds)
        self._window_ns = int(s.window_s * 1e9)
        # settings the per-span path reads, looked up once (the settings are immutable)
        self._link_cap = s.link_cache_size
        self._requests = s.requests
        self._totals = s.totals
        self._next_emit_ns = 0
        self._next_check_ns = 0
        self._last_alert_ns: dict[str, int] = {}
        self.ignored_late = 0

    # -- observe --------------------------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span, Score)

    def observe(self, record: Any) -> Iterable[Any]:
        """Count a feedback Score or a request Span; other records are ignored."""
        if isinstance(record, Span):
            self._on_span(record)
        elif isinstance(record, Score) and record.kind in FEEDBACK_KINDS:
            self._on_feedback(record)
        return ()

    def _on_span(self, span: Span) -> None:
        feature = span.feature
        root = span.parent_id is None
        if feature is not None and self._link_cap:
            self._link(span.id, feature)
            if root:  # the root finishes last: its feature is the trace's
                self._link(span.trace_id, feature)
        mode = self._requests
        if (mode == "root" and not root) or (mode == "llm" and span.kind != "llm"):
            return
        t = span.end_ns or span.start_ns
        key = feature or NONE
        ok = self._recent.incr(key, t, "requests")
        if self._totals:
            ok = self._recent.incr(ALL, t, "requests") and ok
        if not ok:
            self.ignored_late += 1

    def _link(self, key: str, feature: str) -> None:
        links = self._links
        if len(links) >= self._link_cap and key not in links:
            links.popitem(last=False)
        links[key] = feature

    def _feature_of(self, score: Score) -> str:
        if score.feature:
            return score.feature
        for key in (score.span_id, score.trace_id):
            if key is not None and key in self._links:
                return self._links[key]
        return NONE

    def _verdict(self, score: Score) -> bool | None:
        """True for satisfied, False for unsatisfied, None for feedback that judges nothing."""
        if score.kind in self._positive:
            return True
        if score.kind in self._negative:
            return False
        if score.kind == "rating" and score.value is not None:
            return score.value >= self.settings.rating_positive_min
        return None

    def _on_feedback(self, score: Score) -> None:
        feature = self._feature_of(score)
        t = score.time_ns
        verdict = self._verdict(score)
        amounts = {"feedback": 1.0}
        if verdict is True:
            amounts["pos"] = 1.0
        elif verdict is False:
            amounts["neg"] = 1.0
        if verdict is not None:  # before the recent window, which rejects old records
            for key in self._keys(feature):
                self._baseline.add(key, t, pos=1.0 if verdict else 0.0, n=1.0)
        if not self._count(feature, t, **amounts):
            return
        if verdict is False:
            category = score.category or UNCATEGORIZED
            for key in self._keys(feature):
                self._categories.add((key, category), t, n=1.0)
        if score.kind == "correction" and self.settings.corrections_per_feature:
            self._keep_correction(feature, score)

    def _keys(self, feature: str) -> tuple[str, ...]:
        return (feature, ALL) if self.settings.totals and feature != ALL else (feature,)

    def _count(self, feature: str, t_ns: int, **amounts: float) -> bool:
        ok = True
        for key in self._keys(feature):
            ok = self._recent.add(key, t_ns, **amounts) and ok
        if not ok:
            self.ignored_late += 1
        return ok

    def _keep_correction(self, feature: str, score: Score) -> None:
        res = self._corrections.get(feature)
        if res is None:
            res = self._corrections[feature] = _Reservoir(self.settings.corrections_per_feature)
            if len(self._corrections) > self.settings.max_features:
                self._corrections.popitem(last=False)
        else:
            self._corrections.move_to_end(feature)
        res.offer({
            "score_id": score.id, "time_ns": score.time_ns, "feature": feature,
            "trace_id": score.trace_id, "span_id": score.span_id,
            "correction": score.correction, "comment": score.comment,
            "category": score.category, "user_id": score.user_id,
        }, self._rng)

    # -- tick -----------------------------------------------------------------------

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Every ``emit_interval_s``: the window metrics; every ``check_interval_s``: drop tests."""
        out: list[Any] = []
        if now_ns >= self._next_emit_ns:
            self._next_emit_ns = now_ns + int(self.settings.emit_interval_s * 1e9)
            out.extend(self._emit(now_ns))
        drop = self.settings.drop
        if drop.enabled and now_ns >= self._next_check_ns:
            self._next_check_ns = now_ns + int(drop.check_interval_s * 1e9)
            out.extend(self._check_drops(now_ns))
        return out

    def _metric(self, name: str, value: float, now_ns: int, unit: str | None,
                **labels: str) -> Metric:
        return Metric(name=name, value=value, time_ns=now_ns, window_s=self.settings.window_s,
                      labels=labels, unit=unit)

    def _emit(self, now_ns: int) -> list[Metric]:
        out: list[Metric] = []
        for key in self._recent.live_keys():
            feature = str(key)
            pos, neg, fb, req = self._recent.totals(key, now_ns)
            judged = pos + neg
            out.append(self._metric("feedback.count", fb, now_ns, "1", feature=feature))
            if judged > 0:
                out.append(self._metric("feedback.satisfaction_rate.n", judged, now_ns, "1",
                                        feature=feature))
                out.append(self._metric("feedback.satisfaction_rate", pos / judged, now_ns,
                                        "ratio", feature=feature))
            if req > 0:
                out.append(self._metric("feedback.rate.n", req, now_ns, "1", feature=feature))
                out.append(self._metric("feedback.rate", fb / req, now_ns, "1/request",
                                        feature=feature))
            if fb == 0 and req == 0:
                self._recent.discard(key)  # published its zero once; forget it
        for key in self._categories.live_keys():
            feature, category = cast("tuple[str, str]", key)
            (n,) = self._categories.totals(key, now_ns)
            out.append(self._metric("feedback.negative_by_category", n, now_ns, "1",
                                    feature=feature, category=category))
            if n == 0:
                self._categories.discard(key)
        return out

    def _check_drops(self, now_ns: int) -> list[Any]:
        drop = self.settings.drop
        out: list[Any] = []
        for key in self._recent.live_keys():
            feature = str(key)
            pos_r, neg_r, _fb, _req = self._recent.totals(key, now_ns)
            n_r = pos_r + neg_r
            pos_b, n_b = self._baseline.totals(key, now_ns, buckets=self._base_buckets,
                                                  skip=self._base_skip)
            if n_r < drop.min_samples or n_b < drop.min_baseline_samples:
                continue
            p_value = fisher_less_p_value(int(pos_r), int(n_r), int(pos_b), int(n_b))
            out.append(self._metric("feedback.satisfaction_drop_p_value", p_value, now_ns,
                                    None, feature=feature))
            rate_r, rate_b = pos_r / n_r, pos_b / n_b
            if p_value >= drop.alpha or rate_b - rate_r < drop.min_drop:
                continue
            last = self._last_alert_ns.get(feature)
            if last is not None and now_ns - last < drop.cooldown_s * 1e9:
                continue
            self._last_alert_ns[feature] = now_ns
            if len(self._last_alert_ns) > 2 * self.settings.max_features:
                self._last_alert_ns.pop(next(iter(self._last_alert_ns)))
            out.append(Alert(
                rule="feedback.satisfaction_drop", severity=drop.severity, time_ns=now_ns,
                message=(f"satisfaction of feature {feature!r} dropped to {rate_r:.1%} "
                         f"(n={int(n_r)}) from a baseline of {rate_b:.1%} (n={int(n_b)}), "
                         f"one-sided Fisher p={p_value:.2g} < alpha={drop.alpha}"),
                value=rate_r, threshold=rate_b, labels={"feature": feature},
            ))
        return out

    # -- review ---------------------------------------------------------------------

    def corrections(self, feature: str | None = None) -> list[dict[str, Any]]:
        """The correction samples kept for review (a bounded uniform sample per feature)."""
        if feature is not None:
            res = self._corrections.get(feature)
            return list(res.items) if res is not None else []
        return [item for res in self._corrections.values() for item in res.items]

    def stats(self) -> dict[str, Any]:
        """Memory and loss counters, for status pages."""
        return {
            "features": len(self._recent), "categories": len(self._categories),
            "features_evicted": self._recent.evicted,
            "categories_evicted": self._categories.evicted,
            "ignored_late": self.ignored_late, "links": len(self._links),
        }
