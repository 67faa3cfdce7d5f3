"""What fired, when, and how long after the failure it was caused by: measured, not scripted.

:func:`build_timeline` reads the records an in-process memory backend received during
the run (alerts, metrics, spans) and the play log (when each request was issued, what
the model really did), maps each alert's time to the index of the last request
issued by then, and computes for each monitoring layer whether it fired, its first
alert's request index and its delay in requests after the failure it answers (the
silent model update, or the start of the cost spike), plus its false alarms (alerts
before that failure). :meth:`Timeline.print` shows it with rich;
:func:`render_html` makes a self-contained page with small charts.
"""

from __future__ import annotations

import bisect
import html
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from ..model import Alert, Metric, Span
from .scenario import PlayLog, Script

__all__ = [
    "LAYERS",
    "Detection",
    "Entry",
    "Layer",
    "Timeline",
    "build_timeline",
    "render_html",
]


@dataclass(frozen=True)
class Layer:
    """A monitoring layer: the alert rules it publishes and the failure it answers."""

    key: str
    name: str
    rules: tuple[str, ...]
    reference: Literal["update", "cost_spike", "unsafe"]
    #: The ``feature`` labels an alert may carry to answer the reference (``None``:
    #: any); an alert about another feature is a false alarm whenever it fires.
    features: frozenset[str] | None = None


LAYERS: tuple[Layer, ...] = (
    Layer("cost", "cost: per-user spend", ("cost.*",), "cost_spike"),
    Layer("canary", "canary: known answers", ("canary_change",), "update"),
    Layer("date_valid", "check: valid_date", ("checks.date_valid",), "update"),
    Layer("grounding", "check: grounded_dates", ("checks.dates_in_source",), "update"),
    Layer("drift", "embedding drift", ("drift.*",), "update",
          frozenset(("extract_dates", "summarise"))),
    Layer("feedback", "user feedback", ("feedback.*",), "update",
          frozenset(("extract_dates", "summarise", "_all"))),
    Layer("fingerprint", "provider model id", ("fingerprint.*",), "update"),
    Layer("latency", "latency / errors", ("latency.*",), "update"),
    Layer("safety", "safety check", (), "unsafe"),
)
_OTHER = Layer("other", "other", ("*",), "update")
#: The feature whose outputs the update corrupts (summaries carry dates too; the
#: labels of classify carry none).
FEATURE = "extract_dates"


@dataclass
class Entry:
    """One line of the timeline."""

    request: int
    t_s: float
    layer: str
    kind: Literal["event", "alert", "metric"]
    what: str
    detail: str = ""
    repeats: int = 0


@dataclass
class Detection:
    """One row of the detection table."""

    layer: str
    name: str
    reference: str
    fired: bool
    first_request: int | None = None
    delay_requests: int | None = None
    delay_s: float | None = None
    false_alarms: int = 0
    alerts: int = 0
    detail: str = ""
    #: The first alert after the reference, as published (rule, value, threshold,
    #: labels, message).
    evidence: dict[str, Any] | None = None


@dataclass
class Timeline:
    """Everything measured in one run."""

    scenario: dict[str, Any]
    entries: list[Entry]
    detections: list[Detection]
    ground_truth: dict[str, Any]
    infra: dict[str, dict[str, float | None]]
    series: dict[str, list[tuple[int, float]]]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def detection(self, layer: str) -> Detection:
        """The row of ``layer``."""
        return next(d for d in self.detections if d.layer == layer)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``vigil demo --json``)."""
        return {
            "scenario": self.scenario,
            "timeline": [asdict(e) for e in self.entries],
            "detection": [asdict(d) for d in self.detections],
            "ground_truth": self.ground_truth,
            "infra": self.infra,
            "series": {k: [list(p) for p in v] for k, v in self.series.items()},
            "records": self.counts,
            "notes": self.notes,
        }

    def print(self, console: Any) -> None:
        """The timeline, the detection table and the before/after figures, with rich."""
        from rich import box
        from rich.table import Table

        sc = self.scenario
        console.print(
            f"[bold]{sc['requests']:,} requests[/] from {sc['users']} users, seed "
            f"{sc['seed']}; silent model update at request [bold]{sc['update_at']:,}[/]; "
            f"cost spike from request {sc['verbose_from']:,} ({sc['verbose_user']})",
            highlight=False)
        table = Table(title="Timeline", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("request", justify="right", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("layer", no_wrap=True)
        table.add_column("what", ratio=1)
        table.add_column("values", ratio=1)
        styles = {"event": "bold yellow", "alert": "bold red", "metric": "dim"}
        for e in self.entries:
            what = e.what + (f" (+{e.repeats} more)" if e.repeats else "")
            table.add_row(f"{e.request:,}", f"{e.t_s:6.1f}s", e.layer,
                          f"[{styles[e.kind]}]{html.escape(what, quote=False)}[/]", e.detail)
        console.print(table)
        det = Table(title="Detection (measured in this run)", box=box.SIMPLE_HEAD,
                    title_justify="left")
        det.add_column("layer", ratio=2)
        for name in ("fired?", "first alert\nat request", "delay\n(requests)", "delay\n(s)",
                     "false\nalarms"):
            det.add_column(name, justify="right", no_wrap=True)
        det.add_column("detail", ratio=3)
        for d in self.detections:
            det.add_row(
                d.name, "[green]yes[/]" if d.fired else "[dim]no[/]",
                _show(d.first_request), _show(d.delay_requests),
                "-" if d.delay_s is None else f"{d.delay_s:.1f}",
                f"[red]{d.false_alarms}[/]" if d.false_alarms else "0", d.detail)
        console.print(det)
        if self.infra:
            infra = Table(title=f"Infrastructure metrics of {FEATURE}, before and after "
                                "the update", box=box.SIMPLE_HEAD, title_justify="left")
            infra.add_column("metric")
            infra.add_column("before", justify="right")
            infra.add_column("after", justify="right")
            for name, values in self.infra.items():
                infra.add_row(name, _num(values.get("before")), _num(values.get("after")))
            console.print(infra)
        gt = self.ground_truth
        console.print(
            f"Ground truth: after the update {gt['transposed_after']} of "
            f"{gt['extract_after']} {FEATURE} outputs had transposed dates "
            f"({gt['transposed_share_after']:.1%}); {gt['impossible_after']} of them "
            f"impossible dates (month > 12).", highlight=False)
        for note in self.notes:
            console.print(f"[dim]{note}[/]", highlight=False)


def _show(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


# -- building --------------------------------------------------------------------------------


def _layer_of(rule: str) -> Layer:
    for layer in LAYERS:
        if any(fnmatchcase(rule, pattern) for pattern in layer.rules):
            return layer
    return _OTHER


class _Clock:
    """Maps wall-clock times of the run to request indices and seconds."""

    def __init__(self, log: PlayLog) -> None:
        self.issued = log.issued()
        self.start = log.started_ns

    def request(self, t_ns: int) -> int:
        """Index of the last request issued at or before ``t_ns``."""
        return max(0, bisect.bisect_right(self.issued, t_ns) - 1)

    def seconds(self, t_ns: int) -> float:
        """Seconds since the run started."""
        return (t_ns - self.start) / 1e9


def _alert_detail(alert: Alert) -> str:
    labels = alert.labels
    rule = alert.rule
    if rule.startswith("checks."):
        test = labels.get("test", "")
        return (f"{test} p={labels.get('p_value', '?')}; fail rate {alert.value or 0:.1%} "
                f"vs {alert.threshold or 0:.1%} baseline (n={labels.get('n', '?')})")
    if rule == "canary_change":
        return alert.message.split("changed since the last run: ", 1)[-1]
    if rule == "cost.user_hourly_limit":
        return (f"{labels.get('user')} spent ${alert.value or 0:.2f} in the last hour "
                f"(limit ${alert.threshold or 0:.2f})")
    if rule == "feedback.satisfaction_drop":
        p = alert.message.split("Fisher p=", 1)[-1].split(" ", 1)[0]
        return (f"{labels.get('feature')}: satisfaction {alert.value or 0:.0%} vs "
                f"{alert.threshold or 0:.0%} baseline, p={p}")
    if rule == "drift.detected":
        return f"{labels.get('feature')}: p={alert.value:.3g}"
    text = alert.message.split("\n", 1)[0]
    return text if len(text) <= 90 else text[:87] + "..."


def _series_key(alert: Alert) -> tuple[str, ...]:
    if alert.rule == "canary_change":
        return (alert.rule,)
    return (alert.rule, alert.labels.get("feature", ""), alert.labels.get("user", ""))


def _metrics(records: dict[str, list[Metric]], name: str, **labels: str) -> list[Metric]:
    return sorted((m for m in records.get(name, ())
                   if all(m.labels.get(k) == v for k, v in labels.items())),
                  key=lambda m: m.time_ns)


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _infra(spans: Sequence[Span], index_of: dict[str, int], update_at: int
           ) -> dict[str, dict[str, float | None]]:
    """Latency, TTFT, cost per call and error rate of the corrupted feature, before/after."""
    groups: dict[str, dict[str, list[float]]] = {
        "before": {"total": [], "ttft": [], "cost": [], "errors": []},
        "after": {"total": [], "ttft": [], "cost": [], "errors": []},
    }
    for s in spans:
        index = index_of.get(s.trace_id)
        if index is None or s.feature != FEATURE:
            continue
        g = groups["before" if index < update_at else "after"]
        if s.parent_id is None:
            g["total"].append(s.duration_s)
            g["errors"].append(1.0 if s.status == "error" else 0.0)
        elif s.kind == "llm":
            if s.ttft_s is not None:
                g["ttft"].append(s.ttft_s)
            if s.cost_usd is not None:
                g["cost"].append(s.cost_usd)
    out: dict[str, dict[str, float | None]] = {}
    rows = (("latency p50 (s)", "total", 0.5), ("latency p95 (s)", "total", 0.95),
            ("TTFT p50 (s)", "ttft", 0.5), ("TTFT p95 (s)", "ttft", 0.95))
    for name, key, q in rows:
        out[name] = {side: _quantile(groups[side][key], q) for side in groups}
    out["cost per call (USD)"] = {
        side: statistics.fmean(groups[side]["cost"]) if groups[side]["cost"] else None
        for side in groups}
    out["error rate"] = {
        side: statistics.fmean(groups[side]["errors"]) if groups[side]["errors"] else None
        for side in groups}
    out["requests"] = {side: float(len(groups[side]["total"])) for side in groups}
    return out


def build_timeline(script: Script, log: PlayLog, backend: Any, *,
                   canary_runs: Sequence[Any] = (),
                   user_limit_usd: float | None = None) -> Timeline:
    """Measure the run from what ``backend`` (a memory backend) received.

    Args:
        script: the drawn scenario (where the update and the cost spike were).
        log: when each request was issued and what the model did.
        backend: holds ``alerts``, ``metrics``, ``spans``, ``scores``... lists.
        canary_runs: the canary runs (for the note on how often they ran).
        user_limit_usd: the per-user hourly limit in force (for the notes).
    """
    with backend.lock:
        alerts = sorted(backend.alerts, key=lambda a: a.time_ns)
        metrics: dict[str, list[Metric]] = {}
        for m in backend.metrics:
            metrics.setdefault(m.name, []).append(m)
        spans = list(backend.spans)
        counts = {"spans": len(backend.spans), "scores": len(backend.scores),
                  "session_events": len(backend.session_events),
                  "metrics": len(backend.metrics), "alerts": len(backend.alerts),
                  "safety_verdicts": len(backend.safety_verdicts)}
    clock = _Clock(log)
    update_at, update_ns = script.update_at, log.update_ns
    spike_at = script.verbose_from
    spike_ns = log.requests[spike_at].issued_ns
    requests = log.requests

    entries: list[Entry] = [
        Entry(spike_at, clock.seconds(spike_ns), "cost", "event",
              f"cost spike begins: {script.verbose_user} pastes a whole archive into "
              "verbose summarise prompts"),
        Entry(update_at, clock.seconds(update_ns), "model", "event",
              "silent model update: the new release transposes DD/MM dates in "
              f"{script.scenario.transpose_rate:.0%} of outputs; same model name"
              + ("" if script.scenario.fingerprint_leak else " and same reported id")),
    ]
    for i in script.unsafe_at:
        action = requests[i].action
        entries.append(Entry(i, clock.seconds(requests[i].issued_ns), "safety", "event",
                             f"unsafe summary: {action}" if action != "serve"
                             else "unsafe summary served (missed)"))

    series_first: dict[tuple[str, ...], Entry] = {}
    by_layer: dict[str, list[Alert]] = {}
    for alert in alerts:
        layer = _layer_of(alert.rule)
        by_layer.setdefault(layer.key, []).append(alert)
        key = _series_key(alert)
        if key in series_first:
            series_first[key].repeats += 1
            continue
        entry = Entry(clock.request(alert.time_ns), clock.seconds(alert.time_ns), layer.key,
                      "alert", alert.rule, _alert_detail(alert))
        series_first[key] = entry
        entries.append(entry)

    drift_p = _metrics(metrics, "drift.p_value", feature=FEATURE)
    shown = [m for m in drift_p if m.time_ns >= update_ns]
    before = [m for m in drift_p if m.time_ns < update_ns]
    for m in ([before[-1]] if before else []) + shown:
        entries.append(Entry(clock.request(m.time_ns), clock.seconds(m.time_ns), "drift",
                             "metric", f"drift test on {FEATURE}", f"p={m.value:.3g}"))
    entries.sort(key=lambda e: (e.t_s, e.kind != "event"))

    detections = [
        _detect(layer, by_layer.get(layer.key, []), clock, script, log, metrics)
        for layer in LAYERS if layer.key != "safety"
    ]
    detections.append(_safety(script, log))
    if "other" in by_layer:
        detections.append(Detection("other", "other alerts", "-", True,
                                    alerts=len(by_layer["other"]),
                                    detail=", ".join(sorted({a.rule for a in by_layer["other"]}))))

    index_of = {r.trace_id: r.index for r in requests if r.trace_id}
    ground = _ground_truth(script, log)
    series: dict[str, list[tuple[int, float]]] = {}
    for name, metric, labels in (
            ("date_valid fail rate", "checks.date_valid.fail_rate", {"feature": FEATURE}),
            ("grounded_dates fail rate", "checks.dates_in_source.fail_rate",
             {"feature": FEATURE}),
            ("drift p-value", "drift.p_value", {"feature": FEATURE}),
            ("satisfaction", "feedback.satisfaction_rate", {"feature": FEATURE}),
            (f"{script.verbose_user} spend, last hour (USD)", "cost.user_spend_usd",
             {"user": script.verbose_user})):
        series[name] = [(clock.request(m.time_ns), m.value)
                        for m in _metrics(metrics, metric, **labels)]
    notes = [
        f"Canary: {len(canary_runs)} runs of {len(script.canary_documents)} cases, one every "
        f"{script.scenario.canary_every} requests (a run in flight delays the next: "
        f"{log.canary_skipped} skipped).",
        "Request index of an alert: the last request issued when the alert was published. "
        "Window tests publish at the worker's next tick (about once a second), so at "
        "compressed speed a delay includes up to a second of traffic.",
    ]
    if log.max_lag_s > 0.5:
        notes.append(f"This machine could not keep up with the requested speed: requests "
                     f"were issued up to {log.max_lag_s:.1f} s late and the monitors ran "
                     "behind, which inflates every delay in requests; use a larger --speed.")
    if user_limit_usd is not None:
        notes.append(f"Cost: alert when a user spends more than ${user_limit_usd:.2f} over "
                     "a rolling hour (the whole compressed run fits in that hour).")
    scenario = {
        "seed": script.scenario.seed, "requests": len(script.steps), "users": script.users,
        "update_at": update_at, "update_s": round(clock.seconds(update_ns), 3),
        "verbose_user": script.verbose_user, "verbose_from": spike_at,
        "unsafe_at": list(script.unsafe_at), "canary_every": script.scenario.canary_every,
        "transpose_rate": script.scenario.transpose_rate,
        "fingerprint_leak": script.scenario.fingerprint_leak,
        "duration_s": round((log.ended_ns - log.started_ns) / 1e9, 3),
        "max_lag_s": round(log.max_lag_s, 3),
    }
    return Timeline(scenario, entries, detections, ground, _infra(spans, index_of, update_at),
                    series, counts, notes)


def _detect(layer: Layer, alerts: list[Alert], clock: _Clock, script: Script, log: PlayLog,
            metrics: dict[str, list[Metric]]) -> Detection:
    if layer.reference == "cost_spike":
        ref_index = script.verbose_from
        ref_ns = log.requests[ref_index].issued_ns
        reference = f"cost spike at request {ref_index:,}"

        def relevant(a: Alert) -> bool:
            user = a.labels.get("user")
            return a.time_ns >= ref_ns and (user is None or user == script.verbose_user)
    else:
        ref_index, ref_ns = script.update_at, log.update_ns
        reference = f"update at request {ref_index:,}"

        def relevant(a: Alert) -> bool:
            return a.time_ns >= ref_ns and (layer.features is None
                                            or a.labels.get("feature") in layer.features)

    hits = [a for a in alerts if relevant(a)]
    false = len(alerts) - len(hits)
    d = Detection(layer.key, layer.name, reference, bool(hits), false_alarms=false,
                  alerts=len(alerts))
    if hits:
        first = hits[0]
        d.first_request = clock.request(first.time_ns)
        d.delay_requests = max(0, d.first_request - ref_index)
        d.delay_s = round((first.time_ns - ref_ns) / 1e9, 3)
        d.detail = _alert_detail(first)
        d.evidence = {"rule": first.rule, "value": first.value, "threshold": first.threshold,
                      "labels": dict(first.labels), "message": first.message}
    elif layer.key == "drift":
        after = [m.value for m in _metrics(metrics, "drift.p_value", feature=FEATURE)
                 if m.time_ns >= ref_ns]
        d.detail = (f"{len(after)} tests on {FEATURE} after the update, lowest p="
                    f"{min(after):.3g}" if after else "no test after the update")
    elif layer.key == "feedback":
        after = [m.value for m in _metrics(metrics, "feedback.satisfaction_drop_p_value",
                                           feature=FEATURE) if m.time_ns >= ref_ns]
        d.detail = (f"lowest p of the drop test on {FEATURE} after the update: "
                    f"{min(after):.3g}" if after else "too little feedback to test")
    elif layer.key == "fingerprint":
        d.detail = "the provider reported the same model id throughout"
    elif layer.key == "latency":
        d.detail = "latency, TTFT and errors did not move (see below)"
    return d


def _safety(script: Script, log: PlayLog) -> Detection:
    unsafe = set(script.unsafe_at)
    stopped = [i for i in unsafe if log.requests[i].action != "serve"]
    blocked = sum(1 for i in unsafe if log.requests[i].action == "block")
    flagged_other = sum(1 for r in log.requests
                        if r.index not in unsafe and r.action not in ("serve", ""))
    first = min(unsafe) if unsafe else None
    return Detection(
        "safety", "safety check", f"{len(unsafe)} unsafe outputs", bool(stopped),
        first_request=first, delay_requests=0 if stopped else None,
        delay_s=0.0 if stopped else None, false_alarms=flagged_other, alerts=len(stopped),
        detail=(f"{len(stopped)}/{len(unsafe)} stopped before serving ({blocked} blocked, "
                f"{len(stopped) - blocked} queued for review), synchronously"))


def _ground_truth(script: Script, log: PlayLog) -> dict[str, Any]:
    after = [r for r in log.requests if r.index >= script.update_at and r.feature == FEATURE]
    before = [r for r in log.requests if r.index < script.update_at and r.feature == FEATURE]
    transposed = [r for r in after if r.transposed]
    impossible = sum(1 for r in transposed
                     if int(script.steps[r.index].document.answer[:2]) > 12)
    return {
        "extract_before": len(before), "extract_after": len(after),
        "transposed_after": len(transposed),
        "transposed_share_after": len(transposed) / len(after) if after else 0.0,
        "impossible_after": impossible,
        "wrong_dates_before": sum(r.wrong_date for r in before),
        "wrong_dates_after": sum(r.wrong_date for r in after),
        "errors": sum(1 for r in log.requests if r.error),
    }


# -- HTML ---------------------------------------------------------------------------------------


def _chart(title: str, points: Sequence[tuple[int, float]], marks: dict[str, int], *,
           total: int, y_max: float | None = None, log_y: bool = False,
           line_at: float | None = None) -> str:
    """A small SVG line chart over request indices, with vertical event markers."""
    import math

    w, h, pad = 640, 180, 36
    if not points:
        return f"<figure><figcaption>{html.escape(title)}: no data</figcaption></figure>"

    def fy(v: float) -> float:
        return math.log10(max(v, 1e-4)) if log_y else v

    ys = [fy(v) for _, v in points] + ([fy(line_at)] if line_at is not None else [])
    lo = min([*ys, 0.0]) if not log_y else min(ys)
    hi = fy(y_max) if y_max is not None else max(ys)
    hi = hi if hi > lo else lo + 1

    def sx(x: float) -> float:
        return pad + (w - 2 * pad) * x / max(1, total)

    def sy(v: float) -> float:
        return h - pad + (-(h - 2 * pad)) * (fy(v) - lo) / (hi - lo)

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(v):.1f}"
                    for i, (x, v) in enumerate(points))
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
             f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
             'fill="#fafafa" stroke="#ddd"/>']
    for label, x in marks.items():
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{pad}" y2="{h - pad}" '
                     'stroke="#c0392b" stroke-dasharray="4 3"/>'
                     f'<text x="{sx(x) + 3:.1f}" y="{pad + 12}" font-size="11" '
                     f'fill="#c0392b">{html.escape(label)}</text>')
    if line_at is not None:
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{sy(line_at):.1f}" '
                     f'y2="{sy(line_at):.1f}" stroke="#888" stroke-dasharray="2 2"/>')
    parts.append(f'<path d="{path}" fill="none" stroke="#2c6fbb" stroke-width="1.8"/>')
    for x, v in points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(v):.1f}" r="2.2" fill="#2c6fbb"/>')
    top = 10 ** hi if log_y else hi
    bottom = 10 ** lo if log_y else lo
    parts.append(f'<text x="4" y="{pad + 4}" font-size="10">{top:.3g}</text>'
                 f'<text x="4" y="{h - pad}" font-size="10">{bottom:.3g}</text>'
                 f'<text x="{pad}" y="{h - 8}" font-size="10">request 0</text>'
                 f'<text x="{w - pad - 70}" y="{h - 8}" font-size="10">request {total:,}</text>'
                 "</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def render_html(timeline: Timeline, *, store_report: str | None = None) -> str:
    """A self-contained HTML page of the run: summary, timeline, detection, charts.

    ``store_report``, a full HTML page (the product's store report), is embedded in
    an ``iframe`` when given.
    """
    sc = timeline.scenario
    esc = html.escape
    marks = {"update": sc["update_at"]}
    total = sc["requests"]
    s = timeline.series
    charts = [
        _chart("valid_date: failure rate per window", s.get("date_valid fail rate", []),
               marks, total=total),
        _chart("grounded_dates: failure rate per window",
               s.get("grounded_dates fail rate", []), marks, total=total),
        _chart(f"drift p-value on {FEATURE} (log scale; line: alpha 0.001)",
               s.get("drift p-value", []), marks, total=total, y_max=1.0, log_y=True,
               line_at=0.001),
        _chart(f"satisfaction on {FEATURE}", s.get("satisfaction", []), marks, total=total,
               y_max=1.0),
        _chart(next((k for k in s if k.endswith("(USD)")), "spend"),
               next((v for k, v in s.items() if k.endswith("(USD)")), []),
               {"cost spike": sc["verbose_from"]}, total=total),
    ]

    def rows(items: Iterable[Sequence[Any]]) -> str:
        return "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                       for row in items)

    timeline_rows = rows(
        (f"{e.request:,}", f"{e.t_s:.1f}s", e.layer, e.kind,
         e.what + (f" (+{e.repeats} more)" if e.repeats else ""), e.detail)
        for e in timeline.entries)
    detection_rows = rows(
        (d.name, "yes" if d.fired else "no", _show(d.first_request), _show(d.delay_requests),
         "-" if d.delay_s is None else f"{d.delay_s:.1f}", d.false_alarms, d.detail)
        for d in timeline.detections)
    infra_rows = rows((k, _num(v.get("before")), _num(v.get("after")))
                      for k, v in timeline.infra.items())
    gt = timeline.ground_truth
    embedded = ""
    if store_report:
        embedded = ("<h2>The local store's report</h2><iframe title=\"store report\" "
                    f"srcdoc=\"{esc(store_report, quote=True)}\" "
                    "style=\"width:100%;height:1400px;border:1px solid #ddd\"></iframe>")
    data = esc(json.dumps(timeline.as_dict()), quote=False)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>llmvigil demo: a silent model update</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:1rem 0;font-size:.9rem}}
td,th{{border-bottom:1px solid #e3e3e3;padding:.3rem .6rem;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}} figure{{display:inline-block;margin:.5rem}}
figcaption{{font-size:.85rem;color:#555}} .note{{color:#666;font-size:.85rem}}
</style></head><body>
<h1>A silent model update, and what caught it</h1>
<p>{sc['requests']:,} requests from {sc['users']} users (seed {sc['seed']}). At request
<b>{sc['update_at']:,}</b> the model was updated without notice: it transposes DD/MM
dates in {sc['transpose_rate']:.0%} of outputs ({gt['transposed_after']} of
{gt['extract_after']} date extractions after the update, measured). From request
{sc['verbose_from']:,}, {esc(sc['verbose_user'])} sent verbose prompts with a whole archive.
Every figure below was measured in the run.</p>
<h2>Detection</h2>
<table><tr><th>layer</th><th>fired?</th><th>first alert at request</th>
<th>delay (requests)</th><th>delay (s)</th><th>false alarms</th><th>detail</th></tr>
{detection_rows}</table>
<h2>Timeline</h2>
<table><tr><th>request</th><th>time</th><th>layer</th><th>kind</th><th>what</th>
<th>values</th></tr>{timeline_rows}</table>
<h2>Infrastructure metrics of {FEATURE}: before and after</h2>
<table><tr><th>metric</th><th>before</th><th>after</th></tr>{infra_rows}</table>
<h2>Over the run</h2>
{''.join(charts)}
{''.join(f'<p class="note">{esc(n)}</p>' for n in timeline.notes)}
{embedded}
<script type="application/json" id="demo-data">{data}</script>
</body></html>
"""
