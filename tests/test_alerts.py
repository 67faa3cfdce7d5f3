"""Alert rules (for_s, cooldown, labels, min_samples) and the built-in alert sinks."""

from __future__ import annotations

import json
import logging
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.alerts import AlertsMonitor, FileSink, SlackSink, WebhookSink
from llmvigil.core.errors import ConfigError, PluginError
from llmvigil.core.model import Alert, Metric, decode
from llmvigil.core.monitors.feedback import FeedbackMonitor
from llmvigil.core.runtime import emit_metric
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import AlertSinkInfo

S = 1_000_000_000
T0 = 1_700_000_000 * S


def m(value: float, t_s: float, name: str = "latency.p95_s", **labels: str) -> Metric:
    return Metric(name=name, value=value, time_ns=T0 + int(t_s * S), window_s=300,
                  labels=labels or {"feature": "chat"})


class Collect(list[Alert]):
    """A sink keeping what it receives: a sink is any callable taking an Alert."""

    def __call__(self, alert: Alert) -> None:
        self.append(alert)


def rules_monitor(*rules: dict[str, Any], **config: Any) -> tuple[AlertsMonitor, Collect]:
    sink = Collect()
    rules_ = [{"name": f"r{i}", "metric": "latency.p95_s", "op": ">", "threshold": 2.0,
               "route": ["collect"], **r} for i, r in enumerate(rules)]
    return AlertsMonitor({"rules": rules_, **config}, sinks={"collect": sink}), sink


def feed(mon: AlertsMonitor, *metrics: Metric) -> list[Alert]:
    return [a for metric in metrics for a in mon.observe(metric)]


# -- rules -------------------------------------------------------------------------------


def test_for_s_requires_the_condition_to_hold_continuously() -> None:
    mon, sink = rules_monitor({"for_s": 60, "severity": "critical"})
    assert feed(mon, m(3, 0), m(3, 30), m(1, 45), m(3, 50), m(3, 100)) == []
    fired = feed(mon, m(3, 110))
    assert len(fired) == 1 and sink == fired, "returned to the pipeline and routed"
    a = fired[0]
    assert (a.rule, a.severity, a.value, a.threshold) == ("r0", "critical", 3, 2.0)
    assert a.labels == {"feature": "chat", "metric": "latency.p95_s"}
    assert a.time_ns == T0 + 110 * S and "for 60s" in a.message and "> 2" in a.message
    assert feed(mon, m(3, 120), m(4, 500)) == [], "one alert per breach (deduplicated)"


def test_cooldown_per_series_and_repeat() -> None:
    mon, _ = rules_monitor({"cooldown_s": 600})
    assert len(feed(mon, m(3, 0))) == 1
    assert feed(mon, m(1, 10), m(3, 20)) == [], "re-breach within the cooldown: quiet"
    assert mon.stats()["suppressed"] == 1
    assert len(feed(mon, m(3, 600))) == 1, "still breaching after the cooldown: fires"
    assert len(feed(mon, m(3, 0, feature="search"))) == 1, "another series has its own"
    rep, _ = rules_monitor({"cooldown_s": 0, "repeat_s": 100})
    times = [t for t in range(0, 350, 10) if feed(rep, m(5, t))]
    assert times == [0, 100, 200, 300]


def test_label_scoping_with_globs_and_window() -> None:
    mon, sink = rules_monitor({"labels": {"feature": "chat-*", "model": "claude*"},
                               "window_s": 300})
    assert feed(mon, m(3, 0, feature="chat-eu"), m(3, 0, feature="chat-eu", model="gpt")) == []
    assert feed(mon, m(3, 0, feature="search", model="claude-3")) == []
    one = feed(mon, m(3, 0, feature="chat-eu", model="claude-3"))
    two = feed(mon, m(3, 0, feature="chat-us", model="claude-3"))
    assert len(one) == len(two) == 1 and len(sink) == 2
    other_window = Metric(name="latency.p95_s", value=9, time_ns=T0 + 9 * S, window_s=3600,
                          labels={"feature": "chat-fr", "model": "claude"})
    assert feed(mon, other_window) == []


def test_operators_and_min_samples() -> None:
    mon, _ = rules_monitor({"metric": "feedback.satisfaction_rate", "op": "<",
                            "threshold": 0.7, "min_samples": 30})
    rate = "feedback.satisfaction_rate"
    assert feed(mon, m(0.1, 0, rate)) == [], "no sample count known yet"
    assert feed(mon, m(10, 1, rate + ".n"), m(0.0, 1, rate)) == [], "too few samples"
    fired = feed(mon, m(30, 2, rate + ".n"), m(0.0, 2, rate))
    assert len(fired) == 1 and fired[0].value == 0.0, "0% with enough samples alerts"
    for op, value, fires in ((">=", 2.0, True), ("<=", 2.0, True), (">", 2.0, False),
                             ("<", 2.0, False)):
        mon2, _ = rules_monitor({"op": op})
        assert bool(feed(mon2, m(value, 0))) is fires, op


def test_routing_of_other_monitors_alerts_once_per_id() -> None:
    pages, chat = Collect(), Collect()
    mon = AlertsMonitor({
        "routes": [{"rule": "feedback.*", "severity": ["critical"], "sinks": ["pages"]},
                   {"rule": "*", "labels": {"feature": "chat"}, "sinks": ["chat", "pages"]}],
        "default_route": ["chat"],
    }, sinks={"pages": pages, "chat": chat})
    crit = Alert(rule="feedback.satisfaction_drop", severity="critical", message="m",
                 labels={"feature": "search"})
    warn = Alert(rule="feedback.satisfaction_drop", severity="warning", message="m",
                 labels={"feature": "chat"})
    other = Alert(rule="cost.budget", severity="info", message="m")
    for alert in (crit, warn, other, crit):
        assert list(mon.observe(alert)) == [], "others' alerts reach backends already"
    assert pages == [crit, warn] and chat == [warn, other]
    assert mon.stats()["duplicates"] == 1


def test_a_failing_sink_is_counted_and_does_not_stop_others() -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("down")

    good = Collect()
    mon = AlertsMonitor({"rules": [{"name": "r", "metric": "x", "op": ">", "threshold": 0,
                                    "route": ["broken", "good"]}]},
                        sinks={"broken": broken, "good": good})
    assert len(feed(mon, m(1, 0, "x"))) == 1 and len(good) == 1
    assert mon.stats()["sinks"]["broken"]["errors"] == 1


def test_state_is_bounded() -> None:
    mon, _ = rules_monitor({"labels": {}}, max_series=50)
    for i in range(1000):
        feed(mon, m(3, i, user=f"u{i}"))
    assert mon.stats()["series"] <= 50


def test_invalid_rules_and_unknown_sinks_are_clear_errors() -> None:
    with pytest.raises(ConfigError) as err:
        AlertsMonitor({"rules": [{"name": "r", "metric": "x", "op": "=>", "threshold": "hi",
                                  "severity": "urgent"}]})
    text = str(err.value)
    for key in ("alerts.rules[0].op", "alerts.rules[0].threshold", "alerts.rules[0].severity"):
        assert key in text
    with pytest.raises(ConfigError) as err:
        AlertsMonitor({"rules": [{"name": "r", "metric": "x", "op": ">", "threshold": 1,
                                  "route": ["pager"]}]})
    assert "alerts.rules[0].route: unknown alert sink 'pager'" in str(err.value)
    assert "known sinks: file, log, slack, webhook" in str(err.value)
    with pytest.raises(ConfigError, match=r"alerts\.sinks\.hook: .*url"):
        AlertsMonitor({"sinks": {"hook": {"type": "webhook"}}})
    with pytest.raises(ConfigError, match="two rules are named"):
        AlertsMonitor({"rules": [{"name": "r", "metric": "x", "op": ">", "threshold": 1}] * 2})


def test_sink_types_come_from_plugins() -> None:
    received = Collect()

    class PagerPlugin:
        @hookimpl
        def llmvigil_alert_sinks(self) -> list[AlertSinkInfo]:
            return [AlertSinkInfo("pager", lambda settings: received)]

    pm = new_plugin_manager(load_entrypoints=False)
    assert pm.has_plugin("llmvigil.core.alerts")  # the built-in sinks are registered
    pm.register(PagerPlugin(), name="pager-plugin")
    mon = AlertsMonitor({"sinks": {"oncall": {"type": "pager"}}, "default_route": ["oncall"]},
                        plugin_manager=pm)
    mon.observe(Alert(rule="x", severity="error", message="m"))
    assert len(received) == 1

    class Clash:
        @hookimpl
        def llmvigil_alert_sinks(self) -> list[AlertSinkInfo]:
            return [AlertSinkInfo("log", lambda settings: received)]

    pm.register(Clash(), name="clash")
    with pytest.raises(PluginError, match="'log' is taken"):
        AlertsMonitor({}, plugin_manager=pm)


# -- sinks -------------------------------------------------------------------------------


def test_log_sink_logs_at_the_alert_severity(caplog: pytest.LogCaptureFixture) -> None:
    mon = AlertsMonitor({"rules": [{"name": "slow", "metric": "x", "op": ">", "threshold": 1,
                                    "severity": "critical"}]})
    with caplog.at_level(logging.INFO, logger="llmvigil.alerts"):
        feed(mon, m(5, 0, "x"))
        mon.observe(Alert(rule="note", severity="info", message="fyi"))
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "llmvigil.alerts"]
    assert levels[0][0] == logging.CRITICAL and "slow" in levels[0][1]
    assert levels[1] == (logging.INFO, "[info] note: fyi")


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.gate.wait(30)
        status = server.statuses.pop(0) if server.statuses else 200
        server.bodies.append((status, json.loads(body), dict(self.headers)))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.daemon_threads = True
    srv.bodies, srv.statuses, srv.gate = [], [], threading.Event()
    srv.gate.set()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.gate.set()
    srv.shutdown()
    srv.server_close()


def test_webhook_posts_json_and_retries_transient_failures(server: Any) -> None:
    sink = WebhookSink({"url": server.url, "backoff_s": 0.01, "headers": {"X-Token": "t"}})
    server.statuses.extend([503, 200])
    alert = Alert(rule="r", severity="error", message="boom", value=3.0, threshold=2.0,
                  labels={"feature": "chat"})
    sink(alert)
    assert sink.flush(10)
    (s1, _, _), (s2, body, headers) = server.bodies
    assert (s1, s2) == (503, 200) and sink.stats()["retried"] == 1
    assert sink.stats()["sent"] == 1 and sink.stats()["failed"] == 0
    assert decode(json.dumps(body)) == alert, "the body is the canonical alert record"
    assert headers["Content-Type"] == "application/json" and headers["X-Token"] == "t"
    server.statuses.append(400)
    sink(alert)
    assert sink.flush(10)
    assert sink.stats()["failed"] == 1 and sink.stats()["retried"] == 1, "4xx: no retry"
    sink.close(1)


def test_slack_sink_sends_the_incoming_webhook_payload(server: Any) -> None:
    mon = AlertsMonitor({"sinks": {"team": {"type": "slack", "url": server.url}},
                         "default_route": ["team"]})
    mon.observe(Alert(rule="cost.budget", severity="warning", message="80% of budget",
                      labels={"feature": "chat"}))
    assert mon.flush(10)
    (_, body, _), = server.bodies
    assert body == {"text": "*[WARNING] cost.budget*: 80% of budget\nfeature=chat"}
    assert isinstance(mon.sinks["team"], SlackSink)
    mon.close(1)


def test_hanging_webhook_never_blocks_the_caller(server: Any) -> None:
    server.gate.clear()  # the server accepts and then hangs
    sink = WebhookSink({"url": server.url, "timeout_s": 0.5, "max_queue": 3,
                        "max_retries": 0})
    started = time.perf_counter()
    for i in range(50):
        sink(Alert(rule=f"r{i}", severity="error", message="m"))
    elapsed = time.perf_counter() - started
    assert elapsed < 0.2, f"50 sends took {elapsed:.3f}s: the caller was blocked"
    assert sink.stats()["dropped"] >= 46, "a backed-up sink drops (and counts) instead"
    assert not sink.flush(0.1)
    started = time.perf_counter()
    sink.close(0.2)
    assert time.perf_counter() - started < 1.0
    dropped = sink.stats()["dropped"]
    sink(Alert(rule="late", severity="info", message="m"))
    assert sink.stats()["dropped"] == dropped + 1, "a closed sink drops and counts"


def test_unreachable_webhook_fails_and_is_counted() -> None:
    sink = WebhookSink({"url": "http://127.0.0.1:9/nothing", "timeout_s": 0.5,
                        "max_retries": 1, "backoff_s": 0.01})
    sink(Alert(rule="r", severity="error", message="m"))
    assert sink.flush(10)
    assert sink.stats() == {"sent": 0, "retried": 1, "failed": 1, "dropped": 0, "queued": 0}


def test_file_sink_appends_private_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts" / "alerts.jsonl"
    sink = FileSink({"path": str(path)})
    sent = [Alert(rule=f"r{i}", severity="warning", message="m", value=float(i))
            for i in range(3)]
    for alert in sent:
        sink(alert)
    assert sink.flush(5)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [decode(line) for line in path.read_bytes().splitlines()] == sent
    sink.close(1)


# -- through the pipeline -------------------------------------------------------------------


def test_metrics_through_the_pipeline_fire_alerts_to_backends_and_sinks(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    mon = AlertsMonitor({
        "rules": [{"name": "cost-spike", "metric": "app.cost_usd", "op": ">",
                   "threshold": 10, "labels": {"feature": "chat"}, "severity": "error",
                   "route": ["audit"]}],
        "sinks": {"audit": {"type": "file", "path": str(path)}},
    })
    llmvigil.init(backends=[{"name": "memory", "instance": "alerts-e2e"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[mon])
    emit_metric("app.cost_usd", 50, feature="chat")
    emit_metric("app.cost_usd", 50, feature="search")
    assert llmvigil.flush(5)
    backend = get_memory_backend("alerts-e2e")
    (alert,) = backend.alerts
    assert alert.rule == "cost-spike" and alert.labels["feature"] == "chat"
    assert mon.flush(5)
    assert [decode(line) for line in path.read_bytes().splitlines()] == [alert]
    mon.close(1)


def test_tick_metrics_reach_alert_rules(tmp_path: Path) -> None:
    rules = AlertsMonitor({"rules": [{"name": "unhappy", "metric": "feedback.satisfaction_rate",
                                      "op": "<", "threshold": 0.5,
                                      "labels": {"feature": "chat"}}]})
    fb = FeedbackMonitor({"emit_interval_s": 0.2, "drop": {"enabled": False}})
    llmvigil.init(backends=[{"name": "memory", "instance": "alerts-tick"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[fb, rules])
    llmvigil.feedback("0" * 16, "thumbs_down", feature="chat")
    backend = get_memory_backend("alerts-tick")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not backend.alerts:
        time.sleep(0.05)
    assert [a.rule for a in backend.alerts] == ["unhappy"]
