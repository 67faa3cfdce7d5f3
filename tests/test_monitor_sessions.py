"""The sessions monitor: completion, abandonment, turns, idle timeout and eviction."""

from __future__ import annotations

import random
from typing import Any

import pytest
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Metric, SessionEvent, Span, new_span_id, new_trace_id
from llmvigil.core.monitors.sessions import SessionsMonitor

S = 1_000_000_000
T0 = 1_700_000_000 * S
IDLE = 300


def metrics(out: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The values of metric ``name`` in ``out`` by their sorted labels."""
    return {tuple(sorted(m.labels.items())): m.value
            for m in out if isinstance(m, Metric) and m.name == name}


def f(feature: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"feature": feature, **more}.items()))


def ev(session_id: str, event: str, t_ns: int, feature: str | None = None) -> SessionEvent:
    return SessionEvent(session_id=session_id, event=event, time_ns=t_ns, feature=feature)


def turn(session_id: str, t_ns: int, feature: str | None = None, *,
         root: bool = True) -> Span:
    return Span(trace_id=new_trace_id(), parent_id=None if root else new_span_id(),
                name="turn", kind="llm", session_id=session_id, feature=feature,
                start_ns=t_ns - S // 10, end_ns=t_ns)


def monitor(**over: Any) -> SessionsMonitor:
    return SessionsMonitor({"idle_timeout_s": IDLE, "window_s": 3600, "bucket_s": 60,
                            "emit_interval_s": 1, **over})


def test_generated_sessions_match_a_hand_count() -> None:
    rng = random.Random(4)
    mon = monitor()
    records: list[tuple[int, Any]] = []
    truth: dict[str, dict[str, float]] = {}

    def tally(feature: str, **amounts: float) -> None:
        for key in (feature, "_all"):
            c = truth.setdefault(key, {})
            for name, amount in amounts.items():
                c[name] = c.get(name, 0.0) + amount

    for i in range(400):
        sid, feature = f"s{i}", rng.choice(["chat", "search"])
        start = T0 + int(rng.uniform(0, 1200) * S)
        t, turns, follow_ups = start, rng.randint(1, 6), 0
        records.append((t, ev(sid, "start", t, feature)))
        for k in range(turns):
            t += int(rng.uniform(5, 60) * S)
            records.append((t, turn(sid, t, feature)))
            records.append((t, turn(sid, t, feature, root=False)))  # a child: not a turn
            if k and rng.random() < 0.3:
                follow_ups += 1
                records.append((t, ev(sid, "follow_up", t)))
        outcome = rng.choice(["complete", "abandon", "idle"])
        if outcome == "complete":
            t += S
            records.append((t, ev(sid, "task_complete", t)))
            tally(feature, completed=1, completion_s=(t - start) / S)
        elif outcome == "abandon":
            t += S
            records.append((t, ev(sid, "abandon", t)))
            tally(feature, abandoned=1)
        else:
            tally(feature, abandoned=1)
        tally(feature, ended=1, turns=turns, follow_ups=follow_ups, duration_s=(t - start) / S)
    records.sort(key=lambda r: r[0])
    for t, rec in records:
        mon.tick(t)  # ticks interleaved with traffic, as the worker does
        mon.observe(rec)
    now = max(t for t, _ in records) + (IDLE + 1) * S
    out = list(mon.tick(now))
    assert mon.open_sessions() == 0
    for key, c in truth.items():
        resolved = c.get("completed", 0) + c.get("abandoned", 0)
        got = {name: metrics(out, name)[f(key)] for name in (
            "sessions.task_completion_rate", "sessions.abandon_rate", "sessions.turns_mean",
            "sessions.follow_up_rate", "sessions.duration_mean_s",
            "sessions.time_to_completion_mean_s", "sessions.started")}
        assert got["sessions.task_completion_rate"] == pytest.approx(c["completed"] / resolved)
        assert got["sessions.abandon_rate"] == pytest.approx(c["abandoned"] / resolved)
        assert got["sessions.turns_mean"] == pytest.approx(c["turns"] / c["ended"])
        assert got["sessions.follow_up_rate"] == pytest.approx(c["follow_ups"] / c["turns"])
        assert got["sessions.duration_mean_s"] == pytest.approx(c["duration_s"] / c["ended"])
        assert got["sessions.time_to_completion_mean_s"] == pytest.approx(
            c["completion_s"] / c["completed"])
        assert got["sessions.started"] == c["ended"]
        assert metrics(out, "sessions.task_completion_rate.n")[f(key)] == resolved


def test_idle_timeout_marks_abandoned_at_tick_time() -> None:
    mon = monitor()
    mon.observe(turn("a", T0, "chat"))
    mon.observe(turn("a", T0 + 10 * S, "chat"))
    assert mon.open_sessions() == 1
    mon.tick(T0 + (10 + IDLE - 1) * S)
    assert mon.open_sessions() == 1, "not idle long enough yet"
    out = list(mon.tick(T0 + (10 + IDLE) * S))
    assert mon.open_sessions() == 0
    assert metrics(out, "sessions.abandon_rate")[f("chat")] == 1.0
    assert metrics(out, "sessions.abandoned")[f("chat", reason="timeout")] == 1.0
    assert metrics(out, "sessions.turns_mean")[f("chat")] == 2.0
    assert metrics(out, "sessions.duration_mean_s")[f("chat")] == 10.0, "idle time excluded"
    assert "sessions.task_completion_rate" in {m.name for m in out}
    assert metrics(out, "sessions.task_completion_rate")[f("chat")] == 0.0, "0% is a rate"


def test_completion_counts_at_once_and_session_stays_open_until_idle() -> None:
    mon = monitor()
    mon.observe(ev("b", "start", T0, "support"))
    mon.observe(turn("b", T0 + 5 * S))
    mon.observe(ev("b", "task_complete", T0 + 20 * S))
    out = list(mon.tick(T0 + 21 * S))
    assert metrics(out, "sessions.task_completion_rate")[f("support")] == 1.0
    assert metrics(out, "sessions.time_to_completion_mean_s")[f("support")] == 20.0
    assert "sessions.turns_mean" not in {m.name for m in out}, "turns are known at the end"
    assert mon.open_sessions() == 1, "a 'thanks!' after completion is the same session"
    mon.observe(turn("b", T0 + 30 * S))
    out = list(mon.tick(T0 + (30 + IDLE) * S))
    assert mon.open_sessions() == 0
    assert metrics(out, "sessions.turns_mean")[f("support")] == 2.0
    assert metrics(out, "sessions.abandon_rate")[f("support")] == 0.0, "completed, not abandoned"
    assert metrics(out, "sessions.open")[f("_all")] == 0.0


def test_explicit_abandon_late_events_and_reused_ids() -> None:
    mon = monitor(totals=False)
    mon.observe(ev("c", "start", T0))
    mon.observe(ev("c", "abandon", T0 + S))
    mon.observe(ev("c", "abandon", T0 + 2 * S))  # the session already ended
    mon.observe(ev("d", "start", T0))
    mon.observe(ev("d", "task_complete", T0 + S))
    mon.observe(ev("d", "start", T0 + 2 * S))  # a new task in a reused id
    mon.observe(ev("d", "weird", T0 + 2 * S))
    out = list(mon.tick(T0 + 3 * S))
    assert metrics(out, "sessions.abandoned")[f("_none", reason="explicit")] == 1.0
    assert metrics(out, "sessions.started")[f("_none")] == 3.0
    assert metrics(out, "sessions.task_completion_rate")[f("_none")] == 0.5
    st = mon.stats()
    assert st["late_events"] == 1 and st["unknown_events"] == 1 and st["open"] == 1


def test_open_sessions_are_capped_and_evictions_counted() -> None:
    mon = monitor(max_open_sessions=100, max_features=5)
    for i in range(1000):
        mon.observe(turn(f"s{i}", T0 + i * S, f"feat{i % 10}"))
        if i == 998:
            mon.observe(ev("s998", "task_complete", T0 + i * S))
    assert mon.open_sessions() == 100
    out = list(mon.tick(T0 + 1000 * S))
    assert mon.stats()["evicted"] == 900
    assert metrics(out, "sessions.abandoned")[f("_all", reason="evicted")] == 900.0
    assert mon.stats()["features"] <= 6, "feature keys are bounded too"
    out = list(mon.tick(T0 + (1000 + IDLE) * S))
    assert metrics(out, "sessions.abandoned")[f("_all", reason="timeout")] == 99.0
    assert metrics(out, "sessions.task_completion_rate")[f("_all")] == pytest.approx(1 / 1000)


def test_turns_from_modes_and_turn_events() -> None:
    for mode, expected in (("root", 1), ("llm", 2), ("all", 3)):
        mon = monitor(turns_from=mode)
        mon.observe(Span(trace_id=new_trace_id(), name="chain", kind="chain", session_id="x",
                         end_ns=T0))
        mon.observe(turn("x", T0, root=False))
        mon.observe(turn("x", T0, root=False))
        mon.observe(ev("x", "turn", T0))
        mon.observe(ev("x", "abandon", T0 + S))
        out = mon.tick(T0 + 2 * S)
        assert metrics(out, "sessions.turns_mean")[f("_none")] == expected + 1


def test_metrics_slide_out_of_the_window() -> None:
    mon = monitor(totals=False)
    mon.observe(ev("e", "start", T0, "chat"))
    mon.observe(ev("e", "abandon", T0))
    assert metrics(mon.tick(T0 + S), "sessions.abandon_rate") == {f("chat"): 1.0}
    later = list(mon.tick(T0 + 4000 * S))
    assert metrics(later, "sessions.abandon_rate") == {}
    assert metrics(later, "sessions.started") == {f("chat"): 0.0}
    assert mon.stats()["features"] == 0


def test_invalid_settings_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        SessionsMonitor({"idle_timeout_s": 0, "turns_from": "leaf"})
    text = str(err.value)
    assert "monitors.sessions.idle_timeout_s" in text
    assert "monitors.sessions.turns_from" in text and "'leaf'" in text
