"""The cost monitor: prices every LLM span, tracks spend, budgets and spikes.

For each span with token ``usage`` and a model it sets ``cost_usd``,
``price_source`` and ``price_version`` (see :mod:`.prices`), unless the span already
carries a cost (``overwrite: true`` recomputes it). The pipeline calls ``observe``
after the processors and dispatches the span to the backends afterwards, and the
span object is the one dispatched, so the backends see the cost. A model no source
prices is counted in ``cost.unpriced_spans`` and logged once; its spans get no cost
(never zero).

Spend is counted for spans with ``usage`` or of kind ``llm`` and a cost (so a parent
chain span carrying a rolled-up cost is not counted twice). It keeps:

* spend per user over a rolling hour (5-minute buckets; at most ``max_users`` users,
  the least recently active one forgotten first);
* spend today (calendar day in ``timezone``) in total, per feature and per model
  (at most ``max_keys`` each; the rest is summed under ``_other``), and the top users
  of the day in a weighted Space-Saving summary of ``max_users`` counters;
* spend per 5 minutes over ``spike.baseline_hours`` for the spike detector.

Records emitted (labels in brackets; feature ``_none`` = no feature, ``_all`` = total):

* every ``emit_interval_s``: ``cost.spend_usd`` (last hour) [feature],
  ``cost.spend_today_usd`` [feature] and [model], ``cost.budget_used_ratio``
  [scope, feature], ``cost.user_spend_usd`` (last hour, top ``top_n`` users) [user],
  ``cost.unpriced_spans`` (since the previous emission) [model, provider];
* Alert ``cost.budget``: a daily budget (global or per feature) reached a level of
  ``budgets.alert_at`` (once per level per day; ``critical`` from 100%);
* Alert ``cost.user_hourly_limit``: a user's last-hour spend reached
  ``budgets.user_usd_per_hour`` (once per ``user_alert_cooldown_s`` per user);
* Alert ``cost.spike``: last-hour spend above ``spike.factor`` times the median of
  the previous hours' spend (and at least ``spike.min_usd``);
* Alert ``cost.change``: a change in log cost per call per (feature, model), by the
  self-starting CUSUM of :mod:`.changepoint`.

The state :func:`llmvigil.budget.check` reads is guarded by a lock (the app threads
read while the worker writes). A monitor registers itself as the active one for
:mod:`.budget` when built.
"""

from __future__ import annotations

import heapq
import logging
import math
import statistics
import threading
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pluggy
from pydantic import Field, field_validator

from ..model import Alert, Metric, Span
from . import budget
from .changepoint import ChangeDetectionSettings, GaussianCusum
from .prices import PriceBook, PriceOverride
from .windows import Settings, parse_settings

__all__ = ["BudgetSettings", "CostMonitor", "CostSettings", "RollingSums", "SpaceSaving",
           "SpikeSettings"]

_log = logging.getLogger("llmvigil.cost")
ALL = "_all"
NONE = "_none"
OTHER = "_other"
_BUCKET_S = 300
_HOUR_BUCKETS = 3600 // _BUCKET_S


class BudgetSettings(Settings):
    """``monitors.cost.budgets``: daily budgets, the per-user hourly limit, enforcement."""

    global_usd_per_day: float | None = Field(default=None, gt=0)
    features_usd_per_day: dict[str, float] = {}
    user_usd_per_hour: float | None = Field(default=None, gt=0)
    #: Fractions of a daily budget at which an alert fires (once per level per day).
    alert_at: list[float] = [0.8, 1.0]
    #: What ``llmvigil.budget.check`` does at a hard limit: raise or return a decision.
    enforce: Literal["raise", "decide"] = "raise"

    @field_validator("features_usd_per_day")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        """Every feature budget must be a positive amount."""
        for feature, usd in value.items():
            if not usd > 0:
                raise ValueError(f"the budget of feature {feature!r} must be > 0 USD")
        return value

    @field_validator("alert_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        """Alert levels are fractions of the budget, e.g. 0.8 for 80%."""
        if any(not 0 < v <= 10 for v in value):
            raise ValueError("alert levels are fractions of the budget in (0, 10], e.g. 0.8")
        return sorted(set(value))


class SpikeSettings(Settings):
    """``monitors.cost.spike``: last-hour spend against the median of the previous hours."""

    enabled: bool = True
    factor: float = Field(default=3.0, gt=1)
    min_usd: float = Field(default=1.0, ge=0)
    baseline_hours: int = Field(default=24, ge=2, le=168)
    min_baseline_hours: int = Field(default=3, ge=1)
    per_feature: bool = True
    check_interval_s: float = Field(default=60.0, gt=0)
    cooldown_s: float = Field(default=3600.0, ge=0)
    severity: str = "warning"


class CostSettings(Settings):
    """``monitors.cost``: prices, budgets, spike detection and the emitted metrics."""

    enabled: bool = True
    #: Model name (or ``provider/model``, or a shell pattern) -> USD per million tokens.
    prices: dict[str, PriceOverride] = {}
    genai_prices: bool = True
    #: Recompute the cost of spans that already carry one.
    overwrite: bool = False
    budgets: BudgetSettings = BudgetSettings()
    spike: SpikeSettings = SpikeSettings()
    change_detection: ChangeDetectionSettings = ChangeDetectionSettings()
    #: The time zone whose midnight starts a budget day.
    timezone: str = "UTC"
    emit_interval_s: float = Field(default=60.0, gt=0)
    top_n: int = Field(default=10, ge=0)
    max_users: int = Field(default=10_000, ge=10)
    max_keys: int = Field(default=1_000, ge=10)
    user_alert_cooldown_s: float = Field(default=3600.0, ge=0)
    severity: str = "warning"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        """The time zone must be an IANA name such as ``UTC`` or ``Europe/Paris``."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as "
                             "'UTC' or 'Europe/Paris'") from None
        return value


class RollingSums:
    """Per-key sums over a ring of ``buckets`` time buckets of ``bucket_s`` seconds.

    At most ``max_keys`` keys; the least recently written one is forgotten first.
    An amount older than the ring is ignored.
    """

    def __init__(self, bucket_s: int, buckets: int, max_keys: int) -> None:
        self.bucket_ns = bucket_s * 1_000_000_000
        self.buckets = buckets
        self.max_keys = max_keys
        self._rings: OrderedDict[Hashable, tuple[array[int], array[float]]] = OrderedDict()
        # a new key's ring is a copy of these (cheaper than building arrays)
        self._blank = (array("q", [-1]) * buckets, array("d", [0.0]) * buckets)

    def __len__(self) -> int:
        return len(self._rings)

    def live_keys(self) -> Iterator[Hashable]:
        """The held keys (a copy: safe to write while iterating)."""
        return iter(list(self._rings))

    def add(self, key: Hashable, t_ns: int, amount: float) -> None:
        """Add ``amount`` to ``key`` in the bucket holding ``t_ns``."""
        rings = self._rings
        ring = rings.get(key)
        if ring is None:
            blank = self._blank
            ring = rings[key] = (blank[0][:], blank[1][:])
            if len(rings) > self.max_keys:
                rings.popitem(last=False)
        else:
            rings.move_to_end(key)
        epoch = t_ns // self.bucket_ns
        slot = epoch % self.buckets
        epochs, sums = ring
        held = epochs[slot]
        if held != epoch:
            if held > epoch:
                return
            epochs[slot] = epoch
            sums[slot] = 0.0
        sums[slot] += amount

    def total(self, key: Hashable, now_ns: int, buckets: int | None = None,
              skip: int = 0) -> float:
        """The sum over ``buckets`` buckets ending ``skip`` buckets before the one of ``now_ns``."""
        ring = self._rings.get(key)
        if ring is None:
            return 0.0
        newest = now_ns // self.bucket_ns - skip
        oldest = newest - (buckets or self.buckets) + 1
        out = 0.0
        for epoch, amount in zip(ring[0], ring[1], strict=True):
            if oldest <= epoch <= newest:
                out += amount
        return out


class SpaceSaving:
    """Weighted Space-Saving summary (Metwally et al.): the heaviest keys in bounded memory.

    Holds at most ``capacity`` keys. A key seen for the first time when full takes
    the place of the lightest one and inherits its total as ``error``, so a reported
    total overestimates the true one by at most its ``error``; any key whose true total
    exceeds ``sum of weights / capacity`` is guaranteed to be held.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._counts: dict[Hashable, list[float]] = {}  # key -> [total, error]
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._counts)

    def clear(self) -> None:
        """Forget everything."""
        self._counts.clear()
        self._heap.clear()

    def add(self, key: Hashable, weight: float) -> None:
        """Add ``weight`` to ``key``."""
        counts = self._counts
        entry = counts.get(key)
        if entry is None:
            if len(counts) >= self.capacity:
                floor, victim = self._pop_min()
                del counts[victim]
                entry = counts[key] = [floor, floor]
            else:
                entry = counts[key] = [0.0, 0.0]
        entry[0] = total = entry[0] + weight
        self._seq = seq = self._seq + 1
        heap = self._heap
        heapq.heappush(heap, (total, seq, key))
        if len(heap) > 4 * self.capacity + 64:
            self._heap = [(c[0], i, k) for i, (k, c) in enumerate(self._counts.items())]
            heapq.heapify(self._heap)

    def _pop_min(self) -> tuple[float, Hashable]:
        while True:
            total, _, key = heapq.heappop(self._heap)
            entry = self._counts.get(key)
            if entry is not None and entry[0] == total:
                return total, key

    def top(self, n: int) -> list[tuple[Hashable, float, float]]:
        """The ``n`` heaviest keys as ``(key, total, error)``, heaviest first."""
        items = sorted(self._counts.items(), key=lambda kv: kv[1][0], reverse=True)[:n]
        return [(k, c[0], c[1]) for k, c in items]

    def get(self, key: Hashable) -> float:
        """The total held for ``key`` (0 when not held)."""
        entry = self._counts.get(key)
        return entry[0] if entry is not None else 0.0


class CostMonitor:
    """Prices LLM spans and watches spend (see the module docstring).

    Args:
        config: the ``monitors.cost`` mapping (or a :class:`CostSettings`).
        pm: the plugin manager whose ``llmvigil_price`` hook is asked for prices.
        register: make this the monitor :func:`llmvigil.budget.check` reads (when enabled).
    """

    def __init__(self, config: Mapping[str, Any] | CostSettings | None = None, *,
                 pm: pluggy.PluginManager | None = None, register: bool = True,
                 ledger: Any = None) -> None:
        self.settings = s = parse_settings(CostSettings, config, "monitors.cost")
        #: The fleet-wide spend on Redis (``state:``); ``None`` keeps every figure local.
        self.ledger = ledger
        self.prices = PriceBook(s.prices, pm=pm, use_genai_prices=s.genai_prices)
        self.lock = threading.Lock()
        self._tz = ZoneInfo(s.timezone)
        self._now_ns = 0
        self._day_start_ns = 0
        self._day_end_ns = -1
        self._day_total = 0.0
        self._day_features: dict[str, float] = {}
        self._day_models: dict[str, float] = {}
        self._day_users = SpaceSaving(s.max_users)
        self._fired_budget: set[tuple[str, float]] = set()
        self._users = RollingSums(_BUCKET_S, _HOUR_BUCKETS, s.max_users)
        self._series = RollingSums(_BUCKET_S, (s.spike.baseline_hours + 1) * _HOUR_BUCKETS,
                                   s.max_keys)
        self._first_seen: dict[str, int] = {}  # spike-series key -> first spend seen
        self._user_alerted: dict[str, int] = {}
        self._spike_alerted: dict[str, int] = {}
        self._change_alerted: dict[tuple[str, str], int] = {}
        self._detectors: OrderedDict[tuple[str, str], GaussianCusum] = OrderedDict()
        self._unpriced: dict[tuple[str, str], int] = {}
        self._warned: set[str] = set()
        self.unpriced_total = 0
        self._next_emit_ns = 0
        self._next_spike_ns = 0
        # What the per-span path reads, looked up once (the settings are immutable).
        b = s.budgets
        self._enabled = s.enabled
        self._overwrite = s.overwrite
        self._user_limit = b.user_usd_per_hour
        self._day_budgets = b.global_usd_per_day is not None or bool(b.features_usd_per_day)
        self._per_feature = s.spike.per_feature
        self._detect_changes = s.change_detection.enabled
        if register and s.enabled:
            budget.activate(self)

    # -- Monitor protocol -----------------------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span,)

    def observe(self, record: Any) -> Iterable[Any]:
        """Price an LLM span, add its cost to the spend, return budget/limit alerts."""
        if type(record) is not Span or not self._enabled:
            return ()
        span = record
        usage = span.usage
        if usage is None and span.kind != "llm":
            return ()
        model = span.model or span.response_model
        if usage is not None and model and (span.cost_usd is None or self._overwrite):
            self._price(span, usage, model)
        cost = span.cost_usd
        if cost is None or cost < 0 or math.isnan(cost):
            return ()
        t = span.end_ns or span.start_ns or self._now_ns
        return self._account(span, float(cost), t, model or NONE)

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Emit the spend metrics every ``emit_interval_s``; check for spikes."""
        if not self.settings.enabled:
            return ()
        with self.lock:
            self._advance(now_ns)
        now = max(now_ns, self._now_ns)
        out: list[Any] = []
        if now >= self._next_emit_ns:
            self._next_emit_ns = now + int(self.settings.emit_interval_s * 1e9)
            out.extend(self._metrics(now))
        spike = self.settings.spike
        if spike.enabled and now >= self._next_spike_ns:
            self._next_spike_ns = now + int(spike.check_interval_s * 1e9)
            out.extend(self._spikes(now))
        return out

    def close(self) -> None:
        """Stop being the monitor :func:`llmvigil.budget.check` reads."""
        budget.deactivate(self)
        if self.ledger is not None:
            self.ledger.close()

    # -- queries ------------------------------------------------------------------------

    def spend_today(self, feature: str | None = None) -> float:
        """USD spent today, in total or by ``feature``."""
        with self.lock:
            if feature is None:
                return self._day_total
            return self._day_features.get(feature, 0.0)

    def spend_today_by_model(self) -> dict[str, float]:
        """USD spent today per model."""
        with self.lock:
            return dict(self._day_models)

    def user_spend_last_hour(self, user_id: str) -> float:
        """USD spent by ``user_id`` over the last hour."""
        with self.lock:
            return self._users.total(user_id, self._now_ns)

    def top_users(self, n: int = 10, *, period: Literal["hour", "day"] = "hour"
                  ) -> list[tuple[str, float]]:
        """The ``n`` users who spent most over the last hour or today, most first.

        Daily totals come from the Space-Saving summary: exact while fewer than
        ``max_users`` users spent today, otherwise overestimated by at most the
        error it reports (and every user above ``total / max_users`` is listed).
        """
        with self.lock:
            if period == "day":
                return [(str(k), c) for k, c, _ in self._day_users.top(n)]
            rows = [(str(k), self._users.total(k, self._now_ns)) for k in self._users.live_keys()]
        rows = [r for r in rows if r[1] > 0]
        rows.sort(key=lambda r: r[1], reverse=True)
        return rows[:n]

    def top_features(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` features that spent most today, most first."""
        with self.lock:
            rows = sorted(self._day_features.items(), key=lambda kv: kv[1], reverse=True)
        return rows[:n]

    def budget_status(self, user_id: str | None = None, feature: str | None = None
                      ) -> list[tuple[str, float, float]]:
        """``(scope, spent_usd, limit_usd)`` for every limit that applies to the call."""
        b = self.settings.budgets
        out: list[tuple[str, float, float]] = []
        fleet = self.ledger.status(user_id, feature) if self.ledger is not None else None
        with self.lock:
            self._advance(self._now_ns)
            day_total = self._day_total
            day_feature = self._day_features.get(feature, 0.0) if feature else 0.0
            user_hour = self._users.total(user_id, self._now_ns) if user_id else 0.0
        if fleet is not None:  # the whole fleet's spend, when Redis answers
            day_total, day_feature = fleet.day_total_usd, fleet.day_feature_usd
            user_hour = fleet.user_window_usd
        if b.global_usd_per_day is not None:
            out.append(("global/day", day_total, b.global_usd_per_day))
        if feature is not None and feature in b.features_usd_per_day:
            out.append((f"feature:{feature}/day", day_feature, b.features_usd_per_day[feature]))
        if user_id is not None and b.user_usd_per_hour is not None:
            out.append((f"user:{user_id}/hour", user_hour, b.user_usd_per_hour))
        return out

    def summary(self) -> dict[str, Any]:
        """Spend today and over the last hour, top users/features, unpriced models, budgets."""
        b = self.settings.budgets
        with self.lock:
            now = self._now_ns
            hour = self._series.total(ALL, now, _HOUR_BUCKETS)
            out: dict[str, Any] = {
                "currency": "USD",
                "today_usd": self._day_total,
                "last_hour_usd": hour,
                "today_by_feature": dict(self._day_features),
                "today_by_model": dict(self._day_models),
                "unpriced_spans": self.unpriced_total,
                "unpriced_models": sorted(self._warned),
                "budgets": {
                    "global_usd_per_day": b.global_usd_per_day,
                    "features_usd_per_day": dict(b.features_usd_per_day),
                    "user_usd_per_hour": b.user_usd_per_hour,
                },
            }
        out["top_users_last_hour"] = self.top_users(self.settings.top_n)
        out["top_users_today"] = self.top_users(self.settings.top_n, period="day")
        out["top_features_today"] = self.top_features(self.settings.top_n)
        return out

    # -- pricing and accounting ---------------------------------------------------------

    def _price(self, span: Span, usage: Any, model: str) -> None:
        answered = span.response_model
        res = self.prices.resolve(answered or model, span.provider,
                                  fallback_model=span.model if answered else None)
        usd = res.cost_usd(usage)
        if usd is None:
            key = (model, span.provider or "")
            self.unpriced_total += 1
            if key in self._unpriced or len(self._unpriced) < self.settings.max_keys:
                self._unpriced[key] = self._unpriced.get(key, 0) + 1
            if model not in self._warned and len(self._warned) < self.settings.max_keys:
                self._warned.add(model)
                _log.warning(
                    "llmvigil: no price known for model %.200r (provider %.100r); its spans are "
                    "reported as unpriced (metric cost.unpriced_spans), not costed at zero. "
                    "Add it under monitors.cost.prices in the config.", model, span.provider)
            return
        span.cost_usd = usd
        span.price_source = res.source
        span.price_version = res.version

    def _account(self, span: Span, cost: float, t: int, model: str) -> list[Any]:
        feature = span.feature or NONE
        user = span.user_id
        out: list[Any] = []
        # Redis round trip outside the lock: budget.check() readers never wait on it.
        fleet = self.ledger.add(user, feature, cost, t) if self.ledger is not None else None
        with self.lock:
            self._advance(t)
            max_keys = self.settings.max_keys
            if feature not in self._first_seen:
                if len(self._first_seen) >= max_keys:
                    self._first_seen.clear()
                self._first_seen.setdefault(ALL, t)
                self._first_seen[feature] = t
            self._day_total += cost
            _bump(self._day_features, feature, cost, max_keys)
            _bump(self._day_models, model, cost, max_keys)
            series = self._series
            series.add(ALL, t, cost)
            if self._per_feature:
                series.add(feature, t, cost)
            user_hour = 0.0
            user_limit = self._user_limit
            if user is not None:
                self._day_users.add(user, cost)
                self._users.add(user, t, cost)
                if user_limit is not None:
                    user_hour = self._users.total(user, self._now_ns)
            now = self._now_ns
            if fleet is not None:
                user_hour = fleet.user_window_usd
            if self._day_budgets:
                b = self.settings.budgets
                day_total, day_feature = self._day_total, self._day_features.get(feature, 0.0)
                if fleet is not None:
                    day_total, day_feature = fleet.day_total_usd, fleet.day_feature_usd
                if b.global_usd_per_day is not None:
                    out.extend(self._budget_alerts("global", None, day_total,
                                                   b.global_usd_per_day, now))
                limit = b.features_usd_per_day.get(feature)
                if limit is not None:
                    out.extend(self._budget_alerts(f"feature:{feature}", feature,
                                                   day_feature, limit, now))
        if self.ledger is not None and out:  # one replica fires each fleet-wide level
            out = [a for a in out if self.ledger.fire_once(self.ledger.budget_key(
                "global" if a.labels["scope"] == "global" else f"feature:{a.labels['feature']}",
                float(a.labels["level"].rstrip("%")) / 100, now))]
        if user is not None and user_limit is not None and user_hour >= user_limit:
            s = self.settings
            last = self._user_alerted.get(user)
            cooldown_s = s.user_alert_cooldown_s
            first_in_fleet = self.ledger is None or self.ledger.fire_once(
                f"user_hourly:{user}:{int(now // (cooldown_s * 1e9))}",
                ttl_s=int(cooldown_s) or 1)
            if first_in_fleet and (last is None or now - last >= cooldown_s * 1e9):
                if len(self._user_alerted) >= s.max_users:
                    self._user_alerted.clear()
                self._user_alerted[user] = now
                out.append(Alert(
                    rule="cost.user_hourly_limit", severity=s.severity, time_ns=now,
                    message=f"user {user!r} spent ${user_hour:.4f} over the last hour, "
                            f"limit ${user_limit:.4f}",
                    value=user_hour, threshold=user_limit, labels={"user": user},
                ))
        if self._detect_changes and cost > 0:
            change = self._change(feature, model, cost, now)
            if change is not None:
                out.append(change)
        return out

    def _budget_alerts(self, scope: str, feature: str | None, spent: float, limit: float,
                       now: int) -> list[Alert]:
        """Alerts for the levels of a daily budget reached for the first time today."""
        out = []
        for level in self.settings.budgets.alert_at:
            if spent >= level * limit and (scope, level) not in self._fired_budget:
                self._fired_budget.add((scope, level))
                labels = {"scope": "global" if feature is None else "feature",
                          "level": f"{level:.0%}"}
                if feature is not None:
                    labels["feature"] = feature
                out.append(Alert(
                    rule="cost.budget", severity="critical" if level >= 1 else "warning",
                    time_ns=now, value=spent, threshold=level * limit, labels=labels,
                    message=f"{scope} spend today ${spent:.4f} reached {level:.0%} of its "
                            f"${limit:.2f} daily budget",
                ))
        return out

    def _change(self, feature: str, model: str, cost: float, now: int) -> Alert | None:
        key = (feature, model)
        det = self._detectors.get(key)
        if det is None:
            cd = self.settings.change_detection
            det = self._detectors[key] = GaussianCusum(
                cd.arl0, shift_sigma=cd.shift_sigma, warmup=cd.warmup, clip=cd.clip)
            if len(self._detectors) > self.settings.max_keys:
                self._detectors.popitem(last=False)
        else:
            self._detectors.move_to_end(key)
        change = det.update(math.log(cost))
        if change is None:
            return None
        cd = self.settings.change_detection
        last = self._change_alerted.get(key)
        if last is not None and now - last < cd.cooldown_s * 1e9:
            return None
        if len(self._change_alerted) >= self.settings.max_keys:
            self._change_alerted.clear()
        self._change_alerted[key] = now
        before, after = math.exp(change.baseline_mean), math.exp(change.new_mean)
        return Alert(
            rule="cost.change", severity=cd.severity, time_ns=now,
            message=f"cost per call of feature {feature!r} on {model!r} went "
                    f"{change.direction}: about ${before:.5f} -> ${after:.5f} (geometric mean)",
            value=after, threshold=before,
            labels={"feature": feature, "model": model, "direction": change.direction},
        )

    # -- time ---------------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        """Move the clock forward to ``t``; start a new budget day when midnight passed."""
        if t > self._now_ns:
            self._now_ns = t
        if self._now_ns >= self._day_end_ns:
            day = datetime.fromtimestamp(self._now_ns / 1e9, self._tz).date()
            start = datetime(day.year, day.month, day.day, tzinfo=self._tz)
            end = datetime.combine(day + timedelta(days=1), start.timetz())
            self._day_start_ns = int(start.timestamp() * 1e9)
            self._day_end_ns = int(end.timestamp() * 1e9)
            self._day_total = 0.0
            self._day_features.clear()
            self._day_models.clear()
            self._day_users.clear()
            self._fired_budget.clear()

    # -- periodic ---------------------------------------------------------------------------

    def _metrics(self, now: int) -> list[Metric]:
        s = self.settings
        out: list[Metric] = []

        def metric(name: str, value: float, window_s: float, **labels: str) -> None:
            out.append(Metric(name=name, value=value, time_ns=now, window_s=window_s,
                              labels=labels, unit="USD" if name.endswith("usd") else None))

        with self.lock:
            day_s = (now - self._day_start_ns) / 1e9
            metric("cost.spend_today_usd", self._day_total, day_s, feature=ALL)
            for feature, usd in self._day_features.items():
                metric("cost.spend_today_usd", usd, day_s, feature=feature)
            for model, usd in self._day_models.items():
                metric("cost.spend_today_usd", usd, day_s, model=model)
            for key in self._series.live_keys():
                usd = self._series.total(key, now, _HOUR_BUCKETS)
                if usd > 0 or key == ALL:
                    metric("cost.spend_usd", usd, 3600.0, feature=str(key))
            b = s.budgets
            if b.global_usd_per_day is not None:
                metric("cost.budget_used_ratio", self._day_total / b.global_usd_per_day, day_s,
                       scope="global", feature=ALL)
            for feature, limit in b.features_usd_per_day.items():
                metric("cost.budget_used_ratio", self._day_features.get(feature, 0.0) / limit,
                       day_s, scope="feature", feature=feature)
            unpriced, self._unpriced = self._unpriced, {}
        for user, usd in self.top_users(s.top_n):
            metric("cost.user_spend_usd", usd, 3600.0, user=user)
        for (model, provider), count in unpriced.items():
            metric("cost.unpriced_spans", float(count), s.emit_interval_s, model=model,
                   provider=provider)
        return out

    def _spikes(self, now: int) -> list[Alert]:
        sp = self.settings.spike
        out: list[Alert] = []
        with self.lock:
            keys = list(self._series.live_keys()) if sp.per_feature else [ALL]
            rows = []
            for key in keys:
                first = self._first_seen.get(str(key))
                if first is None:
                    continue
                # whole hours of history before the last hour, since the key was first seen
                hours = min(sp.baseline_hours, int((now - first) // 3_600_000_000_000) - 1)
                if hours < sp.min_baseline_hours:
                    continue
                last = self._series.total(key, now, _HOUR_BUCKETS)
                if last < sp.min_usd:
                    continue
                previous = [self._series.total(key, now, _HOUR_BUCKETS, skip=_HOUR_BUCKETS * j)
                            for j in range(1, hours + 1)]
                rows.append((str(key), last, statistics.median(previous), hours))
        for key, last, median, hours in rows:
            if last <= sp.factor * median:
                continue
            fired = self._spike_alerted.get(key)
            if fired is not None and now - fired < sp.cooldown_s * 1e9:
                continue
            self._spike_alerted[key] = now
            where = "total" if key == ALL else f"feature {key!r}"
            out.append(Alert(
                rule="cost.spike", severity=sp.severity, time_ns=now,
                message=f"{where} spend over the last hour ${last:.4f} is above "
                        f"{sp.factor:g} x the median hourly spend (${median:.4f}) of the "
                        f"previous {hours} hours",
                value=last, threshold=sp.factor * median, labels={"feature": key},
            ))
        return out


def _bump(table: dict[str, float], key: str, amount: float, cap: int) -> None:
    """Add ``amount`` to ``table[key]``; a new key beyond ``cap`` keys goes to ``_other``."""
    if key not in table and len(table) >= cap:
        key = OTHER
    table[key] = table.get(key, 0.0) + amount
