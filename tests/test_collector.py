"""``vigil serve`` end to end: real OpenTelemetry clients -> collector process -> store.

The collector runs as a subprocess (``python -m llmvigil.core.cli_serve serve``) on a
local SQLite store. Clients are the real OpenTelemetry SDK with the OTLP/HTTP
exporter, instrumented like OpenInference (its own tracer and semantic-convention
constants) and like the GenAI semantic conventions, plus llmvigil itself exporting
through its ``otlp`` backend; records are compared with what the SDK sent and with
the same work captured in-process.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import llmvigil
import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core.errors import ConfigError
from llmvigil.core.fleet.collector import Collector
from llmvigil.core.model import Score, SessionEvent, Span, to_builtins
from vigil_testing import start

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="pip install 'llmvigil[otlp]'")

from google.rpc.status_pb2 import Status
from openinference.instrumentation import (
    Message,
    OITracer,
    get_llm_attributes,
    using_attributes,
)
from openinference.instrumentation import TracerProvider as OITracerProvider
from openinference.semconv.trace import SpanAttributes
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = pytest.mark.fleet

MESSAGES = [{"role": "user", "content": "When is the invoice due? It says 03/04/2025."}]
ANSWER = "The invoice is due on 3 April 2025."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    """``vigil serve`` as a subprocess on its own store."""

    def __init__(self, directory: Path, *, host_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.store_path = directory / "collector.db"
        config = directory / "collector.yaml"
        config.write_text(
            "service: {name: collector}\n"
            "backends: [local]\n"
            f"store: {{path: '{self.store_path}'}}\n"
            f"pipeline: {{flush_interval_s: 0.05, journal_dir: '{directory / 'journal'}'}}\n")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmvigil.core.cli_serve", "serve", *host_args,
             "--port", str(self.port), "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=directory,
            env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"

    def wait_ready(self, timeout_s: float = 30.0) -> str:
        """Wait for the 'listening on' line; return it."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            out, err = self.proc.communicate(timeout=timeout_s)
            raise AssertionError(f"collector did not start: {line}{out}{err}")
        return line

    def wait(self) -> tuple[int, str, str]:
        """Wait for the process to exit on its own; (exit code, stdout, stderr)."""
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM; (exit code, rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err

    def records(self, kind: str, ids: set[str], timeout_s: float = 15.0) -> dict[str, Any]:
        """The stored records of ``kind`` with these ids, waiting until all arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, Any] = {}
            if self.store_path.exists():
                with LocalStore(self.store_path) as store:
                    found = {r.id: r for r in store.read(kind) if r.id in ids}
            if len(found) == len(ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(tmp_path_factory.mktemp("collector"))
    proc.wait_ready()
    yield proc
    code, _, err = proc.stop()
    assert code == 0, err


def _post(url: str, body: bytes, headers: dict[str, str],
          method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", parent


def _sdk(url: str, resource: dict[str, Any], provider_cls: type[TracerProvider] =
         TracerProvider) -> tuple[TracerProvider, InMemorySpanExporter]:
    """An SDK tracer provider exporting over OTLP/HTTP, plus a copy of what it sent."""
    provider = provider_cls(resource=Resource.create(resource))
    sent = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(sent))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider, sent


# -- OpenInference, compared with the SDK and with in-process capture ----------------------


def _openinference_client(url: str) -> list[ReadableSpan]:
    provider, sent = _sdk(url, {"service.name": "oi-app"}, OITracerProvider)
    tracer = provider.get_tracer("oi-test")
    assert isinstance(tracer, OITracer)
    oi_messages: list[Message] = [{"role": "user", "content": MESSAGES[0]["content"]}]
    oi_reply: list[Message] = [{"role": "assistant", "content": ANSWER}]
    with using_attributes(session_id="s-1", user_id="u-1", metadata={"feature": "extract"}), \
            tracer.start_as_current_span("extract", openinference_span_kind="chain") as chain:
        chain.set_input({"document": "invoice.pdf"})
        with tracer.start_as_current_span("ChatCompletion",
                                          openinference_span_kind="llm") as llm:
            llm.set_input({"messages": MESSAGES})
            llm.set_attributes(get_llm_attributes(
                provider="openai", system="openai", model_name="gpt-4o-mini",
                input_messages=oi_messages, output_messages=oi_reply,
                token_count={"prompt": 120, "completion": 30, "total": 150,
                             "prompt_details": {"cache_read": 20}}))
            llm.add_event("First Token Stream Event")
            llm.set_output(ANSWER)
        chain.set_output({"due": "2025-04-03"})
    provider.shutdown()
    spans = list(sent.get_finished_spans())
    assert spans[0].attributes is not None
    assert spans[0].attributes[SpanAttributes.SESSION_ID] == "s-1"  # instrumented like OI
    return spans


def _in_process(tmp_path: Path) -> list[Span]:
    memory = start(tmp_path / "in-process")
    with llmvigil.span("extract", kind="chain", user_id="u-1", session_id="s-1",
                       feature="extract") as chain:
        chain.set_input({"document": "invoice.pdf"})
        with llmvigil.span("ChatCompletion", kind="llm", model="gpt-4o-mini",
                           provider="openai") as llm:
            llm.set_input({"messages": MESSAGES})
            llm.set_usage(input_tokens=100, output_tokens=30, cache_read_tokens=20)
            llm.set_output(ANSWER)
        chain.set_output({"due": "2025-04-03"})
    llmvigil.flush()
    records = list(memory.spans)
    llmvigil.shutdown()
    return records


_SAME_AS_IN_PROCESS = ("name", "kind", "status", "input", "output", "gen_ai.request.model",
                       "gen_ai.system", "usage", "gen_ai.usage.cost", "price_source",
                       "user.id", "session.id", "feature")


def test_openinference_client_lands_as_in_process(collector: CollectorProcess,
                                                  tmp_path: Path) -> None:
    sent = _openinference_client(collector.url)
    by_id = {_hex_ids(s)[1]: s for s in sent}
    stored = collector.records("spans", set(by_id))
    assert set(stored) == set(by_id)
    for span_id, sdk_span in by_id.items():
        rec = stored[span_id]
        trace_id, _, parent = _hex_ids(sdk_span)
        assert (rec.trace_id, rec.parent_id) == (trace_id, parent)
        assert (rec.start_ns, rec.end_ns) == (sdk_span.start_time, sdk_span.end_time)
        assert rec.attributes.get("service.name") == "oi-app"
    llm = next(r for r in stored.values() if r.kind == "llm")
    first_token = next(e for e in by_id[llm.id].events if "First Token" in e.name)
    assert llm.ttft_s == pytest.approx((first_token.timestamp - llm.start_ns) / 1e9)
    assert llm.metadata == {"feature": "extract"}

    local = {r.name: to_builtins(r) for r in _in_process(tmp_path)}
    remote = {r.name: to_builtins(r) for r in stored.values()}
    assert set(local) == set(remote) == {"extract", "ChatCompletion"}
    for name in local:
        for key in _SAME_AS_IN_PROCESS:
            assert remote[name].get(key) == local[name].get(key), (name, key)
    assert remote["ChatCompletion"]["gen_ai.usage.cost"] > 0  # priced by the cost monitor


# -- GenAI semantic conventions: cache tokens, messages, errors, first-token event ----------


def test_genai_semconv_client(collector: CollectorProcess) -> None:
    provider, sent = _sdk(collector.url, {"service.name": "genai-app",
                                          "deployment.environment.name": "prod",
                                          "service.version": "1.2.3"})
    tracer = provider.get_tracer("genai-test")
    with tracer.start_as_current_span("invoke_agent support") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        with tracer.start_as_current_span("chat claude-sonnet-4") as chat:
            chat.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-20250514",
                "gen_ai.response.model": "claude-sonnet-4-20250514",
                "gen_ai.response.id": "msg_01", "gen_ai.response.finish_reasons": ["end_turn"],
                "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 50,
                "gen_ai.usage.cache_read.input_tokens": 600,
                "gen_ai.usage.cache_creation.input_tokens": 100,
                "gen_ai.conversation.id": "conv-7", "user.id": "u-2",
                "gen_ai.system_instructions": json.dumps([{"type": "text",
                                                           "content": "Be brief."}]),
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                    {"type": "text", "content": MESSAGES[0]["content"]}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                    {"type": "text", "content": ANSWER}], "finish_reason": "end_turn"}]),
                "gen_ai.request.temperature": 0.2,
            })
            start_ns = chat.start_time  # type: ignore[attr-defined]
            chat.add_event("gen_ai.first_token", timestamp=start_ns + 250_000_000)
        with pytest.raises(KeyError), \
                tracer.start_as_current_span("execute_tool lookup") as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
            raise KeyError("customer 42")
    provider.shutdown()
    ids = {_hex_ids(s)[1]: s for s in sent.get_finished_spans()}
    stored = collector.records("spans", set(ids))
    by_name = {r.name: r for r in stored.values()}
    chat_rec = by_name["chat claude-sonnet-4"]
    assert chat_rec.kind == "llm" and chat_rec.provider == "anthropic"
    assert chat_rec.parent_id == by_name["invoke_agent support"].id
    assert by_name["invoke_agent support"].kind == "agent"
    # GenAI input tokens include cached ones; llmvigil counts the uncached rest.
    assert to_builtins(chat_rec)["usage"] == {
        "gen_ai.usage.input_tokens": 300, "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.cache_read.input_tokens": 600,
        "gen_ai.usage.cache_creation.input_tokens": 100}
    assert chat_rec.input == {"messages": MESSAGES, "system": "Be brief."}
    assert chat_rec.output == ANSWER and chat_rec.stop_reason == "end_turn"
    assert chat_rec.ttft_s == pytest.approx(0.25)
    assert (chat_rec.user_id, chat_rec.session_id) == ("u-2", "conv-7")
    assert (chat_rec.environment, chat_rec.release) == ("prod", "1.2.3")
    assert chat_rec.response_id == "msg_01" and chat_rec.status == "ok"
    assert chat_rec.attributes == {"gen_ai.request.temperature": 0.2,
                                   "service.name": "genai-app"}
    tool_rec = by_name["execute_tool lookup"]
    assert tool_rec.kind == "tool" and tool_rec.status == "error"
    assert tool_rec.error_type == "KeyError" and "customer 42" in (tool_rec.error or "")


# -- llmvigil exporting to llmvigil: the same records on both sides ------------------------


def test_replica_exporting_through_otlp_lands_identical_records(
        collector: CollectorProcess, tmp_path: Path) -> None:
    memory = start(tmp_path, backends=[{"name": "otlp", "endpoint": collector.url,
                                        "redaction": "full"}])
    with llmvigil.span("answer", kind="chain", user_id="u-3", session_id="s-3",
                       feature="support", tags=["beta"], metadata={"ab": "b"}) as root:
        root.set_input({"question": "refund?"})
        with llmvigil.span("claude", kind="llm", model="claude-3-5-haiku-20241022",
                           provider="anthropic") as call:
            call.set_input({"messages": MESSAGES, "system": "Be brief."})
            call.set_usage(input_tokens=40, output_tokens=12, cache_read_tokens=8)
            for _ in range(3):
                call.tick()
            call.set(stop_reason="end_turn", response_id="msg_9", custom_flag=True)
            call.set_output({"role": "assistant",
                             "content": [{"type": "text", "text": ANSWER}]})
        with pytest.raises(ValueError), llmvigil.span("parse", kind="tool"):
            raise ValueError("bad date 31/02")
        root.set_output("Refund issued.")
    llmvigil.feedback(root, "thumbs_down", comment="wrong date", category="accuracy")
    llmvigil.session_event("s-3", "task_complete", user_id="u-3")
    assert llmvigil.flush(10)
    local = {r.id: r for r in [*memory.spans, *memory.scores, *memory.session_events]}
    llmvigil.shutdown()

    remote: dict[str, Any] = {}
    for kind in ("spans", "scores", "session_events"):
        wanted = {i for i, r in local.items() if _kind(r) == kind}
        remote.update(collector.records(kind, wanted))
    assert set(remote) == set(local)
    for record_id, rec in local.items():
        assert to_builtins(remote[record_id]) == to_builtins(rec), record_id


def _kind(record: Any) -> str:
    return {Span: "spans", Score: "scores", SessionEvent: "session_events"}[type(record)]


# -- hand-made payloads: protobuf and JSON, gzip, partial success ---------------------------


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


_OPENLLMETRY = {
    "llm.request.type": "chat", "gen_ai.system": "OpenAI",
    "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.prompt_tokens": 90,
    "gen_ai.usage.completion_tokens": 10, "llm.usage.total_tokens": 100,
    "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
    "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": MESSAGES[0]["content"],
    "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": ANSWER,
    "gen_ai.completion.0.finish_reason": "stop",
    "traceloop.association.properties.user_id": "u-4",
}


def _protobuf_request(trace_id: str, span_id: str, start: int) -> bytes:
    span = PbSpan(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id),
                  name="openai.chat", kind=PbSpan.SPAN_KIND_CLIENT,
                  start_time_unix_nano=start, end_time_unix_nano=start + 10**9,
                  attributes=[_kv(k, v) for k, v in _OPENLLMETRY.items()])
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=[span])])])
    return bytes(request.SerializeToString())


def _json_request(spans: list[tuple[str, str]], start: int) -> bytes:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": v}

    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "js-app"}}]},
        "scopeSpans": [{"scope": {"name": "@traceloop/node-server-sdk"}, "spans": [
            {"traceId": trace_id, "spanId": span_id, "name": "openai.chat", "kind": 3,
             "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 10**9),
             "status": {"code": 0},
             "attributes": [{"key": k, "value": value(v)} for k, v in _OPENLLMETRY.items()]}
            for trace_id, span_id in spans]}],
    }]}).encode()


def test_hand_made_protobuf_and_json_payloads(collector: CollectorProcess) -> None:
    start_ns = time.time_ns()
    pb_ids = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    status, headers, body = _post(
        collector.url, gzip.compress(_protobuf_request(*pb_ids, start_ns)),
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert status == 200 and headers["content-type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")

    json_ids = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    status, headers, body = _post(
        collector.url, _json_request([json_ids, ("0" * 32, "eee19b7ec3c1b175")], start_ns),
        {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)["partialSuccess"]
    assert int(answer["rejectedSpans"]) == 1 and "trace id" in answer["errorMessage"]

    stored = collector.records("spans", {pb_ids[1], json_ids[1]})
    pb, js = stored[pb_ids[1]], stored[json_ids[1]]
    assert (pb.trace_id, js.trace_id) == (pb_ids[0], json_ids[0])
    for rec in (pb, js):
        assert (rec.start_ns, rec.end_ns) == (start_ns, start_ns + 10**9)
        assert rec.kind == "llm" and rec.model == "gpt-4o-mini" and rec.provider == "OpenAI"
        assert to_builtins(rec)["usage"] == {"gen_ai.usage.input_tokens": 90,
                                             "gen_ai.usage.output_tokens": 10}
        assert rec.input == {"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": MESSAGES[0]["content"]}]}
        assert rec.output == ANSWER and rec.stop_reason == "stop" and rec.user_id == "u-4"
    assert js.attributes == {"service.name": "js-app"} and pb.attributes == {}


@pytest.mark.parametrize(("body", "headers", "code", "needle"), [
    (b"\x0a\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400, "protobuf"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    (b'{"resourceSpans": {"a": 1}}', {"Content-Type": "application/json"}, 400,
     "resourceSpans: expected a list"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
     {"Content-Type": "application/json"}, 400, "traceId: expected 32 hex digits"),
    (b"not gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400,
     "not valid gzip"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported Content-Type"),
    (b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415,
     "Content-Encoding"),
])
def test_malformed_requests_get_clear_errors(collector: CollectorProcess, body: bytes,
                                             headers: dict[str, str], code: int,
                                             needle: str) -> None:
    status, got_headers, payload = _post(collector.url, body, headers)
    assert status == code
    if got_headers["content-type"] == "application/x-protobuf":
        message = Status.FromString(payload).message
    else:
        message = json.loads(payload)["message"]
    assert needle in message


def test_other_paths_methods_and_health(collector: CollectorProcess) -> None:
    base = collector.url.removesuffix("/v1/traces")
    assert _post(base + "/v1/metrics", b"", {"Content-Type": "application/x-protobuf"})[0] \
        == 404
    assert _post(collector.url, b"", {}, method="PUT")[0] == 405
    status, _, body = _post(base + "/healthz", b"", {}, method="GET")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["bad_requests"] >= 1


# -- in-process collector: backpressure and sampling ----------------------------------------


def test_full_pipeline_answers_503_and_keeps_nothing() -> None:
    got: list[Any] = []
    room = [0]
    server = Collector("127.0.0.1", 0, submit=got.append, room=lambda: room[0]).start()
    try:
        body = _protobuf_request("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1)
        headers = {"Content-Type": "application/x-protobuf"}
        status, got_headers, _ = _post(server.url, body, headers)
        assert status == 503 and got_headers["retry-after"] == "1" and got == []
        room[0] = 1
        assert _post(server.url, body, headers)[0] == 200 and len(got) == 1
    finally:
        assert server.shutdown(5)


def test_sampling_keeps_whole_traces_the_same_on_every_collector() -> None:
    rng = random.Random(7)
    spans = [(f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64) | 1:016x}")
             for _ in range(200)]
    spans = [(t, f"{int(s, 16) ^ k:016x}") for t, s in spans for k in (0, 2, 4)]
    body = _json_request(spans, 1)
    kept: list[list[str]] = []
    for _ in range(2):
        got: list[Span] = []
        server = Collector("127.0.0.1", 0, submit=got.append, sample_rate=0.3).start()
        try:
            assert _post(server.url, body, {"Content-Type": "application/json"})[0] == 200
        finally:
            server.shutdown(5)
        kept.append(sorted(r.id for r in got))
        traces = {r.trace_id for r in got}
        assert all(sum(r.trace_id == t for r in got) == 3 for t in traces)
        assert server.stats()["spans_sampled_out"] == len(spans) - len(got)
    assert kept[0] == kept[1]
    assert 0.15 < len(kept[0]) / len(spans) < 0.45


# -- binding and shutdown -------------------------------------------------------------------


def test_non_loopback_binding_is_refused_by_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on '0\.0\.0\.0'"):
        Collector("0.0.0.0", 0)
    proc = CollectorProcess(tmp_path, env={"VIGIL_SERVE_HOST": "0.0.0.0"})
    code, out, err = proc.wait()
    assert code == 2 and "listening" not in out
    assert "refusing to listen on '0.0.0.0'" in " ".join(err.split())


def test_explicit_host_warns_and_sigterm_flushes_everything(tmp_path: Path) -> None:
    proc = CollectorProcess(tmp_path, host_args=("--host", "0.0.0.0"))
    proc.wait_ready()
    ids = [(f"{i + 1:032x}", f"{i + 1:016x}") for i in range(2000)]
    for chunk in range(0, len(ids), 500):
        status, _, _ = _post(proc.url, _json_request(ids[chunk:chunk + 500], time.time_ns()),
                             {"Content-Type": "application/json"})
        assert status == 200
    code, out, err = proc.stop()  # right away: the queue may still hold some
    assert code == 0, err
    assert "warning" in err and "non-loopback" in " ".join(err.split())
    assert "2000 spans accepted" in out
    with LocalStore(proc.store_path) as store:
        assert store.count("spans") == 2000


# -- the mapping alone: less common shapes ---------------------------------------------------


def test_mapping_of_less_common_shapes() -> None:
    from llmvigil.core.fleet.otlp_map import decode_json, to_record

    trace = bytes(range(1, 17))
    start = 1_700_000_000_000_000_000
    payload = {"resource_spans": [{"scope_spans": [{"spans": [
        {  # protobuf-JSON style: base64 ids, snake_case names, enum names
            "trace_id": base64.b64encode(trace).decode(),
            "span_id": base64.b64encode(bytes(range(1, 9))).decode(),
            "name": "litellm.completion", "start_time_unix_nano": start,
            "end_time_unix_nano": start + 2 * 10**9,
            "status": {"code": "STATUS_CODE_OK"},
            "attributes": [
                {"key": "gen_ai.request.model", "value": {"string_value": "gpt-4o"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"int_value": 10}},
                {"key": "tag.tags", "value": {"array_value": {"values": [
                    {"string_value": "a"}, {"string_value": "b"}]}}},
                {"key": "extra", "value": {"kvlist_value": {"values": [
                    {"key": "k", "value": {"double_value": 1.5}}]}}},
            ],
            "events": [
                {"name": "gen_ai.content.prompt", "time_unix_nano": start,
                 "attributes": [{"key": "gen_ai.prompt", "value": {"string_value": "hi"}}]},
                {"name": "gen_ai.content.completion", "time_unix_nano": start + 2 * 10**9,
                 "attributes": [{"key": "gen_ai.completion",
                                 "value": {"string_value": "hello"}}]},
                {"name": "llm.content.completion.chunk", "time_unix_nano": start + 4 * 10**8},
                {"name": "llm.content.completion.chunk", "time_unix_nano": start + 9 * 10**8},
                {"name": "retry", "time_unix_nano": start + 10**8},
            ],
        },
        {  # OpenInference flattened messages with a tool call, a tool span's kind
            "traceId": trace.hex(), "spanId": "00000000000000aa",
            "parentSpanId": bytes(range(1, 9)).hex(), "name": "agent step",
            "attributes": [
                {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
                {"key": "llm.model_name", "value": {"stringValue": "claude-3-5-haiku"}},
                {"key": "llm.input_messages.0.message.role", "value": {"stringValue": "user"}},
                {"key": "llm.input_messages.0.message.content",
                 "value": {"stringValue": "weather?"}},
                {"key": "llm.output_messages.0.message.role",
                 "value": {"stringValue": "assistant"}},
                {"key": "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
                 "value": {"stringValue": "get_weather"}},
                {"key": "llm.token_count.prompt", "value": {"intValue": "50"}},
                {"key": "llm.token_count.prompt_details.cache_write",
                 "value": {"intValue": "20"}},
                {"key": "llm.token_count.completion", "value": {"intValue": "5"}},
            ],
        },
    ]}]}]}
    first, second = (to_record(s) for s in decode_json(json.dumps(payload).encode()))
    assert isinstance(first, Span) and isinstance(second, Span)
    assert (first.trace_id, first.id) == (trace.hex(), bytes(range(1, 9)).hex())
    assert first.kind == "llm" and first.status == "ok" and first.tags == ["a", "b"]
    assert (first.input, first.output) == ("hi", "hello")
    assert first.ttft_s == pytest.approx(0.4)  # the first streamed chunk
    assert first.attributes["extra"] == {"k": 1.5}
    assert [e["name"] for e in first.attributes["otel.events"]] == [
        "llm.content.completion.chunk", "llm.content.completion.chunk", "retry"]
    assert second.parent_id == first.id and second.model == "claude-3-5-haiku"
    assert second.input == {"messages": [{"role": "user", "content": "weather?"}]}
    assert second.output == [{"role": "assistant", "content": None,
                              "tool_calls": [{"function": {"name": "get_weather"}}]}]
    assert to_builtins(second)["usage"] == {"gen_ai.usage.input_tokens": 30,
                                            "gen_ai.usage.output_tokens": 5,
                                            "gen_ai.usage.cache_creation.input_tokens": 20}
