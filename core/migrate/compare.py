"""Shadow mode: read two backends back and compare what they hold.

Run two backends side by side for a while (both in ``backends:``), then ``vigil
compare A B --since 7d`` reads both through their importers and compares span counts,
traces, tokens, cost, scores and request latency, so a team can cut over with
evidence. Figures within a relative tolerance count as equal; latency also gets a
small absolute slack because vendors store times at millisecond precision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import Score, SessionEvent, Span
from . import Skipped
from .engine import Selection, Totals

__all__ = ["Comparison", "Row", "Summary", "compare", "summarize"]

#: How many example trace ids a comparison lists per side.
EXAMPLES = 5


@dataclass
class Summary:
    """What one backend holds over the selection: counts, sums and root latencies."""

    name: str
    totals: Totals = field(default_factory=Totals)
    span_kinds: Counter[str] = field(default_factory=Counter)
    error_spans: int = 0
    scores: int = 0
    session_events: int = 0
    unreadable: int = 0
    trace_ids: set[str] = field(default_factory=set)
    root_durations_s: list[float] = field(default_factory=list)

    def latency(self, q: float) -> float | None:
        """A percentile (numpy's linear method) of root span durations, in seconds."""
        if not self.root_durations_s:
            return None
        import numpy as np

        return float(np.percentile(np.asarray(self.root_durations_s), q * 100))

    def figures(self) -> dict[str, float | None]:
        """The compared figures by name."""
        t = self.totals
        durations = self.root_durations_s
        return {
            "spans": t.spans, "traces": len(self.trace_ids),
            "llm spans": self.span_kinds.get("llm", 0), "error spans": self.error_spans,
            "input tokens": t.input_tokens, "output tokens": t.output_tokens,
            "cache read tokens": t.cache_read_tokens,
            "cache write tokens": t.cache_write_tokens, "cost USD": t.cost_usd,
            "scores": self.scores, "session events": self.session_events,
            "latency mean s": sum(durations) / len(durations) if durations else None,
            "latency p50 s": self.latency(0.50), "latency p95 s": self.latency(0.95),
        }


def summarize(name: str, items: Iterable[Any], selection: Selection | None = None) -> Summary:
    """Summarise the records an importer yields (outside ``selection`` ignored)."""
    s = Summary(name)
    sel = selection or Selection()
    for item in items:
        if isinstance(item, Skipped):
            s.unreadable += 1
            continue
        if not isinstance(item, (Span, Score, SessionEvent)) or not sel.admits(item):
            continue
        if isinstance(item, Score):
            s.scores += 1
        elif isinstance(item, SessionEvent):
            s.session_events += 1
        else:
            s.totals.add(item)
            s.span_kinds[item.kind] += 1
            s.trace_ids.add(item.trace_id)
            if item.status == "error":
                s.error_spans += 1
            if item.parent_id is None:
                s.root_durations_s.append(item.duration_s)
    return s


@dataclass(frozen=True)
class Row:
    """One compared figure: both values, B - A, and whether it is within tolerance."""

    metric: str
    a: float | None
    b: float | None
    ok: bool

    @property
    def diff(self) -> float | None:
        """B minus A (``None`` when either is unknown)."""
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def relative(self) -> float | None:
        """``|B - A| / max(|A|, |B|)``: 0 when both are 0."""
        if self.a is None or self.b is None:
            return None
        scale = max(abs(self.a), abs(self.b))
        return abs(self.b - self.a) / scale if scale else 0.0


@dataclass
class Comparison:
    """Every row, the traces only one side holds, and the verdict."""

    a: Summary
    b: Summary
    rows: list[Row]
    only_in_a: int
    only_in_b: int
    examples_a: list[str]
    examples_b: list[str]
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether every figure is within tolerance and both sides hold the same traces."""
        return all(r.ok for r in self.rows) and not self.only_in_a and not self.only_in_b

    def as_dict(self) -> dict[str, Any]:
        """The comparison as a JSON-able dict."""
        return {
            "a": self.a.name, "b": self.b.name, "tolerance": self.tolerance, "ok": self.ok,
            "rows": [{"metric": r.metric, "a": r.a, "b": r.b, "diff": r.diff,
                      "relative": r.relative, "ok": r.ok} for r in self.rows],
            "traces_only_in_a": self.only_in_a, "traces_only_in_b": self.only_in_b,
            "examples_only_in_a": self.examples_a, "examples_only_in_b": self.examples_b,
            "unreadable": {self.a.name: self.a.unreadable, self.b.name: self.b.unreadable},
        }


def compare(a: Summary, b: Summary, *, tolerance: float = 0.01,
            latency_slack_s: float = 0.002) -> Comparison:
    """Compare two summaries figure by figure.

    A figure is within tolerance when ``|B - A| <= tolerance * max(|A|, |B|)``
    (latency: or within ``latency_slack_s``); one side unknown and the other known
    is a difference. Trace ids are compared as sets.
    """
    fa, fb = a.figures(), b.figures()
    rows = []
    for metric in fa:
        va, vb = fa[metric], fb[metric]
        if va is None or vb is None:
            ok = va is None and vb is None
        else:
            allowed = tolerance * max(abs(va), abs(vb))
            if metric.startswith("latency"):
                allowed = max(allowed, latency_slack_s)
            ok = abs(vb - va) <= allowed
        rows.append(Row(metric, va, vb, ok))
    only_a = a.trace_ids - b.trace_ids
    only_b = b.trace_ids - a.trace_ids
    return Comparison(a, b, rows, len(only_a), len(only_b), sorted(only_a)[:EXAMPLES],
                      sorted(only_b)[:EXAMPLES], tolerance)
