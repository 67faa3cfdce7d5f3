"""The operational report (``llmvigil.report`` / ``vigil report``) against independent computations.

Records are generated with a seeded generator and written to a real local store;
every figure of the report is recomputed here from the records themselves (plain
Python and numpy, no llmvigil code) and compared.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import llmvigil
import numpy as np
import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core import store_queries as sq
from llmvigil.core.model import (
    Alert,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    Usage,
)
from llmvigil.core.report import build_report, choose_bucket_s, to_epoch_ns
from llmvigil.core.report import report as report_api

T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
S = 10**9
H = 3600 * S
FEATURES = ("chat", "search", "extract_invoice_dates", None)
IDLE_S = 1800.0
NOW = T0 + 40 * H
POSITIVE = {"thumbs_up"}
NEGATIVE = {"thumbs_down", "correction", "report"}


# ---------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------


def make_traffic(seed: int = 3, requests: int = 800, hours: int = 30) -> list[Record]:
    """Requests over ``hours`` hours with feedback, sessions, alerts and safety verdicts."""
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    sessions: dict[str, int] = {}
    for i in range(requests):
        feature = FEATURES[i % len(FEATURES)]
        start = T0 + int(rng.integers(0, hours * H))
        duration = int(rng.lognormal(20.5, 0.7))
        session = f"s{i // 12}" if feature == "chat" else None
        trace = f"{i:016x}{seed:016x}"
        # Half the roots have the id llmvigil gives a root (the first half of its trace
        # id), half the id of a span imported from another tool: a trace's root is
        # looked up differently for each.
        root = Span(id=trace[:16] if i % 2 else f"r{i:015x}", trace_id=trace, name="handle",
                    kind="chain",
                    start_ns=start, end_ns=start + duration,
                    status="error" if rng.random() < 0.1 else "ok", feature=feature,
                    user_id=f"u{i % 37:02d}", session_id=session)
        streamed = feature == "chat" or (feature == "search" and rng.random() < 0.4)
        child = Span(
            id=f"c{i:015x}", trace_id=trace, parent_id=root.id, name="llm", kind="llm",
            start_ns=start + 1000, end_ns=start + duration - 1000,
            status="error" if rng.random() < 0.03 else "ok", feature=feature,
            user_id=root.user_id, session_id=session,
            usage=Usage(input_tokens=int(rng.integers(10, 3000)),
                        output_tokens=int(rng.integers(1, 900)),
                        cache_read_tokens=int(rng.integers(0, 200)),
                        cache_write_tokens=int(rng.integers(0, 50))),
            cost_usd=None if rng.random() < 0.1 else float(rng.random() / 50),
            ttft_s=float(rng.lognormal(-1, 0.4)) if streamed else None,
        )
        records += [root, child]
        if i % 5 == 0:  # a tool call: no usage, no cost
            records.append(Span(id=f"x{i:015x}", trace_id=trace, parent_id=root.id,
                                name="tool", kind="tool", start_ns=start + 50,
                                end_ns=start + 60, feature=feature))
        if session is not None:
            sessions[session] = sessions.get(session, 0) + 1
        if rng.random() < 0.35:
            kind = ("thumbs_up", "thumbs_up", "thumbs_down", "rating", "correction",
                    "report")[int(rng.integers(0, 6))]
            link = int(rng.integers(0, 3))
            records.append(Score(
                id=f"f{i:015x}", name="user_feedback", kind=kind,
                value=float(rng.integers(1, 6)) if kind == "rating" else None,
                category=(None, "wrong_date", "tone")[int(rng.integers(0, 3))]
                if kind != "thumbs_up" else None,
                time_ns=start + duration + S,
                feature=feature if link == 0 else None,
                span_id=child.id if link == 1 else None,
                trace_id=trace if link == 2 else None,
            ))
    for k, name in enumerate(sorted(sessions)):
        first = min(r.start_ns for r in records if isinstance(r, Span)
                    and r.session_id == name and r.parent_id is None)
        records.append(SessionEvent(id=f"e{k}a", session_id=name, event="start",
                                    time_ns=first, feature="chat"))
        outcome = k % 4
        if outcome in (0, 1):
            records.append(SessionEvent(id=f"e{k}b", session_id=name, event="task_complete",
                                        time_ns=first + (k + 1) * 60 * S))
        elif outcome == 2:
            records.append(SessionEvent(id=f"e{k}b", session_id=name, event="abandon",
                                        time_ns=first + 30 * S))
        if k % 3 == 0:
            records.append(SessionEvent(id=f"e{k}c", session_id=name, event="follow_up",
                                        time_ns=first + 10 * S))
    # A session of an app that reports turns as events, without spans.
    records += [
        SessionEvent(id="ev1", session_id="evonly", event="start", time_ns=T0 + 2 * H,
                     feature="search"),
        SessionEvent(id="ev2", session_id="evonly", event="turn", time_ns=T0 + 2 * H + S),
        SessionEvent(id="ev3", session_id="evonly", event="turn", time_ns=T0 + 2 * H + 2 * S),
        SessionEvent(id="ev4", session_id="evonly", event="task_complete",
                     time_ns=T0 + 2 * H + 9 * S),
    ]
    for k in range(12):
        records.append(Alert(
            id=f"a{k}", rule=("latency.p95", "cost.budget", "feedback.satisfaction_drop")[k % 3],
            severity=("warning", "critical")[k % 2], message=f"alert number {k}",
            time_ns=T0 + k * 2 * H + 17 * S, labels={"feature": "chat"},
        ))
    for k in range(50):
        action = ("serve", "serve", "review", "block")[k % 4]
        records.append(SafetyVerdict(
            id=f"v{k}", action=action, time_ns=T0 + k * 30 * 60 * S,
            category=("pii", "toxicity")[k % 2] if action != "serve" else None))
    return records


# ---------------------------------------------------------------------------
# Independent computation
# ---------------------------------------------------------------------------


def time_of(r: Record) -> int:
    return r.start_ns if isinstance(r, Span) else r.time_ns  # type: ignore[union-attr]


def pct(values: Iterable[float]) -> list[float | None]:
    v = list(values)
    return [float(x) for x in np.percentile(v, [50, 95, 99])] if v else [None] * 3


def expected(records: list[Record], lo: int, hi: int, now: int) -> dict[str, dict[str, Any]]:
    """Per-feature figures (label -> figures) plus "all", from the records alone."""
    inside = [r for r in records if lo <= time_of(r) < hi]
    spans = [r for r in inside if isinstance(r, Span)]
    all_spans = {r.id: r for r in records if isinstance(r, Span)}
    roots_of_trace = {r.trace_id: r for r in records if isinstance(r, Span)
                      and r.parent_id is None}

    def label(feature: str | None) -> str:
        return feature if feature else "(none)"

    def feedback_feature(sc: Score) -> str | None:
        if sc.feature:
            return sc.feature
        if sc.span_id in all_spans and all_spans[sc.span_id].feature:
            return all_spans[sc.span_id].feature
        root = roots_of_trace.get(sc.trace_id or "")
        return root.feature if root is not None else None

    # Sessions, per the documented definitions.
    act: dict[str, dict[str, Any]] = {}

    def touch(sid: str, feature: str | None, t0: int, t1: int) -> dict[str, Any]:
        s = act.setdefault(sid, {"features": set(), "turns": 0, "first": t0, "last": t1,
                                 "done": None, "abandoned": False})
        if feature:
            s["features"].add(feature)
        s["first"], s["last"] = min(s["first"], t0), max(s["last"], t1)
        return s

    for r in spans:
        if r.session_id and r.parent_id is None:
            touch(r.session_id, r.feature, r.start_ns, max(r.end_ns, r.start_ns))["turns"] += 1
    for r in inside:
        if isinstance(r, SessionEvent):
            s = touch(r.session_id, r.feature, r.time_ns, r.time_ns)
            if r.event == "turn":
                s["turns"] += 1
            elif r.event == "task_complete":
                s["done"] = r.time_ns if s["done"] is None else min(s["done"], r.time_ns)
            elif r.event == "abandon":
                s["abandoned"] = True

    out: dict[str, dict[str, Any]] = {}
    labels = {label(r.feature) for r in spans}
    labels |= {label(feedback_feature(r)) for r in inside
               if isinstance(r, Score) and r.kind in POSITIVE | NEGATIVE | {"rating"}}
    labels |= {label(min(s["features"]) if s["features"] else None) for s in act.values()}
    for name in [*sorted(labels), "all"]:
        def mine(feature: str | None, name: str = name) -> bool:
            return name == "all" or label(feature) == name

        sp = [r for r in spans if mine(r.feature)]
        roots = [r for r in sp if r.parent_id is None]
        ttft = [r for r in sp if r.ttft_s is not None]
        fb = [r for r in inside if isinstance(r, Score) and mine(feedback_feature(r))]
        pos = [r for r in fb if r.kind in POSITIVE
               or (r.kind == "rating" and r.value is not None and r.value >= 4)]
        neg = [r for r in fb if r.kind in NEGATIVE
               or (r.kind == "rating" and r.value is not None and r.value < 4)]
        cats: dict[str, int] = {}
        for r in neg:
            cats[r.category or "uncategorized"] = cats.get(r.category or "uncategorized", 0) + 1
        ss = [s for s in act.values()
              if mine(min(s["features"]) if s["features"] else None)]
        done = [s for s in ss if s["done"] is not None]
        explicit = [s for s in ss if s["done"] is None and s["abandoned"]]
        timeout = [s for s in ss if s["done"] is None and not s["abandoned"]
                   and s["last"] <= now - IDLE_S * S]
        resolved = len(done) + len(explicit) + len(timeout)
        errors = sum(r.status == "error" for r in roots)
        usages = [r.usage for r in sp if r.usage is not None]
        cost = math.fsum(r.cost_usd or 0.0 for r in sp)
        lat = pct((r.end_ns - r.start_ns) / 1e9 for r in roots)
        tt = pct(r.ttft_s for r in ttft)  # type: ignore[misc]
        st = pct((r.end_ns - r.start_ns) / 1e9 for r in ttft)
        out[name] = {
            "requests": len(roots), "errors": errors,
            "error_rate": errors / len(roots) if roots else None,
            "latency_p50_s": lat[0], "latency_p95_s": lat[1], "latency_p99_s": lat[2],
            "ttft_count": len(ttft), "ttft_p50_s": tt[0], "ttft_p95_s": tt[1],
            "ttft_p99_s": tt[2], "stream_latency_p50_s": st[0], "stream_latency_p95_s": st[1],
            "stream_latency_p99_s": st[2],
            "ttft_mean_s": (math.fsum(r.ttft_s for r in ttft) / len(ttft)  # type: ignore[misc]
                            if ttft else None),
            "spans": len(sp), "span_errors": sum(r.status == "error" for r in sp),
            "input_tokens": sum(u.input_tokens for u in usages),
            "output_tokens": sum(u.output_tokens for u in usages),
            "cache_read_tokens": sum(u.cache_read_tokens for u in usages),
            "cache_write_tokens": sum(u.cache_write_tokens for u in usages),
            "cost_usd": cost,
            "priced_spans": sum(r.cost_usd is not None for r in sp),
            "unpriced_llm_spans": sum(r.kind == "llm" and r.cost_usd is None for r in sp),
            "feedback_count": len(fb), "feedback_positive": len(pos),
            "feedback_negative": len(neg),
            "satisfaction_rate": len(pos) / (len(pos) + len(neg)) if pos or neg else None,
            "feedback_rate": len(fb) / len(roots) if roots else None,
            "negative_by_category": cats,
            "sessions": len(ss), "sessions_completed": len(done),
            "sessions_abandoned": len(explicit) + len(timeout),
            "sessions_abandoned_timeout": len(timeout),
            "sessions_open": len(ss) - resolved,
            "task_completion_rate": len(done) / resolved if resolved else None,
            "abandon_rate": (len(explicit) + len(timeout)) / resolved if resolved else None,
            "turns_mean": sum(s["turns"] for s in ss) / len(ss) if ss else None,
            "time_to_completion_mean_s": (
                sum((s["done"] - s["first"]) / 1e9 for s in done) / len(done) if done else None),
        }
    return out


def assert_figures(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for key, value in want.items():
        if isinstance(value, float):
            # TTFTs are read in whole nanoseconds.
            tolerance = 1e-9 if key.startswith("ttft_p") else 1e-12
            assert got[key] == pytest.approx(value, rel=1e-9, abs=tolerance), f"{where}.{key}"
        else:
            assert got[key] == value, f"{where}.{key}"


# ---------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------


def write_store(path: Path, records: list[Record], state: str = "rolled") -> Path:
    """Write ``records`` with LocalStore, then put the rollup in ``state``.

    ``rolled``: every span rolled up; ``tail``: none (the report reads every span);
    ``mixed``: the first half rolled up, the rest not yet.
    """
    with LocalStore(path) as store:
        store.write(records)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        sq.rebuild_rollup(conn)
        if state != "rolled":
            mid = 0 if state == "tail" else conn.execute(
                "SELECT MAX(rowid) / 2 FROM spans").fetchone()[0]
            conn.execute(sq._rollup_upsert("rowid > ?", "-"), (mid,))
            conn.execute("UPDATE spans_rollup_state SET last_rowid = ?", (mid,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


@pytest.fixture(scope="module")
def traffic() -> list[Record]:
    return make_traffic()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, traffic: list[Record]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    return {state: write_store(root / f"{state}.db", traffic, state)
            for state in ("rolled", "tail", "mixed")}


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["rolled", "tail", "mixed"])
def test_report_matches_an_independent_computation(
    stores: dict[str, Path], traffic: list[Record], state: str
) -> None:
    got = build_report(stores[state], now_ns=NOW, sessions={"idle_timeout_s": IDLE_S})
    first = min(time_of(r) for r in traffic)
    last = max(time_of(r) for r in traffic)
    want = expected(traffic, first, last + 1, NOW)
    assert got["data_range"]["first_ns"] == first and got["data_range"]["last_ns"] == last
    assert got["time_range"]["start_ns"] == first and got["time_range"]["end_ns"] == last + 1
    assert set(got["features"]) == set(want) - {"all"}
    assert list(got["features"]) == sorted(got["features"])
    for name, figures in want.items():
        assert_figures(got["totals"] if name == "all" else got["features"][name], figures, name)
    # The rates that must not be confused with "no data".
    assert got["features"]["(none)"]["sessions"] == 0
    assert got["features"]["(none)"]["task_completion_rate"] is None


def test_series_match_an_independent_computation(
    stores: dict[str, Path], traffic: list[Record]
) -> None:
    got = build_report(stores["mixed"], now_ns=NOW)
    series = got["series"]
    bucket = got["bucket_s"] * S
    assert got["bucket_s"] == 900  # 30 hours: the smallest width giving at most 200 buckets
    origin = series["start_ns"][0]
    assert origin % bucket == 0 and origin <= got["time_range"]["start_ns"] < origin + bucket
    n = len(series["start_ns"])
    assert series["start_ns"][-1] < got["time_range"]["end_ns"] <= series["start_ns"][-1] + bucket
    roots = [r for r in traffic if isinstance(r, Span) and r.parent_id is None]
    spans = [r for r in traffic if isinstance(r, Span)]
    for i in range(n):
        lo, hi = origin + i * bucket, origin + (i + 1) * bucket
        in_bucket = [r for r in roots if lo <= r.start_ns < hi]
        assert series["requests"][i] == len(in_bucket)
        assert series["errors"][i] == sum(r.status == "error" for r in in_bucket)
        lat = pct((r.end_ns - r.start_ns) / 1e9 for r in in_bucket)
        for key, value in zip(("latency_p50_s", "latency_p95_s", "latency_p99_s"), lat,
                              strict=True):
            assert series[key][i] == (None if value is None else pytest.approx(value, rel=1e-12))
        ttft = pct(r.ttft_s for r in spans if r.ttft_s is not None  # type: ignore[misc]
                   and lo <= r.start_ns < hi)
        assert series["ttft_p95_s"][i] == (None if ttft[1] is None
                                           else pytest.approx(ttft[1], rel=0, abs=1e-9))
        cost = math.fsum(r.cost_usd or 0 for r in spans if lo <= r.start_ns < hi)
        assert series["cost_usd"][i] == pytest.approx(cost, rel=1e-9, abs=1e-15)
    assert sum(series["requests"]) == got["totals"]["requests"]
    assert sum(series["feedback_positive"]) == got["totals"]["feedback_positive"]
    assert sum(series["sessions"]) == got["totals"]["sessions"]
    rates = [r for r in series["satisfaction_rate"] if r is not None]
    assert rates and all(0 <= r <= 1 for r in rates)


@pytest.mark.parametrize("state", ["rolled", "mixed"])
def test_since_and_until_select_exactly_the_records_in_range(
    tmp_path: Path, traffic: list[Record], state: str
) -> None:
    # Boundaries off the 5-minute slots, records exactly on them.
    lo = T0 + 3 * H + 7 * 60 * S + 13 * S
    hi = T0 + 21 * H + 2 * 60 * S + 1
    edge = [
        Span(id="on_lo", trace_id="edge1", start_ns=lo, end_ns=lo + S, feature="search",
             status="ok"),
        Span(id="on_hi", trace_id="edge2", start_ns=hi, end_ns=hi + S, feature="search",
             status="error"),
        Span(id="before_lo", trace_id="edge3", start_ns=lo - 1, end_ns=lo + S, feature="search"),
    ]
    records = [*traffic, *edge]
    path = write_store(tmp_path / "range.db", records, state)
    got = build_report(path, since_ns=lo, until_ns=hi, now_ns=NOW)
    want = expected(records, lo, hi, hi)  # with an end, sessions' idleness is judged there
    assert got["since_ns"] == lo and got["until_ns"] == hi
    assert got["time_range"]["start_ns"] == lo and got["time_range"]["end_ns"] == hi
    for name, figures in want.items():
        assert_figures(got["totals"] if name == "all" else got["features"][name], figures, name)
    assert got["totals"]["requests"] < expected(records, 0, 2**62, NOW)["all"]["requests"]
    alerts = [r for r in traffic if isinstance(r, Alert) and lo <= r.time_ns < hi]
    assert sum(a["count"] for a in got["alerts"]) == len(alerts)
    verdicts = [r for r in traffic if isinstance(r, SafetyVerdict) and lo <= r.time_ns < hi]
    assert got["safety"]["verdicts"] == len(verdicts)

    only_since = build_report(path, since_ns=lo, now_ns=NOW)
    assert only_since["totals"]["requests"] == expected(records, lo, 2**62, NOW)["all"]["requests"]
    only_until = build_report(path, until_ns=hi, now_ns=NOW)
    assert only_until["totals"]["requests"] == expected(records, 0, hi, NOW)["all"]["requests"]


def test_alerts_and_safety_are_counted_per_rule_and_action(
    stores: dict[str, Path], traffic: list[Record]
) -> None:
    got = build_report(stores["rolled"], now_ns=NOW)
    alerts = [r for r in traffic if isinstance(r, Alert)]
    by_key: dict[tuple[str, str], list[Alert]] = {}
    for a in alerts:
        by_key.setdefault((a.rule, a.severity), []).append(a)
    assert len(got["alerts"]) == len(by_key)
    for row in got["alerts"]:
        group = by_key[(row["rule"], row["severity"])]
        last = max(group, key=lambda a: a.time_ns)
        assert row["count"] == len(group)
        assert row["last_ns"] == last.time_ns and row["last_message"] == last.message
        assert row["last_labels"] == {"feature": "chat"}
    severities = [a["severity"] for a in got["alerts"]]
    assert severities == sorted(severities)  # critical before warning: most severe first
    verdicts = [r for r in traffic if isinstance(r, SafetyVerdict)]
    assert got["safety"]["verdicts"] == len(verdicts)
    for action in ("serve", "review", "block"):
        assert got["safety"]["by_action"][action] == sum(v.action == action for v in verdicts)
    assert got["safety"]["by_category"]["block"] == {
        c: sum(v.action == "block" and v.category == c for v in verdicts)
        for c in ("pii", "toxicity") if any(v.action == "block" and v.category == c
                                            for v in verdicts)}


def test_top_users_and_features_by_cost(stores: dict[str, Path], traffic: list[Record]) -> None:
    got = build_report(stores["tail"], now_ns=NOW)
    costs: dict[str, float] = {}
    calls: dict[str, int] = {}
    for r in traffic:
        if isinstance(r, Span) and r.cost_usd is not None and r.user_id:
            costs[r.user_id] = costs.get(r.user_id, 0.0) + r.cost_usd
            calls[r.user_id] = calls.get(r.user_id, 0) + 1
    ranked = sorted(costs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [u["user_id"] for u in got["top_users"]] == [u for u, _ in ranked]
    for row, (user, cost) in zip(got["top_users"], ranked, strict=True):
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-9)
        assert row["priced_spans"] == calls[user]
        assert row["share"] == pytest.approx(cost / got["totals"]["cost_usd"], rel=1e-9)
    assert got["users_with_cost"] == len(costs)
    features = [f["feature"] for f in got["top_features"]]
    assert features == sorted(got["features"], key=lambda k: -got["features"][k]["cost_usd"])


def test_hand_counted_feedback_and_sessions(tmp_path: Path) -> None:
    """A small scenario whose figures are counted by hand."""
    t = T0
    spans = [
        Span(id=f"q{i}", trace_id=f"tq{i}", start_ns=t + i * S, end_ns=t + i * S + S // 2,
             feature="faq", status="ok", session_id=sid)
        for i, sid in enumerate(["a", "a", "a", "b", "c", "c", "d", None])
    ]
    events = [
        SessionEvent(session_id="a", event="start", time_ns=t, feature="faq"),
        SessionEvent(session_id="a", event="task_complete", time_ns=t + 10 * S),
        SessionEvent(session_id="a", event="abandon", time_ns=t + 11 * S),  # after completion
        SessionEvent(session_id="b", event="abandon", time_ns=t + 4 * S),
        # c: no outcome, last activity at t+5.5s: timed out 30 min later
        # d: no outcome, last activity recent relative to "now": still open
    ]
    feedback = [
        Score(name="fb", kind="thumbs_down", time_ns=t + S, span_id="q0", category="tone"),
        Score(name="fb", kind="thumbs_down", time_ns=t + S, trace_id="tq1"),
        Score(name="fb", kind="rating", value=5.0, time_ns=t + S, feature="faq"),
        Score(name="fb", kind="rating", value=2.0, time_ns=t + S, feature="faq",
              category="tone"),
        Score(name="fb", kind="rating", time_ns=t + S, feature="faq"),  # no value: not judged
        Score(name="fb", kind="judge", time_ns=t + S, feature="faq"),  # not user feedback
    ]
    path = tmp_path / "hand.db"
    with LocalStore(path) as store:
        store.write([*spans, *events, *feedback])
    now = t + 6 * S + 1800 * S  # d's last activity (t+6.5s) is less than 30 min before
    got = build_report(path, now_ns=now)["features"]["faq"]
    assert got["requests"] == 8
    assert (got["feedback_count"], got["feedback_positive"], got["feedback_negative"]) == (5, 1, 3)
    assert got["satisfaction_rate"] == 0.25
    assert got["feedback_rate"] == 5 / 8
    assert got["negative_by_category"] == {"tone": 2, "uncategorized": 1}
    assert got["sessions"] == 4
    assert got["sessions_completed"] == 1
    assert got["sessions_abandoned"] == 2 and got["sessions_abandoned_timeout"] == 1
    assert got["sessions_open"] == 1
    assert got["task_completion_rate"] == 1 / 3 and got["abandon_rate"] == 2 / 3
    assert got["turns_mean"] == 7 / 4
    assert got["time_to_completion_mean_s"] == 10.0

    # 0% is a rate; no judged feedback is "no data".
    disliked = tmp_path / "disliked.db"
    with LocalStore(disliked) as store:
        store.write([spans[0], Score(name="fb", kind="thumbs_down", time_ns=t, span_id="q0")])
    assert build_report(disliked)["features"]["faq"]["satisfaction_rate"] == 0.0
    silent = tmp_path / "silent.db"
    with LocalStore(silent) as store:
        store.write([spans[0]])
    faq = build_report(silent)["features"]["faq"]
    assert faq["satisfaction_rate"] is None and faq["feedback_rate"] == 0.0


def test_unreadable_feedback_rows_count_as_feedback_without_failing_the_report(
        tmp_path: Path) -> None:
    """Rows another writer (or an older version) left: a text value, a category that is
    not text, a data blob that is not JSON."""
    path = tmp_path / "odd.db"
    scores = [Score(name="fb", kind="rating", value=1.0, time_ns=T0, feature="f",
                    category=f"c{i}") for i in range(3)]
    with LocalStore(path) as store:
        store.write([*scores, Score(name="fb", kind="rating", value=5.0, time_ns=T0,
                                    feature="f")])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE scores SET value = 'five' WHERE id = ?", (scores[0].id,))
        conn.execute("UPDATE scores SET data = ? WHERE id = ?",
                     (json.dumps({"category": 4}), scores[1].id))
        conn.execute("UPDATE scores SET data = ? WHERE id = ?", (b"{broken", scores[2].id))
    got = build_report(path)["features"]["f"]
    assert got["feedback_count"] == 4
    # judged: the 5.0 (satisfied) and the two 1.0 (unsatisfied); 'five' is no verdict
    assert (got["feedback_positive"], got["feedback_negative"]) == (1, 2)
    assert got["negative_by_category"] == {"4": 1, "uncategorized": 1}


def test_feedback_settings_change_what_counts_as_satisfied(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    with LocalStore(path) as store:
        store.write([
            Score(name="fb", kind="rating", value=3.0, time_ns=T0, feature="f"),
            Score(name="fb", kind="correction", time_ns=T0, feature="f"),
        ])
    assert build_report(path)["totals"]["satisfaction_rate"] == 0.0
    lenient = build_report(path, feedback={"rating_positive_min": 3,
                                           "negative_kinds": ["thumbs_down", "report"]})
    assert lenient["totals"]["satisfaction_rate"] == 1.0
    assert lenient["settings"]["rating_positive_min"] == 3


# ---------------------------------------------------------------------------
# The rollup
# ---------------------------------------------------------------------------


def rollup_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            f"SELECT feature, slot, {', '.join(sq.ROLLUP_FIELDS)} FROM spans_rollup "
            "WHERE spans != 0 ORDER BY feature, slot").fetchall()
    finally:
        conn.close()
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows]


def test_write_spans_keeps_the_rollup_exact_through_replacements(tmp_path: Path) -> None:
    traffic = [r for r in make_traffic(seed=5, requests=200) if isinstance(r, Span)]
    path = tmp_path / "w.db"
    LocalStore(path).close()
    from llmvigil.adapters.local import _span_row

    conn = sqlite3.connect(path, isolation_level=None)

    def write(spans: list[Span]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        sq.write_spans(conn, [_span_row(s) for s in spans])
        conn.execute("COMMIT")

    write(traffic[:300])
    write(traffic[:300])  # a re-delivery: nothing changes
    changed = [
        Span(id=s.id, trace_id=s.trace_id, parent_id=s.parent_id, kind=s.kind,
             start_ns=s.start_ns + 7 * 60 * S, end_ns=s.end_ns + 7 * 60 * S, status="error",
             feature="moved", cost_usd=1.0, usage=Usage(input_tokens=5))
        for s in traffic[100:150]
    ]
    write([*changed, *traffic[300:]])  # replacements mixed with new spans
    conn.close()
    incremental = rollup_rows(path)

    final = {s.id: s for s in traffic}
    final.update({s.id: s for s in changed})
    fresh = tmp_path / "fresh.db"
    with LocalStore(fresh) as store:
        store.write(list(final.values()))
    conn = sqlite3.connect(fresh, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    sq.rebuild_rollup(conn)
    conn.execute("COMMIT")
    conn.close()
    assert incremental == rollup_rows(fresh)
    assert sum(row[2] for row in incremental) == len(final)
    assert ("moved",) in {(row[0],) for row in incremental}


def test_local_store_rolls_up_as_it_writes(tmp_path: Path) -> None:
    """Wiring: LocalStore.write upserts spans through store_queries.write_spans."""
    spans = [r for r in make_traffic(seed=9, requests=40) if isinstance(r, Span)]
    with LocalStore(tmp_path / "s.db") as store:
        store.write(spans[:30])
        store.write(spans)  # a re-delivery of the first 30 with 50 new ones
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        mark = conn.execute("SELECT last_rowid FROM spans_rollup_state").fetchone()[0]
        assert mark == conn.execute("SELECT MAX(rowid) FROM spans").fetchone()[0]
        assert conn.execute("SELECT SUM(spans) FROM spans_rollup").fetchone()[0] == len(spans)
    finally:
        conn.close()


def test_a_version_1_store_is_upgraded_and_rolled_up(tmp_path: Path, traffic: list[Record]) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for spec in sq.TABLES.values():
        for statement in spec.ddl():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with LocalStore(path) as store:  # this llmvigil still writes version 1 rows the same way
        store.write(traffic)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 1")  # as if an older llmvigil had written them
    conn.execute("DROP TABLE spans_rollup")
    conn.execute("DROP TABLE spans_rollup_state")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'rx_%'").fetchall():
        conn.execute(f"DROP INDEX {name}")
    conn.close()
    before = build_report(path, now_ns=NOW)  # read without the report structures
    LocalStore(path).close()  # a writer of this version upgrades the store
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sq.SCHEMA_VERSION
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {name for name, *_ in sq.REPORT_INDEXES} <= names
    assert conn.execute("SELECT last_rowid FROM spans_rollup_state").fetchone()[0] == (
        conn.execute("SELECT MAX(rowid) FROM spans").fetchone()[0])
    conn.close()
    after = build_report(path, now_ns=NOW)
    assert_figures(after["totals"], before["totals"], "totals")
    assert after["series"]["requests"] == before["series"]["requests"]


def test_report_queries_use_the_report_indexes(stores: dict[str, Path]) -> None:
    """The plans behind the 1M-span benchmark: each query reads its covering index."""
    conn = sq.connect_readonly(stores["rolled"])
    w = sq.Window(T0, T0 + 30 * H, T0, 900 * S)

    def plan(sql: str, params: Any) -> str:
        return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    try:
        roots = plan("SELECT group_concat((start_ns - ?) / ?), group_concat(end_ns - start_ns) "
                     "FROM spans WHERE parent_id IS NULL AND feature IS ? "
                     "AND start_ns >= ? AND start_ns < ?", (0, 1, "chat", 0, 1))
        assert "rx_spans_roots" in roots
        ttft = plan("SELECT group_concat(ttft_s) FROM spans WHERE ttft_s IS NOT NULL "
                    "AND feature IS ? AND start_ns >= ? AND start_ns < ?", ("chat", 0, 1))
        assert "rx_spans_ttft" in ttft
        sessions = plan(sq._SESSIONS, {"lo": 0, "hi": 1, "origin": 0, "bucket": 1,
                                       "deadline": 0})
        assert "rx_spans_session_turns" in sessions and "rx_session_events_time" in sessions
        rolled = plan(sq._ROLLED_SUMS, (0, w.bucket_ns, 0, 1))
        assert "spans_rollup" in rolled
        tail = plan(sq._RAW_SUMS.format(cond="rowid > ? AND +start_ns >= ? AND +start_ns < ?"),
                    (0, 1, 0, 0, 1))
        assert "rowid>?" in tail  # spans not rolled up yet: a rowid range, not a scan
    finally:
        conn.close()
    # top_users runs its own statement; check it the same way through the function.
    conn = sq.connect_readonly(stores["rolled"])
    try:
        trace: list[str] = []
        conn.set_trace_callback(trace.append)
        sq.top_users(conn, w, 3)
        conn.set_trace_callback(None)
        assert "rx_spans_user_cost" in plan(trace[-1].replace("EXPLAIN QUERY PLAN ", ""), ())
        # A score linked by trace finds the trace's root by primary key, or else through
        # the small index of imported roots: never a scan of the spans.
        feedback = plan("SELECT " + sq.root_by_trace("feature", "sc.trace_id")
                        + " FROM scores sc", ())
        assert "SEARCH r USING INDEX sqlite_autoindex_spans_1 (id=?)" in feedback
        assert "SEARCH r USING INDEX rx_spans_foreign_roots (trace_id=?)" in feedback
    finally:
        conn.close()


def test_a_version_2_store_loses_the_trace_index_and_reports_the_same(
    tmp_path: Path, traffic: list[Record]
) -> None:
    path = tmp_path / "v2.db"
    with LocalStore(path) as store:
        store.write(traffic)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX rx_spans_foreign_roots")  # as an older llmvigil left it
    conn.execute("CREATE INDEX ix_spans_trace_id ON spans (trace_id)")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    before = build_report(path, now_ns=NOW)
    LocalStore(path).close()  # a writer of this version upgrades the store
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sq.SCHEMA_VERSION == 3
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "rx_spans_foreign_roots" in names and not names & set(sq.DROPPED_INDEXES)
    finally:
        conn.close()
    after = build_report(path, now_ns=NOW)
    assert after["features"] == before["features"] and after["totals"] == before["totals"]


# ---------------------------------------------------------------------------
# Edge cases and the public API
# ---------------------------------------------------------------------------


def test_empty_missing_and_blank_stores(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "vigil.db"
    with pytest.raises(FileNotFoundError, match="no records yet"):
        build_report(missing)
    assert not missing.parent.exists()
    LocalStore(tmp_path / "empty.db").close()
    empty = build_report(tmp_path / "empty.db")
    assert empty["data_range"] is None and empty["time_range"] is None
    assert empty["features"] == {} and empty["totals"]["requests"] == 0
    assert empty["totals"]["error_rate"] is None and empty["totals"]["satisfaction_rate"] is None
    assert empty["series"]["start_ns"] == []
    json.dumps(empty, allow_nan=False)
    ranged = build_report(tmp_path / "empty.db", since_ns=T0, until_ns=T0 + 6 * H)
    assert ranged["bucket_s"] == 300 and len(ranged["series"]["start_ns"]) == 72
    assert ranged["series"]["requests"] == [0] * 72
    (tmp_path / "blank.db").touch()  # created, not yet initialised by a writer
    assert build_report(tmp_path / "blank.db")["totals"]["spans"] == 0
    with pytest.raises(ValueError, match="must be after"):
        build_report(tmp_path / "empty.db", since_ns=T0, until_ns=T0)


def test_bucket_choice() -> None:
    assert choose_bucket_s(T0, T0 + H) == 60
    assert choose_bucket_s(T0, T0 + 24 * H) == 900
    assert choose_bucket_s(T0, T0 + 7 * 24 * H) == 3600
    assert choose_bucket_s(T0, T0 + 90 * 24 * H) == 12 * 3600
    assert choose_bucket_s(T0, T0 + 120 * 24 * H) == 86400


def test_time_arguments() -> None:
    now = T0 + 10 * H
    assert to_epoch_ns("2h", now_ns=now) == T0 + 8 * H
    assert to_epoch_ns("2024-05-01T12:00:00Z") == T0
    assert to_epoch_ns(datetime(2024, 5, 1, 12, tzinfo=timezone.utc)) == T0
    assert to_epoch_ns(T0) == T0 and to_epoch_ns(None) is None
    with pytest.raises(ValueError, match="until: cannot read 'soon'"):
        to_epoch_ns("soon", name="until")
    with pytest.raises(ValueError, match="since: expected"):
        to_epoch_ns(1.5, name="since")  # type: ignore[arg-type]


def test_public_report_reads_the_configured_store(
    tmp_path: Path, traffic: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "data" / "vigil.db"
    write_store(store, traffic)
    (tmp_path / "vigil.yaml").write_text(
        f"store:\n  path: {store}\nmonitors:\n  sessions:\n    idle_timeout_s: {IDLE_S}\n")
    since = datetime(2024, 5, 1, 15, tzinfo=timezone.utc)
    got = report_api(since, "2024-05-02T10:00:00Z")  # found through ./vigil.yaml
    want = build_report(store, since_ns=T0 + 3 * H, until_ns=T0 + 22 * H)
    assert got == want and got["totals"]["requests"] > 0
    assert report_api(since, T0 + 22 * H, store=store) == want
    recent = report_api("1h", store=store)  # traffic is from 2024: nothing in the last hour
    assert recent["totals"]["requests"] == 0
    with pytest.raises(ValueError, match="until"):
        report_api("2024-05-02", "2024-05-01", store=store)


def test_llmvigil_report_is_the_public_api() -> None:
    """Wiring: ``llmvigil.report`` is this function (exported by llmvigil/__init__.py)."""
    assert llmvigil.report is report_api  # type: ignore[attr-defined]


def test_end_to_end_through_the_runtime(tmp_path: Path) -> None:
    """Traced requests, feedback and session events of a live app, then the report."""
    llmvigil.init(backends=["local"])
    for i in range(6):
        with llmvigil.span("answer", kind="chain", feature="faq", session_id="sess1") as root:
            with llmvigil.span("llm", kind="llm"):
                pass
            if i < 2:
                llmvigil.feedback(root, "thumbs_down" if i else "thumbs_up")
    llmvigil.session_event("sess1", "task_complete", feature="faq")
    llmvigil.flush()
    got = report_api()  # the active runtime's store
    faq = got["features"]["faq"]
    assert faq["requests"] == 6 and faq["feedback_count"] == 2
    assert faq["satisfaction_rate"] == 0.5
    assert faq["sessions"] == 1 and faq["sessions_completed"] == 1


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def vigil_report(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """Run ``vigil report`` as a user does (through a typer app until cli.py mounts it)."""
    from llmvigil.core import cli, cli_report

    mounted = any(getattr(c.callback, "__module__", "") == cli_report.__name__
                  for c in cli.app.registered_commands)
    if mounted:
        cmd = [sys.executable, "-m", "llmvigil.core.cli", "report", *args]
    else:
        cmd = [sys.executable, "-c", "import typer; from llmvigil.core.cli_report import "
               "report; app = typer.Typer(); app.command()(report); app()", *args]
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    env.pop("VIGIL_CONFIG", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_cli_json_equals_the_api(stores: dict[str, Path], tmp_path: Path) -> None:
    args = ["--store", str(stores["mixed"]), "--since", "2024-05-01T13:00:00Z",
            "--until", "2024-05-02T12:30:00Z"]
    done = vigil_report("--json", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == report_api("2024-05-01T13:00:00Z", "2024-05-02T12:30:00Z",
                             store=stores["mixed"])
    assert got["totals"]["requests"] > 0


def test_cli_tables_fit_80_columns(stores: dict[str, Path], tmp_path: Path) -> None:
    done = vigil_report("--store", str(stores["rolled"]), cwd=tmp_path, columns=80)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "…" not in text and "..." not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    data = build_report(stores["rolled"])
    for name in data["features"]:
        assert name in text, name
    for title in ("Requests and latency", "Streaming", "Tokens and cost", "Top users by cost",
                  "Feedback", "Sessions", "Alerts", "Safety verdicts"):
        assert title in text
    totals = data["totals"]
    for figure in (f"{totals['requests']:,}", f"{totals['error_rate']:.1%}",
                   data["top_users"][0]["user_id"]):
        assert figure in text


def test_cli_errors(stores: dict[str, Path], tmp_path: Path) -> None:
    missing = vigil_report("--store", str(tmp_path / "nothing.db"), cwd=tmp_path)
    assert missing.returncode == 1 and "no records yet" in missing.stderr
    bad = vigil_report("--store", str(stores["rolled"]), "--since", "last tuesday",
                       cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr and "15m" in bad.stderr
    backwards = vigil_report("--store", str(stores["rolled"]), "--since", "2024-05-02",
                             "--until", "2024-05-01", cwd=tmp_path)
    assert backwards.returncode == 2 and "--until" in backwards.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    broken = vigil_report("--store", str(junk), cwd=tmp_path)
    assert broken.returncode == 2 and "junk.db" in broken.stderr
    unwritable = vigil_report("--store", str(stores["rolled"]), "--html",
                              str(tmp_path / "no" / "such" / "dir" / "r.html"), cwd=tmp_path)
    assert unwritable.returncode == 2 and "--html" in unwritable.stderr
    for done in (missing, bad, backwards, broken, unwritable):
        assert "Traceback" not in done.stderr
