"""The report as rich tables for the terminal: several compact tables, readable at 80 columns.

Each table has a handful of short numeric columns and one feature column that folds
a long name onto several lines rather than cutting it: no figure and no name is
ever truncated with an ellipsis. Tables with nothing to show are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["fmt_count", "fmt_rate", "fmt_seconds", "fmt_tokens", "fmt_usd", "render",
           "renderables"]

_ALL = "all"


# ---------------------------------------------------------------------------
# Number formats (shared with the HTML page)
# ---------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    """``"850ms"``, ``"1.24s"``, ``"95.1s"``, ``"33.5min"``, ``"2.4h"``; ``"-"`` for no data."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 100:
        return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"
    if value < 6000:
        return f"{value / 60:.1f}min"
    return f"{value / 3600:,.1f}h"


def fmt_rate(value: float | None) -> str:
    """``"12.5%"``, ``"0.02%"``; ``"0.0%"`` is a rate, ``"-"`` means no data."""
    if value is None:
        return "-"
    return f"{value:.2%}" if 0 < abs(value) < 0.001 else f"{value:.1%}"


def fmt_usd(value: float | None) -> str:
    """``"$1,234.56"``, ``"$0.0123"``; ``"-"`` for no data."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}" if abs(value) >= 0.0001 else f"${value:.2g}"


def fmt_tokens(value: float | None) -> str:
    """``"950"``, ``"12.3k"``, ``"4.5M"``, ``"1.2B"``."""
    n = int(value or 0)
    if n >= 10**9:
        return f"{n / 1e9:.1f}B"
    if n >= 10**6:
        return f"{n / 1e6:.1f}M"
    if n >= 10**4:
        return f"{n / 1e3:.1f}k"
    return str(n)


def fmt_count(value: float | None) -> str:
    """``"1,234"``."""
    return f"{int(value or 0):,}"


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _table(title: str, first: str, *numeric: str, caption: str | None = None,
           text: Iterable[str] = ()) -> Table:
    """A compact table: ``first`` folds long values, the others never wrap.

    Columns named in ``text`` are left-aligned, the rest (figures) right-aligned.
    """
    table = Table(title=title, title_justify="left", title_style="bold", caption=caption,
                  caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  collapse_padding=True)
    table.add_column(first, overflow="fold")
    left = set(text)
    for name in numeric:
        table.add_column(name, justify="left" if name in left else "right", no_wrap=True)
    return table


def _rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(data.get("features", {}).items())
    if len(rows) != 1:  # a lone feature's row would only repeat the total
        rows.append((_ALL, data["totals"]))
    return rows


def _name(label: str) -> Text:
    return Text(label, style="bold" if label == _ALL else "")


def _traffic(data: dict[str, Any]) -> Table:
    table = _table("Requests and latency", "feature", "requests", "errors", "p50", "p95",
                   "p99", caption="requests: root spans; latency of whole requests")
    for label, f in _rows(data):
        table.add_row(_name(label), fmt_count(f["requests"]), fmt_rate(f["error_rate"]),
                      fmt_seconds(f["latency_p50_s"]), fmt_seconds(f["latency_p95_s"]),
                      fmt_seconds(f["latency_p99_s"]))
    return table


def _streaming(data: dict[str, Any]) -> Table | None:
    rows = [(label, f) for label, f in _rows(data) if f["ttft_count"]]
    if not rows:
        return None
    table = _table("Streaming: time to first token vs total", "feature", "calls",
                   "TTFT p50", "TTFT p95", "total p50", "total p95",
                   caption="over the calls that streamed (recorded a TTFT)")
    for label, f in rows:
        table.add_row(_name(label), fmt_count(f["ttft_count"]), fmt_seconds(f["ttft_p50_s"]),
                      fmt_seconds(f["ttft_p95_s"]), fmt_seconds(f["stream_latency_p50_s"]),
                      fmt_seconds(f["stream_latency_p95_s"]))
    return table


def _cost(data: dict[str, Any]) -> Table:
    table = _table("Tokens and cost", "feature", "input", "output", "cache", "USD",
                   "per req", "unpriced",
                   caption="cache: cache read + write tokens; unpriced: LLM calls "
                           "with no known price, not in USD")
    for label, f in _rows(data):
        table.add_row(
            _name(label), fmt_tokens(f["input_tokens"]), fmt_tokens(f["output_tokens"]),
            fmt_tokens(f["cache_read_tokens"] + f["cache_write_tokens"]),
            fmt_usd(f["cost_usd"]), fmt_usd(f["cost_per_request_usd"]),
            fmt_count(f["unpriced_llm_spans"]),
        )
    return table


def _top_users(data: dict[str, Any]) -> Table | None:
    users = data.get("top_users") or []
    if not users:
        return None
    table = _table("Top users by cost", "user", "USD", "share", "calls",
                   caption=f"{data.get('users_with_cost', 0):,} users had a cost")
    for u in users:
        table.add_row(escape(u["user_id"]), fmt_usd(u["cost_usd"]), fmt_rate(u["share"]),
                      fmt_count(u["priced_spans"]))
    return table


def _feedback(data: dict[str, Any]) -> RenderableType | None:
    rows = [(label, f) for label, f in _rows(data) if f["feedback_count"]]
    if not rows:
        return None
    table = _table("Feedback", "feature", "feedback", "per req", "judged", "satisfied",
                   caption="satisfied: positive / (positive + negative); - = nothing judged")
    for label, f in rows:
        judged = f["feedback_positive"] + f["feedback_negative"]
        table.add_row(_name(label), fmt_count(f["feedback_count"]),
                      fmt_rate(f["feedback_rate"]), fmt_count(judged),
                      fmt_rate(f["satisfaction_rate"]))
    negatives = _negatives(rows)
    if negatives is None:
        return table
    return Group(table, Text(), negatives)


def _negatives(rows: Iterable[tuple[str, dict[str, Any]]]) -> Table | None:
    table = _table("Negative feedback by category", "feature", "category", "count",
                   text=("category",))
    empty = True
    for label, f in rows:
        if label == _ALL:
            continue
        for category, count in f["negative_by_category"].items():
            table.add_row(_name(label), escape(category), fmt_count(count))
            empty = False
    return None if empty else table


def _sessions(data: dict[str, Any]) -> Table | None:
    rows = [(label, f) for label, f in _rows(data) if f["sessions"]]
    if not rows:
        return None
    table = _table("Sessions", "feature", "sessions", "completed", "abandoned", "open",
                   "turns", "to done",
                   caption="completed/abandoned: share of resolved sessions; to done: "
                           "mean time to task completion")
    for label, f in rows:
        turns = f["turns_mean"]
        table.add_row(_name(label), fmt_count(f["sessions"]),
                      fmt_rate(f["task_completion_rate"]), fmt_rate(f["abandon_rate"]),
                      fmt_count(f["sessions_open"]), "-" if turns is None else f"{turns:.1f}",
                      fmt_seconds(f["time_to_completion_mean_s"]))
    return table


def _alerts(data: dict[str, Any]) -> Table | None:
    alerts = data.get("alerts") or []
    if not alerts:
        return None
    table = _table("Alerts", "rule", "severity", "count", "last (UTC)",
                   text=("severity", "last (UTC)"))
    # The rule keeps its width (up to 32) and the message wraps in what is left.
    table.columns[0].min_width = min(32, max(len(a["rule"]) for a in alerts))
    table.add_column("last message", overflow="fold", ratio=1, min_width=12)
    for a in alerts:
        table.add_row(escape(a["rule"]), a["severity"], fmt_count(a["count"]),
                      a["last"][:16].replace("T", " "), escape(a["last_message"]))
    return table


def _safety(data: dict[str, Any]) -> Table | None:
    safety = data.get("safety") or {}
    if not safety.get("verdicts"):
        return None
    table = _table("Safety verdicts", "action", "count", "share")
    table.add_column("top categories", overflow="fold")
    total = safety["verdicts"]
    for action, count in safety["by_action"].items():
        cats = safety.get("by_category", {}).get(action, {})
        top = ", ".join(f"{escape(c)} {n:,}" for c, n in list(cats.items())[:3])
        table.add_row(escape(action), fmt_count(count), fmt_rate(count / total), top)
    return table


def _header(data: dict[str, Any]) -> Text:
    rng = data.get("time_range")
    text = Text("llmvigil report", style="bold")
    if rng is None:
        text.append("  (no records)")
        return text
    start, end = rng["start"][:19].replace("T", " "), rng["end"][:19].replace("T", " ")
    text.append(f"  {start} to {end} UTC")
    text.append(f"\n{data['path']}", style="dim")
    return text


def renderables(data: dict[str, Any]) -> list[RenderableType]:
    """The header and every table with something to show, in reading order."""
    out: list[RenderableType] = [_header(data)]
    if data.get("data_range") is None:
        out.append(Text("No records in this range."))
        return out
    for part in (_traffic(data), _streaming(data), _cost(data), _top_users(data),
                 _feedback(data), _sessions(data), _alerts(data), _safety(data)):
        if part is not None:
            out.append(part)
    return out


def render(data: dict[str, Any], console: Console | None = None) -> None:
    """Print the report on ``console`` (stdout by default)."""
    console = console or Console()
    for part in renderables(data):
        console.print(part)
        console.print()
