"""The otlp backend against a local OTLP/HTTP receiver that decodes the real wire format.

The receiver is a stdlib HTTP server that does what the OTLP/HTTP spec asks of a
collector: it accepts ``application/x-protobuf`` bodies (gzip/deflate aware), parses
them with ``opentelemetry-proto`` as ``ExportTraceServiceRequest`` /
``ExportMetricsServiceRequest`` and answers with the protobuf response. It can also
refuse, fail (500/429/400) or accept and never answer, for the outage tests.
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs llmvigil[otlp]")

import llmvigil
from llmvigil.core.errors import MissingExtraError
from llmvigil.core.runtime import emit_metric, get_runtime
from llmvigil.plugins.manager import new_plugin_manager
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from vigil_testing import start

MODULE = "llmvigil.adapters.otlp"


# -- the receiver ------------------------------------------------------------------------


def any_value(v: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


class Collector:
    """A minimal OTLP/HTTP receiver on 127.0.0.1 (``mode``: ok, 400, 429, 500, hang)."""

    def __init__(self, port: int = 0) -> None:
        self.mode = "ok"
        self.spans: list[tuple[dict[str, Any], str, Any]] = []  # (resource, scope, span)
        self.metrics: list[tuple[dict[str, Any], Any]] = []  # (resource, metric)
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with collector.lock:
                    collector.headers.append({k.lower(): v for k, v in self.headers.items()})
                    collector.paths.append(self.path)
                mode = collector.mode
                if mode == "hang":
                    collector.release.wait(10)
                    return
                if mode != "ok":
                    self._reply(int(mode), b"", "text/plain")
                    return
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self._reply(415, b"unsupported content type", "text/plain")
                    return
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    with collector.lock:
                        for rs in req.resource_spans:
                            res = attrs(rs.resource.attributes)
                            for ss in rs.scope_spans:
                                collector.spans.extend((res, ss.scope.name, s) for s in ss.spans)
                    self._reply(200, ExportTraceServiceResponse().SerializeToString())
                elif self.path == "/v1/metrics":
                    mreq = ExportMetricsServiceRequest.FromString(body)
                    with collector.lock:
                        for rm in mreq.resource_metrics:
                            res = attrs(rm.resource.attributes)
                            for sm in rm.scope_metrics:
                                collector.metrics.extend((res, m) for m in sm.metrics)
                    self._reply(200, ExportMetricsServiceResponse().SerializeToString())
                else:
                    self._reply(404, b"not found", "text/plain")

            def _reply(self, code: int, payload: bytes,
                       ctype: str = "application/x-protobuf") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def span_ids(self) -> set[str]:
        with self.lock:
            return {s.span_id.hex() for _, _, s in self.spans}

    def by_id(self) -> dict[str, tuple[dict[str, Any], str, Any]]:
        with self.lock:
            return {s.span_id.hex(): (res, scope, s) for res, scope, s in self.spans}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def wait_for(cond: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def plugin_manager() -> Any:
    pm = new_plugin_manager()
    if not pm.has_plugin(MODULE):
        pm.register(importlib.import_module(MODULE), name=MODULE)
    return pm


def start_otlp(tmp_path: Path, url: str | None, **settings: Any) -> Any:
    pipeline = settings.pop("pipeline", {})
    backend = {"name": "otlp", "redaction": "full", **settings}
    if url is not None:
        backend["endpoint"] = url
    return start(tmp_path, backends=[backend], plugin_manager=plugin_manager(),
                 service={"name": "svc-test", "environment": "test"}, pipeline=pipeline)


def outbox() -> Any:
    rt = get_runtime()
    assert rt is not None
    return next(b for b in rt.pipeline.outboxes if b.name == "otlp")


# -- tests -------------------------------------------------------------------------------


def test_trace_tree_scores_sessions_and_metrics_arrive_as_otlp(tmp_path: Path,
                                                                collector: Collector) -> None:
    memory = start_otlp(tmp_path, collector.url + "/v1/traces", headers={"x-tenant": "t1"})
    with llmvigil.span("answer", kind="chain", user_id="u-1", session_id="s-1",
                       feature="qa", tags=["beta"], metadata={"ab": "v2"}):
        with llmvigil.span("claude", kind="llm", model="claude-sonnet-4-5",
                           provider="anthropic") as llm:
            llm.set_input({"system": "Answer briefly",
                           "messages": [{"role": "user", "content": "Date of 03/04/2025?"}]})
            time.sleep(0.003)
            llm.tick()
            llm.tick()
            llm.set_usage(input_tokens=120, output_tokens=30, cache_read_tokens=800,
                          cache_write_tokens=50)
            llm.set(stop_reason="end_turn", response_id="msg_1")
            llm.set_output("3 April 2025")
        with pytest.raises(KeyError), llmvigil.span("lookup", kind="tool"):
            raise KeyError("missing")
    score = llmvigil.feedback(llm, "thumbs_down", comment="wrong date", user_id="u-1")
    event = llmvigil.session_event("s-1", "task_complete", user_id="u-1")
    emit_metric("otlp_test_gauge", 0.42, model="claude")
    emit_metric("llmvigil.otlp_self_test", 1.0)
    assert score is not None and event is not None
    assert llmvigil.flush(10)
    wait_for(lambda: len(collector.spans) >= 5 and len(collector.metrics) >= 2)

    got = collector.by_id()
    records = {s.id: s for s in memory.spans}
    assert set(records) <= set(got)
    for rid, rec in records.items():
        res, scope, pb = got[rid]
        assert pb.trace_id.hex() == rec.trace_id
        assert (pb.parent_span_id.hex() or None) == rec.parent_id
        assert pb.start_time_unix_nano == rec.start_ns
        assert pb.end_time_unix_nano == rec.end_ns
        assert pb.name == rec.name
        assert res["service.name"] == "svc-test"
        assert scope == "llmvigil"

    by_name = {r.name: r for r in records.values()}
    root, call, tool = by_name["answer"], by_name["claude"], by_name["lookup"]
    assert call.parent_id == root.id and tool.parent_id == root.id

    pb = got[call.id][2]
    a = attrs(pb.attributes)
    assert pb.kind == PbSpan.SPAN_KIND_CLIENT
    assert pb.status.code == PbStatus.STATUS_CODE_OK
    assert a["gen_ai.request.model"] == "claude-sonnet-4-5"
    assert a["gen_ai.system"] == a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.input_tokens"] == 120
    assert a["gen_ai.usage.output_tokens"] == 30
    assert a["gen_ai.usage.cache_read.input_tokens"] == 800
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 50
    assert a["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert a["gen_ai.response.id"] == "msg_1"
    assert a["user.id"] == "u-1" and a["session.id"] == "s-1"
    assert a["llmvigil.feature"] == "qa"
    assert a["deployment.environment"] == "test"
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Date of 03/04/2025?"}]}]
    assert json.loads(a["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Answer briefly"}]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "3 April 2025"}],
         "finish_reason": "end_turn"}]
    assert a["llmvigil.output"] == "3 April 2025"
    assert call.ttft_s is not None and call.ttft_s >= 0.003
    assert a["gen_ai.server.time_to_first_token"] == pytest.approx(call.ttft_s)
    assert a["llmvigil.stream.items"] == 2
    (ttft,) = [e for e in pb.events if e.name == "llmvigil.first_token"]
    assert ttft.time_unix_nano == call.start_ns + int(call.ttft_s * 1e9)

    root_pb = got[root.id][2]
    ra = attrs(root_pb.attributes)
    assert root_pb.kind == PbSpan.SPAN_KIND_INTERNAL
    assert ra["llmvigil.tags"] == ["beta"] and ra["llmvigil.metadata.ab"] == "v2"
    assert "gen_ai.operation.name" not in ra

    tool_pb = got[tool.id][2]
    assert tool_pb.status.code == PbStatus.STATUS_CODE_ERROR
    assert "missing" in tool_pb.status.message
    (exc,) = [e for e in tool_pb.events if e.name == "exception"]
    assert attrs(exc.attributes)["exception.type"] == "KeyError"
    assert attrs(tool_pb.attributes)["gen_ai.operation.name"] == "execute_tool"

    _, _, score_pb = got[score.id]
    assert score_pb.trace_id.hex() == call.trace_id
    assert score_pb.parent_span_id.hex() == call.id
    (ev,) = [e for e in score_pb.events if e.name == "gen_ai.evaluation.result"]
    ea = attrs(ev.attributes)
    assert ea["gen_ai.evaluation.name"] == "user_feedback"
    assert ea["gen_ai.evaluation.score.value"] == 0.0
    assert ea["gen_ai.evaluation.score.label"] == "thumbs_down"
    assert ea["gen_ai.evaluation.explanation"] == "wrong date"
    assert ev.time_unix_nano == score.time_ns

    _, _, sess_pb = got[event.id]
    assert sess_pb.name == "session.task_complete"
    assert attrs(sess_pb.attributes)["session.id"] == "s-1"

    (metric,) = [m for _, m in collector.metrics if m.name == "llmvigil.otlp_test_gauge"]
    (point,) = metric.gauge.data_points
    assert point.as_double == pytest.approx(0.42)
    assert attrs(point.attributes)["model"] == "claude"
    names = {m.name for _, m in collector.metrics}
    assert "llmvigil.otlp_self_test" in names  # already prefixed: not doubled

    sent = [h for h in collector.headers if h.get("x-tenant") == "t1"]
    assert sent and all(h["content-encoding"] == "gzip" for h in sent)
    assert outbox().counters.dropped == 0


def test_permanent_rejection_is_dropped_not_retried(tmp_path: Path,
                                                    collector: Collector) -> None:
    collector.mode = "400"
    memory = start_otlp(tmp_path, collector.url, compression="none")
    with llmvigil.span("rejected"):
        pass
    assert llmvigil.flush(10)
    c = outbox().counters
    # Metrics the monitors publish are refused the same way, so count span posts.
    assert collector.paths.count("/v1/traces") == 1
    assert c.dropped >= 1 and (c.journaled, c.retried) == (0, 0)
    assert len(memory.spans) == 1
    assert "content-encoding" not in collector.headers[0]


@pytest.mark.parametrize("mode", ["refused", "500", "429", "hang"])
def test_outage_keeps_app_fast_journals_and_redelivers(tmp_path: Path, mode: str) -> None:
    collector = Collector()
    port = collector.port
    if mode == "refused":
        collector.stop()
    else:
        collector.mode = mode
    memory = start_otlp(
        tmp_path, f"http://127.0.0.1:{port}/v1/traces", timeout_s=0.5,
        pipeline={"max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3},
    )
    n = 20
    slowest = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        with llmvigil.span(f"call-{i}", kind="llm", model="m") as s:
            s.set_usage(input_tokens=1, output_tokens=1)
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.01)
    assert slowest < 0.05
    box = outbox()
    assert llmvigil.flush(15)  # each record reached the memory backend or the journal
    wait_for(lambda: box.counters.journaled >= n)
    assert len(memory.spans) == n
    assert box.counters.delivered == 0

    if mode == "refused":
        collector = Collector(port=port)
    else:
        collector.mode = "ok"
        collector.release.set()
    try:
        expected = {s.id for s in memory.spans}
        wait_for(lambda: expected <= collector.span_ids(), timeout=20)
        wait_for(lambda: box.counters.replayed >= n)
        assert box.counters.dropped == 0
    finally:
        collector.stop()


def test_check_and_env_fallback(tmp_path: Path, collector: Collector,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from llmvigil.adapters.otlp import OtlpBackend

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    backend = OtlpBackend({"service": "svc", "timeout_s": 2})
    try:
        assert backend.endpoint == f"{collector.url}/v1/traces"
        assert backend.metrics_endpoint == f"{collector.url}/v1/metrics"
        assert collector.url in backend.llmvigil_check(2)
        assert collector.headers  # the check really reached the receiver
    finally:
        backend.llmvigil_shutdown(1)
    collector.mode = "500"
    broken = OtlpBackend({"endpoint": collector.url, "timeout_s": 1})
    try:
        with pytest.raises(ConnectionError, match="HTTP 500"):
            broken.llmvigil_check(1)
    finally:
        broken.llmvigil_shutdown(1)


def test_missing_sdk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter", None)
    with pytest.raises(MissingExtraError, match=r"llmvigil\[otlp\]"):
        start_otlp(tmp_path, "http://127.0.0.1:9/v1/traces")
