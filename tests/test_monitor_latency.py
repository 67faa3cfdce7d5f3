"""The latency monitor and change detection, checked against independent computations.

Quantiles are compared with numpy on the same data (DDSketch answers the order
statistic ``floor(q * (n - 1))``, numpy's ``method="lower"``, within its relative
accuracy); merged snapshots with a single monitor fed both streams; run lengths of
the change detectors with their ``arl0`` target by simulation.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import llmvigil
import numpy as np
import pytest
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert, Metric, Span, StreamStats, Usage
from llmvigil.core.monitors.changepoint import (
    BernoulliCusum,
    GaussianCusum,
    bernoulli_cusum_arl,
    cusum_threshold,
    siegmund_arl,
    student_t_to_z,
)
from llmvigil.core.monitors.latency import LatencyMonitor
from vigil_testing import start

S = 1_000_000_000
T0 = 1_767_571_200 * S  # 2026-01-05 00:00:00 UTC
ACC = 0.01
QS = (0.5, 0.9, 0.95, 0.99)


def llm_span(end_ns: int, total: float, *, ttft: float | None = None,
             tbt_p95: float | None = None, out_tokens: int = 200, endpoint: str | None = "chat",
             feature: str = "support", model: str = "claude-sonnet-4-5", error: bool = False,
             stalls: int = 0, trace_id: str = "t", parent_id: str | None = None) -> Span:
    """A finished LLM span as an instrumented (streamed) call would produce it."""
    stream = None
    if tbt_p95 is not None:
        stream = StreamStats(items=out_tokens, n=out_tokens - 1, mean_s=tbt_p95 / 2,
                             p50_s=tbt_p95 / 2, p95_s=tbt_p95, max_s=tbt_p95 * 2, stalls=stalls)
    return Span(
        trace_id=trace_id, parent_id=parent_id, name="anthropic.messages.stream", kind="llm",
        start_ns=end_ns - int(total * S), end_ns=end_ns, status="error" if error else "ok",
        model=model, provider="anthropic", feature=feature, ttft_s=ttft, stream=stream,
        usage=Usage(input_tokens=50, output_tokens=out_tokens),
        attributes={"endpoint": endpoint} if endpoint else {},
    )


def feed(monitor: LatencyMonitor, spans: list[Span]) -> list[Any]:
    out: list[Any] = []
    for span in spans:
        out.extend(monitor.observe(span))
    return out


def quiet(**config: Any) -> dict[str, Any]:
    """Config with change detection off (tests of other features)."""
    return {"change_detection": {"enabled": False}, **config}


# -- quantiles ----------------------------------------------------------------------------


def test_quantiles_within_relative_accuracy_of_numpy() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    ttft = rng.lognormal(-1.0, 0.6, n)
    gen = rng.lognormal(1.0, 0.4, n)
    tbt = rng.lognormal(-3.5, 0.5, n)
    tokens = rng.integers(50, 800, n)
    mon = LatencyMonitor(quiet())
    spans = []
    for i in range(n):
        end = T0 + i * 10_000_000  # 100 per second: all inside the 5-minute window
        total = float(ttft[i] + gen[i])
        spans.append(llm_span(end, total, ttft=float(ttft[i]), tbt_p95=float(tbt[i]),
                              out_tokens=int(tokens[i])))
    feed(mon, spans)
    key = ("support", "claude-sonnet-4-5", "chat")
    assert mon.live_keys() == [key]
    totals = np.array([s.duration_s for s in spans])
    tps = tokens / (totals - ttft)
    for name, data in (("ttft", ttft), ("tbt", tbt), ("total", totals), ("output_tps", tps)):
        for q in QS:
            expected = float(np.quantile(data, q, method="lower"))
            got = mon.quantile(key, name, q)
            assert got is not None
            assert abs(got - expected) <= ACC * expected * (1 + 1e-9), (name, q, got, expected)
    w = mon.window(key)
    assert w["requests"] == n and w["errors"] == 0


def test_windows_hold_only_their_time_range() -> None:
    mon = LatencyMonitor(quiet(windows_s=[300, 3600]))
    key = ("support", "claude-sonnet-4-5", "chat")
    # minute m gets latency m + 1 seconds, 10 spans each, for 90 minutes
    spans = [llm_span(T0 + m * 60 * S + j * S, m + 1.0) for m in range(90) for j in range(10)]
    feed(mon, spans)
    now = T0 + 89 * 60 * S + 30 * S
    mon.tick(now)
    short = mon.window(key, 300)
    assert short["requests"] == 50  # minutes 85..89
    assert mon.quantile(key, "total", 0.0, 300) == pytest.approx(86.0, rel=ACC)
    long = mon.window(key, 3600)
    # 60 minutes, plus at most one 5-minute period more at the far end
    assert 600 <= long["requests"] <= 650
    assert mon.quantile(key, "total", 1.0, 3600) == pytest.approx(90.0, rel=ACC)
    assert mon.quantile(key, "total", 0.0, 3600) >= 25.0 * (1 - ACC)
    # late data beyond the longest window is counted, not stored
    assert mon.observe(llm_span(T0, 1.0)) == []
    assert mon.late == 1


def test_errors_count_but_are_not_sketched_and_tps_skips_tokenless_spans() -> None:
    mon = LatencyMonitor(quiet())
    key = ("support", "claude-sonnet-4-5", "chat")
    feed(mon, [llm_span(T0 + i * S, 2.0, error=i % 4 == 0) for i in range(40)]
         + [llm_span(T0 + 50 * S, 2.0, out_tokens=0)])
    w = mon.window(key)
    assert (w["requests"], w["errors"]) == (41, 10)
    assert w["sketches"]["total"].count == 31
    assert w["sketches"]["output_tps"].count == 30


# -- merging ------------------------------------------------------------------------------


def test_merged_snapshots_equal_one_monitor_fed_both_streams() -> None:
    rng = np.random.default_rng(3)
    a, b, both = (LatencyMonitor(quiet()) for _ in range(3))
    data = []
    for i in range(6000):
        end = T0 + i * 150_000_000  # 15 minutes: spans the fine ring and folded periods
        feature = "support" if i % 3 else "search"
        ttft = float(rng.lognormal(-1.2, 0.5))
        total = ttft + float(rng.lognormal(0.5 if i % 2 else 1.5, 0.3))
        span = llm_span(end, total, ttft=ttft, tbt_p95=float(rng.lognormal(-3, 0.4)),
                        feature=feature)
        data.append((feature, span))
        (a if rng.random() < 0.5 else b).observe(span)
        both.observe(span)
    now = T0 + 6000 * 150_000_000
    for mon in (a, b, both):
        mon.tick(now)
    merged = LatencyMonitor(quiet())
    merged.merge(json.loads(json.dumps(a.snapshot())))  # plain JSON-serialisable data
    merged.merge(json.loads(json.dumps(b.snapshot())))
    assert sorted(merged.live_keys()) == sorted(both.live_keys())
    for key in both.live_keys():
        for window in (300, 3600):
            m, o = merged.window(key, window), both.window(key, window)
            assert (m["requests"], m["errors"], m["stalls"]) == \
                (o["requests"], o["errors"], o["stalls"])
            for name in ("ttft", "tbt", "total", "output_tps"):
                assert m["sketches"][name].count == o["sketches"][name].count
                for q in QS:
                    assert merged.quantile(key, name, q, window) == pytest.approx(
                        both.quantile(key, name, q, window), rel=1e-12)
    # and the merged quantiles are within the sketch accuracy of numpy on all the data
    key = ("search", "claude-sonnet-4-5", "chat")
    totals = np.array([s.duration_s for f, s in data if f == "search"
                       and s.end_ns > now - 3600 * S - 300 * S])
    got = merged.quantile(key, "total", 0.95, 3600)
    expected = float(np.quantile(totals, 0.95, method="lower"))
    assert got is not None and abs(got - expected) <= 0.05 * expected  # window edge: +-1 period


def test_merge_rejects_other_accuracy() -> None:
    a = LatencyMonitor(quiet(relative_accuracy=0.02))
    a.observe(llm_span(T0, 1.0))
    with pytest.raises(ValueError, match="relative_accuracy"):
        LatencyMonitor(quiet()).merge(a.snapshot())


# -- memory -------------------------------------------------------------------------------


def test_memory_stays_bounded_over_a_million_observations() -> None:
    """1,000,000 sketch observations: 250,000 streamed spans x (TTFT, TBT, total, speed)."""
    mon = LatencyMonitor(quiet(max_keys=20, pending_max_traces=100))
    rng = random.Random(5)
    spans = [llm_span(T0, rng.lognormvariate(0, 1.5), ttft=rng.lognormvariate(-1, 1),
                      tbt_p95=rng.lognormvariate(-3, 1), endpoint=f"ep{i % 40}",
                      trace_id=f"{i:032x}")
             for i in range(1000)]
    stats_at: dict[int, dict[str, int]] = {}
    t = T0
    for i in range(250_000):
        span = spans[i % 1000]
        t += 60_000_000  # about 4 hours of traffic at 17 spans per second
        span.end_ns = t
        mon.observe(span)
        if i % 5_000 == 0:
            mon.tick(t)
        if i + 1 in (62_500, 250_000):
            stats_at[i + 1] = mon.memory_stats()
    added = sum(sk.count for st in mon._keys.values()
                for slot in (*st.fine.values(), *st.coarse.values())
                for sk in slot.sketches.values())
    assert 0 < added < 1_000_000  # older observations expired with their windows
    st = stats_at[250_000]
    fine, periods = 300 // 60, 3600 // 300
    assert st["keys"] <= 21  # max_keys + the _other key
    assert mon.overflowed > 0
    assert st["slots"] <= st["keys"] * (fine + periods + 2)
    assert st["sketches"] <= st["slots"] * 4
    assert st["bins"] <= st["sketches"] * 2 * 1024  # positive + negative stores, bin_limit
    # a plateau: four times the traffic after the first hour, no more memory
    assert st["slots"] <= stats_at[62_500]["slots"] * 1.1
    assert st["roots"] <= 10_000


# -- thresholds -------------------------------------------------------------------------


def test_threshold_fires_once_per_cooldown() -> None:
    mon = LatencyMonitor(quiet(
        thresholds={"chat": {"ttft_p95_s": 1.0, "total_p95_s": 30.0},
                    "*": {"total_p95_s": 100.0}},
        min_samples=20, cooldown_s=600, check_interval_s=10, emit_interval_s=3600))
    for i in range(40):  # slow TTFT on chat; a batch endpoint with long totals
        mon.observe(llm_span(T0 + i * S, 5.0, ttft=2.0, tbt_p95=0.05))
        mon.observe(llm_span(T0 + i * S, 60.0, endpoint="batch"))
    alerts = []
    for k in range(0, 600, 10):  # ten minutes of ticks, data kept fresh
        now = T0 + 40 * S + k * S
        mon.observe(llm_span(now, 5.0, ttft=2.0, tbt_p95=0.05))
        alerts += [r for r in mon.tick(now) if isinstance(r, Alert)]
    assert [a.rule for a in alerts] == ["latency.ttft_p95_s"]
    alert = alerts[0]
    assert alert.labels == {"feature": "support", "model": "claude-sonnet-4-5",
                            "endpoint": "chat", "window_s": "300"}
    assert alert.value == pytest.approx(2.0, rel=ACC) and alert.threshold == 1.0
    now = T0 + 40 * S + 650 * S  # past the cooldown, still slow: fires again
    mon.observe(llm_span(now, 5.0, ttft=2.0))
    assert [a.rule for a in mon.tick(now) if isinstance(a, Alert)] == ["latency.ttft_p95_s"]


def test_threshold_needs_min_samples_and_counts_stalls() -> None:
    mon = LatencyMonitor(quiet(thresholds={"chat": {"ttft_p95_s": 1.0, "stalls": 3}},
                               min_samples=50))
    for i in range(10):
        mon.observe(llm_span(T0 + i * S, 5.0, ttft=9.0, tbt_p95=0.05, stalls=1))
    alerts = [r for r in mon.tick(T0 + 11 * S) if isinstance(r, Alert)]
    assert [a.rule for a in alerts] == ["latency.stalls"]  # 10 stalls > 3; TTFT: n=10 < 50
    assert alerts[0].value == 10


def test_metrics_per_key_and_window() -> None:
    mon = LatencyMonitor(quiet(emit_interval_s=60))
    for i in range(100):
        mon.observe(llm_span(T0 + i * S, 3.0, ttft=0.5, tbt_p95=0.04))
    metrics = [r for r in mon.tick(T0 + 100 * S) if isinstance(r, Metric)]
    by = {(m.name, m.window_s): m for m in metrics}
    assert by[("latency.ttft_p95_s", 300)].value == pytest.approx(0.5, rel=ACC)
    assert by[("latency.ttft_p95_s", 3600)].labels == {
        "feature": "support", "model": "claude-sonnet-4-5", "endpoint": "chat"}
    assert by[("latency.tbt_p99_s", 300)].value == pytest.approx(0.04, rel=ACC)
    assert by[("latency.total_p50_s", 300)].value == pytest.approx(3.0, rel=ACC)
    assert by[("latency.output_tps_p5", 300)].value == pytest.approx(200 / 2.5, rel=ACC)
    assert by[("latency.requests", 300)].value == 100
    assert by[("latency.error_rate", 300)].value == 0.0
    assert not [m for m in mon.tick(T0 + 101 * S) if isinstance(m, Metric)]  # interval


# -- endpoints and the report -----------------------------------------------------------


def test_endpoint_comes_from_the_root_span_even_when_it_finishes_last() -> None:
    mon = LatencyMonitor(quiet(pending_max_s=60))
    child = llm_span(T0 + S, 1.0, endpoint=None, trace_id="a" * 32, parent_id="p1")
    assert mon.observe(child) == []
    assert mon.live_keys() == []  # waiting for its root
    root = Span(trace_id="a" * 32, name="answer_question", kind="chain", feature="support",
                start_ns=T0, end_ns=T0 + 2 * S)
    mon.observe(root)
    assert sorted(mon.live_keys()) == [("support", "_all", "answer_question"),
                                  ("support", "claude-sonnet-4-5", "answer_question")]
    # a stream outliving its root span: the root is remembered
    late = llm_span(T0 + 3 * S, 3.0, endpoint=None, trace_id="a" * 32, parent_id="p1")
    mon.observe(late)
    assert mon.window(("support", "claude-sonnet-4-5", "answer_question"))["requests"] == 2
    # an explicit endpoint attribute wins; an orphan waits, then goes to _unknown
    mon.observe(llm_span(T0 + 4 * S, 1.0, endpoint="api", trace_id="b" * 32, parent_id="x"))
    mon.observe(llm_span(T0 + 4 * S, 1.0, endpoint=None, trace_id="c" * 32, parent_id="x"))
    mon.tick(T0 + 30 * S)
    assert ("support", "claude-sonnet-4-5", "_unknown") not in mon.live_keys()
    mon.tick(T0 + 70 * S)
    assert ("support", "claude-sonnet-4-5", "api") in mon.live_keys()
    assert ("support", "claude-sonnet-4-5", "_unknown") in mon.live_keys()


def test_summary_separates_ttft_from_total_for_streaming_endpoints() -> None:
    mon = LatencyMonitor(quiet())
    for i in range(50):
        mon.observe(llm_span(T0 + i * S, 4.0, ttft=0.4, tbt_p95=0.03))
        mon.observe(llm_span(T0 + i * S, 9.0, endpoint="batch", model="claude-haiku-4-5"))
    summary = mon.summary()
    assert summary["window_s"] == 3600
    rows = {r["endpoint"]: r for r in summary["endpoints"]}
    chat, batch = rows["chat"], rows["batch"]
    assert chat["streaming"] and not batch["streaming"]
    assert chat["ttft"]["p95"] == pytest.approx(0.4, rel=ACC)
    assert chat["total"]["p95"] == pytest.approx(4.0, rel=ACC)
    assert batch["ttft"] is None and batch["total"]["p50"] == pytest.approx(9.0, rel=ACC)
    json.dumps(summary)  # plain data


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"monitors\.latency: .*multiple of the shortest"):
        LatencyMonitor({"windows_s": [300, 1000]})
    with pytest.raises(ConfigError, match=r"monitors\.latency\.thresholds\.chat\.ttft_p95_s"):
        LatencyMonitor({"thresholds": {"chat": {"ttft_p95_s": -1}}})
    with pytest.raises(ConfigError, match=r"monitors\.latency\.thresholds\.chat\.ttft_p99_s: "
                                          r"unknown key"):
        LatencyMonitor({"thresholds": {"chat": {"ttft_p99_s": 1}}})
    with pytest.raises(ConfigError, match="threshold_window_s"):
        LatencyMonitor({"threshold_window_s": 600})


def test_runs_in_the_pipeline_and_alerts_reach_the_backends(tmp_path: Path) -> None:
    mon = LatencyMonitor(quiet(thresholds={"chat": {"total_p95_s": 1.0}}, min_samples=5))
    memory = start(tmp_path, monitors=[mon])
    now = llmvigil.core.model.now_ns()
    for i in range(10):
        llmvigil.core.capture.emit(llm_span(now + i, 3.0, trace_id=f"{i:032x}"))
    assert llmvigil.flush()
    deadline = now + 10 * S
    while not memory.alerts and llmvigil.core.model.now_ns() < deadline:
        llmvigil.flush(1)
    assert [a.rule for a in memory.alerts] == ["latency.total_p95_s"]
    assert any(m.name == "latency.total_p95_s" for m in memory.metrics)


# -- change detection -----------------------------------------------------------------------


def test_siegmund_threshold_and_t_to_z() -> None:
    h = cusum_threshold(1000, 0.5)
    assert siegmund_arl(h, 0.5) == pytest.approx(2000, rel=1e-6)  # two sides share arl0
    assert cusum_threshold(10_000, 0.5) > h
    # P(T > 2.228) = 0.025 for 10 d.o.f. -> z = 1.96
    assert student_t_to_z(2.228, 10) == pytest.approx(1.96, abs=0.002)
    assert student_t_to_z(-2.228, 10) == pytest.approx(-1.96, abs=0.002)


@pytest.mark.parametrize("df", [3, 10, 99, 100, 199, 1_000, 100_000])
def test_t_to_z_matches_scipy(df: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    for t in (-8.0, -3.0, -1.0, -0.1, 0.0, 0.5, 2.0, 4.0, 8.0):
        exact = stats.norm.isf(stats.t.sf(abs(t), df)) * (1 if t >= 0 else -1)
        assert student_t_to_z(t, df) == pytest.approx(exact, abs=7e-4), (t, df)


def _run_length(det: Any, draw: Any, limit: int) -> int:
    for i in range(1, limit + 1):
        if det.update(draw()) is not None:
            return i
    return limit


def test_gaussian_cusum_false_alarm_rate_matches_arl0() -> None:
    arl0, warmup = 400, 100
    rng = random.Random(11)
    lengths = []
    for _ in range(120):
        det = GaussianCusum(arl0, warmup=warmup)
        # log latency of a stationary endpoint: lognormal latency around 1.2 s
        n = _run_length(det, lambda: math.log(rng.lognormvariate(0.2, 0.35)), 20 * arl0)
        lengths.append(n - warmup)
    mean = float(np.mean(lengths))
    assert arl0 / 2 <= mean <= arl0 * 2, mean


def test_gaussian_cusum_catches_a_two_sigma_shift_quickly() -> None:
    rng = random.Random(12)
    delays = []
    for _ in range(50):
        det = GaussianCusum(10_000, warmup=200)
        for _ in range(200):  # the baseline
            det.update(rng.gauss(1.0, 0.3))
        assert det.ready
        delay = _run_length(det, lambda: rng.gauss(1.6, 0.3), 1000)  # +2 sigma
        delays.append(delay)
    assert float(np.median(delays)) <= 10
    assert max(delays) <= 40


class _ReferenceCusum:
    """The self-starting two-sided CUSUM written out plainly from the module docstring,
    to check GaussianCusum's per-observation arithmetic against."""

    def __init__(self, arl0: float, shift_sigma: float, warmup: int, clip: float,
                 max_baseline: int) -> None:
        self.k, self.h = shift_sigma / 2.0, cusum_threshold(arl0, shift_sigma / 2.0)
        self.warmup, self.clip, self.max_baseline = warmup, clip, max(max_baseline, warmup)
        self.restart()

    def restart(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0  # Welford over the baseline
        self.run = 0
        self.s_pos = self.s_neg = 0.0
        self.pos: list[float] = []  # the observations since each side last touched 0
        self.neg: list[float] = []

    def update(self, x: float) -> tuple[Any, ...] | None:
        n = self.n
        if n >= self.warmup:
            std = math.sqrt(self.m2 / (n - 1))
            if std > 0.0:
                z = student_t_to_z((x - self.mean) / (std * math.sqrt(1.0 + 1.0 / n)), n - 1)
                z = max(-self.clip, min(self.clip, z))
                self.run += 1
                self.s_pos = self.s_pos + z - self.k
                self.s_neg = self.s_neg - z - self.k
                self.pos = [*self.pos, x] if self.s_pos > 0.0 else []
                self.neg = [*self.neg, x] if self.s_neg > 0.0 else []
                if self.s_pos > self.h or self.s_neg > self.h:
                    up = self.s_pos >= self.s_neg
                    side = self.pos if up else self.neg
                    total = 0.0
                    for v in side:
                        total += v
                    alarm = ("up" if up else "down", self.mean, std, total / len(side),
                             max(self.s_pos, self.s_neg), self.n, self.run)
                    self.restart()
                    return alarm
                self.s_pos, self.s_neg = max(self.s_pos, 0.0), max(self.s_neg, 0.0)
        if n < self.max_baseline:
            self.n = n + 1
            delta = x - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (x - self.mean)
        return None


@pytest.mark.parametrize("warmup,max_baseline", [(10, 60), (30, 10_000), (150, 400)])
def test_gaussian_cusum_matches_a_plain_reference(warmup: int, max_baseline: int) -> None:
    """Every alarm (direction, baseline, new level, statistic, counts) exactly as the
    plain reference computes it, through warm-ups, shifts both ways and a frozen baseline."""
    rng = random.Random(warmup)
    args = (500.0, 1.0, warmup, 3.0, max_baseline)
    det = GaussianCusum(args[0], shift_sigma=args[1], warmup=warmup, clip=args[3],
                        max_baseline=max_baseline)
    ref = _ReferenceCusum(*args)
    alarms = 0
    for i in range(6000):
        x = rng.gauss((0.0, 1.5, -1.0, 0.2)[i // 1500], 0.4)
        got, want = det.update(x), ref.update(x)
        if want is None:
            assert got is None, i
            continue
        alarms += 1
        assert got is not None, i
        assert (got.direction, got.baseline_mean, got.baseline_std, got.new_mean,
                got.statistic, got.observations, got.run_length) == want, i
        assert got.threshold == ref.h
    assert alarms >= 3


def test_bernoulli_cusum_threshold_matches_simulation_and_detects_doubling() -> None:
    p0, arl0 = 0.05, 800.0
    det = BernoulliCusum(arl0, ratio=2.0, p0=p0)
    assert det.ready
    assert bernoulli_cusum_arl(det.h, det.p0 or p0, 2.0) == pytest.approx(arl0, rel=0.02)
    rng = random.Random(13)
    lengths = []
    for _ in range(100):
        det = BernoulliCusum(arl0, ratio=2.0, p0=p0)
        q = det.p0 or p0
        lengths.append(_run_length(det, lambda q=q: rng.random() < q, 50 * int(arl0)))
    mean = float(np.mean(lengths))
    assert arl0 / 2 <= mean <= arl0 * 2, mean
    delays = []
    for _ in range(100):
        det = BernoulliCusum(arl0, ratio=2.0, p0=p0)
        q = 2 * (det.p0 or p0)
        delays.append(_run_length(det, lambda q=q: rng.random() < q, 10 * int(arl0)))
    assert float(np.median(delays)) < arl0 / 4


def test_latency_monitor_alerts_on_a_shift_not_on_stationary_traffic() -> None:
    mon = LatencyMonitor({"change_detection": {"arl0": 100_000, "warmup": 200}})
    rng = random.Random(14)
    alerts = []
    for i in range(3000):
        total = rng.lognormvariate(0.5, 0.2)
        alerts += mon.observe(llm_span(T0 + i * 10_000_000, total, ttft=total / 4))
    assert alerts == []
    for i in range(3000, 3100):  # the provider swapped the model: 50% slower
        total = rng.lognormvariate(0.5 + math.log(1.5), 0.2)
        alerts += mon.observe(llm_span(T0 + i * 10_000_000, total, ttft=total / 4))
    rules = {(a.rule, a.labels["series"], a.labels["direction"]) for a in alerts}
    assert ("latency.change", "total", "up") in rules
    assert ("latency.change", "ttft", "up") in rules
    assert all(a.labels["endpoint"] == "chat" for a in alerts)


@pytest.mark.parametrize("seed", range(20))
def test_sketch_add_shortcut_is_the_library_add(seed: int) -> None:
    """Sketch.add takes a shortcut for unit weights in allocated bins; bins, counts and
    quantiles stay exactly those of ddsketch's own add (collapsing, zero, negatives too)."""
    import random

    from ddsketch import LogCollapsingLowestDenseDDSketch
    from llmvigil.core.monitors.latency import Sketch

    rng = random.Random(seed)
    accuracy, limit = rng.choice([0.01, 0.02, 0.05]), rng.choice([16, 64, 2048])
    library, ours = LogCollapsingLowestDenseDDSketch(accuracy, limit), Sketch(accuracy, limit)
    for _ in range(rng.randrange(1, 2000)):
        value = rng.choice([rng.lognormvariate(0, 3), 0.0, -rng.random(), 1e-300,
                            rng.random() * 1e6])
        weight = rng.choice([1.0, 1.0, 1.0, 2.5])
        library.add(value, weight)
        ours.add(value, weight)
    for store in ("_store", "_negative_store"):
        a, b = getattr(library, store), getattr(ours, store)
        assert (a.bins, a.offset, a.min_key, a.max_key, a.count) == \
            (b.bins, b.offset, b.min_key, b.max_key, b.count)
    assert (library.count, library.sum, library._min, library._max, library._zero_count) == \
        (ours.count, ours.sum, ours._min, ours._max, ours._zero_count)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert ours.get_quantile_value(q) == library.get_quantile_value(q)
