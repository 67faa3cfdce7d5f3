"""The Weights & Biases backend, through the real wandb SDK in offline mode.

Every wandb directory points into the test's temp dir. After ``llmvigil.shutdown``
the run is read back from its own files: the ``.wandb`` transaction log through
``wandb leet inspect --json`` (wandb's own reader) and the logged tables from the
run's ``files/`` directory.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import llmvigil
import pluggy
import pytest
from llmvigil.adapters.wandb import (
    ALERT_COLUMNS,
    SCORE_COLUMNS,
    SPAN_COLUMNS,
    TIME_KEY,
    history_rows,
    metric_key,
)
from llmvigil.core import capture, runtime
from llmvigil.core.errors import ConfigError, MissingExtraError
from llmvigil.core.model import Alert, Metric, SafetyVerdict
from llmvigil.plugins.manager import new_plugin_manager
from vigil_testing import start

pytest.importorskip("wandb")

PLUGIN = "llmvigil.adapters.wandb"
T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z


def plugin_manager() -> pluggy.PluginManager:
    pm = new_plugin_manager()
    if not pm.has_plugin(PLUGIN):
        pm.register(importlib.import_module(PLUGIN), name=PLUGIN)
    return pm


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode with every wandb directory inside the test's temp dir."""
    root = tmp_path / "wandb-env"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        path = root / var.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return root


def run_dir(env: Path) -> Path:
    runs = list((env / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def inspect(path: Path, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *extra, str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of the run's .wandb transaction log, decoded by wandb itself."""
    return [json.loads(line) for line in inspect(path).splitlines() if line.strip()]


def table(run: Path, history: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows of every table logged under ``key``, read from the run's files."""
    rows: list[dict[str, Any]] = []
    for item in history:
        if item.get(f"{key}._type") == "table-file":
            data = json.loads((run / "files" / item[f"{key}.path"]).read_text())
            rows.extend(dict(zip(data["columns"], row, strict=True)) for row in data["data"])
    return rows


def emit_everything() -> dict[str, Any]:
    """One trace (chain + llm span), feedback, metrics in two windows, an alert..."""
    with (
        llmvigil.span("answer", kind="chain", feature="chat", user_id="u1",
                      session_id="sess1") as root,
        llmvigil.span("anthropic.messages", kind="llm", model="claude-x",
                      provider="anthropic") as llm,
    ):
        llm.set_input({"messages": [{"role": "user", "content": "date?"}]})
        llm.set_usage(input_tokens=10, output_tokens=20)
        llm.set(cost_usd=0.0125, ttft_s=0.25, tags=["canary"])
        llm.set_output("01/05/2024")
    llmvigil.feedback(llm, "thumbs_up", comment="right date")
    llmvigil.session_event("sess1", "task_complete")
    capture.emit(Metric(name="ttft_p95_s", value=0.5, time_ns=T0,
                        labels={"model": "claude-x", "feature": "chat"}))
    capture.emit(Metric(name="cost_usd_per_hour", value=1.5, time_ns=T0))
    capture.emit(Metric(name="ttft_p95_s", value=0.7, time_ns=T0 + 60 * 10**9,
                        labels={"model": "claude-x", "feature": "chat"}))
    capture.emit(Alert(rule="ttft_p95", severity="warning", message="TTFT p95 above 0.6s",
                       value=0.7, threshold=0.6, labels={"feature": "chat"}))
    capture.emit(SafetyVerdict(action="block", reason="ssn", category="pii",
                               trace_id=root.trace_id, span_id=llm.span_id))
    return {"root": root, "llm": llm}


def test_records_land_in_the_offline_run(tmp_path: Path, wandb_env: Path) -> None:
    memory = start(tmp_path, backends=[{
        "name": "wandb", "project": "vigil-test", "run_name": "vigil-run",
        "alerts": "always", "tags": ["ci"],
    }], plugin_manager=plugin_manager())
    ids = emit_everything()
    assert llmvigil.flush(30)
    assert len(memory.spans) == 2
    assert len([m for m in memory.metrics if m.time_ns in (T0, T0 + 60 * 10**9)]) == 3
    llmvigil.shutdown(timeout=30)

    run = run_dir(wandb_env)
    log = next(run.glob("run-*.wandb"))
    recs = records(log)
    kinds = [r["type"] for r in recs]
    run_rec = next(r["run"] for r in recs if r["type"] == "run")
    assert (run_rec["project"], run_rec["display_name"]) == ("vigil-test", "vigil-run")
    assert run_rec["tags"] == ["ci"] and run_rec["job_type"] == "monitoring"
    assert kinds[-1] == "exit"

    # x-axis: every monitor/* chart uses the window time.
    defs = [r["metric"] for r in recs if r["type"] == "metric"]
    assert {"glob_name": "monitor/*", "step_metric": TIME_KEY} in [
        {k: d.get(k) for k in ("glob_name", "step_metric")} for d in defs]

    history = [r["history"]["item"] for r in recs if r["type"] == "history"]
    key = "monitor/ttft_p95_s{feature=chat,model=claude-x}"
    windows = [(h[TIME_KEY], h.get(key), h.get("monitor/cost_usd_per_hour"))
               for h in history if key in h]
    assert windows == [(T0 / 1e9, 0.5, 1.5), (T0 / 1e9 + 60, 0.7, None)]
    steps = [h["_step"] for h in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)

    spans = {r["name"]: r for r in table(run, history, "llmvigil/spans")}
    assert set(spans) == {"answer", "anthropic.messages"}
    llm, root = spans["anthropic.messages"], spans["answer"]
    assert list(llm) == SPAN_COLUMNS
    assert llm["span_id"] == ids["llm"].span_id and llm["parent_id"] == ids["root"].span_id
    assert llm["trace_id"] == root["trace_id"] == ids["root"].trace_id
    assert (llm["kind"], llm["model"], llm["provider"]) == ("llm", "claude-x", "anthropic")
    assert (llm["input_tokens"], llm["output_tokens"], llm["cost_usd"]) == (10, 20, 0.0125)
    assert (llm["ttft_s"], llm["status"], llm["tags"]) == (0.25, "ok", "canary")
    assert (llm["user_id"], llm["session_id"], llm["feature"]) == ("u1", "sess1", "chat")
    assert llm["output"] == "01/05/2024"
    assert json.loads(llm["input"]) == {"messages": [{"role": "user", "content": "date?"}]}
    assert 0 <= llm["duration_s"] <= root["duration_s"] < 30
    assert llm["start"].startswith(time.strftime("%Y-", time.gmtime()))

    (score,) = table(run, history, "llmvigil/scores")
    assert list(score) == SCORE_COLUMNS
    assert (score["span_id"], score["kind"], score["value"], score["comment"]) == (
        ids["llm"].span_id, "thumbs_up", 1.0, "right date")
    (event,) = table(run, history, "llmvigil/session_events")
    assert (event["session_id"], event["event"]) == ("sess1", "task_complete")
    (verdict,) = table(run, history, "llmvigil/safety_verdicts")
    assert (verdict["action"], verdict["category"], verdict["span_id"]) == (
        "block", "pii", ids["llm"].span_id)
    (alert_row,) = table(run, history, "llmvigil/alerts")
    assert list(alert_row) == ALERT_COLUMNS
    assert (alert_row["rule"], alert_row["value"], alert_row["threshold"]) == (
        "ttft_p95", 0.7, 0.6)

    # alerts: always -> recorded with run.alert even offline.
    (alert,) = [r["alert"] for r in recs if r["type"] == "alert"]
    assert (alert["title"], alert["level"]) == ("ttft_p95", "WARN")
    assert "TTFT p95 above 0.6s" in alert["text"] and "threshold: 0.6" in alert["text"]

    summary = json.loads(inspect(log, "--summary"))
    assert summary["state"] == "finished" and summary["name"] == "vigil-run"
    s = summary["summary"]
    assert s[key] == 0.7 and s["monitor/cost_usd_per_hour"] == 1.5
    assert s["llmvigil/alerts_total"] == 1
    assert s["llmvigil/last_alert"]["rule"] == "ttft_p95"
    assert s["llmvigil/last_alert"]["severity"] == "warning"


def test_offline_alerts_are_kept_in_table_and_summary_only(
    tmp_path: Path, wandb_env: Path
) -> None:
    start(tmp_path, backends=[{"name": "wandb", "project": "vigil-test"}],
          plugin_manager=plugin_manager())
    for i in range(2):
        capture.emit(Alert(rule=f"rule-{i}", severity="critical", message=f"m{i}",
                           time_ns=T0 + i))
        assert llmvigil.flush(30)
    llmvigil.shutdown(timeout=30)

    run = run_dir(wandb_env)
    log = next(run.glob("run-*.wandb"))
    recs = records(log)
    assert not [r for r in recs if r["type"] == "alert"]
    history = [r["history"]["item"] for r in recs if r["type"] == "history"]
    assert [r["rule"] for r in table(run, history, "llmvigil/alerts")] == ["rule-0", "rule-1"]
    s = json.loads(inspect(log, "--summary"))["summary"]
    assert s["llmvigil/alerts_total"] == 2
    assert s["llmvigil/last_alert"]["rule"] == "rule-1"


def test_metric_keys_and_rows() -> None:
    m = Metric(name="cost", value=2, time_ns=T0, labels={"z": "1", "a": "x.y"})
    assert metric_key(m) == "monitor/cost{a=x.y,z=1}"
    assert metric_key(Metric(name="cost", value=1)) == "monitor/cost"
    rows = history_rows([
        Metric(name="b", value=2, time_ns=T0 + 5 * 10**9),
        Metric(name="a", value=1, time_ns=T0),
        Metric(name="c", value=3, time_ns=T0 + 10**6),
        Metric(name="a", value=4, time_ns=T0 + 2 * 10**6),  # same key: a new row
    ])
    assert rows == [
        {TIME_KEY: T0 / 1e9, "monitor/a": 1.0, "monitor/c": 3.0},
        {TIME_KEY: (T0 + 2 * 10**6) / 1e9, "monitor/a": 4.0},
        {TIME_KEY: (T0 + 5 * 10**9) / 1e9, "monitor/b": 2.0},
    ]


@pytest.mark.parametrize(("settings", "message"), [
    ({"mode": "weave"}, "mode 'weave' (W&B Weave traces) is not implemented"),
    ({"mode": "shared"}, "mode must be one of online, offline"),
    ({"mode": "disabled"}, "set `enabled: false` on it instead"),
    ({"mode": "offline", "alerts": "sometimes"}, "alerts must be one of auto, always"),
])
def test_bad_settings_are_config_errors(
    tmp_path: Path, wandb_env: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        start(tmp_path, backends=[{"name": "wandb", **settings}],
              plugin_manager=plugin_manager())


def test_missing_sdk_names_the_extra(
    tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an absent package looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'llmvigil\[wandb\]'"):
        start(tmp_path, backends=["wandb"], plugin_manager=plugin_manager())


def test_env_fallbacks_and_no_secret_in_repr(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmvigil.adapters.wandb import WandbBackend

    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-value")
    backend = WandbBackend({"service": "svc"})
    assert (backend.project, backend.entity, backend.mode) == ("from-env", "team", "offline")
    assert backend.group == "svc" and backend.run_name.startswith("svc-")
    assert "secret-key-value" not in repr(backend)
    assert WandbBackend({"project": "explicit", "mode": "online"}).project == "explicit"


def test_check_sends_nothing_offline_and_reports_unreachable_servers(
    wandb_env: Path
) -> None:
    from llmvigil.adapters.wandb import WandbBackend

    offline = WandbBackend({"project": "p", "entity": "team", "dir": str(wandb_env)})
    assert offline.llmvigil_check(timeout_s=1).startswith("W&B offline runs for team/p")
    assert not list(wandb_env.rglob("*.wandb"))  # no run was created
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    online = WandbBackend({"mode": "online", "api_key": "k" * 40, "base_url": url})
    t = time.monotonic()
    with pytest.raises(ConnectionError, match=f"W&B at {url}"):
        online.llmvigil_check(timeout_s=1)
    assert time.monotonic() - t < 10


def test_unreachable_server_journals_without_slowing_the_app(
    tmp_path: Path, wandb_env: Path
) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    memory = start(tmp_path, backends=[{
        "name": "wandb", "mode": "online", "api_key": "k" * 40, "base_url": url,
        "timeout_s": 1,
    }], plugin_manager=plugin_manager(), pipeline={
        "max_retries": 0, "breaker_failures": 1, "breaker_reset_s": 60})
    latencies = []
    for i in range(10):
        t = time.perf_counter()
        with llmvigil.span(f"call-{i}", kind="llm"):
            pass
        capture.emit(Metric(name="m", value=i))
        latencies.append(time.perf_counter() - t)
        time.sleep(0.01)
    assert max(latencies) < 0.05, latencies
    assert llmvigil.flush(30)
    assert len(memory.spans) == 10
    assert len([m for m in memory.metrics if m.name == "m"]) == 10
    rt = runtime.get_runtime()
    assert rt is not None
    counts = rt.pipeline.status()["backends"]["wandb"]
    assert counts["delivered"] == 0
    assert counts["journaled"] == counts["offered"] >= 20
