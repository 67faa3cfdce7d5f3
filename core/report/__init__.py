"""The operational report: latency, cost, feedback, sessions, alerts and safety per feature.

:func:`report` (``llmvigil.report``) and ``vigil report --json`` return the same
JSON-able dict, built by :func:`build_report` from the local SQLite store for a time
range. Every figure is computed from the stored records, not from the monitors'
in-memory windows, so a report covers any range the store holds.

Definitions (all over the range ``[since, until)``; spans belong to it by start
time, other records by their time):

* ``requests``: root spans (no parent), one per handled request; ``errors`` those
  with status ``error``; ``error_rate = errors / requests``. Latency percentiles
  (numpy's default linear interpolation) are over root span durations.
* ``ttft_*``: time to first token of the spans that recorded one (streamed calls);
  ``stream_latency_*`` is the total latency of those same calls, so a streaming
  endpoint shows both side by side.
* tokens and ``cost_usd`` sum every span; ``unpriced_llm_spans`` counts ``llm``
  spans without a cost, so a total is never silently partial.
* feedback: Score records of kinds thumbs_up, thumbs_down, rating, correction and
  report. ``satisfaction_rate = positive / (positive + negative)``, ``None`` (no
  data) when nothing was judged, ``0.0`` when everything was disliked;
  ``feedback_rate`` is feedback per request. What counts as positive follows the
  feedback monitor's settings (``monitors.feedback``).
* sessions: see :func:`llmvigil.core.store_queries.session_sums`;
  ``task_completion_rate`` and ``abandon_rate`` are over resolved sessions
  (completed + abandoned), ``turns_mean`` over every session seen.

Rates and percentiles are ``None`` when they have no sample; counts are 0.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from .. import store_queries as sq
from ..model import Alert, decode
from ..monitors.feedback import FEEDBACK_KINDS, FeedbackSettings
from ..monitors.sessions import SessionsSettings
from ..monitors.windows import parse_settings

__all__ = ["BUCKET_LADDER_S", "MAX_BUCKETS", "build_report", "choose_bucket_s", "report",
           "to_epoch_ns"]

#: Bucket widths the time series may use, smallest first: the report picks the
#: smallest that cuts the range into at most :data:`MAX_BUCKETS` buckets.
BUCKET_LADDER_S: tuple[int, ...] = (
    60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 28 * 86400,
)
MAX_BUCKETS = 200
REPORT_FORMAT = 1
_SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}
_NS = 1_000_000_000
_BUCKET_SHIFT = 50
_VALUE_MASK = (1 << _BUCKET_SHIFT) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def report(
    since: str | datetime | date | int | None = None,
    until: str | datetime | date | int | None = None,
    *,
    store: str | Path | None = None,
) -> dict[str, Any]:
    """Build the report from the local store, as ``vigil report --json`` prints it.

    Args:
        since: start of the range: a duration back from now (``"24h"``, ``"15m"``,
            ``"7d"``), an ISO-8601 date or date-time, a ``datetime`` (naive means
            local time), or epoch nanoseconds. ``None``: from the first record.
        until: end of the range (exclusive), same forms; ``None``: up to the last record.
        store: the SQLite store; by default ``store.path`` of the active runtime's
            config, else of the config ``load_config()`` finds.

    Records still queued in this process are not in the store yet: call
    ``llmvigil.flush()`` first to include them.

    Raises:
        ValueError: ``since``/``until`` cannot be read, or ``until`` is not after ``since``.
        FileNotFoundError: the store does not exist yet ("no records yet").
        VigilError: the config is invalid, or the store is from a newer llmvigil.
    """
    config = _active_config()
    now = time.time_ns()
    return build_report(
        store if store is not None else config.store.path,
        since_ns=to_epoch_ns(since, now_ns=now, name="since"),
        until_ns=to_epoch_ns(until, now_ns=now, name="until"),
        feedback=config.monitors.get("feedback"),
        sessions=config.monitors.get("sessions"),
    )


def to_epoch_ns(
    value: str | datetime | date | int | None, *, now_ns: int | None = None, name: str = "time"
) -> int | None:
    """Read a ``since``/``until`` value as epoch nanoseconds (``None`` stays ``None``).

    Raises:
        ValueError: the value is of none of the accepted forms; names ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a time, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.astimezone()
        return _datetime_ns(dt)
    if isinstance(value, date):
        return _datetime_ns(datetime(value.year, value.month, value.day).astimezone())
    if isinstance(value, str):
        try:
            return sq.parse_since(value, now_ns=now_ns)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    raise ValueError(
        f"{name}: expected a duration string such as '24h', an ISO-8601 time, a datetime "
        f"or epoch nanoseconds, got {type(value).__name__}"
    )


def build_report(
    store_path: str | Path,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    now_ns: int | None = None,
    feedback: Mapping[str, Any] | FeedbackSettings | None = None,
    sessions: Mapping[str, Any] | SessionsSettings | None = None,
    top_n: int = 10,
) -> dict[str, Any]:
    """Compute the report over ``[since_ns, until_ns)`` from the SQLite store at ``store_path``.

    Args:
        store_path: the local store file.
        since_ns: start of the range (epoch ns); ``None``: the first record.
        until_ns: end of the range, exclusive; ``None``: just after the last record.
        now_ns: the time sessions' inactivity is judged at when ``until_ns`` is
            ``None`` (default: the clock).
        feedback: ``monitors.feedback`` settings: which kinds are positive/negative
            and the rating threshold.
        sessions: ``monitors.sessions`` settings: ``idle_timeout_s``.
        top_n: how many users and features the cost rankings list.

    Returns:
        A JSON-able dict (see the module docstring and ``docs/report.md``).

    Raises:
        ValueError: ``until_ns`` is not after ``since_ns``.
        FileNotFoundError: the store does not exist yet.
        ConfigError: invalid ``feedback``/``sessions`` settings.
        VigilError: the store has a newer schema than this llmvigil reads.
    """
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        raise ValueError(
            f"until ({_iso(until_ns)}) must be after since ({_iso(since_ns)})"
        )
    fb = parse_settings(FeedbackSettings, feedback, "monitors.feedback")
    ss = parse_settings(SessionsSettings, sessions, "monitors.sessions")
    conn = sq.connect_readonly(store_path)
    try:
        conn.execute("BEGIN")  # one snapshot for every query
        raw = _read(conn, since_ns, until_ns, now_ns, fb, ss, top_n)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return _assemble(raw, store_path, since_ns, until_ns, fb, ss, top_n)


# ---------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------

_NO_RECORDS_LO = -(2**63)
_NO_RECORDS_HI = 2**63 - 1


def choose_bucket_s(lo_ns: int, hi_ns: int) -> int:
    """The smallest width of :data:`BUCKET_LADDER_S` giving at most :data:`MAX_BUCKETS` buckets."""
    for width in BUCKET_LADDER_S:
        w = width * _NS
        if -(-(hi_ns - (lo_ns // w) * w) // w) <= MAX_BUCKETS:
            return width
    return BUCKET_LADDER_S[-1]


def _read(
    conn: Any, since_ns: int | None, until_ns: int | None, now_ns: int | None,
    fb: FeedbackSettings, ss: SessionsSettings, top_n: int,
) -> dict[str, Any]:
    tables = sq.report_tables(conn)
    bounds = sq.time_bounds(
        conn,
        since_ns if since_ns is not None else _NO_RECORDS_LO,
        until_ns if until_ns is not None else _NO_RECORDS_HI,
        tables,
    )
    raw: dict[str, Any] = {"bounds": bounds, "window": None}
    if bounds is None and (since_ns is None or until_ns is None):
        return raw  # no records and no complete range to lay out empty buckets on
    lo = since_ns if since_ns is not None else bounds[0]  # type: ignore[index]
    hi = until_ns if until_ns is not None else bounds[1] + 1  # type: ignore[index]
    bucket_ns = choose_bucket_s(lo, hi) * _NS
    window = sq.Window(lo, hi, (lo // bucket_ns) * bucket_ns, bucket_ns)
    raw["window"] = window
    if bounds is None:
        return raw

    # A slot emptied by replaced spans keeps a row of zeros: not a feature to show.
    raw["sums"] = {key: sums for key, sums in sq.span_sums(conn, window, tables).items()
                   if sums[0] > 0}
    features = sorted({feature for feature, _ in raw["sums"]})
    raw["roots"] = {}
    raw["ttft"] = {}
    if "spans" in tables:
        for feature in features:
            raw["roots"][feature] = sq.root_durations(conn, feature, window)
            ttft = sq.ttft_values(conn, feature, window)
            if ttft[0].size:
                raw["ttft"][feature] = ttft
        raw["users"] = sq.top_users(conn, window, top_n)
    else:
        raw["users"] = ([], 0)
    raw["feedback"] = (
        sq.feedback_rows(conn, window, FEEDBACK_KINDS, fb.positive_kinds)
        if "scores" in tables else []
    )
    clock = until_ns if until_ns is not None else (now_ns if now_ns is not None
                                                   else time.time_ns())
    raw["sessions"] = sq.session_sums(
        conn, window, now_ns=clock, idle_timeout_ns=int(ss.idle_timeout_s * _NS), tables=tables
    )
    raw["alerts"] = sq.alert_rows(conn, window) if "alerts" in tables else []
    raw["safety"] = sq.safety_rows(conn, window) if "safety_verdicts" in tables else []
    return raw


# ---------------------------------------------------------------------------
# Assembling the dict
# ---------------------------------------------------------------------------


def _assemble(
    raw: dict[str, Any], store_path: str | Path, since_ns: int | None, until_ns: int | None,
    fb: FeedbackSettings, ss: SessionsSettings, top_n: int,
) -> dict[str, Any]:
    import numpy as np  # only the report needs numpy; keep importing llmvigil light

    window: sq.Window | None = raw["window"]
    bounds = raw["bounds"]
    out: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "path": str(Path(store_path).expanduser()),
        "since_ns": since_ns,
        "until_ns": until_ns,
        "time_range": None if window is None else _range(window.lo_ns, window.hi_ns),
        "data_range": None if bounds is None else {
            "first_ns": bounds[0], "last_ns": bounds[1],
            "first": _iso(bounds[0]), "last": _iso(bounds[1]),
        },
        "bucket_s": None if window is None else window.bucket_ns // _NS,
        "settings": {
            "positive_kinds": list(fb.positive_kinds),
            "negative_kinds": list(fb.negative_kinds),
            "rating_positive_min": fb.rating_positive_min,
            "session_idle_timeout_s": ss.idle_timeout_s,
        },
    }
    if bounds is None or window is None:
        out.update(
            totals=_figures(_Acc(), np), features={}, top_features=[], top_users=[],
            users_with_cost=0, alerts=[], safety=_safety([]),
            series=_empty_series(window, np),
        )
        return out
    accs: dict[str, _Acc] = {}

    def acc(feature: str) -> _Acc:
        label = sq.NONE_FEATURE if feature == "" else feature
        if label not in accs:
            accs[label] = _Acc()
        return accs[label]

    n = window.buckets
    series = _SeriesAcc(n)
    for (feature, bucket), sums in raw["sums"].items():
        acc(feature).add_sums(sums)
        series.add_sums(bucket, sums)
    for feature, (buckets, durations) in raw["roots"].items():
        acc(feature).roots.append(durations)
        series.root_buckets.append(buckets)
        series.root_durations.append(durations)
    for feature, (buckets, ttft, durations) in raw["ttft"].items():
        a = acc(feature)
        a.ttft.append(ttft)
        a.stream.append(durations)
        series.ttft_buckets.append(buckets)
        series.ttft.append(ttft)
    positive, negative = frozenset(fb.positive_kinds), frozenset(fb.negative_kinds)
    for feature, kind, value, bucket, category in raw["feedback"]:
        verdict = _verdict(kind, value, positive, negative, fb.rating_positive_min)
        a = acc(feature)
        a.feedback += 1
        if verdict is True:
            a.positive += 1
            series.add(bucket, "feedback_positive", 1)
        elif verdict is False:
            a.negative += 1
            series.add(bucket, "feedback_negative", 1)
            key = category or "uncategorized"
            a.categories[key] = a.categories.get(key, 0) + 1
    for (feature, bucket), values in raw["sessions"].items():
        a = acc(feature)
        for name, value in zip(sq.SESSION_FIELDS, values, strict=True):
            a.sessions[name] += value
            series.add(bucket, "session_" + name, value)

    totals = _Acc()
    for a in accs.values():
        totals.merge(a)
    features = {label: _figures(accs[label], np) for label in sorted(accs)}
    out["totals"] = _figures(totals, np)
    out["features"] = features
    total_cost = out["totals"]["cost_usd"]
    ranked = sorted(features.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    out["top_features"] = [
        {"feature": label, "cost_usd": f["cost_usd"], "requests": f["requests"],
         "share": f["cost_usd"] / total_cost}
        for label, f in ranked if f["cost_usd"] > 0
    ][:top_n]
    users, users_with_cost = raw["users"]
    out["top_users"] = [
        {"user_id": user, "cost_usd": cost, "priced_spans": calls,
         "share": cost / total_cost if total_cost > 0 else None}
        for user, cost, calls in users
    ]
    out["users_with_cost"] = users_with_cost
    out["alerts"] = _alerts(raw["alerts"])
    out["safety"] = _safety(raw["safety"])
    out["series"] = series.finish(window, np)
    return out


class _Acc:
    """Running figures of one feature (or of the total)."""

    def __init__(self) -> None:
        self.sums = [0.0] * len(sq.ROLLUP_FIELDS)
        self.roots: list[Any] = []
        self.ttft: list[Any] = []
        self.stream: list[Any] = []
        self.feedback = 0
        self.positive = 0
        self.negative = 0
        self.categories: dict[str, int] = {}
        self.sessions = dict.fromkeys(sq.SESSION_FIELDS, 0.0)

    def add_sums(self, sums: list[float]) -> None:
        for i, value in enumerate(sums):
            self.sums[i] += value

    def merge(self, other: _Acc) -> None:
        self.add_sums(other.sums)
        self.roots += other.roots
        self.ttft += other.ttft
        self.stream += other.stream
        self.feedback += other.feedback
        self.positive += other.positive
        self.negative += other.negative
        for key, count in other.categories.items():
            self.categories[key] = self.categories.get(key, 0) + count
        for key, value in other.sessions.items():
            self.sessions[key] += value


def _verdict(kind: str, value: float | None, positive: frozenset[str],
             negative: frozenset[str], rating_min: float) -> bool | None:
    if kind in positive:
        return True
    if kind in negative:
        return False
    if kind == "rating" and value is not None:
        return value >= rating_min
    return None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _percentiles(np: Any, parts: list[Any], scale: float) -> list[float | None]:
    """p50, p95, p99 of the concatenated arrays (divided by ``scale``), ``None`` when empty."""
    if not parts:
        return [None, None, None]
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if not values.size:
        return [None, None, None]
    if scale != 1.0:
        values = np.maximum(values, 0) / scale
    return [float(v) for v in np.percentile(values, [50, 95, 99])]


def _figures(a: _Acc, np: Any) -> dict[str, Any]:
    s = dict(zip(sq.ROLLUP_FIELDS, a.sums, strict=True))
    requests, errors = int(s["requests"]), int(s["errors"])
    lat = _percentiles(np, a.roots, float(_NS))
    ttft = _percentiles(np, a.ttft, float(_NS))
    stream = _percentiles(np, a.stream, float(_NS))
    latency_mean = None
    if a.roots:
        total = sum(float(np.maximum(d, 0).sum()) for d in a.roots)
        count = sum(int(d.size) for d in a.roots)
        latency_mean = total / count / _NS if count else None
    cost = float(s["cost_usd"])
    judged = a.positive + a.negative
    ss = a.sessions
    abandoned = ss["abandoned_explicit"] + ss["abandoned_timeout"]
    resolved = ss["completed"] + abandoned
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": _ratio(errors, requests),
        "latency_p50_s": lat[0],
        "latency_p95_s": lat[1],
        "latency_p99_s": lat[2],
        "latency_mean_s": latency_mean,
        "ttft_count": int(s["ttft_count"]),
        "ttft_mean_s": _ratio(float(s["ttft_sum_s"]), s["ttft_count"]),
        "ttft_p50_s": ttft[0],
        "ttft_p95_s": ttft[1],
        "ttft_p99_s": ttft[2],
        "stream_latency_p50_s": stream[0],
        "stream_latency_p95_s": stream[1],
        "stream_latency_p99_s": stream[2],
        "spans": int(s["spans"]),
        "span_errors": int(s["span_errors"]),
        "input_tokens": int(s["input_tokens"]),
        "output_tokens": int(s["output_tokens"]),
        "cache_read_tokens": int(s["cache_read_tokens"]),
        "cache_write_tokens": int(s["cache_write_tokens"]),
        "cost_usd": cost,
        "priced_spans": int(s["priced_spans"]),
        "unpriced_llm_spans": int(s["unpriced_llm_spans"]),
        "cost_per_request_usd": _ratio(cost, requests),
        "feedback_count": a.feedback,
        "feedback_positive": a.positive,
        "feedback_negative": a.negative,
        "satisfaction_rate": _ratio(a.positive, judged),
        "feedback_rate": _ratio(a.feedback, requests),
        "negative_by_category": dict(sorted(a.categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sessions": int(ss["sessions"]),
        "sessions_completed": int(ss["completed"]),
        "sessions_abandoned": int(abandoned),
        "sessions_abandoned_timeout": int(ss["abandoned_timeout"]),
        "sessions_open": int(ss["sessions"] - resolved),
        "task_completion_rate": _ratio(ss["completed"], resolved),
        "abandon_rate": _ratio(abandoned, resolved),
        "turns_mean": _ratio(ss["turns"], ss["sessions"]),
        "time_to_completion_mean_s": _ratio(ss["completion_ns"] / _NS, ss["completed"]),
    }


class _SeriesAcc:
    """Per-bucket counters and samples for the time series."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.counts: dict[str, list[float]] = {}
        self.root_buckets: list[Any] = []
        self.root_durations: list[Any] = []
        self.ttft_buckets: list[Any] = []
        self.ttft: list[Any] = []

    def add(self, bucket: int, name: str, value: float) -> None:
        column = self.counts.get(name)
        if column is None:
            column = self.counts[name] = [0.0] * self.n
        if 0 <= bucket < self.n:
            column[bucket] += value

    def add_sums(self, bucket: int, sums: list[float]) -> None:
        s = dict(zip(sq.ROLLUP_FIELDS, sums, strict=True))
        for name in ("requests", "errors", "cost_usd", "input_tokens", "output_tokens"):
            self.add(bucket, name, s[name])

    def _per_bucket(self, np: Any, buckets: list[Any], values: list[Any],
                    scale: float) -> list[list[float | None]]:
        """p50, p95, p99 per bucket of int64 ``values`` (divided by ``scale``), all at once.

        numpy's linear interpolation, on one sort of ``bucket << 50 | value``: values
        are nanoseconds, capped at 2**50 (13 days).
        """
        out: list[list[float | None]] = [[None] * self.n for _ in range(3)]
        if not buckets:
            return out
        b = np.concatenate(buckets)
        keep = (b >= 0) & (b < self.n)
        b = b[keep]
        if not b.size:
            return out
        v = np.clip(np.concatenate(values)[keep], 0, _VALUE_MASK)
        keys = np.sort((b.astype(np.int64) << _BUCKET_SHIFT) | v)
        b = keys >> _BUCKET_SHIFT
        v = (keys & _VALUE_MASK).astype(np.float64) / scale
        counts = np.bincount(b, minlength=self.n)
        filled = np.flatnonzero(counts)
        first = (np.cumsum(counts) - counts)[filled]
        size = counts[filled]
        for i, q in enumerate((0.50, 0.95, 0.99)):
            pos = q * (size - 1)
            below = np.floor(pos).astype(np.int64)
            above = np.minimum(below + 1, size - 1)
            t = pos - below
            lo_v, hi_v = v[first + below], v[first + above]
            diff = hi_v - lo_v
            # numpy's _lerp: from the nearer end, so the result is exact at t = 0 and 1
            value = np.where(t >= 0.5, hi_v - diff * (1 - t), lo_v + diff * t)
            column = out[i]
            for bucket, x in zip(filled.tolist(), value.tolist(), strict=True):
                column[bucket] = x
        return out

    def finish(self, window: sq.Window, np: Any) -> dict[str, Any]:
        def col(name: str, cast: type = float) -> list[Any]:
            values = self.counts.get(name, [0.0] * self.n)
            return [cast(v) for v in values]

        lat = self._per_bucket(np, self.root_buckets, self.root_durations, float(_NS))
        ttft = self._per_bucket(np, self.ttft_buckets, self.ttft, float(_NS))
        requests = col("requests", int)
        errors = col("errors", int)
        pos = col("feedback_positive", int)
        neg = col("feedback_negative", int)
        completed = col("session_completed", int)
        abandoned = [int(a + b) for a, b in zip(col("session_abandoned_explicit"),
                                                col("session_abandoned_timeout"), strict=True)]
        starts = [window.origin_ns + i * window.bucket_ns for i in range(self.n)]
        return {
            "bucket_s": window.bucket_ns // _NS,
            "start_ns": starts,
            "requests": requests,
            "errors": errors,
            "error_rate": [_ratio(e, r) for e, r in zip(errors, requests, strict=True)],
            "latency_p50_s": lat[0],
            "latency_p95_s": lat[1],
            "latency_p99_s": lat[2],
            "ttft_p50_s": ttft[0],
            "ttft_p95_s": ttft[1],
            "cost_usd": col("cost_usd"),
            "input_tokens": col("input_tokens", int),
            "output_tokens": col("output_tokens", int),
            "feedback_positive": pos,
            "feedback_negative": neg,
            "satisfaction_rate": [_ratio(p, p + q) for p, q in zip(pos, neg, strict=True)],
            "sessions": col("session_sessions", int),
            "sessions_completed": completed,
            "sessions_abandoned": abandoned,
            "task_completion_rate": [_ratio(c, c + a)
                                     for c, a in zip(completed, abandoned, strict=True)],
        }


def _empty_series(window: sq.Window | None, np: Any) -> dict[str, Any]:
    if window is None:
        return {"bucket_s": None, "start_ns": []}
    return _SeriesAcc(window.buckets).finish(window, np)


def _alerts(rows: list[tuple[str, str, int, int, bytes]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rule, severity, count, last_ns, data in rows:
        message: str = ""
        labels: dict[str, str] = {}
        try:
            alert = decode(data)
        except Exception:  # a record this version cannot read: still count it
            alert = None
        if isinstance(alert, Alert):
            message, labels = alert.message, dict(alert.labels)
        out.append({"rule": rule, "severity": severity, "count": count, "last_ns": last_ns,
                    "last": _iso(last_ns), "last_message": message, "last_labels": labels})
    out.sort(key=lambda a: (_SEVERITY_ORDER.get(str(a["severity"]), 9), -int(a["count"]),
                            str(a["rule"])))
    return out


def _safety(rows: list[tuple[str, str, int]]) -> dict[str, Any]:
    by_action: dict[str, int] = {}
    by_category: dict[str, dict[str, int]] = {}
    for action, category, count in rows:
        by_action[action] = by_action.get(action, 0) + count
        if category:
            cats = by_category.setdefault(action, {})
            cats[category] = cats.get(category, 0) + count
    return {
        "verdicts": sum(by_action.values()),
        "by_action": dict(sorted(by_action.items())),
        "by_category": {a: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                        for a, c in sorted(by_category.items())},
    }


def _range(lo: int, hi: int) -> dict[str, Any]:
    return {"start_ns": lo, "end_ns": hi, "start": _iso(lo), "end": _iso(hi)}


def _iso(ns: int) -> str:
    return sq._iso(ns)


def _datetime_ns(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000


def _active_config() -> Any:
    from ..config import load_config
    from ..runtime import get_runtime, is_initialized

    if is_initialized():
        runtime = get_runtime()
        if runtime is not None:
            return runtime.config
    return load_config()

