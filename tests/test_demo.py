"""``vigil demo``: the silent update is caught by the right layers, measured, not scripted.

The end-to-end tests run the command as a subprocess (``--json``) for three seeds at
a compressed speed and check the detection table against the run's own records and
against independent recomputation (scipy's Fisher test on the alert's counts, the
local SQLite store read directly).
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from llmvigil.adapters.memory import MemoryBackend
from llmvigil.core.demo import _user_backends, prepare_directory
from llmvigil.core.demo.fake_llm import FakeLLM, transpose
from llmvigil.core.demo.scenario import (
    PlayLog,
    RequestLog,
    Scenario,
    build_script,
    make_document,
)
from llmvigil.core.demo.service import extract_prompt
from llmvigil.core.demo.timeline import build_timeline
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert
from scipy import stats

REQUESTS = 3400
SPEED = 0.04
#: (seed, extra options): one run also publishes to a second backend of a config
#: file, one lets the provider leak a new model id.
RUNS = ((1, ()), (2, ("--fingerprint-leak",)), (5, ("--backend", "local:mirror")))
UPDATE_LAYERS = ("canary", "date_valid", "grounding", "drift", "feedback", "fingerprint",
                 "latency")
#: The most requests the date checks or the canary may take to catch the update: two
#: windows of the date checks (~800 requests of traffic) or five canary runs, plus a tick.
MAX_DELAY = 1000


def _start(tmp: Path, seed: int, extra: tuple[str, ...]) -> subprocess.Popen[str]:
    config = tmp / "vigil.yaml"
    config.write_text(
        "backends:\n  - local\n"
        f"  - {{name: local, instance: mirror, path: {tmp / 'mirror.db'}}}\n")
    cmd = [sys.executable, "-m", "llmvigil.core.cli_demo", "demo", "--requests",
           str(REQUESTS), "--seed", str(seed), "--speed", str(SPEED), "--dir",
           str(tmp / "demo"), "--html", str(tmp / "report.html"), "--config", str(config),
           "--json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The three runs, side by side (each is mostly one busy thread)."""
    started = time.perf_counter()
    tmps = [tmp_path_factory.mktemp(f"demo{seed}") for seed, _ in RUNS]
    procs = [_start(tmp, seed, extra) for tmp, (seed, extra) in zip(tmps, RUNS, strict=True)]
    out = []
    for tmp, proc in zip(tmps, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr[-3000:]
        (tmp / "demo.json").write_text(stdout)  # kept for a failure's post-mortem
        data: dict[str, Any] = json.loads(stdout)
        data["_tmp"] = tmp
        data["_wall_s"] = time.perf_counter() - started
        out.append(data)
    return out


def _row(data: dict[str, Any], layer: str) -> dict[str, Any]:
    return next(r for r in data["detection"] if r["layer"] == layer)


def test_the_update_is_caught_by_the_date_checks_and_the_canary(runs: list[dict[str, Any]]
                                                                ) -> None:
    for data in runs:
        update, last = data["scenario"]["update_at"], REQUESTS - 1
        checks = [r for r in (_row(data, "date_valid"), _row(data, "grounding")) if r["fired"]]
        assert checks, data["detection"]
        assert min(r["delay_requests"] for r in checks) <= MAX_DELAY, checks
        canary = _row(data, "canary")
        assert canary["fired"] and canary["delay_requests"] <= MAX_DELAY, canary
        for row in [*checks, canary]:
            assert update <= row["first_request"] <= last
            assert row["first_request"] == update + row["delay_requests"]
            assert row["delay_s"] >= 0
        assert "->" in canary["detail"]  # the canary names the changed date


def test_nothing_but_cost_and_safety_fires_before_the_update(runs: list[dict[str, Any]]
                                                             ) -> None:
    for data in runs:
        for layer in UPDATE_LAYERS:
            assert _row(data, layer)["false_alarms"] == 0, _row(data, layer)
        update = data["scenario"]["update_at"]
        early = [e for e in data["timeline"]
                 if e["kind"] == "alert" and e["request"] < update]
        assert all(e["layer"] == "cost" for e in early), early
        assert not any(r["layer"] == "other" for r in data["detection"])
        assert _row(data, "safety")["false_alarms"] == 0
        assert _row(data, "latency")["fired"] is False


def test_the_cost_spike_is_caught_for_the_verbose_user(runs: list[dict[str, Any]]) -> None:
    for data in runs:
        sc = data["scenario"]
        row = _row(data, "cost")
        assert row["fired"] and row["false_alarms"] == 0, row
        assert 0 <= row["delay_requests"] <= 500
        limit = [e for e in data["timeline"] if e["what"] == "cost.user_hourly_limit"]
        assert len(limit) == 1, limit
        assert limit[0]["detail"].startswith(sc["verbose_user"] + " spent $")
        assert limit[0]["request"] >= sc["verbose_from"]


def test_unsafe_outputs_are_stopped_synchronously(runs: list[dict[str, Any]]) -> None:
    for data in runs:
        row = _row(data, "safety")
        unsafe = len(data["scenario"]["unsafe_at"])
        assert row["fired"] and row["alerts"] == unsafe, row
        events = [e for e in data["timeline"] if e["layer"] == "safety"]
        assert len(events) == unsafe
        assert all(e["what"] in ("unsafe summary: block", "unsafe summary: review")
                   for e in events)


def test_check_alert_p_values_match_scipy(runs: list[dict[str, Any]]) -> None:
    checked = 0
    for data in runs:
        for layer in ("date_valid", "grounding"):
            ev = _row(data, layer)["evidence"]
            if ev is None:
                continue
            labels = ev["labels"]
            n, n_base = int(labels["n"]), int(labels["n_baseline"])
            fails = round(ev["value"] * n)
            base_fails = round(ev["threshold"] * n_base)
            _, p = stats.fisher_exact([[fails, n - fails], [base_fails, n_base - base_fails]],
                                      alternative="greater")
            assert float(labels["p_value"]) == pytest.approx(p, rel=6e-3, abs=1e-12), ev
            assert float(labels["p_value"]) <= 0.001 or labels["test"] == "cusum"
            checked += 1
    assert checked >= len(runs)


def test_detections_are_measured_not_scripted(runs: list[dict[str, Any]]) -> None:
    updates = {d["scenario"]["update_at"] for d in runs}
    assert len(updates) == len(runs)
    delays = {(_row(d, "canary")["delay_requests"], _row(d, "grounding")["delay_requests"])
              for d in runs}
    assert len(delays) > 1
    for data in runs:
        gt = data["ground_truth"]
        assert gt["extract_before"] + gt["extract_after"] > 0.45 * REQUESTS
        # the model's transpositions are a binomial sample at the configured rate (dates
        # whose day equals their month do not change: about 1 in 28)
        rate = 0.05 * (1 - 12 / (12 * 28))
        assert stats.binomtest(gt["transposed_after"], gt["extract_after"],
                               rate).pvalue > 1e-4, gt
        assert gt["impossible_after"] <= gt["transposed_after"]
        assert gt["errors"] == 0


def test_fingerprint_leak_is_caught_only_when_the_provider_reports_it(
        runs: list[dict[str, Any]]) -> None:
    silent, leaky = _row(runs[0], "fingerprint"), _row(runs[1], "fingerprint")
    assert silent["fired"] is False and silent["false_alarms"] == 0
    assert leaky["fired"] and leaky["delay_requests"] <= 200, leaky
    assert runs[1]["scenario"]["fingerprint_leak"] is True


def test_the_store_the_backends_and_the_report_hold_the_run(runs: list[dict[str, Any]]
                                                           ) -> None:
    for data in runs:
        tmp: Path = data["_tmp"]
        store = Path(data["store"])
        assert store.is_file() and store.parent == tmp / "demo"
        with sqlite3.connect(store) as conn:
            spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            roots = conn.execute(
                "SELECT count(*) FROM spans WHERE name IN "
                "('extract_dates', 'summarise', 'classify')").fetchone()[0]
            alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        assert roots == REQUESTS
        assert spans == data["records"]["spans"] >= 2 * REQUESTS
        assert alerts == data["records"]["alerts"] > 0
        lines = (tmp / "demo" / "alerts.jsonl").read_text().splitlines()
        assert len(lines) == alerts  # the alert sink got every alert
        page = Path(data["html"]).read_text()
        assert page.startswith("<!DOCTYPE html>") and "</html>" in page
        assert f"{data['scenario']['update_at']:,}" in page
        assert (tmp / "demo" / "vigil-demo.yaml").is_file()
        mirror = tmp / "mirror.db"
        if "local:mirror" in data["backends"]:
            with sqlite3.connect(mirror) as conn:
                assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == spans
    assert [d["backends"] for d in runs] == [["local"], ["local"], ["local", "local:mirror"]]
    assert not (runs[0]["_tmp"] / "mirror.db").exists()
    assert max(d["_wall_s"] for d in runs) < 60


# -- the pieces, without a full run -----------------------------------------------------------


def test_timeline_maps_alert_times_to_requests() -> None:
    script = build_script(Scenario(requests=3000, seed=4), extract_before=900,
                          extract_after=300)
    base = 1_000_000_000_000
    log = PlayLog(started_ns=base)
    log.requests = [RequestLog(i, base + i * 1_000_000, s.feature, s.user_id,
                               action="block" if i in script.unsafe_at else "serve")
                    for i, s in enumerate(script.steps)]
    log.update_ns = log.requests[script.update_at].issued_ns
    log.ended_ns = base + 3000 * 1_000_000
    backend = MemoryBackend({"instance": f"timeline-{random.random()}"})

    def at(index: int, **fields: Any) -> Alert:
        return Alert(time_ns=base + index * 1_000_000 + 500, severity="warning",
                     message="m", **fields)

    u, v = script.update_at, script.verbose_from
    backend.alerts += [
        at(u - 100, rule="drift.detected", value=0.0005, labels={"feature": "extract_dates"}),
        at(u + 10, rule="drift.detected", value=0.0005, labels={"feature": "classify"}),
        at(u + 37, rule="checks.dates_in_source", value=0.05, threshold=0.002,
           labels={"feature": "extract_dates", "test": "fisher", "p_value": "1e-05",
                   "n": "200", "n_baseline": "600"}),
        at(u + 90, rule="checks.dates_in_source", labels={"feature": "extract_dates"}),
        at(v + 12, rule="cost.user_hourly_limit", value=0.6, threshold=0.5,
           labels={"user": script.verbose_user}),
        at(v + 20, rule="cost.user_hourly_limit", value=0.6, threshold=0.5,
           labels={"user": "someone-else"}),
        at(u + 250, rule="made.up", labels={}),
    ]
    tl = build_timeline(script, log, backend)
    grounding = tl.detection("grounding")
    assert (grounding.fired, grounding.first_request, grounding.delay_requests,
            grounding.alerts) == (True, u + 37, 37, 2)
    assert grounding.delay_s == pytest.approx(0.037, abs=1e-5)
    drift = tl.detection("drift")
    # before the update, or about a feature the update does not touch: false alarms
    assert (drift.fired, drift.false_alarms, drift.alerts) == (False, 2, 2)
    cost = tl.detection("cost")
    assert (cost.fired, cost.delay_requests, cost.false_alarms) == (True, 12, 1)
    assert tl.detection("other").detail == "made.up"
    safety = tl.detection("safety")
    assert safety.fired and safety.alerts == len(script.unsafe_at)
    repeats = [e for e in tl.entries if e.what == "checks.dates_in_source"]
    assert len(repeats) == 1 and repeats[0].repeats == 1


def test_the_script_draws_a_different_day_for_each_seed() -> None:
    a = build_script(Scenario(requests=3000, seed=1), extract_before=900, extract_after=300)
    b = build_script(Scenario(requests=3000, seed=2), extract_before=900, extract_after=300)
    again = build_script(Scenario(requests=3000, seed=1), extract_before=900,
                         extract_after=300)
    assert [s.document.text for s in a.steps] == [s.document.text for s in again.steps]
    assert (a.update_at, a.verbose_from) != (b.update_at, b.verbose_from)
    extract = [s.index for s in a.steps if s.feature == "extract_dates"]
    assert sum(i < a.update_at for i in extract) >= 900
    assert sum(i >= a.update_at for i in extract) >= 300
    assert len({s.user_id for s in a.steps}) > 150
    assert any(s.turn > 0 for s in a.steps)  # multi-turn sessions
    with pytest.raises(ValueError, match="too few"):
        build_script(Scenario(requests=800, seed=1), extract_before=900, extract_after=300)


def test_the_fake_model_transposes_only_after_the_update() -> None:
    rng = random.Random(0)
    docs = [make_document(rng, "invoice", i) for i in range(3000)]
    llm = FakeLLM(seed=3, transpose_rate=0.05)
    before = [llm.answer(extract_prompt(d.text, d.field), key=f"k{i}")
              for i, d in enumerate(docs)]
    assert not any(t for _, t in before)
    right = sum(json.loads(text)["date"] == d.answer for (text, _), d in zip(before, docs,
                                                                          strict=True))
    assert right >= 0.98 * len(docs)  # the old release is (deterministically) good
    llm.update()
    after = [llm.answer(extract_prompt(d.text, d.field), key=f"k{i}")
             for i, d in enumerate(docs)]
    swapped = [json.loads(text)["date"] for text, t in after if t]
    assert all(s[:2] != s[3:5] for s in swapped)
    assert stats.binomtest(len(swapped), len(docs), 0.05 * (1 - 1 / 28)).pvalue > 1e-3
    assert transpose("due 31/01/2025.") == "due 01/31/2025."


def test_the_fake_model_streams_with_realistic_timing() -> None:
    import asyncio

    llm = FakeLLM(seed=1, speed=0.05)
    prompt = extract_prompt(make_document(random.Random(1), "letter", 1).text, "reply by")

    async def one(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        first = None
        chunks = 0
        async for item in llm.stream("claude-haiku-4-5", prompt, key=str(i)):
            if isinstance(item, str):
                chunks += 1
                first = first or time.perf_counter() - start
        return first or 0.0, chunks

    async def many() -> list[tuple[float, int]]:
        return await asyncio.gather(*(one(i) for i in range(60)))

    results = asyncio.run(many())
    ttft = sorted(t / 0.05 for t, _ in results)  # back to real time
    median = ttft[len(ttft) // 2]
    assert 0.3 < median < 0.75  # log-normal around 0.45 s plus prefill
    assert ttft[-1] / ttft[0] > 1.5  # spread, not a constant
    assert all(chunks >= 2 for _, chunks in results)


def test_backends_are_read_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text("backends:\n  - local\n  - {name: memory, instance: elsewhere}\n")
    out = _user_backends(("memory:elsewhere",), config)
    assert out[0]["name"] == "memory" and out[0]["instance"] == "elsewhere"
    with pytest.raises(ConfigError, match=r"not a backend of .*memory:elsewhere"):
        _user_backends(("langfuse",), config)
    with pytest.raises(ConfigError, match="own local store"):
        _user_backends(("local",), config)


def test_the_demo_never_clears_a_directory_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a demo directory"):
        prepare_directory(mine)
    assert (mine / "precious.txt").read_text() == "keep"
    demo = prepare_directory(tmp_path / "demo")
    (demo / "old.db").write_text("x")
    prepare_directory(demo)
    assert not (demo / "old.db").exists() and (demo / ".vigil-demo").exists()


def test_too_few_requests_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmvigil.core.cli_demo", "demo", "--requests", "500",
         "--dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--requests 500" in proc.stderr and "too few" in proc.stderr
    assert not (tmp_path / "d").exists()
