"""The Helicone backend against a local server that validates Helicone's documented API.

The wire format is also checked against the vendor's own Python manual logger
(``helicone_helpers.HeliconeManualLogger``) posting to the same server.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llmvigil
import pluggy
import pytest
from helicone_server import API_KEY, HeliconeServer, free_port
from llmvigil.adapters.helicone import HeliconeBackend, log_body, request_id
from llmvigil.core import runtime
from llmvigil.core.errors import ConfigError, MissingExtraError
from llmvigil.core.model import Span, Usage
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import ExportResult
from vigil_testing import start

PLUGIN = "llmvigil.adapters.helicone"
T0 = 1_714_564_800 * 10**9 + 123_456_789  # 2024-05-01T12:00:00.123456789Z


def plugin_manager() -> pluggy.PluginManager:
    pm = new_plugin_manager()
    if not pm.has_plugin(PLUGIN):
        pm.register(importlib.import_module(PLUGIN), name=PLUGIN)
    return pm


@pytest.fixture
def server() -> Iterator[HeliconeServer]:
    srv = HeliconeServer().start()
    yield srv
    srv.stop()


def start_helicone(tmp_path: Path, url: str, **settings: Any) -> Any:
    pipeline = settings.pop("pipeline", {})
    return start(tmp_path, backends=[{
        "name": "helicone", "api_key": API_KEY, "base_url": url, "api_url": url,
        "timeout_s": 0.5, **settings,
    }], plugin_manager=plugin_manager(), pipeline=pipeline)


def backend() -> HeliconeBackend:
    rt = runtime.get_runtime()
    assert rt is not None
    (impl,) = rt.backends["helicone"].llmvigil_export_spans.get_hookimpls()
    instance = impl.plugin
    assert isinstance(instance, HeliconeBackend)
    return instance


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def outbox(name: str = "helicone") -> dict[str, Any]:
    rt = runtime.get_runtime()
    assert rt is not None
    counts: dict[str, Any] = rt.pipeline.status()["backends"][name]
    return counts


def test_spans_feedback_and_scores_match_the_documented_api(
    tmp_path: Path, server: HeliconeServer
) -> None:
    memory = start_helicone(tmp_path, server.url, properties={"App": "vigil-test"})
    with (
        llmvigil.span("answer", kind="chain", feature="chat", user_id="u1",
                      session_id="sess1", metadata={"plan": "pro", "city": "Zürich"}) as root,
        llmvigil.span("anthropic.messages", kind="llm", model="claude-x",
                      provider="anthropic", tags=["canary", "eu"]) as llm,
    ):
        llm.set_input({"messages": [{"role": "user", "content": "date?"}]})
        llm.set_usage(input_tokens=10, output_tokens=20, cache_read_tokens=3)
        llm.set(cost_usd=0.0125, ttft_s=0.25, response_id="msg_1",
                response_model="claude-x-2024", stop_reason="end_turn",
                metadata={"plan": "pro", "city": "Zürich"})
        llm.set_output("01/05/2024")
        with llmvigil.span("lookup", kind="tool"):
            pass
    with (
        pytest.raises(RuntimeError),
        llmvigil.span("anthropic.messages", kind="llm", model="claude-x") as failed,
    ):
        raise RuntimeError("overloaded")

    llmvigil.feedback(llm, "thumbs_up")
    llmvigil.feedback(failed, "thumbs_down")
    llmvigil.feedback(llm, "judge", value=0.92, name="date_format", source="judge")
    llmvigil.feedback(root.trace_id, "thumbs_up")  # a whole trace: no Helicone request
    llmvigil.feedback(llm, "category", category="wrong date")  # no value to send

    ok_id, failed_id = request_id(llm.span_id), request_id(failed.span_id)
    assert llmvigil.flush(10)
    wait_for(lambda: server.delivered_ids() == {ok_id, failed_id}
             and len(server.feedback) == 2 and len(server.scores) == 1)
    assert server.errors == []

    # The custom log of the LLM span: headers...
    (headers, body), = server.logs[ok_id]
    sent = {span.id: span for span in memory.spans}[llm.span_id]
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["helicone-user-id"] == "u1"
    assert headers["helicone-session-id"] == "sess1"
    assert headers["helicone-session-path"] == "/anthropic.messages"
    assert headers["helicone-session-name"] == "chat"
    props = {k.removeprefix("helicone-property-"): v for k, v in headers.items()
             if k.startswith("helicone-property-")}
    assert props == {
        "app": "vigil-test", "plan": "pro", "city": "Z%C3%BCrich", "feature": "chat",
        "provider": "anthropic", "trace-id": root.trace_id, "span-id": llm.span_id,
        "parent-id": root.span_id, "span-kind": "llm", "span-name": "anthropic.messages",
        "tags": "canary,eu", "cost-usd": "0.0125",
    }
    # ...and the body, field by field.
    assert body["providerRequest"] == {
        "url": "custom-model-nopath", "meta": {},
        "json": {"model": "claude-x",
                 "messages": [{"role": "user", "content": "date?"}]},
    }
    assert body["providerResponse"] == {
        "status": 200, "headers": {},
        "json": {"id": "msg_1", "model": "claude-x-2024", "stop_reason": "end_turn",
                 "content": [{"type": "text", "text": "01/05/2024"}],
                 "usage": {"input_tokens": 10, "output_tokens": 20,
                           "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}},
    }
    assert body["timing"] == {
        "startTime": {"seconds": sent.start_ns // 10**9,
                      "milliseconds": sent.start_ns % 10**9 // 10**6},
        "endTime": {"seconds": sent.end_ns // 10**9,
                    "milliseconds": sent.end_ns % 10**9 // 10**6},
        "timeToFirstToken": 250,
    }

    # The failed call: status 500 with its error; no session headers outside a session.
    (headers, body), = server.logs[failed_id]
    assert body["providerResponse"]["status"] == 500
    assert body["providerResponse"]["json"]["error"] == {
        "type": "RuntimeError", "message": "overloaded"}
    assert "helicone-session-id" not in headers and "helicone-user-id" not in headers

    # Feedback as ratings, scores as integers, on the requests of their spans.
    assert dict(server.feedback) == {ok_id: [True], failed_id: [False]}
    assert dict(server.scores) == {ok_id: [{"date_format": 92}]}
    b = backend()
    assert b.not_sent == {"chain_spans": 1, "tool_spans": 1, "scores_without_span_id": 1,
                          "scores_without_value": 1}
    assert not b.rejected
    assert outbox()["delivered"] == len(memory.spans) + len(memory.scores)


def test_body_has_the_shape_the_vendor_logger_sends(server: HeliconeServer) -> None:
    manual_logger = pytest.importorskip("helicone_helpers.manual_logger")
    vendor = manual_logger.HeliconeManualLogger(api_key=API_KEY, logging_endpoint=server.url)
    start_s, end_s = T0 / 1e9, T0 / 1e9 + 1.5
    vendor.send_log(None, {"model": "claude-x", "messages": []},
                    {"usage": {"input_tokens": 1, "output_tokens": 2}},
                    {"start_time": start_s, "end_time": end_s, "time_to_first_token_ms": 40,
                     "additional_headers": {"Helicone-Request-Id": request_id("v1")}})
    assert server.errors == []
    (vendor_headers, vendor_body), = server.logs[request_id("v1")]

    ours = log_body(Span(id="s1", trace_id="t" * 32, kind="llm", model="claude-x",
                         start_ns=T0, end_ns=T0 + 1_500_000_000, ttft_s=0.04,
                         usage=Usage(input_tokens=1, output_tokens=2), input=[]))

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items() if v is not None}
        return type(value).__name__

    vendor_shape, our_shape = shape(vendor_body), shape(ours)
    # Same envelope; the vendor adds its own "_type"/"toolName" to the response json.
    assert our_shape.keys() == vendor_shape.keys()
    assert our_shape["providerRequest"].keys() == vendor_shape["providerRequest"].keys()
    assert our_shape["providerResponse"].keys() == vendor_shape["providerResponse"].keys()
    assert our_shape["timing"] == vendor_shape["timing"]
    assert ours["timing"] == vendor_body["timing"] | {"timeToFirstToken": 40}
    assert ours["providerRequest"] == vendor_body["providerRequest"] | {
        "json": {"model": "claude-x", "messages": []}}
    assert ours["providerResponse"]["json"]["usage"]["input_tokens"] == 1
    assert vendor_headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("outage", ["refused", "500", "429", "hang"])
def test_outage_is_journaled_then_redelivered_with_the_same_ids(
    tmp_path: Path, outage: str
) -> None:
    srv = HeliconeServer(port=free_port())
    if outage != "refused":
        srv.start()
        srv.mode = outage
    try:
        memory = start_helicone(tmp_path, srv.url, timeout_s=0.3, pipeline={
            "max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3})

        @llmvigil.trace(kind="llm", feature="outage")
        def call(i: int) -> str:
            return f"answer {i}"

        latencies = []
        for i in range(20):
            t = time.perf_counter()
            assert call(i) == f"answer {i}"
            latencies.append(time.perf_counter() - t)
            time.sleep(0.01)
        assert max(latencies) < 0.05, latencies
        assert llmvigil.flush(10)
        assert len(memory.spans) == 20  # the other backend keeps receiving
        wait_for(lambda: outbox()["journaled"] == 20)
        assert outbox()["delivered"] == 0 and not srv.delivered_ids()

        if outage == "refused":
            srv.start()
        else:
            srv.mode = "ok"
        assert llmvigil.flush(10)
        expected = {request_id(s.id) for s in memory.spans}
        wait_for(lambda: srv.delivered_ids() == expected, timeout=20)
        assert srv.errors == []
        assert set(srv.refused_ids) <= expected  # failed attempts used the same ids
        if outage != "refused":
            assert srv.refused_ids
        wait_for(lambda: outbox()["replayed"] == 20)
    finally:
        llmvigil.shutdown(timeout=5)
        srv.stop()


def test_permanent_rejection_is_dropped_not_retried(
    tmp_path: Path, server: HeliconeServer
) -> None:
    server.mode = "400"
    start_helicone(tmp_path, server.url)
    with llmvigil.span("call", kind="llm", model="m"):
        pass
    assert llmvigil.flush(10)
    counts = outbox()
    assert (counts["dropped"], counts["journaled"], counts["retried"]) == (1, 0, 0)
    assert backend().rejected == {"custom log": 1}
    assert server.requests == 1


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_key_is_retried_not_rejected(server: HeliconeServer, status: str) -> None:
    b = HeliconeBackend({"api_key": API_KEY, "base_url": server.url, "api_url": server.url,
                         "timeout_s": 1})
    server.mode = status
    span = Span(trace_id="a" * 32, name="x", kind="llm", start_ns=T0, end_ns=T0 + 1)
    assert b.llmvigil_export_spans([span]) is ExportResult.RETRY
    assert b.rejected == {} and b.last_error is not None and "HTTP " + status in b.last_error
    server.mode = "ok"
    assert b.llmvigil_export_spans([span]) is ExportResult.SUCCESS
    assert b.last_error is None
    b.llmvigil_shutdown(timeout_s=1)


def test_a_refused_key_loses_nothing_once_it_is_accepted(
    tmp_path: Path, server: HeliconeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """401 while the key is refused (rotated, revoked, not yet active): spans and
    feedback are journaled, one warning names the setting, and everything arrives with
    the same request ids once the key is accepted."""
    server.api_key = "sk-helicone-rotated-elsewhere"  # ours is refused: 401
    memory = start_helicone(tmp_path, server.url, timeout_s=0.3, pipeline={
        "max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3})

    @llmvigil.trace(kind="llm", feature="rotation")
    def call(i: int) -> str:
        return f"answer {i}"

    with caplog.at_level(logging.WARNING, logger="llmvigil"):
        for i in range(20):
            assert call(i) == f"answer {i}"
            time.sleep(0.01)
        assert llmvigil.flush(10)
        assert len(memory.spans) == 20  # the other backend keeps receiving
        llmvigil.feedback(memory.spans[0].id, "thumbs_up")
        assert llmvigil.flush(10)
        wait_for(lambda: outbox()["journaled"] == 21)
        assert outbox()["dropped"] == 0 and outbox()["delivered"] == 0
        assert not server.delivered_ids() and not server.feedback
        assert backend().rejected == {}

        server.api_key = API_KEY
        expected = {request_id(s.id) for s in memory.spans}
        wait_for(lambda: server.delivered_ids() == expected and len(server.feedback) == 1,
                 timeout=20)
    assert server.feedback == {request_id(memory.spans[0].id): [True]}
    assert server.errors == []
    wait_for(lambda: outbox()["replayed"] == 21)
    assert outbox()["dropped"] == 0
    warnings = [r.getMessage() for r in caplog.records
                if "refused the API key" in r.getMessage()]
    assert len(warnings) == 1 and "HELICONE_API_KEY" in warnings[0], warnings
    assert API_KEY not in caplog.text


def test_span_kinds_setting_sends_tools_as_tool_logs(
    tmp_path: Path, server: HeliconeServer
) -> None:
    start_helicone(tmp_path, server.url, span_kinds=["llm", "tool"])
    with llmvigil.span("weather_api", kind="tool") as tool:
        tool.set_input({"city": "Paris"})
        tool.set_output({"celsius": 18})
    assert llmvigil.flush(10)
    wait_for(lambda: server.delivered_ids() == {request_id(tool.span_id)})
    assert server.errors == []
    (_, body), = server.logs[request_id(tool.span_id)]
    assert body["providerRequest"]["json"] == {
        "_type": "tool", "toolName": "weather_api", "input": {"city": "Paris"}}
    assert body["providerResponse"]["json"] == {
        "_type": "tool", "toolName": "weather_api", "output": {"celsius": 18}}


def test_settings_env_fallback_and_check(
    server: HeliconeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HELICONE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="HELICONE_API_KEY"):
        HeliconeBackend({})
    monkeypatch.setenv("HELICONE_API_KEY", API_KEY)
    good = HeliconeBackend({"base_url": server.url, "api_url": server.url + "/"})
    assert API_KEY not in repr(good)
    assert good.api_url == server.url
    assert server.url in good.llmvigil_check(timeout_s=2)
    bad = HeliconeBackend({"api_key": "wrong", "api_url": server.url})
    with pytest.raises(PermissionError, match="refused the API key"):
        bad.llmvigil_check(timeout_s=2)
    down = HeliconeBackend({"api_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ConnectionError, match="cannot reach Helicone"):
        down.llmvigil_check(timeout_s=2)
    defaults = HeliconeBackend({})
    assert (defaults.base_url, defaults.api_url) == (
        "https://api.worker.helicone.ai", "https://api.helicone.ai")
    for b in (good, bad, down, defaults):
        b.llmvigil_shutdown(timeout_s=1)


def test_missing_httpx_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an absent package looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'llmvigil\[helicone\]'"):
        start_helicone(tmp_path, "http://127.0.0.1:9")


def test_request_ids_are_stable_uuids() -> None:
    rid = request_id("00f067aa0ba902b7")
    assert rid == request_id("00f067aa0ba902b7") != request_id("00f067aa0ba902b8")
    assert len(rid) == 36 and rid[14] == "5"  # a version-5 UUID
