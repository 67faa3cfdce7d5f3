"""The checks monitor: output property checks with calibrated tests, per feature.

Every check (declared under ``monitors.checks.features`` or registered with
:func:`llmvigil.core.checks.register_check`) turns each output of a feature into a
pass/fail or a number. Per (feature, check) the monitor

1. learns a baseline: the first ``baseline_size`` outputs the check applies to (or
   what :meth:`CheckMonitor.set_baseline` gives it; or nothing, for a pass/fail check
   with a declared ``expected_fail_rate``);
2. collects the following outputs in consecutive, non-overlapping windows of
   ``window`` outputs (also closed after ``window_s`` seconds when set and at least
   ``min_window`` outputs are in);
3. at the next tick, tests every closed window against the baseline: a one-sided
   Fisher exact test on the failure count (an exact binomial test against a declared
   rate), or a Mann-Whitney U (or KS) test on the numbers; the p-values of all the
   windows tested at one evaluation are adjusted by Benjamini-Hochberg, and each one
   at or below ``alpha`` raises an Alert (at most one per ``cooldown_s`` per feature
   and check) carrying the p-value, the effect, n and up to ``examples`` failed
   outputs.

On stable outputs the chance that an evaluation raises any alert is at most
``alpha`` (the tests are exact or conservative, and BH keeps the family-wise rate at
alpha when nothing changed), so the mean number of evaluations between false alarms
is at least ``1 / alpha``; ``mtbfa`` sets it directly. An optional Bernoulli CUSUM
per pass/fail check watches every output and signals within a window; its threshold
is set for a mean of ``cusum.mtbfa`` outputs between false alarms.

Metrics per tested window, labelled ``feature``, ``check`` and ``test``:
``checks.<name>.n``, ``.fail_rate`` (pass/fail) or ``.mean`` and ``.median``
(numbers), ``.baseline_fail_rate`` or ``.baseline_median``, ``.effect``,
``.p_value`` and ``.p_adjusted``.

:meth:`CheckMonitor.snapshot` returns the baselines and untested windows as plain data
and :meth:`CheckMonitor.merge` adds another process's: counts add exactly, numbers stay
a uniform sample of all the outputs (:func:`.windows.merge_samples`).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..checks import (
    Check,
    Subject,
    build_check,
    registered_checks,
    registry_version,
)
from ..checks.builtins import span_selector
from ..checks.stats import (
    BernoulliCusum,
    bh_adjust,
    binom_test,
    fisher_exact,
    ks_2samp,
    mann_whitney_u,
    wilson_upper,
)
from ..errors import ConfigError
from ..model import Alert, Metric, Span
from .windows import Settings, merge_samples, parse_settings

__all__ = ["CheckMonitor", "ChecksSettings", "CusumSettings"]

_log = logging.getLogger("llmvigil.monitors.checks")
NONE = "_none"
ANY_FEATURE = "*"
SNAPSHOT_FORMAT = "llmvigil.checks.v1"
#: Settings two monitors must share for their snapshots to merge.
MERGE_SETTINGS = ("window", "baseline_size", "on")
#: What a check must agree on in both monitors for its windows to merge.
CHECK_IDENTITY = ("type", "field", "on", "expected_fail_rate")


class CusumSettings(Settings):
    """``monitors.checks.cusum``: a per-output CUSUM on every pass/fail check."""

    enabled: bool = False
    mtbfa: float = Field(default=1_000_000.0, gt=1)
    detect_rate: float | None = Field(default=None, gt=0, lt=1)
    confidence: float = Field(default=0.9, ge=0.5, lt=1)


class ChecksSettings(Settings):
    """``monitors.checks``: the checks per feature, windows, and the false-alarm target."""

    enabled: bool = True
    on: str = "root"
    baseline_size: int = Field(default=5000, ge=10)
    window: int = Field(default=1000, ge=10)
    window_s: float | None = Field(default=None, gt=0)
    min_window: int = Field(default=100, ge=1)
    alpha: float | None = Field(default=None, gt=0, lt=1)
    mtbfa: float | None = Field(default=None, gt=1)
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    value_test: Literal["mannwhitney", "ks"] = "mannwhitney"
    cooldown_s: float = Field(default=3600.0, ge=0)
    severity: str = Field(default="warning", min_length=1)
    examples: int = Field(default=5, ge=0, le=20)
    example_chars: int = Field(default=200, ge=20)
    max_features: int = Field(default=1000, ge=1)
    cusum: CusumSettings = CusumSettings()
    features: dict[str, list[dict[str, Any]]] = {}
    #: Seed of the sampling that merges value windows (:meth:`CheckMonitor.merge`).
    seed: int | None = None

    @field_validator("on")
    @classmethod
    def _on(cls, v: str) -> str:
        span_selector(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> ChecksSettings:
        if self.alpha is not None and self.mtbfa is not None:
            raise ValueError("give alpha or mtbfa, not both (mtbfa = 1 / alpha)")
        return self

    @property
    def effective_alpha(self) -> float:
        """The per-evaluation false-alarm probability: ``alpha``, ``1 / mtbfa`` or 0.001."""
        if self.alpha is not None:
            return self.alpha
        if self.mtbfa is not None:
            return 1.0 / self.mtbfa
        return 0.001


class _Window:
    __slots__ = ("end_ns", "examples", "fails", "n", "start_ns", "values")

    def __init__(self) -> None:
        self.n = 0
        self.fails = 0
        self.values: list[float] = []
        self.examples: list[tuple[float, dict[str, Any]]] = []
        self.start_ns = 0
        self.end_ns = 0


class _Track:
    """The state of one check on one feature."""

    __slots__ = ("base_fails", "base_median", "base_n", "base_values", "check", "cusum",
                 "cusum_examples", "feature", "given", "kind", "last_alert_ns", "ready",
                 "select", "window")

    def __init__(self, feature: str, check: Check, default_on: str) -> None:
        self.feature = feature
        self.check = check
        self.select = span_selector(check.on or default_on)
        self.kind: str | None = None if check.kind == "auto" else check.kind
        self.window = _Window()
        self.cusum: BernoulliCusum | None = None
        self.cusum_examples: deque[dict[str, Any]] = deque()
        self.last_alert_ns: int | None = None
        self.clear_baseline()

    def clear_baseline(self) -> None:
        self.base_n = 0
        self.base_fails = 0
        self.base_values: list[float] = []
        self.base_median = 0.0
        self.given = False  # set by CheckMonitor.set_baseline rather than learnt
        # A declared failure rate replaces the baseline: windows are tested at once.
        self.ready = self.check.expected_fail_rate is not None
        self.cusum = None

    def test(self, value_test: str) -> str:
        """The name of the test this track's windows get."""
        if self.kind == "rate":
            return "binomial" if self.check.expected_fail_rate is not None else "fisher"
        if value_test == "ks" and (self.check.alternative or "two-sided") == "two-sided":
            return "ks"
        return "mannwhitney"


class CheckMonitor:
    """Runs the declared and registered checks on outputs and tests them per window.

    Args:
        config: the ``monitors.checks`` mapping (see :class:`ChecksSettings`), a
            settings instance, or ``None`` for the defaults (no YAML checks; checks
            registered from Python still run).
        where: the config path named in error messages.

    Raises:
        ConfigError: the settings or a declared check are invalid.
    """

    def __init__(self, config: Mapping[str, Any] | ChecksSettings | None = None, *,
                 where: str = "monitors.checks") -> None:
        s = self.settings = parse_settings(ChecksSettings, config, where)
        self.alpha = s.effective_alpha
        self._declared: dict[str, list[Check]] = {}
        for feature, specs in s.features.items():
            checks: dict[str, Check] = {}
            for i, spec in enumerate(specs):
                at = f"{where}.features.{feature}[{i}]"
                check = build_check(spec, at)
                if not spec.get("enabled", True):
                    continue
                if check.name in checks:
                    raise ConfigError(f"{at}.name: {check.name!r} is declared twice "
                                      f"for feature {feature!r}")
                if (s.value_test == "ks" and check.kind == "value"
                        and check.alternative not in (None, "two-sided")):
                    raise ConfigError(f"{at}.alternative: the KS test is two-sided; "
                                      "use value_test: mannwhitney for a one-sided test")
                checks[check.name] = check
            self._declared[feature] = list(checks.values())
        self._lock = threading.Lock()
        self._features: OrderedDict[str, list[_Track]] = OrderedDict()
        self._registry_seen = -1
        self._registered: dict[str, list[Check]] = {}
        self._pending: list[tuple[_Track, _Window]] = []
        self._baselines_done: list[_Track] = []
        self._errors_logged: set[tuple[str, str]] = set()
        self._rng = np.random.default_rng(s.seed)
        self.counts = {
            "spans": 0, "results": 0, "not_applicable": 0, "errors": 0,
            "windows_tested": 0, "alerts": 0, "alerts_suppressed": 0, "cusum_alerts": 0,
            "features_evicted": 0,
        }

    # -- which checks run on a feature ---------------------------------------------------

    def _checks_of(self, feature: str) -> list[Check]:
        merged: dict[str, Check] = {}
        for source in (self._declared, self._registered):
            for key in (ANY_FEATURE, feature):
                for check in source.get(key, ()):
                    merged[check.name] = check
        return list(merged.values())

    def _refresh_registry(self) -> None:
        version = registry_version()
        if version == self._registry_seen:
            return
        self._registry_seen = version
        self._registered = registered_checks()
        for feature, tracks in self._features.items():
            by_check = {id(t.check): t for t in tracks}
            self._features[feature] = [
                by_check.get(id(c)) or _Track(feature, c, self.settings.on)
                for c in self._checks_of(feature)
            ]

    def _tracks(self, feature: str) -> list[_Track]:
        tracks = self._features.get(feature)
        if tracks is not None:
            self._features.move_to_end(feature)
            return tracks
        tracks = [_Track(feature, c, self.settings.on) for c in self._checks_of(feature)]
        self._features[feature] = tracks
        if len(self._features) > self.settings.max_features:
            self._features.popitem(last=False)
            self.counts["features_evicted"] += 1
        return tracks

    # -- observe ---------------------------------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span,)

    def observe(self, record: Any) -> Iterable[Any]:
        """Run the feature's checks on a span's output; CUSUM alerts come back at once.

        Spans that failed (``status == "error"``) have no output to check and are skipped.
        """
        if not isinstance(record, Span) or record.status == "error":
            return ()
        with self._lock:
            if registry_version() != self._registry_seen:
                self._refresh_registry()
            feature = record.feature or NONE
            tracks = self._features.get(feature)  # self._tracks(feature), inline
            if tracks is not None:
                self._features.move_to_end(feature)
            else:
                tracks = self._tracks(feature)
            if not tracks:
                return ()
            self.counts["spans"] += 1
            subject: Subject | None = None
            out: list[Any] = []
            for track in tracks:
                if not track.select(record):
                    continue
                if subject is None:
                    subject = Subject.of_span(record)
                alert = self._run(track, subject, record)
                if alert is not None:
                    out.append(alert)
            return out

    def _run(self, track: _Track, subject: Subject, span: Span | None) -> Alert | None:
        try:
            result = track.check.evaluate(subject)
        except Exception as exc:
            self._error(track, exc)
            return None
        return self._add(track, result, subject, span)

    def _error(self, track: _Track, exc: BaseException) -> None:
        self.counts["errors"] += 1
        key = (track.feature, track.check.name)
        if key not in self._errors_logged and len(self._errors_logged) < 1000:
            self._errors_logged.add(key)
            _log.warning("check %r on feature %r raised %s: %s (further errors of this "
                         "check are only counted)", track.check.name, track.feature,
                         type(exc).__name__, exc)

    def _coerce(self, track: _Track, result: Any) -> bool | float | None:
        if result is None:
            return None
        if track.kind is None:
            track.kind = "rate" if isinstance(result, bool) else "value"
        if track.kind == "rate":
            if not isinstance(result, bool):
                raise TypeError(f"a pass/fail check returned {type(result).__name__}")
            return result
        value = float(result)
        return value if math.isfinite(value) else None

    def _add(self, track: _Track, result: Any, subject: Subject,
             span: Span | None) -> Alert | None:
        try:
            value = self._coerce(track, result)
        except (TypeError, ValueError) as exc:
            self._error(track, exc)
            return None
        if value is None:
            self.counts["not_applicable"] += 1
            return None
        self.counts["results"] += 1
        t = (span.end_ns or span.start_ns) if span is not None else 0
        if not track.ready:
            self._learn(track, value)
            return None
        if track.window.n >= self.settings.window:  # filled by merges
            self._close(track)
        win = track.window
        if win.n == 0:
            win.start_ns = t
        win.end_ns = max(win.end_ns, t)
        win.n += 1
        alert = None
        if track.kind == "rate":
            failed = value is False
            if failed:
                win.fails += 1
                if len(win.examples) < self.settings.examples:
                    win.examples.append((0.0, self._example(subject, track, span)))
            alert = self._cusum(track, failed, subject, span)
        else:
            win.values.append(float(value))
            self._keep_extreme(win, track, float(value), subject, span)
        if win.n >= self.settings.window:
            self._close(track)
        return alert

    def _learn(self, track: _Track, value: bool | float) -> None:
        if track.kind == "rate":
            track.base_n += 1
            track.base_fails += value is False
        else:
            track.base_values.append(float(value))
            track.base_n += 1
        if track.base_n >= self.settings.baseline_size:
            self._baseline_ready(track)

    def _baseline_ready(self, track: _Track) -> None:
        track.ready = True
        if track.kind == "value" and track.base_values:
            track.base_median = statistics.median(track.base_values)
        self._design_cusum(track)
        if track not in self._baselines_done:
            self._baselines_done.append(track)

    def _design_cusum(self, track: _Track) -> None:
        track.cusum = None
        c = self.settings.cusum
        if not c.enabled or track.kind != "rate":
            return
        declared = track.check.expected_fail_rate
        if declared is not None:
            p0 = declared
        elif track.base_n > 0:
            z = statistics.NormalDist().inv_cdf(c.confidence)
            p0 = wilson_upper(track.base_fails, track.base_n, z)
        else:
            return
        if p0 <= 0.0 or p0 >= 0.5:
            return  # nothing to chart against (a declared rate of 0 alerts on any failure)
        p1 = c.detect_rate if c.detect_rate is not None and c.detect_rate > p0 else min(
            0.99, max(2 * p0, p0 + 0.005))
        try:
            track.cusum = BernoulliCusum(p0, p1, c.mtbfa)
        except ValueError as exc:
            _log.warning("no CUSUM for check %r on %r: %s", track.check.name, track.feature, exc)

    def _example(self, subject: Subject, track: _Track, span: Span | None) -> dict[str, Any]:
        value = subject.select(track.check.path) if track.check.path else subject.output
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = repr(value)
        limit = self.settings.example_chars
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return {"trace_id": span.trace_id if span else None,
                "span_id": span.id if span else None, "output": text}

    def _keep_extreme(self, win: _Window, track: _Track, value: float, subject: Subject,
                      span: Span | None) -> None:
        """Keep the outputs whose numbers lie furthest from the baseline median."""
        k = self.settings.examples
        if k == 0:
            return
        distance = abs(value - track.base_median)
        ex = win.examples
        if len(ex) >= k and distance <= ex[-1][0]:
            return
        item = self._example(subject, track, span)
        item["value"] = value
        ex.append((distance, item))
        ex.sort(key=lambda e: -e[0])
        del ex[k:]

    def _close(self, track: _Track) -> None:
        self._pending.append((track, track.window))
        track.window = _Window()

    # -- CUSUM ------------------------------------------------------------------------------

    def _cusum(self, track: _Track, failed: bool, subject: Subject,
               span: Span | None) -> Alert | None:
        chart = track.cusum
        if chart is None:
            return None
        if failed and self.settings.examples:
            track.cusum_examples.append(self._example(subject, track, span))
            while len(track.cusum_examples) > self.settings.examples:
                track.cusum_examples.popleft()
        n, fails = chart.n + 1, chart.failures + int(failed)
        if not chart.update(failed):
            if chart.s == 0:
                track.cusum_examples.clear()
            return None
        examples = list(track.cusum_examples)
        track.cusum_examples.clear()
        now = (span.end_ns or span.start_ns) if span is not None else 0
        if not self._cooldown_over(track, now):
            return None
        self.counts["cusum_alerts"] += 1
        base_rate = (track.check.expected_fail_rate if track.check.expected_fail_rate
                     is not None else track.base_fails / max(1, track.base_n))
        if track.check.expected_fail_rate is not None:
            p = binom_test(fails, n, track.check.expected_fail_rate, "greater")
        else:
            p = fisher_exact([[fails, n - fails],
                              [track.base_fails, track.base_n - track.base_fails]], "greater")
        rate = fails / n
        message = (
            f"check {track.check.name!r} on feature {track.feature!r}: the CUSUM on "
            f"failures signalled ({fails} failed of the last {n} outputs, {rate:.2%}, vs "
            f"{base_rate:.2%} in the baseline; design: mean {chart.arl0:,.0f} outputs "
            f"between false alarms at {chart.p0:.3%}, tuned to detect {chart.p1:.3%})"
            + _examples_text(examples, True))
        return Alert(
            rule=f"checks.{track.check.name}", severity=self.settings.severity,
            time_ns=now, message=message, value=rate, threshold=base_rate,
            labels={
                "feature": track.feature, "check": track.check.name, "test": "cusum",
                "p_value": f"{p:.3g}", "effect": f"{rate - base_rate:.4g}", "n": str(n),
                "n_baseline": str(track.base_n), "examples": json.dumps(examples),
            })

    def _cooldown_over(self, track: _Track, now_ns: int) -> bool:
        last = track.last_alert_ns
        if last is not None and now_ns - last < self.settings.cooldown_s * 1e9:
            self.counts["alerts_suppressed"] += 1
            return False
        track.last_alert_ns = now_ns
        self.counts["alerts"] += 1
        return True

    # -- tick ---------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Test every window closed since the last tick; emit metrics and alerts."""
        with self._lock:
            s = self.settings
            if s.window_s is not None:
                limit = int(s.window_s * 1e9)
                least = min(s.min_window, s.window)
                for tracks in self._features.values():
                    for track in tracks:
                        w = track.window
                        if w.n >= least and now_ns - w.start_ns >= limit:
                            self._close(track)
            for tracks in self._features.values():
                for track in tracks:
                    if track.window.n >= s.window:  # filled by merges
                        self._close(track)
            out: list[Any] = []
            for track in self._baselines_done:
                out.extend(self._baseline_metrics(track, now_ns))
            self._baselines_done = []
            pending, self._pending = self._pending, []
            tested: list[tuple[_Track, _Window, dict[str, Any]]] = []
            for track, win in pending:
                result = self._test(track, win)
                if result is not None:
                    tested.append((track, win, result))
            if not tested:
                return out
            self.counts["windows_tested"] += len(tested)
            adjusted = self._adjust([r["p_value"] for _t, _w, r in tested])
            for (track, win, result), p_adj in zip(tested, adjusted, strict=True):
                result["p_adjusted"] = p_adj
                out.extend(self._window_metrics(track, win, result, now_ns))
                if p_adj <= self.alpha and self._cooldown_over(track, now_ns):
                    out.append(self._alert(track, win, result, now_ns))
            return out

    def _adjust(self, p_values: Sequence[float]) -> list[float]:
        if self.settings.correction == "bh":
            return bh_adjust(p_values)
        if self.settings.correction == "bonferroni":
            return [min(1.0, p * len(p_values)) for p in p_values]
        return list(p_values)

    def _test(self, track: _Track, win: _Window) -> dict[str, Any] | None:
        check = track.check
        if win.n == 0:
            return None
        if track.kind == "rate":
            alternative = check.alternative or "greater"
            rate = win.fails / win.n
            if check.expected_fail_rate is not None:
                base = check.expected_fail_rate
                p = binom_test(win.fails, win.n, base, alternative)
                test = "binomial"
            else:
                if track.base_n == 0:
                    return None
                base = track.base_fails / track.base_n
                p = fisher_exact([[win.fails, win.n - win.fails],
                                  [track.base_fails, track.base_n - track.base_fails]],
                                 alternative)
                test = "fisher"
            return {"test": test, "p_value": p, "observed": rate, "baseline": base,
                    "effect": rate - base}
        if not track.base_values:
            return None
        test = track.test(self.settings.value_test)
        if test == "ks":
            _d, p = ks_2samp(win.values, track.base_values)
        else:
            _u, p = mann_whitney_u(win.values, track.base_values,
                                   check.alternative or "two-sided")
        median = statistics.median(win.values)
        return {"test": test, "p_value": p, "observed": median,
                "baseline": track.base_median, "effect": median - track.base_median,
                "mean": statistics.fmean(win.values)}

    def _metric(self, track: _Track, suffix: str, value: float, now_ns: int, test: str,
                window_s: float = 0.0, unit: str | None = None) -> Metric:
        return Metric(name=f"checks.{track.check.name}.{suffix}", value=float(value),
                      time_ns=now_ns, window_s=window_s, unit=unit,
                      labels={"feature": track.feature, "check": track.check.name,
                              "test": test})

    def _baseline_metrics(self, track: _Track, now_ns: int) -> list[Metric]:
        test = track.test(self.settings.value_test)
        out = [self._metric(track, "baseline_n", track.base_n, now_ns, test, unit="1")]
        if track.kind == "rate":
            out.append(self._metric(track, "baseline_fail_rate",
                                    track.base_fails / max(1, track.base_n), now_ns, test,
                                    unit="ratio"))
        else:
            out.append(self._metric(track, "baseline_median", track.base_median, now_ns,
                                    test))
        return out

    def _window_metrics(self, track: _Track, win: _Window, r: dict[str, Any],
                        now_ns: int) -> list[Metric]:
        span_s = max(0, win.end_ns - win.start_ns) / 1e9
        test = r["test"]

        def m(suffix: str, value: float, unit: str | None = None) -> Metric:
            return self._metric(track, suffix, value, now_ns, test, span_s, unit)

        out = [m("n", win.n, "1")]
        if track.kind == "rate":
            out += [m("fail_rate", r["observed"], "ratio"),
                    m("baseline_fail_rate", r["baseline"], "ratio")]
        else:
            out += [m("mean", r["mean"]), m("median", r["observed"]),
                    m("baseline_median", r["baseline"])]
        out += [m("effect", r["effect"]), m("p_value", r["p_value"]),
                m("p_adjusted", r["p_adjusted"])]
        return out

    def _alert(self, track: _Track, win: _Window, r: dict[str, Any], now_ns: int) -> Alert:
        name, feature = track.check.name, track.feature
        examples = [item for _d, item in win.examples]
        n_base = track.base_n if track.check.expected_fail_rate is None else 0
        if track.kind == "rate":
            what = (f"fail rate {r['observed']:.2%} in {win.n} outputs vs "
                    + (f"{r['baseline']:.2%} in the baseline (n={n_base})" if n_base
                       else f"the declared {r['baseline']:.2%}"))
        else:
            what = (f"median {r['observed']:.4g} in {win.n} outputs vs {r['baseline']:.4g} "
                    f"in the baseline (n={n_base}), shift {r['effect']:+.4g}")
        message = (f"check {name!r} on feature {feature!r}: {what}; {r['test']} "
                   f"p={r['p_value']:.2g} (adjusted {r['p_adjusted']:.2g}) <= "
                   f"alpha={self.alpha:g}"
                   + _examples_text(examples, track.kind == "rate"))
        return Alert(
            rule=f"checks.{name}", severity=self.settings.severity, time_ns=now_ns,
            message=message, value=float(r["observed"]), threshold=float(r["baseline"]),
            labels={
                "feature": feature, "check": name, "test": r["test"],
                "p_value": f"{r['p_value']:.3g}", "p_adjusted": f"{r['p_adjusted']:.3g}",
                "effect": f"{r['effect']:.4g}", "n": str(win.n), "n_baseline": str(n_base),
                "examples": json.dumps(examples, ensure_ascii=False),
            })

    # -- baselines ------------------------------------------------------------------------------

    def set_baseline(self, feature: str, outputs: Iterable[Any], *,
                     inputs: Iterable[Any] | None = None) -> dict[str, int]:
        """Make ``outputs`` (with their ``inputs``, for grounded checks) the baseline.

        Every check of ``feature`` runs on each output; its results replace the
        check's baseline (checks with a declared ``expected_fail_rate`` keep it).
        Windows are tested against it from then on. Returns the number of outputs
        each check counted.
        """
        outs = list(outputs)
        ins = list(inputs) if inputs is not None else [None] * len(outs)
        if len(ins) != len(outs):
            raise ValueError("inputs and outputs must have the same length")
        counts: dict[str, int] = {}
        with self._lock:
            self._refresh_registry()
            for track in self._tracks(feature):
                if track.check.expected_fail_rate is not None:
                    continue
                track.clear_baseline()
                for output, inp in zip(outs, ins, strict=True):
                    subject = Subject(output, inp)
                    try:
                        value = self._coerce(track, track.check.evaluate(subject))
                    except Exception as exc:
                        self._error(track, exc)
                        continue
                    if value is None:
                        continue
                    track.base_n += 1
                    if track.kind == "rate":
                        track.base_fails += value is False
                    else:
                        track.base_values.append(float(value))
                if track.base_n:  # else the baseline is learnt from the stream
                    track.given = True
                    self._baseline_ready(track)
                counts[track.check.name] = track.base_n
        return counts

    def reset_baseline(self, feature: str | None = None) -> None:
        """Forget the baselines (of one feature, or all): they are learnt again."""
        with self._lock:
            for key, tracks in self._features.items():
                if feature is None or key == feature:
                    for track in tracks:
                        track.clear_baseline()
                        track.window = _Window()
            self._pending = [(t, w) for t, w in self._pending
                             if feature is not None and t.feature != feature]

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Each check's baseline and untested windows, and the counters, as plain
        (JSON-serialisable) data."""
        s = self.settings
        with self._lock:
            closed: dict[int, list[_Window]] = {}
            tracks = [t for ts in self._features.values() for t in ts]
            for track, win in self._pending:
                if id(track) not in closed and track not in tracks:
                    tracks.append(track)  # its feature was evicted; its windows still count
                closed.setdefault(id(track), []).append(win)
            entries = [_track_snapshot(t, [*closed.get(id(t), []), t.window]) for t in tracks]
            counts = dict(self.counts)
        return {"format": SNAPSHOT_FORMAT, **{name: getattr(s, name) for name in MERGE_SETTINGS},
                "counts": counts, "tracks": entries}

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another monitor's :meth:`snapshot` (e.g. from another process) into this one.

        Per feature and check, counts add exactly: the snapshot's untested windows join
        this monitor's open window, which the next :meth:`tick` closes and tests once it
        holds ``window`` outputs, and learnt baselines add up. Numbers are kept as a
        uniform sample of at most ``window`` (``baseline_size``) values of all the
        outputs, each process weighted by how many it saw. A baseline given by
        :meth:`set_baseline` wins over learnt ones; of two given baselines this monitor
        keeps its own. CUSUM charts and cooldowns stay per process. Merge each snapshot
        once.

        Raises:
            ValueError: the snapshot was taken with another format, window,
                baseline_size or ``on``, or holds a check this monitor does not have or
                declares otherwise (type, field, on, expected_fail_rate, kind); nothing
                is merged then.
        """
        if other.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a checks snapshot ({other.get('format')!r})")
        s = self.settings
        differ = [f"{name} ({other.get(name)!r} != {getattr(s, name)!r})"
                  for name in MERGE_SETTINGS if other.get(name) != getattr(s, name)]
        if differ:
            raise ValueError(f"snapshot taken with another {', '.join(differ)}; its "
                             "windows cannot be merged")
        with self._lock:
            self._refresh_registry()
            plan = [(self._merge_target(raw), raw) for raw in other["tracks"]]
            for track, raw in plan:
                self._merge_track(track, raw)
            for name, value in (other.get("counts") or {}).items():
                if name in self.counts and isinstance(value, int):
                    self.counts[name] += value

    def _merge_target(self, raw: Mapping[str, Any]) -> _Track:
        """This monitor's track for a snapshot entry, once the entry is known to fit it."""
        feature, name = str(raw["feature"]), str(raw["check"])
        where = f"check {name!r} on feature {feature!r}"
        track = next((t for t in self._tracks(feature) if t.check.name == name), None)
        if track is None:
            raise ValueError(f"{where} is not configured in this monitor; its windows "
                             "cannot be merged")
        differ = [f"{key} ({raw.get(key)!r} != {getattr(track.check, key)!r})"
                  for key in CHECK_IDENTITY if raw.get(key) != getattr(track.check, key)]
        if raw.get("kind") and track.kind and raw["kind"] != track.kind:
            differ.append(f"kind ({raw['kind']!r} != {track.kind!r})")
        if differ:
            raise ValueError(f"{where} is declared with another {', '.join(differ)}; its "
                             "windows cannot be merged")
        s = self.settings
        numbers = (raw.get("kind") or track.kind) == "value"
        base = raw["baseline"]
        _check_sample(base["n"], base["values"], numbers,
                      math.inf if base["given"] else s.baseline_size, f"{where} baseline")
        for win in raw["windows"]:
            _check_sample(win["n"], win["values"], numbers, s.window, f"{where} window")
        return track

    def _merge_track(self, track: _Track, raw: Mapping[str, Any]) -> None:
        if track.kind is None and raw.get("kind"):
            track.kind = str(raw["kind"])
        self._merge_baseline(track, raw["baseline"])
        windows = [_window_from(w) for w in raw["windows"] if w["n"]]
        if windows:
            self._merge_windows(track, windows)

    def _merge_baseline(self, track: _Track, base: Mapping[str, Any]) -> None:
        n = int(base["n"])
        if track.check.expected_fail_rate is not None or n == 0 or track.given:
            return  # a declared rate, nothing learnt, or a given baseline kept
        values = [float(v) for v in base["values"]]
        if base["given"]:  # replaces a learnt baseline, whole
            track.clear_baseline()
            track.given = True
            track.base_n, track.base_fails, track.base_values = n, int(base["fails"]), values
        elif track.kind == "value":
            track.base_n, track.base_values = merge_samples(
                [(track.base_n, track.base_values), (n, values)], self.settings.baseline_size,
                self._rng)
        else:
            track.base_n += n
            track.base_fails += int(base["fails"])
        if track.ready or base["ready"] or track.base_n >= self.settings.baseline_size:
            self._baseline_ready(track)

    def _merge_windows(self, track: _Track, windows: list[_Window]) -> None:
        s = self.settings
        win = track.window
        every = [win, *windows] if win.n else windows
        merged = _Window()
        if track.kind == "value":
            merged.n, merged.values = merge_samples([(w.n, w.values) for w in every],
                                                    s.window, self._rng)
        else:
            merged.n = sum(w.n for w in every)
        merged.fails = sum(w.fails for w in every)
        merged.start_ns = min(w.start_ns for w in every)
        merged.end_ns = max(w.end_ns for w in every)
        examples = [e for w in every for e in w.examples]
        if track.kind == "value":
            examples = sorted(((abs(item["value"] - track.base_median), item)
                               for _d, item in examples), key=lambda e: -e[0])
        merged.examples = examples[:s.examples]
        track.window = merged

    # -- status ---------------------------------------------------------------------------------

    def state(self, feature: str) -> dict[str, dict[str, Any]]:
        """Each check's baseline and current window on ``feature`` (for status pages)."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for track in self._features.get(feature, ()):
                info: dict[str, Any] = {
                    "type": track.check.type, "kind": track.kind, "ready": track.ready,
                    "baseline_n": track.base_n, "window_n": track.window.n,
                }
                if track.kind == "rate":
                    info["baseline_fail_rate"] = (
                        track.check.expected_fail_rate
                        if track.check.expected_fail_rate is not None
                        else track.base_fails / track.base_n if track.base_n else None)
                    info["window_fails"] = track.window.fails
                    if track.cusum is not None:
                        info["cusum"] = {"s": track.cusum.s, "h": track.cusum.h,
                                         "p0": track.cusum.p0, "p1": track.cusum.p1,
                                         "arl0": track.cusum.arl0}
                elif track.kind == "value":
                    info["baseline_median"] = track.base_median
                out[track.check.name] = info
            return out

    def stats(self) -> dict[str, Any]:
        """Counters: spans checked, results, not applicable, errors, windows, alerts."""
        with self._lock:
            return {**self.counts, "features": len(self._features),
                    "pending_windows": len(self._pending)}


def _examples_text(examples: Sequence[Mapping[str, Any]], failed: bool) -> str:
    if not examples:
        return ""
    lines = [f"\n  {i}. {json.dumps(e['output'], ensure_ascii=False)}"
             for i, e in enumerate(examples, 1)]
    head = "failed outputs" if failed else "outputs furthest from the baseline median"
    return f"\n{head}:" + "".join(lines)


def _track_snapshot(track: _Track, windows: Sequence[_Window]) -> dict[str, Any]:
    check = track.check
    return {
        "feature": track.feature, "check": check.name, "kind": track.kind,
        **{key: getattr(check, key) for key in CHECK_IDENTITY},
        "baseline": {"n": track.base_n, "fails": track.base_fails,
                     "values": list(track.base_values), "given": track.given,
                     "ready": track.ready},
        "windows": [{"n": w.n, "fails": w.fails, "values": list(w.values),
                     "start_ns": w.start_ns, "end_ns": w.end_ns,
                     "examples": [[d, dict(item)] for d, item in w.examples]}
                    for w in windows if w.n],
    }


def _window_from(raw: Mapping[str, Any]) -> _Window:
    win = _Window()
    win.n, win.fails = int(raw["n"]), int(raw["fails"])
    win.values = [float(v) for v in raw["values"]]
    win.start_ns, win.end_ns = int(raw["start_ns"]), int(raw["end_ns"])
    win.examples = [(float(d), dict(item)) for d, item in raw["examples"]]
    return win


def _check_sample(n: Any, values: Sequence[Any], numbers: bool, size: float,
                  what: str) -> None:
    """A count and its numbers must form a sample :func:`merge_samples` accepts (pass/fail
    checks keep no numbers)."""
    least, most = (min(n, size), n) if numbers and isinstance(n, int) else (0, 0)
    if not isinstance(n, int) or n < 0 or not least <= len(values) <= most:
        raise ValueError(f"{what}: {len(values)} numbers cannot stand for {n} outputs")
