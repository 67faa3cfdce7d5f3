"""Fleet mode: drift and check windows of several processes merge into fleet-wide ones.

Replicas here are real processes: this file run as a script is one replica
(``python test_fleet_windows.py <scenario> <replica> <replicas>``); it observes its
share of a deterministic stream and prints its monitor's snapshot as JSON.
"""

from __future__ import annotations

import calendar
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pluggy
import pytest
from llmvigil.core.checks import register_check, registered_checks, unregister_check
from llmvigil.core.model import Alert, Metric, Span, new_trace_id
from llmvigil.core.monitors.checks import CheckMonitor
from llmvigil.core.monitors.drift import DriftMonitor
from llmvigil.core.monitors.latency import LatencyMonitor
from llmvigil.core.monitors.windows import merge_samples
from llmvigil.plugins import hookspecs
from llmvigil.plugins.embedders import HashedEmbedder
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.types import EmbedderInfo

S = 1_000_000_000
T0 = 1_700_000_000 * S
MS = 1_000_000
REPLICAS = 4
DATE_CHECK = {"name": "date_valid", "type": "valid_date", "format": "%d/%m/%Y",
              "field": "date"}

# The checks scenario: 1,000 clean outputs (each replica's 250-output baseline), then
# 1,000 outputs after a silent model update that transposes the dates of 3% of them.
CHECKS: dict[str, Any] = {"baseline_size": 250, "window": 1000, "alpha": 0.01,
                          "cooldown_s": 0, "features": {"extract": [DATE_CHECK]}, "seed": 7}
CHECKS_CLEAN, CHECKS_AFTER, TRANSPOSED = 1000, 1000, 0.03

# The drift scenario: 800 clean outputs (each replica's 200-output baseline), then 200
# after an update that appends a disclaimer to 30% of them.
DRIFT: dict[str, Any] = {"baseline_size": 200, "window_size": 200, "min_window": 200,
                         "min_new": 50, "interval_s": 60, "alpha": 0.01, "background": False,
                         "seed": 1}
DRIFT_CLEAN, DRIFT_AFTER, DISCLAIMED = 800, 200, 0.3
DISCLAIMER = " Please note that all amounts are estimates and may change."
VENDORS = ["Müller GmbH", "Dupont SARL", "Rossi S.p.A.", "García y Hijos", "Jansen B.V.",
           "Nowak Sp. z o.o.", "Svensson AB", "O'Brien Ltd"]


# -- the streams (the same in every process) -------------------------------------------------


def date_output(i: int) -> dict[str, str]:
    """Output ``i`` of the checks stream: a real DD/MM/YYYY date, or MM/DD after the update."""
    rnd = random.Random(1_000_003 * 11 + i)
    year, month = rnd.randint(2015, 2025), rnd.randint(1, 12)
    day = rnd.randint(1, calendar.monthrange(year, month)[1])
    transposed = i >= CHECKS_CLEAN and rnd.random() < TRANSPOSED
    first, second = (month, day) if transposed else (day, month)
    return {"date": f"{first:02d}/{second:02d}/{year}", "vendor": rnd.choice(VENDORS)}


def impossible(date: str) -> bool:
    """Counted by hand: a DD/MM/YYYY date with no such day (month 13, 31/04...)."""
    day, month, year = (int(part) for part in date.split("/"))
    return not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1])


def text_output(i: int) -> str:
    """Output ``i`` of the drift stream: an extraction sentence, disclaimed after the update."""
    rnd = random.Random(2_000_003 * 13 + i)
    text = (f"The invoice INV-{rnd.randint(1000, 99999)} from {rnd.choice(VENDORS)} is dated "
            f"{rnd.randint(1, 28):02d}/{rnd.randint(1, 12):02d}/{rnd.randint(2019, 2025)}; "
            f"the total is {rnd.randint(10, 99999)},{rnd.randint(0, 99):02d} EUR.")
    if i >= DRIFT_CLEAN and rnd.random() < DISCLAIMED:
        text += DISCLAIMER
    return text


def span(output: Any, t: int, feature: str = "extract", kind: str = "chain") -> Span:
    return Span(trace_id=new_trace_id(), parent_id=None, name="extract", kind=kind,
                feature=feature, output=output, start_ns=t, end_ns=t)


def replica(scenario: str, index: int, replicas: int) -> dict[str, Any]:
    """Run one replica over its share (every ``replicas``-th output) of a scenario."""
    if scenario == "checks":
        mon: CheckMonitor | DriftMonitor = CheckMonitor(CHECKS)
        stream: Callable[[int], Any] = date_output
        total, kind = CHECKS_CLEAN + CHECKS_AFTER, "chain"
    else:
        mon = DriftMonitor(DRIFT)
        stream, total, kind = text_output, DRIFT_CLEAN + DRIFT_AFTER, "llm"
    out: list[Any] = []
    for i in range(index, total, replicas):
        out.extend(mon.observe(span(stream(i), T0 + i * MS, kind=kind)))
    out.extend(mon.tick(T0 + total * MS))
    return {"pid": os.getpid(), "alerts": sum(isinstance(r, Alert) for r in out),
            "tested": sum(isinstance(r, Metric) and r.name.endswith("p_value") for r in out),
            "snapshot": mon.snapshot()}


def run_replicas(scenario: str, replicas: int = REPLICAS) -> list[dict[str, Any]]:
    """Start every replica as its own process at once; read back their snapshots."""
    procs = [subprocess.Popen([sys.executable, __file__, scenario, str(k), str(replicas)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(replicas)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert len({r["pid"] for r in results} | {os.getpid()}) == replicas + 1
    return results


def metrics(out: Sequence[Any], name: str) -> list[float]:
    return [r.value for r in out if isinstance(r, Metric) and r.name == name]


def alerts(out: Sequence[Any]) -> list[Alert]:
    return [r for r in out if isinstance(r, Alert)]


# -- merging across real processes ---------------------------------------------------------


def test_checks_flag_transposed_dates_only_fleet_wide_with_the_exact_fleet_rate() -> None:
    results = run_replicas("checks")
    after = [date_output(i)["date"] for i in range(CHECKS_CLEAN, CHECKS_CLEAN + CHECKS_AFTER)]
    failed = sum(impossible(d) for d in after)
    assert 10 <= failed <= 30, failed  # 3% transposed, about 60% of them impossible dates
    now = T0 + 3000 * MS

    for r in results:  # each replica alone: 250 outputs, too few to close a window
        assert (r["alerts"], r["tested"]) == (0, 0)
        alone = CheckMonitor(CHECKS)
        alone.merge(r["snapshot"])
        out = list(alone.tick(now))
        assert metrics(out, "checks.date_valid.p_value") == [] and alerts(out) == []
        assert alone.state("extract")["date_valid"]["window_n"] == CHECKS_AFTER // REPLICAS

    fleet = CheckMonitor(CHECKS)
    for r in results:
        fleet.merge(r["snapshot"])
    out = list(fleet.tick(now))
    assert metrics(out, "checks.date_valid.n") == [float(CHECKS_AFTER)]
    assert metrics(out, "checks.date_valid.fail_rate") == [failed / CHECKS_AFTER]
    assert metrics(out, "checks.date_valid.baseline_n") == [float(CHECKS_CLEAN)]
    assert set(metrics(out, "checks.date_valid.baseline_fail_rate")) == {0.0}
    [alert] = alerts(out)
    assert alert.rule == "checks.date_valid" and alert.labels["n"] == "1000"
    assert float(alert.labels["p_value"]) < CHECKS["alpha"]
    examples = json.loads(alert.labels["examples"])
    assert examples and all(impossible(e["output"]) for e in examples)
    counts = fleet.stats()
    assert counts["spans"] == counts["results"] == CHECKS_CLEAN + CHECKS_AFTER


def test_drift_is_flagged_only_on_the_merged_window() -> None:
    results = run_replicas("drift")
    now = T0 + 2000 * MS
    for r in results:  # each replica alone: 50 recent outputs, below min_window
        assert (r["alerts"], r["tested"]) == (0, 0)
        alone = DriftMonitor(DRIFT)
        alone.merge(r["snapshot"])
        assert metrics(list(alone.tick(now)), "drift.p_value") == []

    fleet = DriftMonitor(DRIFT)
    for r in results:
        fleet.merge(json.loads(json.dumps(r["snapshot"])))
    [feature] = fleet.snapshot()["features"]
    assert feature["window_times"] == [T0 + i * MS for i in range(DRIFT_CLEAN, 1000)]
    assert feature["baseline_times"] == [T0 + i * MS for i in range(DRIFT["baseline_size"])]
    out = list(fleet.tick(now))
    assert metrics(out, "drift.p_value.n") == [200.0]
    [p] = metrics(out, "drift.p_value")
    assert p < DRIFT["alpha"]
    [alert] = alerts(out)
    assert alert.rule == "drift.detected" and alert.labels == {"feature": "extract"}
    assert fleet.stats()["sampled"] == DRIFT_CLEAN + DRIFT_AFTER


# -- exactness and fairness ------------------------------------------------------------------


@pytest.mark.parametrize("embedded", [True, False], ids=["embedded", "queued"])
def test_merged_drift_windows_equal_one_monitor_fed_every_stream(embedded: bool) -> None:
    """Replicas' baselines and windows line up by time into those of one monitor."""
    config = {**DRIFT, "min_window": 100, "window_size": 150}
    a, b, both = (DriftMonitor(config) for _ in range(3))
    rng = random.Random(5)
    for i in range(900):
        s = span(text_output(i), T0 + i * MS, kind="llm")
        (a if rng.random() < 0.3 else b).observe(s)
        both.observe(s)
    if embedded:
        a.tick(T0 + S)
        b.tick(T0 + S)
    merged = DriftMonitor(config)
    merged.merge(json.loads(json.dumps(a.snapshot())))
    merged.merge(json.loads(json.dumps(b.snapshot())))
    out_merged, out_both = list(merged.tick(T0 + S)), list(both.tick(T0 + S))
    got, want = merged.snapshot()["features"], both.snapshot()["features"]
    for key in ("baseline", "baseline_times", "window", "window_times"):
        assert got[0][key] == want[0][key], key
    assert metrics(out_merged, "drift.p_value") == metrics(out_both, "drift.p_value")
    assert metrics(out_merged, "drift.mmd2") == metrics(out_both, "drift.mmd2")
    assert len(metrics(out_both, "drift.p_value")) == 1


def test_drift_window_follows_nine_to_one_traffic() -> None:
    """Replica A serves 90% of the requests: its window covers a ninth of the time B's
    does, and the merged window (the fleet's latest outputs) is about 90% A's."""
    config = {**DRIFT, "min_window": 100}
    a, b = DriftMonitor(config), DriftMonitor(config)
    rng = random.Random(9)
    from_a = set()
    for i in range(4000):
        t = T0 + i * MS
        if rng.random() < 0.9:
            a.observe(span(f"output {i} of replica A", t, kind="llm"))
            from_a.add(t)
        else:
            b.observe(span(f"output {i} of replica B", t, kind="llm"))
    for mon in (a, b):
        mon.tick(T0 + S)
    merged = DriftMonitor(config)
    merged.merge(a.snapshot())
    merged.merge(b.snapshot())
    [feature] = merged.snapshot()["features"]
    window = feature["window_times"]
    assert len(window) == config["window_size"] == 200
    share = sum(t in from_a for t in window)
    # Binomial(200, 0.9): mean 180, sd 4.2; concatenating both windows would give 100
    assert abs(share - 180) <= 4 * (200 * 0.9 * 0.1) ** 0.5, share


@pytest.fixture
def _clean_registry() -> Iterator[None]:
    yield
    for feature, checks in registered_checks().items():
        for check in checks:
            unregister_check(feature, check.name)


def _value_replicas(seed: int | None = 3) -> tuple[dict[str, Any], dict[str, Any]]:
    """Snapshots of replicas A (900 outputs) and B (100) of a numeric check, window 200."""
    config = {"baseline_size": 10, "window": 200, "seed": seed}
    snaps = []
    for n, offset in ((900, 0), (100, 1000)):
        mon = CheckMonitor(config)
        mon.set_baseline("extract", [" ".join(["w"] * (k % 7 + 1)) for k in range(10)])
        for i in range(n):  # A's outputs have 1-50 words, B's 1001-1050: tells them apart
            mon.observe(span(" ".join(["w"] * (offset + i % 50 + 1)), T0 + i * MS))
        snaps.append(mon.snapshot())
    return snaps[0], snaps[1]


@pytest.mark.usefixtures("_clean_registry")
def test_check_value_windows_follow_nine_to_one_traffic() -> None:
    """The merged numbers are a uniform sample of both replicas' outputs: how many come
    from A is hypergeometric (1000 outputs, 900 from A, 200 drawn): mean 180, sd 3.8."""
    register_check("extract", "words", lambda out: len(out.split()), kind="value")
    snap_a, snap_b = _value_replicas()
    assert sum(w["n"] for w in snap_a["tracks"][0]["windows"]) == 900  # 4 closed + 1 open
    shares = []
    for seed in range(200):
        merged = CheckMonitor({"baseline_size": 10, "window": 200, "seed": seed})
        merged.merge(snap_a)
        merged.merge(snap_b)
        [track] = merged.snapshot()["tracks"]
        [window] = track["windows"]  # every untested output in one window, closed
        assert (window["n"], len(window["values"])) == (1000, 200)
        shares.append(sum(v <= 50 for v in window["values"]))
        assert track["baseline"]["n"] == 10, "two given baselines: one kept, not added"
    mean, sd = float(np.mean(shares)), float(np.std(shares, ddof=1))
    expected_sd = (200 * 0.9 * 0.1 * 800 / 999) ** 0.5
    assert abs(mean - 180) <= 4 * expected_sd / len(shares) ** 0.5, mean
    assert 0.75 * expected_sd <= sd <= 1.25 * expected_sd, sd
    assert all(abs(s - 180) <= 5 * expected_sd for s in shares)


@pytest.mark.usefixtures("_clean_registry")
def test_check_merge_is_deterministic_given_a_seed_and_tests_the_merged_window() -> None:
    register_check("extract", "words", lambda out: len(out.split()), kind="value")
    snap_a, snap_b = _value_replicas()

    def merged_values(seed: int) -> tuple[list[float], list[Any]]:
        mon = CheckMonitor({"baseline_size": 10, "window": 200, "seed": seed})
        mon.merge(snap_a)
        mon.merge(snap_b)
        values = mon.snapshot()["tracks"][0]["windows"][0]["values"]
        return values, list(mon.tick(T0 + S))

    first, out = merged_values(11)
    assert merged_values(11)[0] == first
    assert merged_values(12)[0] != first
    assert metrics(out, "checks.words.n") == [1000.0]
    assert metrics(out, "checks.words.median") == [float(np.median(first))]
    assert alerts(out), "the fleet's outputs are far longer than the baseline's"


def test_merge_samples_is_uniform_over_the_union() -> None:
    """Each item of the union is kept with probability size / union, whichever part it is in."""
    rng = np.random.default_rng(0)
    parts = [(600, list(range(200))), (150, list(range(1000, 1150))), (50, [])]
    with pytest.raises(ValueError, match="cannot stand for 50"):
        merge_samples(parts, 200, rng)
    parts[2] = (50, list(range(2000, 2050)))
    kept = np.zeros(3)
    for _ in range(2000):
        total, sample = merge_samples(parts, 200, rng)
        assert total == 800 and len(sample) == len(set(sample)) == 200
        kept += [sum(x < 1000 for x in sample), sum(1000 <= x < 2000 for x in sample),
                 sum(x >= 2000 for x in sample)]
    assert kept / 2000 == pytest.approx([150, 37.5, 12.5], rel=0.02)
    assert merge_samples([(3, [1, 2, 3]), (2, [4, 5])], 10, rng) == (5, [1, 2, 3, 4, 5])


# -- what does not match --------------------------------------------------------------------


def _drift_snapshot(**config: Any) -> dict[str, Any]:
    mon = DriftMonitor({**DRIFT, **config})
    for i in range(300):
        mon.observe(span(text_output(i), T0 + i * MS, kind="llm"))
    mon.tick(T0 + S)
    return mon.snapshot()


@pytest.mark.parametrize(("config", "match"), [
    ({"window_size": 300}, r"window_size \(300 != 200\)"),
    ({"embedder_options": {"dim": 64}}, r"embedder_options \({'dim': 64} != {}\)"),
    ({"sample_rate": 0.5}, "sample_rate"),
    ({"spans": "all"}, "spans"),
])
def test_drift_merge_names_the_setting_that_differs(config: dict[str, Any], match: str) -> None:
    target = DriftMonitor(DRIFT)
    with pytest.raises(ValueError, match=match):
        target.merge(_drift_snapshot(**config))
    assert target.snapshot()["features"] == []


def test_drift_merge_rejects_other_formats_and_dimensions_and_merges_nothing() -> None:
    latency = LatencyMonitor({"change_detection": {"enabled": False}})
    with pytest.raises(ValueError, match="not a drift snapshot"):
        DriftMonitor(DRIFT).merge(latency.snapshot())
    with pytest.raises(ValueError, match="not a latency snapshot"):
        latency.merge(_drift_snapshot())
    target = DriftMonitor(DRIFT)
    target.merge(_drift_snapshot())
    before = target.snapshot()
    other = _drift_snapshot(embedder_options={"dim": 64})
    other["embedder_options"] = {}  # a snapshot that lies about its embedder
    other["features"].insert(0, {**other["features"][0], "feature": "search"})
    with pytest.raises(ValueError, match=r"feature 'extract': embeddings of dimensions "
                                         r"\[64, 384\]"):
        target.merge(other)
    assert target.snapshot() == before, "a failed merge changes nothing"


def test_drift_snapshot_holds_the_outputs_being_embedded() -> None:
    """Texts the drift thread is embedding travel as text, and as rows once embedded."""
    release = threading.Event()

    def gated(settings: Any) -> Callable[[Sequence[str]], np.ndarray]:
        inner = HashedEmbedder()

        def embed(texts: Sequence[str]) -> np.ndarray:
            release.wait(10)
            return inner(texts)
        return embed

    class Plugin:
        @hookimpl
        def llmvigil_embedders(self) -> list[EmbedderInfo]:
            return [EmbedderInfo("gated", gated)]

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin())
    mon = DriftMonitor({**DRIFT, "background": True, "embedder": "gated"}, plugin_manager=pm)
    for i in range(260):
        mon.observe(span(text_output(i), T0 + i * MS, kind="llm"))
    mon.tick(T0 + S)
    assert mon.stats()["job_running"] and mon.stats()["queued_texts"] == 0
    [during] = mon.snapshot()["features"]
    assert (len(during["queued_baseline"]), len(during["queued"])) == (200, 60)
    assert during["baseline"] is None and during["window"] is None
    release.set()
    assert mon.wait_idle(10)
    [after] = mon.snapshot()["features"]
    assert (after["queued_baseline"], after["queued"]) == ([], [])
    assert (after["baseline"]["shape"], after["window"]["shape"]) == ([200, 384], [60, 384])
    mon.close()


def _checks_snapshot(**config: Any) -> dict[str, Any]:
    mon = CheckMonitor({**CHECKS, **config})
    for i in range(1300):
        mon.observe(span(date_output(i), T0 + i * MS))
    return mon.snapshot()


@pytest.mark.parametrize(("config", "match"), [
    ({"window": 500}, r"another window \(500 != 1000\)"),
    ({"baseline_size": 100}, r"baseline_size \(100 != 250\)"),
    ({"on": "llm"}, r"on \('llm' != 'root'\)"),
    ({"features": {"extract": [DATE_CHECK, {"name": "n", "type": "length"}]}},
     "check 'n' on feature 'extract' is not configured in this monitor"),
    ({"features": {"extract": [{**DATE_CHECK, "field": "due"}]}},
     r"declared with another field \('due' != 'date'\)"),
    ({"features": {"extract": [{**DATE_CHECK, "type": "date_format"}]}},
     r"another type \('date_format' != 'valid_date'\)"),
])
def test_check_merge_names_what_differs_and_merges_nothing(config: dict[str, Any],
                                                           match: str) -> None:
    target = CheckMonitor(CHECKS)
    target.merge(_checks_snapshot())
    before = target.snapshot()
    with pytest.raises(ValueError, match=match):
        target.merge(_checks_snapshot(**config))
    assert target.snapshot() == before
    with pytest.raises(ValueError, match="not a checks snapshot"):
        target.merge(_drift_snapshot())


@pytest.mark.usefixtures("_clean_registry")
def test_check_merge_rejects_another_kind_and_malformed_samples() -> None:
    register_check("extract", "words", lambda out: len(out.split()), kind="value")
    snap_a, _ = _value_replicas()
    unregister_check("extract", "words")
    register_check("extract", "words", lambda out: len(out.split()) > 3, kind="rate")
    with pytest.raises(ValueError, match=r"another kind \('value' != 'rate'\)"):
        CheckMonitor({"baseline_size": 10, "window": 200}).merge(snap_a)
    unregister_check("extract", "words")
    register_check("extract", "words", lambda out: len(out.split()), kind="value")
    snap_a["tracks"][0]["windows"][0]["values"].pop()
    with pytest.raises(ValueError, match="199 numbers cannot stand for 200 outputs"):
        CheckMonitor({"baseline_size": 10, "window": 200}).merge(snap_a)


def test_check_counters_add_exactly_and_a_given_baseline_wins() -> None:
    learnt, given = CheckMonitor(CHECKS), CheckMonitor(CHECKS)
    for i in range(300):
        learnt.observe(span(date_output(i), T0 + i * MS))
    given.set_baseline("extract", [{"date": "31/04/2024"}] * 5 + [date_output(i)
                                                                  for i in range(45)])
    merged = CheckMonitor(CHECKS)
    merged.merge(learnt.snapshot())
    state = merged.state("extract")["date_valid"]
    assert (state["baseline_n"], state["baseline_fail_rate"], state["window_n"]) == (250, 0, 50)
    merged.merge(given.snapshot())
    state = merged.state("extract")["date_valid"]
    assert (state["baseline_n"], state["baseline_fail_rate"]) == (50, 0.1)
    merged.merge(learnt.snapshot())  # a learnt baseline never replaces a given one
    state = merged.state("extract")["date_valid"]
    assert (state["baseline_n"], state["window_n"]) == (50, 100)
    assert merged.stats()["spans"] == 600 and merged.stats()["results"] == 600


if __name__ == "__main__":
    print(json.dumps(replica(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
