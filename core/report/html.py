"""The report as one self-contained HTML page: inline SVG plots, inline CSS, no script.

Nothing is loaded from the network (no CDN, no web font, no JavaScript), so the page
can be attached to a ticket or opened offline. Every text from the records (feature
names, user ids, alert messages) is HTML-escaped.

Plots: latency percentiles over time (with TTFT when calls streamed), spend per
hour, top users by cost, satisfaction over time and session completion over time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from .tables import fmt_count, fmt_rate, fmt_seconds, fmt_tokens, fmt_usd

__all__ = ["render_html"]

_W, _H = 640, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 16, 14, 30
_COLORS = ("#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed", "#0891b2")

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0; background: #f5f6f8; color: #1f2933; }
header { background: #1f2933; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #cbd2d9; font-size: 13px; }
main { padding: 20px 28px 40px; max-width: 1400px; margin: 0 auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(132px, 1fr));
         gap: 12px; margin-bottom: 20px; }
.card { background: #fff; border-radius: 8px; padding: 12px 14px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .label { color: #616e7c; font-size: 12px; text-transform: uppercase;
               letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; margin-top: 2px; }
.card .note { color: #7b8794; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
        gap: 16px; }
section { background: #fff; border-radius: 8px; padding: 14px 16px 10px;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); margin-bottom: 16px; }
section h2 { font-size: 15px; margin: 0 0 8px; font-weight: 600; }
section.wide { grid-column: 1 / -1; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #52606d; }
svg .grid line { stroke: #e4e7eb; }
svg .axis { stroke: #9aa5b1; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; font-size: 12px; color: #52606d;
          margin: 2px 0 6px; }
.legend span::before { content: ""; display: inline-block; width: 14px; height: 3px;
                       margin-right: 5px; vertical-align: middle;
                       background: var(--c); }
.empty { color: #7b8794; font-style: italic; padding: 30px 0; text-align: center; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e4e7eb; text-align: right;
         white-space: nowrap; }
th { color: #616e7c; font-weight: 600; background: #fafbfc; }
th:first-child, td:first-child { text-align: left; white-space: normal;
                                 overflow-wrap: anywhere; }
td.text, th.text { text-align: left; white-space: normal; }
tr.total td { font-weight: 600; }
.scroll { overflow-x: auto; }
.sev-critical { color: #b91c1c; font-weight: 600; }
.sev-error { color: #c2410c; font-weight: 600; }
.sev-warning { color: #b45309; }
footer { color: #7b8794; font-size: 12px; margin-top: 8px; }
"""


# ---------------------------------------------------------------------------
# Small SVG charts
# ---------------------------------------------------------------------------


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _time_label(ns: int, span_ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    if span_ns > 2 * 86400 * 10**9:
        return dt.strftime("%m-%d %H:%M") if dt.hour or dt.minute else dt.strftime("%m-%d")
    return dt.strftime("%H:%M")


class _Frame:
    """Axes of one chart: x over bucket indexes, y over ``[0, y_top]``."""

    def __init__(self, n: int, y_top: float, width: int = _W) -> None:
        self.n = max(n, 1)
        self.ticks = _nice_ticks(y_top)
        self.y_top = self.ticks[-1]
        self.width = width
        self.pw = width - _LEFT - _RIGHT
        self.ph = _H - _TOP - _BOTTOM

    def x(self, i: float) -> float:
        """The centre of bucket ``i``."""
        return _LEFT + (i + 0.5) * self.pw / self.n

    def y(self, v: float) -> float:
        return _TOP + self.ph * (1 - min(max(v, 0.0), self.y_top) / self.y_top)

    def axes(self, fmt: Callable[[float], str], starts: Sequence[int], bucket_ns: int) -> str:
        parts = ['<g class="grid">']
        for t in self.ticks:
            y = self.y(t)
            parts.append(f'<line x1="{_LEFT}" x2="{self.width - _RIGHT}" y1="{y:.1f}" '
                         f'y2="{y:.1f}"/>')
        parts.append("</g>")
        for t in self.ticks:
            parts.append(f'<text x="{_LEFT - 6}" y="{self.y(t) + 4:.1f}" '
                         f'text-anchor="end">{escape(fmt(t))}</text>')
        base = _TOP + self.ph
        parts.append(f'<line class="axis" x1="{_LEFT}" x2="{self.width - _RIGHT}" '
                     f'y1="{base}" y2="{base}"/>')
        if starts:
            span = starts[-1] + bucket_ns - starts[0]
            labels = min(6 if self.width > _W else 5, len(starts))
            for k in range(labels):
                i = round(k * (len(starts) - 1) / max(labels - 1, 1))
                anchor = "start" if k == 0 else "end" if k == labels - 1 else "middle"
                x = (_LEFT if anchor == "start" else self.width - _RIGHT if anchor == "end"
                     else self.x(i))
                parts.append(f'<text x="{x:.1f}" y="{base + 18}" text-anchor="{anchor}">'
                             f'{escape(_time_label(starts[i], span))}</text>')
        return "".join(parts)


def _svg(body: str, label: str, width: int = _W) -> str:
    return (f'<svg viewBox="0 0 {width} {_H}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def _legend(items: Sequence[tuple[str, str]]) -> str:
    spans = "".join(f'<span style="--c:{color}">{escape(name)}</span>' for name, color in items)
    return f'<div class="legend">{spans}</div>'


def line_chart(
    label: str, starts: Sequence[int], bucket_ns: int,
    lines: Sequence[tuple[str, Sequence[float | None], str, bool]],
    fmt: Callable[[float], str], y_top: float | None = None, width: int = _W,
) -> str:
    """Lines over time; ``None`` values leave a gap. Each line: (name, values, color, dashed).

    ``width`` is the drawing's width in SVG units: a wider chart keeps its text size.
    """
    values = [v for _, vs, _, _ in lines for v in vs if v is not None]
    if not values:
        return '<div class="empty">no data in this range</div>'
    frame = _Frame(len(starts), y_top if y_top is not None else max(values) * 1.05, width)
    parts = [frame.axes(fmt, starts, bucket_ns)]
    for name, vs, color, dashed in lines:
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(vs):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{frame.x(i):.1f},{frame.y(v):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"'
                             f'{dash} points="{" ".join(seg)}"/>')
        # Hover titles on the points, sparse enough not to bloat the page.
        step = max(1, len(vs) // 60)
        for i in range(0, len(vs), step):
            v = vs[i]
            if v is not None:
                when = _time_label(starts[i], 0) if starts else ""
                parts.append(f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="6" '
                             f'fill="transparent"><title>{escape(name)} {escape(when)}: '
                             f'{escape(fmt(v))}</title></circle>')
    legend = _legend([(name, color) for name, _, color, _ in lines])
    return legend + _svg("".join(parts), label, width)


def bar_chart(label: str, starts: Sequence[int], bucket_ns: int, values: Sequence[float],
              fmt: Callable[[float], str], color: str = _COLORS[0]) -> str:
    """Vertical bars over time."""
    if not any(v > 0 for v in values):
        return '<div class="empty">no data in this range</div>'
    frame = _Frame(len(values), max(values) * 1.05)
    parts = [frame.axes(fmt, starts, bucket_ns)]
    width = max(1.0, frame.pw / frame.n * 0.8)
    for i, v in enumerate(values):
        if v <= 0:
            continue
        top = frame.y(v)
        when = _time_label(starts[i], 0) if starts else ""
        parts.append(f'<rect x="{frame.x(i) - width / 2:.1f}" y="{top:.1f}" '
                     f'width="{width:.1f}" height="{_TOP + frame.ph - top:.1f}" fill="{color}">'
                     f'<title>{escape(when)}: {escape(fmt(v))}</title></rect>')
    return _svg("".join(parts), label)


def hbar_chart(label: str, rows: Sequence[tuple[str, float]], fmt: Callable[[float], str],
               color: str = _COLORS[3]) -> str:
    """Horizontal bars, one per labelled row, longest first as given."""
    if not rows:
        return '<div class="empty">no data in this range</div>'
    row_h, label_w, value_w = 22, 150, 80
    height = row_h * len(rows) + 8
    top = max(v for _, v in rows) or 1.0
    parts = []
    for k, (name, v) in enumerate(rows):
        y = 4 + k * row_h
        w = (_W - label_w - value_w) * v / top
        shown = name if len(name) <= 22 else name[:21] + "\u2026"
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
                     f'<title>{escape(name)}</title>{escape(shown)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="15" '
                     f'fill="{color}"><title>{escape(name)}: {escape(fmt(v))}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{escape(fmt(v))}</text>')
    return (f'<svg viewBox="0 0 {_W} {height}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


# ---------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------


def _card(label: str, value: str, note: str = "") -> str:
    note_html = f'<div class="note">{escape(note)}</div>' if note else ""
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value">{escape(value)}</div>{note_html}</div>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           total: bool = False, text_cols: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="text">{escape(h)}</th>' if j in text_cols
                   else f"<th>{escape(h)}</th>" for j, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        cls = ' class="total"' if total and k == len(rows) - 1 else ""
        cells = "".join(
            f'<td class="text">{escape(c)}</td>' if j in text_cols else f"<td>{escape(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _section(title: str, content: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f"<section{cls}><h2>{escape(title)}</h2>{content}</section>"


def _feature_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(data.get("features", {}).items())
    rows.append(("all", data["totals"]))
    return rows


def _pct_axis(v: float) -> str:
    return f"{v:.0%}"


def _usd_axis(v: float) -> str:
    if v == 0:
        return "$0"
    return f"${v:,.0f}" if v >= 10 else f"${v:.2g}"


def _seconds_axis(v: float) -> str:
    return "0" if v == 0 else fmt_seconds(v)


def _charts(data: dict[str, Any]) -> str:
    s = data["series"]
    starts: list[int] = s.get("start_ns", [])
    bucket_s = s.get("bucket_s") or 3600
    bucket_ns = bucket_s * 10**9
    lines = [
        ("p50", s.get("latency_p50_s", []), _COLORS[0], False),
        ("p95", s.get("latency_p95_s", []), _COLORS[1], False),
        ("p99", s.get("latency_p99_s", []), _COLORS[2], False),
    ]
    if any(v is not None for v in s.get("ttft_p95_s", [])):
        lines += [("TTFT p50", s["ttft_p50_s"], _COLORS[4], True),
                  ("TTFT p95", s["ttft_p95_s"], _COLORS[5], True)]
    latency = line_chart("request latency percentiles over time", starts, bucket_ns, lines,
                         _seconds_axis, width=2 * _W)
    per_hour = [c * 3600 / bucket_s for c in s.get("cost_usd", [])]
    spend = bar_chart("spend per hour", starts, bucket_ns, per_hour, _usd_axis)
    users = hbar_chart("top users by cost",
                       [(u["user_id"], u["cost_usd"]) for u in data.get("top_users", [])],
                       fmt_usd)
    satisfaction = line_chart(
        "satisfaction rate over time", starts, bucket_ns,
        [("satisfied", s.get("satisfaction_rate", []), _COLORS[3], False)], _pct_axis, 1.0)
    completion = line_chart(
        "task completion rate over time", starts, bucket_ns,
        [("completed", s.get("task_completion_rate", []), _COLORS[0], False)], _pct_axis, 1.0)
    width = _bucket_text(bucket_s)
    return '<div class="grid">' + "".join([
        _section(f"Latency percentiles ({width} buckets)", latency, wide=True),
        _section("Spend per hour (USD)", spend),
        _section(f"Top users by cost ({data.get('users_with_cost', 0):,} users had a cost)",
                 users),
        _section(f"Satisfaction ({width} buckets, by feedback time)", satisfaction),
        _section(f"Session task completion ({width} buckets, by session start)", completion),
    ]) + "</div>"


def _bucket_text(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n}-{unit}" if n != 1 else f"1-{unit}"
    return f"{seconds}-second"


def _tables(data: dict[str, Any]) -> str:
    rows = _feature_rows(data)
    traffic = _table(
        ["feature", "requests", "errors", "p50", "p95", "p99", "TTFT p50", "TTFT p95",
         "streamed total p95"],
        [[label, fmt_count(f["requests"]), fmt_rate(f["error_rate"]),
          fmt_seconds(f["latency_p50_s"]), fmt_seconds(f["latency_p95_s"]),
          fmt_seconds(f["latency_p99_s"]), fmt_seconds(f["ttft_p50_s"]),
          fmt_seconds(f["ttft_p95_s"]), fmt_seconds(f["stream_latency_p95_s"])]
         for label, f in rows], total=True)
    cost = _table(
        ["feature", "input", "output", "cache read", "cache write", "USD", "per request",
         "unpriced LLM calls"],
        [[label, fmt_tokens(f["input_tokens"]), fmt_tokens(f["output_tokens"]),
          fmt_tokens(f["cache_read_tokens"]), fmt_tokens(f["cache_write_tokens"]),
          fmt_usd(f["cost_usd"]), fmt_usd(f["cost_per_request_usd"]),
          fmt_count(f["unpriced_llm_spans"])] for label, f in rows], total=True)
    feedback = _table(
        ["feature", "feedback", "per request", "positive", "negative", "satisfied",
         "negative by category"],
        [[label, fmt_count(f["feedback_count"]), fmt_rate(f["feedback_rate"]),
          fmt_count(f["feedback_positive"]), fmt_count(f["feedback_negative"]),
          fmt_rate(f["satisfaction_rate"]),
          ", ".join(f"{c} {n:,}" for c, n in list(f["negative_by_category"].items())[:4])]
         for label, f in rows], total=True, text_cols=(6,))
    sessions = _table(
        ["feature", "sessions", "completed", "abandoned", "by timeout", "open", "turns",
         "time to completion"],
        [[label, fmt_count(f["sessions"]), fmt_rate(f["task_completion_rate"]),
          fmt_rate(f["abandon_rate"]), fmt_count(f["sessions_abandoned_timeout"]),
          fmt_count(f["sessions_open"]),
          "-" if f["turns_mean"] is None else f"{f['turns_mean']:.1f}",
          fmt_seconds(f["time_to_completion_mean_s"])] for label, f in rows], total=True)
    parts = [
        _section("Requests and latency", traffic),
        _section("Tokens and cost", cost),
        _section("Feedback", feedback),
        _section("Sessions", sessions),
    ]
    alerts = data.get("alerts") or []
    if alerts:
        body = "".join(
            f'<tr><td>{escape(a["rule"])}</td>'
            f'<td class="text sev-{escape(a["severity"])}">{escape(a["severity"])}</td>'
            f'<td>{fmt_count(a["count"])}</td>'
            f'<td>{escape(a["last"][:16].replace("T", " "))}</td>'
            f'<td class="text">{escape(a["last_message"])}</td></tr>'
            for a in alerts)
        parts.append(_section(
            "Alerts", '<div class="scroll"><table><thead><tr><th>rule</th>'
            '<th class="text">severity</th><th>count</th><th>last (UTC)</th>'
            '<th class="text">last message</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>"))
    safety = data.get("safety") or {}
    if safety.get("verdicts"):
        total = safety["verdicts"]
        parts.append(_section("Safety verdicts", _table(
            ["action", "count", "share", "categories"],
            [[action, fmt_count(n), fmt_rate(n / total),
              ", ".join(f"{c} {k:,}" for c, k in safety["by_category"].get(action, {}).items())]
             for action, n in safety["by_action"].items()], text_cols=(3,))))
    return "".join(parts)


def render_html(data: dict[str, Any]) -> str:
    """The whole page for a report dict (as :func:`llmvigil.report` returns it)."""
    rng = data.get("time_range")
    span = ("no records" if rng is None else
            f'{rng["start"][:16].replace("T", " ")} to {rng["end"][:16].replace("T", " ")} UTC')
    head = (f"<header><h1>llmvigil report</h1><p>{escape(span)} &middot; "
            f"{escape(data.get('path', ''))}</p></header>")
    if data.get("data_range") is None:
        body = '<main><section><div class="empty">No records in this range.</div></section></main>'
    else:
        t = data["totals"]
        alerts = sum(a["count"] for a in data.get("alerts", []))
        cards = "".join([
            _card("requests", fmt_count(t["requests"]), f"{fmt_count(t['spans'])} spans"),
            _card("error rate", fmt_rate(t["error_rate"]), f"{fmt_count(t['errors'])} errors"),
            _card("latency p95", fmt_seconds(t["latency_p95_s"]),
                  f"p50 {fmt_seconds(t['latency_p50_s'])}"),
            _card("TTFT p95", fmt_seconds(t["ttft_p95_s"]),
                  f"{fmt_count(t['ttft_count'])} streamed calls"),
            _card("cost", fmt_usd(t["cost_usd"]),
                  f"{fmt_count(t['unpriced_llm_spans'])} unpriced calls"),
            _card("satisfaction", fmt_rate(t["satisfaction_rate"]),
                  f"{fmt_count(t['feedback_positive'] + t['feedback_negative'])} judged"),
            _card("task completion", fmt_rate(t["task_completion_rate"]),
                  f"{fmt_count(t['sessions'])} sessions"),
            _card("alerts", fmt_count(alerts),
                  f"{len({a['rule'] for a in data.get('alerts', [])})} rule(s)"),
        ])
        body = (f'<main><div class="cards">{cards}</div>{_charts(data)}{_tables(data)}'
                "<footer>Generated by llmvigil from the local store. Rates show - when "
                "there is no data (n = 0); 0.0% is a measured rate.</footer></main>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>llmvigil report</title><style>{_CSS}</style></head>"
            f"<body>{head}{body}</body></html>\n")
