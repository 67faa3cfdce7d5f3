"""The Langfuse backend against a local server that decodes Langfuse's real wire formats.

Spans go through the real OTLP/HTTP exporter as gzip protobuf and are decoded with
``opentelemetry-proto``; scores are validated with the Langfuse SDK's own request model.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import llmvigil
import pluggy
import pytest
from langfuse_server import OTEL_PATH, SCORES_PATH, LangfuseServer
from llmvigil.adapters.langfuse import LangfuseBackend
from llmvigil.core import capture
from llmvigil.core.model import SafetyVerdict, Score, Span
from llmvigil.core.runtime import emit_metric, get_runtime
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import ExportResult
from vigil_testing import start

MODULE = "llmvigil.adapters.langfuse"
T_HIST = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
A_OBS = "langfuse.observation."


@pytest.fixture
def server() -> Iterator[LangfuseServer]:
    srv = LangfuseServer()
    yield srv
    llmvigil.shutdown(timeout=3)
    srv.close()


def plugin_manager() -> pluggy.PluginManager:
    pm = new_plugin_manager()
    if not pm.has_plugin(MODULE):
        pm.register(importlib.import_module(MODULE), name=MODULE)
    return pm


def settings(srv: LangfuseServer, **extra: Any) -> dict[str, Any]:
    return {"name": "langfuse", "public_key": srv.public_key, "secret_key": srv.secret_key,
            "host": srv.url, "redaction": "full", **extra}


def backend_hooks() -> Any:
    """The langfuse backend's export hooks as the runtime's outbox calls them."""
    rt = get_runtime()
    assert rt is not None
    return rt.backends["langfuse"]


def status() -> dict[str, Any]:
    rt = get_runtime()
    assert rt is not None
    counts: dict[str, Any] = rt.pipeline.status()["backends"]["langfuse"]
    return counts


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def utc(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_trace_tree_arrives_field_by_field(tmp_path: Path, server: LangfuseServer) -> None:
    mem = start(tmp_path, backends=[settings(server)], plugin_manager=plugin_manager(),
                service={"name": "svc", "environment": "staging", "release": "1.2.3"})
    with llmvigil.span("handle", kind="chain", user_id="u-1", session_id="s-1",
                       tags=["beta", "chat"], metadata={"route": "/chat"}) as root:
        root.set_input({"question": "when?"})
        with llmvigil.span("claude", kind="llm", model="claude-x",
                           response_model="claude-x-20250101", provider="anthropic") as gen:
            gen.set_usage(input_tokens=120, output_tokens=30, cache_read_tokens=1000,
                          cache_write_tokens=200)
            gen.set(cost_usd=0.0123, ttft_s=0.25, feature="chat")
            gen.set_output("on 03/04/2025")
        with llmvigil.span("lookup", kind="tool") as tool:
            tool.set_output({"rows": 2})
        with pytest.raises(ValueError), llmvigil.span("fetch", kind="retriever"):
            raise ValueError("index offline")
        score = llmvigil.feedback(gen, "thumbs_up", comment="good")
    assert score is not None
    # A span from the past (a migration, a journal replay): its times must survive as-is.
    old = Span(id="0123456789abcdef", trace_id="f" * 32, name="old-call", kind="llm",
               start_ns=T_HIST, end_ns=T_HIST + 1_500_000_123, model="claude-old",
               status="ok")
    capture.emit(old)

    assert llmvigil.flush(10)
    wait_for(lambda: len(server.span_ids()) == 5 and len(server.scores) == 1,
             "5 spans and 1 score at Langfuse")
    assert len(mem.spans) == 5 and [s.id for s in mem.scores] == [score.id]

    got = server.spans_by_id()
    by_name = {s.name: s for s in mem.spans}
    for m in mem.spans:  # ids, parent links and exact nanosecond times, for every span
        r = got[m.id]
        assert (r.trace_id, r.span_id, r.parent_span_id) == (m.trace_id, m.id, m.parent_id or "")
        assert (r.start_ns, r.end_ns, r.name) == (m.start_ns, m.end_ns, m.name)
        assert r.scope_name == "langfuse-sdk"
        assert r.scope_attributes == {"public_key": server.public_key}
        assert r.resource_attributes["service.name"] == "svc"
    assert (got[old.id].start_ns, got[old.id].end_ns) == (T_HIST, T_HIST + 1_500_000_123)
    assert got[old.id].attributes[A_OBS + "type"] == "generation"

    m_root, m_gen = by_name["handle"], by_name["claude"]
    r = got[m_root.id].attributes
    assert r[A_OBS + "type"] == "chain"
    assert r["langfuse.trace.name"] == "handle"
    assert r["langfuse.internal.is_app_root"] is True
    assert r["langfuse.trace.tags"] == ["beta", "chat"]
    assert (r["user.id"], r["session.id"]) == ("u-1", "s-1")
    assert (r["langfuse.environment"], r["langfuse.release"]) == ("staging", "1.2.3")
    assert json.loads(r[A_OBS + "input"]) == {"question": "when?"}
    assert json.loads(r[A_OBS + "metadata.route"]) == "/chat"

    g = got[m_gen.id].attributes
    assert g[A_OBS + "type"] == "generation"
    assert g[A_OBS + "model.name"] == "claude-x-20250101"
    assert json.loads(g[A_OBS + "usage_details"]) == {
        "input": 120, "output": 30, "input_cache_read": 1000, "input_cache_creation": 200,
        "total": 1350,
    }
    assert json.loads(g[A_OBS + "cost_details"]) == {"total": 0.0123}
    assert iso(json.loads(g[A_OBS + "completion_start_time"])) == utc(
        m_gen.start_ns + 250_000_000)
    assert g[A_OBS + "output"] == "on 03/04/2025"
    assert (g["user.id"], g["session.id"]) == ("u-1", "s-1")  # inherited from the root
    assert not {"langfuse.trace.name", "langfuse.trace.tags",
                "langfuse.internal.is_app_root"} & set(g)
    assert json.loads(g[A_OBS + "metadata.feature"]) == "chat"
    extras = json.loads(g[A_OBS + "metadata.llmvigil"])
    assert extras["provider"] == "anthropic" and extras["request_model"] == "claude-x"
    assert extras["ttft_s"] == 0.25

    t = got[by_name["lookup"].id].attributes
    assert t[A_OBS + "type"] == "tool" and json.loads(t[A_OBS + "output"]) == {"rows": 2}
    assert A_OBS + "level" not in t

    fetch = got[by_name["fetch"].id]
    e = fetch.attributes
    assert e[A_OBS + "type"] == "retriever"
    assert e[A_OBS + "level"] == "ERROR"
    assert e[A_OBS + "status_message"] == "ValueError: index offline"
    assert (fetch.status_code, fetch.status_message) == (2, "index offline")  # OTel ERROR

    headers = {k.lower(): v for k, v in server.attempts[0].headers.items()}
    assert headers["x-langfuse-public-key"] == server.public_key
    assert headers["x-langfuse-sdk-name"] == "python"
    assert headers["x-langfuse-ingestion-version"] == "4"
    assert headers["content-encoding"] == "gzip"

    s = server.scores[0]
    assert s["id"] == score.id  # the llmvigil id: deterministic
    assert (s["traceId"], s["observationId"]) == (m_gen.trace_id, m_gen.id)
    assert (s["name"], s["value"], s["dataType"]) == ("user_feedback", 1.0, "BOOLEAN")
    assert (s["comment"], s["source"], s["environment"]) == ("good", "API", "staging")
    assert s["metadata"] == {"kind": "thumbs_up", "source": "user"}
    assert iso(s["timestamp"]) == utc(score.time_ns)

    # Re-delivery (crash, journal replay) sends the same ids and timestamps: an upsert.
    hooks = backend_hooks()
    assert hooks.llmvigil_export_scores(scores=[mem.scores[0]]) is ExportResult.SUCCESS
    assert hooks.llmvigil_export_spans(spans=[m_gen]) is ExportResult.SUCCESS
    assert [x for x in server.scores if x["id"] == score.id] == [s, s]
    assert len(server.spans_by_id()) == 5
    resent = [x for x in server.spans if x.span_id == m_gen.id]
    assert len(resent) == 2 and resent[0] == resent[1]


def test_session_events_verdicts_and_unholdable_records(
        tmp_path: Path, server: LangfuseServer, caplog: pytest.LogCaptureFixture) -> None:
    mem = start(tmp_path, backends=[settings(server, environment="Blue Env")],
                plugin_manager=plugin_manager())
    with llmvigil.span("turn", kind="agent", session_id="s-9") as turn:
        pass
    event = llmvigil.session_event("s-9", "task_complete", user_id="u-9",
                                   trace_id=turn.trace_id)
    verdict = SafetyVerdict(action="block", reason="PII in output", category="pii",
                            decided_by="regex", trace_id=turn.trace_id, span_id=turn.span_id)
    capture.emit(verdict)
    # Feedback given by span id only: the trace is found from the exported span.
    by_span = llmvigil.feedback(turn.span_id, "rating", 4.0, category="helpful")
    orphan = llmvigil.feedback("0" * 15 + "1", "thumbs_down")  # an unknown span, no session
    emit_metric("custom_rate", 0.5)
    assert event is not None and by_span is not None and orphan is not None
    with caplog.at_level(logging.WARNING, logger="llmvigil.adapters.langfuse"):
        assert llmvigil.flush(10)
        wait_for(lambda: len(server.scores) == 3, "3 scores at Langfuse")

    got = server.scores_by_id()
    ev = got[event.id]
    assert (ev["sessionId"], ev["name"], ev["value"], ev["dataType"]) == (
        "s-9", "session_event", "task_complete", "CATEGORICAL")
    assert "traceId" not in ev
    assert ev["metadata"] == {"user_id": "u-9", "trace_id": turn.trace_id}
    assert ev["environment"] == "blue-env"  # made a valid Langfuse environment name
    v = got[verdict.id]
    assert (v["name"], v["value"], v["comment"]) == ("safety_verdict", "block", "PII in output")
    assert (v["traceId"], v["observationId"]) == (turn.trace_id, turn.span_id)
    assert v["metadata"] == {"category": "pii", "decided_by": "regex"}
    b = got[by_span.id]
    assert (b["traceId"], b["observationId"]) == (turn.trace_id, turn.span_id)
    assert (b["value"], b["dataType"]) == (4.0, "NUMERIC")
    assert orphan.id not in got
    assert re.search(r"1 of \d scores skipped", caplog.text)
    assert server.spans[0].attributes["langfuse.environment"] == "blue-env"
    # Metrics are not held by Langfuse: counted, still delivered to the memory backend.
    assert status()["cannot_hold"] >= 1
    assert any(m.name == "custom_rate" for m in mem.metrics)


@pytest.mark.parametrize("mode", ["refuse", "500", "429", "hang"])
def test_outage_keeps_app_fast_and_redelivers(
        tmp_path: Path, server: LangfuseServer, mode: str) -> None:
    mem = start(tmp_path, backends=[settings(server, timeout_s=0.3)],
                plugin_manager=plugin_manager(),
                pipeline={"max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3,
                          "flush_interval_s": 0.02})

    @llmvigil.trace(kind="llm")
    def call(i: int) -> str:
        return f"answer {i}"

    call(-1)
    assert llmvigil.flush(5)
    wait_for(lambda: len(server.span_ids()) == 1, "the healthy span")

    if mode == "refuse":
        server.refuse()
    else:
        server.set_mode(mode)
    latencies = []
    for i in range(20):
        t0 = time.perf_counter()
        call(i)
        if i % 5 == 0:
            llmvigil.feedback(mem.spans[0].id if mem.spans else None, "thumbs_down")
        latencies.append(time.perf_counter() - t0)
    assert max(latencies) < 0.05, latencies

    wait_for(lambda: len(mem.spans) == 21, "the memory backend to get every span")
    wait_for(lambda: status()["journaled"] >= 20, f"spans journaled during {mode}")
    outage_ids = {s.id for s in mem.spans} - server.span_ids()
    assert len(outage_ids) == 20
    if mode != "refuse":
        assert any(a.mode == mode for a in server.attempts)

    server.accept()
    assert llmvigil.flush(5)
    expected_spans = {s.id for s in mem.spans}
    expected_scores = {s.id for s in mem.scores}
    wait_for(lambda: server.span_ids() >= expected_spans
             and set(server.scores_by_id()) >= expected_scores,
             f"re-delivery after {mode}", timeout=15)
    assert status()["replayed"] >= 20
    assert status()["dropped"] == 0


def test_permanent_rejection_is_failure_not_retry(server: LangfuseServer) -> None:
    lf = LangfuseBackend(settings(server, timeout_s=1))
    server.set_mode("400")
    span = Span(trace_id="a" * 32, name="x", start_ns=T_HIST, end_ns=T_HIST + 1)
    assert lf.llmvigil_export_spans([span]) is ExportResult.FAILURE
    assert lf.llmvigil_export_scores([Score(name="n", value=1.0, trace_id="a" * 32)]) \
        is ExportResult.FAILURE
    server.set_mode("207")
    assert lf.llmvigil_export_scores([Score(name="n", value=1.0, trace_id="a" * 32)]) \
        is ExportResult.FAILURE
    server.set_mode("500")
    assert lf.llmvigil_export_spans([span]) is ExportResult.RETRY
    assert lf.llmvigil_export_scores([Score(name="n", value=1.0, trace_id="a" * 32)]) \
        is ExportResult.RETRY
    lf.llmvigil_shutdown(1)


def test_refused_keys_are_retried_and_warned_once_per_outage(
        server: LangfuseServer, caplog: pytest.LogCaptureFixture) -> None:
    lf = LangfuseBackend(settings(server, timeout_s=1))
    span = Span(trace_id="a" * 32, name="x", start_ns=T_HIST, end_ns=T_HIST + 1)
    score = Score(name="n", value=1.0, trace_id="a" * 32)
    with caplog.at_level(logging.WARNING, logger="llmvigil"):
        server.fail_next(OTEL_PATH, 403)
        assert lf.llmvigil_export_spans([span]) is ExportResult.RETRY
        server.fail_next(SCORES_PATH, 401)
        assert lf.llmvigil_export_scores([score]) is ExportResult.RETRY
        assert lf.llmvigil_export_spans([span]) is ExportResult.SUCCESS  # outage over
        server.fail_next(OTEL_PATH, 401)
        assert lf.llmvigil_export_spans([span]) is ExportResult.RETRY
    warnings = [r.getMessage() for r in caplog.records if "refused the keys" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per outage, not one per batch
    assert all("LANGFUSE_SECRET_KEY" in w for w in warnings)
    assert server.secret_key not in caplog.text
    lf.llmvigil_shutdown(1)


def test_refused_keys_lose_nothing_once_accepted(
        tmp_path: Path, server: LangfuseServer, caplog: pytest.LogCaptureFixture) -> None:
    """401 while the keys are refused (rotated, revoked, not yet active): spans, scores
    and session events are journaled, then all arrive once the keys are accepted."""
    mem = start(tmp_path, backends=[settings(server, timeout_s=0.5)],
                plugin_manager=plugin_manager(),
                pipeline={"max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3,
                          "flush_interval_s": 0.02})
    good_secret = server.secret_key
    server.secret_key = "sk-lf-rotated-elsewhere"  # ours is refused: 401

    @llmvigil.trace(kind="llm", session_id="conv-7")
    def call(i: int) -> str:
        return f"answer {i}"

    with caplog.at_level(logging.WARNING, logger="llmvigil"):
        for i in range(20):
            call(i)
        wait_for(lambda: len(mem.spans) == 20, "the memory backend to get every span")
        llmvigil.feedback(mem.spans[0].trace_id, "thumbs_down")
        llmvigil.session_event("conv-7", "task_complete")
        assert llmvigil.flush(5)
        wait_for(lambda: status()["journaled"] >= 22, "records journaled while refused")
        assert status()["dropped"] == 0
        assert not server.spans and not server.scores
        assert any(a.status == 401 for a in server.attempts)

        server.secret_key = good_secret
        expected_spans = {s.id for s in mem.spans}
        expected_scores = {s.id for s in mem.scores} | {e.id for e in mem.session_events}
        assert len(expected_scores) == 2
        wait_for(lambda: server.span_ids() >= expected_spans
                 and set(server.scores_by_id()) >= expected_scores,
                 "re-delivery once the keys are accepted", timeout=20)
    warnings = [r.getMessage() for r in caplog.records if "refused the keys" in r.getMessage()]
    assert len(warnings) == 1, warnings
    wait_for(lambda: status()["replayed"] >= 22, "the replay to be counted")
    assert status()["dropped"] == 0


def test_check_authenticates_without_sending_data(server: LangfuseServer) -> None:
    good = LangfuseBackend(settings(server, timeout_s=2))
    assert "llmvigil-test (proj-test)" in good.llmvigil_check(2.0)
    wrong = LangfuseBackend(settings(server, secret_key="sk-lf-WRONG-SECRET"))
    with pytest.raises(llmvigil.ConfigError, match="rejected the keys") as info:
        wrong.llmvigil_check(2.0)
    assert "WRONG-SECRET" not in str(info.value) and "WRONG-SECRET" not in repr(wrong)
    assert [(a.method, a.path) for a in server.attempts] == [("GET", "/api/public/projects")] * 2
    assert not server.spans and not server.scores
    server.refuse()
    with pytest.raises(ConnectionError, match="cannot reach Langfuse"):
        good.llmvigil_check(1.0)
    for b in (good, wrong):
        b.llmvigil_shutdown(1.0)


def test_settings_fall_back_to_langfuse_env_vars(
        tmp_path: Path, server: LangfuseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", server.secret_key)
    monkeypatch.setenv("LANGFUSE_HOST", "http://127.0.0.1:9")  # LANGFUSE_BASE_URL wins
    monkeypatch.setenv("LANGFUSE_BASE_URL", server.url + "/")
    monkeypatch.setenv("LANGFUSE_TRACING_ENVIRONMENT", "canary")
    monkeypatch.setenv("LANGFUSE_RELEASE", "r7")
    start(tmp_path, backends=["langfuse"], plugin_manager=plugin_manager())
    with llmvigil.span("plain"):
        pass
    assert llmvigil.flush(5)
    wait_for(lambda: len(server.spans) == 1, "the span")
    attrs = server.spans[0].attributes
    assert (attrs["langfuse.environment"], attrs["langfuse.release"]) == ("canary", "r7")
    assert server.spans[0].resource_attributes["langfuse.environment"] == "canary"

    llmvigil.shutdown(2)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")
    with pytest.raises(llmvigil.ConfigError, match=r"secret_key not set.*LANGFUSE_SECRET_KEY"):
        start(tmp_path, backends=["langfuse"], plugin_manager=plugin_manager())


def test_missing_sdk_names_the_extra(tmp_path: Path) -> None:
    code = f"""
import importlib, sys
sys.modules["langfuse"] = None
import llmvigil
from llmvigil.plugins.manager import new_plugin_manager
pm = new_plugin_manager(load_entrypoints=False)
if not pm.has_plugin({MODULE!r}):
    pm.register(importlib.import_module({MODULE!r}), name={MODULE!r})
try:
    llmvigil.init(backends=[{{"name": "langfuse", "public_key": "pk", "secret_key": "sk"}}],
                  plugin_manager=pm, pipeline={{"journal_dir": sys.argv[1]}})
except llmvigil.MissingExtraError as exc:
    print("MISSING:", exc)
    sys.exit(0)
print("no error raised")
sys.exit(1)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "journal")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip install 'llmvigil[langfuse]'" in proc.stdout
