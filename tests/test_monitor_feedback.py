"""The feedback monitor against hand counts, and its drop detector's error rates."""

from __future__ import annotations

import random
import time
from collections import Counter
from fractions import Fraction
from math import comb
from pathlib import Path
from typing import Any

import llmvigil
import numpy as np
import pytest
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert, Metric, Score, Span, new_span_id, new_trace_id
from llmvigil.core.monitors.feedback import FeedbackMonitor, fisher_less_p_value
from llmvigil.core.monitors.windows import RollingCounters
from llmvigil.core.runtime import get_runtime

S = 1_000_000_000
T0 = 1_700_000_000 * S
NEGATIVE = {"thumbs_down", "correction", "report"}


def metrics(out: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The values of metric ``name`` in ``out`` by their sorted labels."""
    return {tuple(sorted(m.labels.items())): m.value
            for m in out if isinstance(m, Metric) and m.name == name}


def f(feature: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"feature": feature, **more}.items()))


def span(feature: str | None, t_ns: int, *, root: bool = True, trace_id: str | None = None,
         kind: str = "llm") -> Span:
    return Span(trace_id=trace_id or new_trace_id(), parent_id=None if root else new_span_id(),
                name="call", kind=kind, feature=feature, start_ns=t_ns - S // 10, end_ns=t_ns)


def score(kind: str, t_ns: int, feature: str | None = None, value: float | None = None,
          **fields: Any) -> Score:
    return Score(name="user_feedback", kind=kind, value=value, time_ns=t_ns, feature=feature,
                 source="user", **fields)


def quiet(**over: Any) -> dict[str, Any]:
    """Settings with the drop detector off, one-minute buckets over ten minutes."""
    return {"window_s": 600, "bucket_s": 60, "emit_interval_s": 60, "drop": {"enabled": False},
            **over}


# -- window arithmetic -------------------------------------------------------------------


def test_rolling_counters_window_baseline_and_bounds() -> None:
    rc = RollingCounters(("a", "b"), bucket_s=10, buckets=6, max_keys=2)
    for i in range(6):
        assert rc.add("k", T0 + i * 10 * S, a=1, b=i)
    now = T0 + 55 * S
    assert rc.totals("k", now) == [6, 15]
    assert rc.totals("k", now, buckets=2) == [2, 9]
    assert rc.totals("k", now, buckets=2, skip=2) == [2, 5]
    assert not rc.add("k", T0 - 100 * S, a=1), "older than the ring: ignored"
    assert rc.too_old == 1
    assert rc.totals("k", now + 30 * S) == [3, 12], "three buckets slid out"
    rc.add("x", now, a=1)
    rc.add("y", now, a=1)
    assert len(rc) == 2 and "k" not in rc and rc.evicted == 1
    assert rc.totals("missing", now) == [0, 0]
    assert rc.prune(now + 3600 * S) == 2 and len(rc) == 0


# -- rates against an independent count --------------------------------------------------


def test_rates_and_categories_match_a_hand_count() -> None:
    rng = random.Random(7)
    mon = FeedbackMonitor(quiet())
    now = T0
    features = ["chat", "search", None]
    expected: dict[str, Counter[str]] = {}
    categories: Counter[tuple[str, str]] = Counter()
    records: list[Any] = []
    for _ in range(3000):
        feature = rng.choice(features)
        inside = rng.random() < 0.8
        t = now - int(rng.uniform(1, 530) * S) if inside else now - int(rng.uniform(700, 2000) * S)
        name = feature or "_none"
        if rng.random() < 0.6:
            root = rng.random() < 0.7
            records.append(span(feature, t, root=root))
            if inside and root:
                for key in (name, "_all"):
                    expected.setdefault(key, Counter())["req"] += 1
            continue
        kind = rng.choice(["thumbs_up", "thumbs_down", "rating", "correction", "report"])
        value = rng.choice([None, 1, 2, 3, 4, 5]) if kind == "rating" else None
        category = rng.choice([None, "wrong_date", "tone"])
        records.append(score(kind, t, feature, value, category=category,
                             correction="fixed" if kind == "correction" else None))
        if not inside:
            continue
        good = kind == "thumbs_up" or (kind == "rating" and value is not None and value >= 4)
        bad = kind in NEGATIVE or (kind == "rating" and value is not None and value < 4)
        for key in (name, "_all"):
            c = expected.setdefault(key, Counter())
            c["fb"] += 1
            c["pos"] += good
            c["neg"] += bad
            if bad:
                categories[(key, category or "uncategorized")] += 1
    rng.shuffle(records)
    for rec in records:
        assert mon.observe(rec) == ()
    out = list(mon.tick(now))

    sat, rate = metrics(out, "feedback.satisfaction_rate"), metrics(out, "feedback.rate")
    sat_n, count = metrics(out, "feedback.satisfaction_rate.n"), metrics(out, "feedback.count")
    for key, c in expected.items():
        assert sat[f(key)] == pytest.approx(c["pos"] / (c["pos"] + c["neg"]))
        assert sat_n[f(key)] == c["pos"] + c["neg"]
        assert rate[f(key)] == pytest.approx(c["fb"] / c["req"])
        assert count[f(key)] == c["fb"]
    assert set(sat) == {f(k) for k in expected}
    by_cat = metrics(out, "feedback.negative_by_category")
    assert by_cat == {f(feat, category=cat): n for (feat, cat), n in categories.items()}
    assert all(m.window_s == 600 and m.time_ns == now for m in out)


def test_zero_percent_is_a_rate_and_no_feedback_is_no_rate() -> None:
    mon = FeedbackMonitor(quiet())
    for i in range(5):
        mon.observe(span("hated", T0 - i * S))
        mon.observe(score("thumbs_down", T0 - i * S, "hated"))
        mon.observe(span("silent", T0 - i * S))
        mon.observe(score("rating", T0 - i * S, "unjudged"))  # a rating without a value
    out = list(mon.tick(T0))
    sat = metrics(out, "feedback.satisfaction_rate")
    assert sat[f("hated")] == 0.0, "0% satisfaction is a real, published rate"
    assert f("silent") not in sat, "no feedback at all publishes no satisfaction rate"
    assert f("unjudged") not in sat, "feedback that judges nothing is no sample"
    assert metrics(out, "feedback.rate")[f("silent")] == 0.0, "0 feedback per request"
    assert metrics(out, "feedback.count")[f("unjudged")] == 5
    assert f("unjudged") not in metrics(out, "feedback.rate"), "no requests seen: no rate"


def test_feedback_takes_the_feature_of_its_span_or_trace() -> None:
    mon = FeedbackMonitor(quiet())
    root = span("extract", T0 - 5 * S)
    child = Span(trace_id=root.trace_id, parent_id=root.id, name="tool", feature="extract",
                 end_ns=T0 - 6 * S)
    mon.observe(child)
    mon.observe(root)
    mon.observe(score("thumbs_up", T0 - 4 * S, span_id=child.id))
    mon.observe(score("thumbs_down", T0 - 3 * S, trace_id=root.trace_id))
    mon.observe(score("thumbs_down", T0 - 3 * S, trace_id=new_trace_id()))
    out = list(mon.tick(T0))
    assert metrics(out, "feedback.satisfaction_rate")[f("extract")] == 0.5
    assert metrics(out, "feedback.rate")[f("extract")] == 2.0, "one request (the root)"
    assert metrics(out, "feedback.satisfaction_rate")[f("_none")] == 0.0


def test_request_counting_modes() -> None:
    for mode, expected in (("root", 1), ("llm", 2), ("all", 3)):
        mon = FeedbackMonitor(quiet(requests=mode))
        mon.observe(span("x", T0 - S, root=True, kind="chain"))
        mon.observe(span("x", T0 - S, root=False, kind="llm"))
        mon.observe(span("x", T0 - S, root=False, kind="llm"))
        mon.observe(score("thumbs_up", T0 - S, "x"))
        assert metrics(mon.tick(T0), "feedback.rate")[f("x")] == pytest.approx(1 / expected)


def test_window_slides_and_emission_interval() -> None:
    mon = FeedbackMonitor(quiet(totals=False))
    mon.observe(score("thumbs_up", T0, "a"))
    assert metrics(mon.tick(T0), "feedback.satisfaction_rate") == {f("a"): 1.0}
    assert list(mon.tick(T0 + 30 * S)) == [], "nothing before emit_interval_s"
    late = list(mon.tick(T0 + 700 * S))
    assert metrics(late, "feedback.satisfaction_rate") == {}
    assert metrics(late, "feedback.count") == {f("a"): 0.0}, "the drop to zero is published"
    assert list(mon.tick(T0 + 800 * S)) == [], "then the feature is forgotten"
    assert mon.stats()["features"] == 0


def test_correction_samples_are_a_bounded_sample() -> None:
    mon = FeedbackMonitor(quiet(corrections_per_feature=10, max_features=2))
    for i in range(500):
        mon.observe(score("correction", T0 + i, "a", correction=f"fix {i}", category="date"))
    for feat in ("b", "c"):
        mon.observe(score("correction", T0, feat, correction="x"))
    kept = mon.corrections("a") or mon.corrections()
    assert mon.corrections("a") == [], "feature 'a' was the least recent: evicted"
    assert len(mon.corrections()) == 2 and len(kept) == 2
    mon = FeedbackMonitor(quiet(corrections_per_feature=10))
    for i in range(500):
        mon.observe(score("correction", T0 + i, "a", correction=f"fix {i}"))
    sample = mon.corrections("a")
    assert len(sample) == 10 and len({s["correction"] for s in sample}) == 10
    assert all(s["feature"] == "a" and s["correction"].startswith("fix ") for s in sample)
    assert any(int(s["correction"].split()[1]) >= 10 for s in sample), "later items get in"


def test_memory_stays_bounded_over_many_features() -> None:
    mon = FeedbackMonitor(quiet(max_features=50, max_categories=20, link_cache_size=100))
    for i in range(5000):
        mon.observe(span(f"feat{i}", T0))
        mon.observe(score("thumbs_down", T0, f"feat{i}", category=f"c{i % 37}"))
    st = mon.stats()
    assert st["features"] <= 51 and st["categories"] <= 20 and st["links"] <= 100
    assert st["features_evicted"] > 0 and st["categories_evicted"] > 0


def test_invalid_settings_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        FeedbackMonitor({"window_s": -1, "positive_kinds": ["thumbs_up"], "colour": 1})
    text = str(err.value)
    assert "monitors.feedback.window_s" in text and "greater than 0" in text
    assert "monitors.feedback.colour: unknown key" in text
    with pytest.raises(ConfigError, match="unknown kinds"):
        FeedbackMonitor({"negative_kinds": ["meh"]})
    with pytest.raises(ConfigError, match=r"drop\.alpha"):
        FeedbackMonitor({"drop": {"alpha": 2}})


# -- the drop detector ---------------------------------------------------------------------


def _exact_less(a: int, n1: int, c: int, n2: int) -> float:
    total, k = n1 + n2, a + c
    num = sum(comb(k, x) * comb(total - k, n1 - x)
              for x in range(a + 1) if 0 <= n1 - x <= total - k)
    return float(Fraction(num, comb(total, n1)))


def test_fisher_p_value_matches_exact_enumeration() -> None:
    rng = random.Random(3)
    for _ in range(400):
        n1, n2 = rng.randint(1, 60), rng.randint(1, 150)
        a, c = rng.randint(0, n1), rng.randint(0, n2)
        exact = _exact_less(a, n1, c, n2)
        assert fisher_less_p_value(a, n1, c, n2) == pytest.approx(exact, rel=1e-9, abs=1e-15)
    assert fisher_less_p_value(0, 10, 10, 10) == pytest.approx(1 / comb(20, 10))
    assert fisher_less_p_value(10, 10, 0, 10) == 1.0


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_fisher_false_alarm_rate_is_at_most_alpha(alpha: float) -> None:
    rng = np.random.default_rng(11)
    trials, p = 4000, 0.8
    recent = rng.binomial(80, p, trials)
    base = rng.binomial(400, p, trials)
    rejected = sum(fisher_less_p_value(int(a), 80, int(b), 400) < alpha
                   for a, b in zip(recent, base, strict=True))
    sd = (alpha * (1 - alpha) / trials) ** 0.5
    assert rejected / trials <= alpha + 3 * sd


def _feed_history(mon: FeedbackMonitor, feature: str, base_rate: float, recent_rate: float,
                  rng: np.random.Generator, *, n_base: int = 400, n_recent: int = 80) -> None:
    """Baseline feedback over the 10 windows before the last one, then a recent window."""
    for t_s, rate in ([(rng.uniform(1_300, 6_000), base_rate) for _ in range(n_base)]
                      + [(rng.uniform(1, 590), recent_rate) for _ in range(n_recent)]):
        kind = "thumbs_up" if rng.random() < rate else "thumbs_down"
        mon.observe(score(kind, T0 - int(t_s * S), feature))


def _drop_monitor(**drop: Any) -> FeedbackMonitor:
    return FeedbackMonitor({"window_s": 600, "bucket_s": 60, "totals": False,
                            "drop": {"baseline_s": 6000, "min_samples": 30,
                                     "min_baseline_samples": 100, "min_drop": 0.0, **drop}})


def test_drop_detector_false_alarms_stay_near_alpha_on_stable_data() -> None:
    alpha, features = 0.05, 300
    rng = np.random.default_rng(5)
    mon = _drop_monitor(alpha=alpha)
    for i in range(features):
        _feed_history(mon, f"f{i}", 0.8, 0.8, rng)
    out = list(mon.tick(T0))
    pvals = metrics(out, "feedback.satisfaction_drop_p_value")
    assert len(pvals) == features, "every feature had enough samples to be tested"
    alerts = [a for a in out if isinstance(a, Alert)]
    sd = (alpha * (1 - alpha) * features) ** 0.5
    assert len(alerts) <= alpha * features + 3 * sd


def test_drop_detector_catches_a_real_drop_once_per_cooldown() -> None:
    rng = np.random.default_rng(9)
    mon = _drop_monitor(alpha=0.01, cooldown_s=3600, severity="critical")
    for i in range(40):
        _feed_history(mon, f"f{i}", 0.85, 0.55, rng)
    out = list(mon.tick(T0))
    alerts = [a for a in out if isinstance(a, Alert)]
    assert len(alerts) >= 38, "power at n=80 for 0.85 -> 0.55 is essentially 1"
    a = alerts[0]
    assert a.rule == "feedback.satisfaction_drop" and a.severity == "critical"
    assert a.value is not None and a.threshold is not None and a.value < a.threshold
    assert "Fisher" in a.message and set(a.labels) == {"feature"}
    again = [x for x in mon.tick(T0 + 1000 * S) if isinstance(x, Alert)]
    assert again == [], "cooldown: no repeat within cooldown_s"


def test_drop_detector_needs_minimum_samples_and_minimum_drop() -> None:
    rng = np.random.default_rng(2)
    few = _drop_monitor(alpha=0.05)
    _feed_history(few, "f", 0.9, 0.1, rng, n_recent=20)
    assert metrics(few.tick(T0), "feedback.satisfaction_drop_p_value") == {}
    small = _drop_monitor(alpha=0.5, min_drop=0.5)
    _feed_history(small, "f", 0.9, 0.6, rng, n_recent=200)
    out = list(small.tick(T0))
    assert metrics(out, "feedback.satisfaction_drop_p_value")[f("f")] < 0.01
    assert not [a for a in out if isinstance(a, Alert)], "a drop below min_drop is not alerted"


# -- end to end ------------------------------------------------------------------------------


def test_feedback_scores_become_metrics_at_the_backend(tmp_path: Path) -> None:
    mon = FeedbackMonitor({"emit_interval_s": 0.2, "drop": {"enabled": False}})
    llmvigil.init(backends=[{"name": "memory", "instance": "fb-e2e"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[mon])
    for i in range(4):
        with llmvigil.span("answer", kind="llm", feature="chat") as handle:
            pass
        llmvigil.feedback(handle, "thumbs_up" if i else "thumbs_down", category="tone")
    assert llmvigil.flush(5)
    backend = get_memory_backend("fb-e2e")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with backend.lock:
            sat = metrics(backend.metrics, "feedback.satisfaction_rate")
        if sat.get(f("chat")) == 0.75:
            break
        time.sleep(0.05)
    with backend.lock:
        got = list(backend.metrics)
        scores = list(backend.scores)
    assert metrics(got, "feedback.satisfaction_rate")[f("chat")] == 0.75
    assert metrics(got, "feedback.rate")[f("chat")] == 1.0
    assert metrics(got, "feedback.negative_by_category")[f("chat", category="tone")] == 1.0
    assert len(scores) == 4, "the feedback Scores themselves reach the backend too"


def test_a_rating_that_is_not_a_number_is_logged_and_kept_as_a_label(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mon = FeedbackMonitor({"emit_interval_s": 0.2, "drop": {"enabled": False}})
    llmvigil.init(backends=[{"name": "memory", "instance": "fb-bad"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[mon])
    with llmvigil.span("answer", kind="llm", feature="chat") as handle:
        pass
    given: list[Any] = ["five", float("nan"), [4], "4", 5, True]
    with caplog.at_level("WARNING", logger="llmvigil"):
        scores = [llmvigil.feedback(handle, "rating", value=v) for v in given]
    assert [(s.value, s.label) for s in scores if s] == [
        (None, "five"), (None, "nan"), (None, "[4]"), (4.0, None), (5.0, None), (1.0, None)]
    warnings = [r.getMessage() for r in caplog.records if "llmvigil.feedback" in r.getMessage()]
    assert len(warnings) == 3 and "'five'" in warnings[0] and "finite number" in warnings[0]
    assert llmvigil.flush(5)
    status = get_runtime().pipeline.status()
    assert status["monitor_errors"] == 0, "a bad value must not reach the monitor as such"
    backend = get_memory_backend("fb-bad")
    with backend.lock:
        assert len(backend.scores) == 6, "nothing given is lost"
