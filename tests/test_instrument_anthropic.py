"""instrument(anthropic client): the real SDK against a local Messages API server.

Every test drives ``anthropic.Anthropic``/``AsyncAnthropic`` over HTTP to the server in
``anthropic_server.py`` and asserts on the spans the in-memory backend received
through the whole pipeline (capture, worker, redaction, outbox).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import llmvigil
import pytest
from llmvigil.adapters.memory import MemoryBackend
from llmvigil.core.model import Span, encode


def _load_server_module() -> ModuleType:
    # Tests run with --import-mode=importlib, so the tests directory is not on sys.path.
    path = Path(__file__).with_name("anthropic_server.py")
    spec = importlib.util.spec_from_file_location("anthropic_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


_server_module = _load_server_module()
AnthropicServer = _server_module.AnthropicServer
Script = _server_module.Script

API_KEY = "sk-ant-test-PLANTED"
MODEL = "claude-test-1"
PROVIDER_MODEL = "claude-test-1-20250514"  # what the provider reports back
MESSAGES = [{"role": "user", "content": "Write the date 03/04/2024 as ISO."}]
SYSTEM = "Answer briefly."
# Delays large enough that 15% absorbs the scheduling jitter of a loaded 2-core box.
TTFT_S, TBT_S, DELTAS = 0.50, 0.08, 10
REL = 0.15


def timed_script(**overrides: Any) -> Any:
    """Ten deltas, TTFT_S before the first and TBT_S between the others."""
    fields: dict[str, Any] = {
        "chunks": [f"tok{i} " for i in range(DELTAS)], "ttft_s": TTFT_S, "tbt_s": TBT_S,
        "input_tokens": 31, "output_tokens": 17, "cache_read_input_tokens": 12,
        "cache_creation_input_tokens": 5, "model": PROVIDER_MODEL,
    }
    fields.update(overrides)
    return Script(**fields)


def quick_script(**overrides: Any) -> Any:
    """The timed script without the delays."""
    return timed_script(ttft_s=0.0, tbt_s=0.0, **overrides)


EXPECTED_TEXT = "".join(f"tok{i} " for i in range(DELTAS))


def _warm_up(url: str) -> None:
    """Run every SDK path once, uninstrumented, so the timed tests do not measure the
    SDK's one-off imports and model building."""
    kwargs = request_kwargs()
    with anthropic.Anthropic(api_key=API_KEY, base_url=url, max_retries=0) as c:
        c.messages.create(**kwargs)
        list(c.messages.create(stream=True, **kwargs))
        with c.messages.stream(**kwargs) as stream:
            stream.get_final_message()

    async def run() -> None:
        async with anthropic.AsyncAnthropic(api_key=API_KEY, base_url=url,
                                            max_retries=0) as c:
            await c.messages.create(**kwargs)
            async for _ in await c.messages.create(stream=True, **kwargs):
                pass
            async with c.messages.stream(**kwargs) as stream:
                await stream.get_final_message()

    asyncio.run(run())


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with AnthropicServer(quick_script()) as srv:
        _warm_up(srv.url)
        yield srv


@pytest.fixture
def api(server: Any) -> Any:
    """The server, reset to the quick script with no recorded requests."""
    server.script = quick_script()
    with server.lock:
        server.requests.clear()
    return server


@pytest.fixture
def client(api: Any) -> Iterator[anthropic.Anthropic]:
    """An instrumented client whose connection is already open."""
    c = anthropic.Anthropic(api_key=API_KEY, base_url=api.url, max_retries=0)
    c.messages.create(**request_kwargs())
    llmvigil.instrument(c, feature="qa", user_id="u-1")
    yield c
    c.close()


async def async_client(api: Any) -> anthropic.AsyncAnthropic:
    """An instrumented async client whose connection is already open.

    The first request of a client on a new event loop spends 10-25 ms opening the
    connection; that is real latency, but not the server delay the tests compare with.
    """
    c = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=api.url, max_retries=0)
    await c.messages.create(**request_kwargs())
    return llmvigil.instrument(c, feature="qa", user_id="u-1")


def llm_spans(backend: MemoryBackend) -> list[Span]:
    assert llmvigil.flush(10)
    return [s for s in backend.spans if s.kind == "llm"]


def only_llm_span(backend: MemoryBackend) -> Span:
    spans = llm_spans(backend)
    assert len(spans) == 1, spans
    return spans[0]


def assert_call(span: Span, api: Any, name: str = "anthropic.messages.create",
                text: str = EXPECTED_TEXT) -> None:
    """The fields every successful call records, and no API key anywhere."""
    assert span.name == name and span.kind == "llm"
    assert (span.provider, span.operation) == ("anthropic", "chat")
    assert span.status == "ok" and span.error is None
    assert (span.model, span.response_model) == (MODEL, PROVIDER_MODEL)
    assert span.response_id is not None and span.response_id.startswith("msg_")
    assert span.stop_reason == "end_turn"
    assert span.usage is not None
    assert (span.usage.input_tokens, span.usage.output_tokens) == (31, 17)
    assert (span.usage.cache_read_tokens, span.usage.cache_write_tokens) == (12, 5)
    assert span.output == text
    assert span.input == {"messages": MESSAGES, "system": SYSTEM}
    assert (span.feature, span.user_id) == ("qa", "u-1")
    assert span.attributes["gen_ai.request.max_tokens"] == 64
    assert str(span.attributes["anthropic.request_id"]).startswith("req_")
    assert span.end_ns >= span.start_ns > 0
    # The key really went over the wire, and never into the record.
    assert any(API_KEY in r.headers.get("authorization", "") for r in api.requests)
    assert b"PLANTED" not in encode(span)


def assert_timing(span: Span) -> None:
    """TTFT and inter-token gaps match the server's delays within 15%."""
    assert span.ttft_s == pytest.approx(TTFT_S, rel=REL)
    assert span.stream is not None
    assert (span.stream.items, span.stream.n) == (DELTAS, DELTAS - 1)
    assert span.stream.mean_s == pytest.approx(TBT_S, rel=REL)
    assert span.stream.p50_s == pytest.approx(TBT_S, rel=REL)
    assert span.stream.stalls == 0


def request_kwargs(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": MESSAGES, "system": SYSTEM, **extra}


# -- sync ----------------------------------------------------------------------------------


def test_sync_create(memory: MemoryBackend, api: Any, client: anthropic.Anthropic) -> None:
    with llmvigil.span("request") as parent:
        message = client.messages.create(**request_kwargs())
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == EXPECTED_TEXT  # type: ignore[union-attr]
    span = only_llm_span(memory)
    assert_call(span, api)
    assert (span.parent_id, span.trace_id) == (parent.span_id, parent.trace_id)
    assert span.attributes["anthropic.request_id"] == message._request_id
    assert span.ttft_s is None and span.stream is None


def test_sync_create_stream(memory: MemoryBackend, api: Any,
                            client: anthropic.Anthropic) -> None:
    api.script = timed_script()
    with llmvigil.span("request") as parent:
        stream = client.messages.create(**request_kwargs(stream=True))
        assert isinstance(stream, anthropic.Stream)
        with stream:
            events = [event.type for event in stream]
        request_id = stream.response.headers["request-id"]
    assert events.count("content_block_delta") == DELTAS
    assert events[0] == "message_start" and events[-1] == "message_stop"
    span = only_llm_span(memory)
    assert_call(span, api)
    assert_timing(span)
    assert span.parent_id == parent.span_id
    assert span.attributes["anthropic.request_id"] == request_id
    assert "stream.closed_early" not in span.attributes


def test_sync_messages_stream_text(memory: MemoryBackend, api: Any,
                                   client: anthropic.Anthropic) -> None:
    api.script = timed_script()
    with llmvigil.span("request") as parent, client.messages.stream(**request_kwargs()) as stream:
        text = "".join(stream.text_stream)
        request_id = stream.request_id
    assert text == EXPECTED_TEXT
    span = only_llm_span(memory)
    assert_call(span, api, name="anthropic.messages.stream")
    assert_timing(span)
    assert span.parent_id == parent.span_id
    assert span.attributes["anthropic.request_id"] == request_id


def test_sync_messages_stream_final_message(memory: MemoryBackend, api: Any,
                                            client: anthropic.Anthropic) -> None:
    api.script = timed_script()
    with client.messages.stream(**request_kwargs()) as stream:
        message = stream.get_final_message()
        assert stream.get_final_text() == EXPECTED_TEXT
    assert message.usage.cache_read_input_tokens == 12
    span = only_llm_span(memory)
    assert_call(span, api, name="anthropic.messages.stream")
    assert_timing(span)
    assert span.parent_id is None


def test_span_is_current_during_the_call(memory: MemoryBackend, api: Any) -> None:
    seen: list[Any] = []

    def on_request(request: Any) -> None:
        seen.append(llmvigil.current_span())

    http = anthropic.DefaultHttpxClient(event_hooks={"request": [on_request]})
    c = anthropic.Anthropic(api_key=API_KEY, base_url=api.url, max_retries=0,
                            http_client=http)
    llmvigil.instrument(c)
    with llmvigil.span("request") as parent:
        c.messages.create(**request_kwargs())
        assert llmvigil.current_span() is parent
    c.close()
    span = only_llm_span(memory)
    assert [h.span_id for h in seen] == [span.id]
    assert span.parent_id == parent.span_id


@pytest.mark.parametrize(("status", "error_type"), [
    (529, anthropic.OverloadedError), (500, anthropic.InternalServerError),
])
def test_api_error_recorded_and_reraised(memory: MemoryBackend, api: Any,
                                         client: anthropic.Anthropic, status: int,
                                         error_type: type[Exception]) -> None:
    api.script = quick_script(error_status=status)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(**request_kwargs())
    assert type(info.value) is error_type
    assert info.value.status_code == status
    span = only_llm_span(memory)
    assert span.status == "error"
    assert span.error_type == error_type.__qualname__
    assert span.attributes["http.response.status_code"] == status
    assert span.attributes["anthropic.request_id"] == info.value.request_id
    assert b"PLANTED" not in encode(span)


def test_stream_error_mid_stream(memory: MemoryBackend, api: Any,
                                 client: anthropic.Anthropic) -> None:
    api.script = quick_script(error_after=3)
    stream = client.messages.create(**request_kwargs(stream=True))
    with pytest.raises(anthropic.APIStatusError) as info:
        for _ in stream:
            pass
    span = only_llm_span(memory)
    assert span.status == "error"
    assert span.error_type == type(info.value).__qualname__
    assert span.stream is not None and span.stream.items == 3


def test_stream_error_before_stream_starts(memory: MemoryBackend, api: Any,
                                          client: anthropic.Anthropic) -> None:
    api.script = quick_script(error_status=529)
    with pytest.raises(anthropic.OverloadedError), client.messages.stream(**request_kwargs()):
        pass
    span = only_llm_span(memory)
    assert (span.name, span.status) == ("anthropic.messages.stream", "error")


def test_closing_a_stream_early_ends_the_span(memory: MemoryBackend, api: Any,
                                              client: anthropic.Anthropic) -> None:
    api.script = timed_script(ttft_s=0.02, tbt_s=0.02)
    stream = client.messages.create(**request_kwargs(stream=True))
    deltas = 0
    for event in stream:
        deltas += event.type == "content_block_delta"
        if deltas == 3:
            break
    stream.close()
    span = only_llm_span(memory)
    assert span.status == "ok"
    assert span.attributes["stream.closed_early"] is True
    assert span.output == "tok0 tok1 tok2 "
    assert span.stream is not None and span.stream.items == 3
    assert span.usage is not None and span.usage.input_tokens == 31


def test_leaving_a_messages_stream_early_ends_the_span(
        memory: MemoryBackend, api: Any, client: anthropic.Anthropic) -> None:
    api.script = timed_script(ttft_s=0.02, tbt_s=0.02)
    with client.messages.stream(**request_kwargs()) as stream:
        for text in stream.text_stream:
            if text == "tok1 ":
                break
    span = only_llm_span(memory)
    assert span.attributes["stream.closed_early"] is True
    assert span.output == "tok0 tok1 "


def test_dropped_stream_still_ends_the_span(memory: MemoryBackend, api: Any,
                                            client: anthropic.Anthropic) -> None:
    stream = client.messages.create(**request_kwargs(stream=True))
    next(iter(stream))
    del stream
    span = only_llm_span(memory)
    assert span.attributes["stream.closed_early"] is True


def test_instrumenting_twice_and_derived_clients(memory: MemoryBackend, api: Any,
                                                 client: anthropic.Anthropic) -> None:
    llmvigil.instrument(client, feature="other")
    client.messages.create(**request_kwargs())
    client.with_options(timeout=30).messages.create(**request_kwargs())
    spans = llm_spans(memory)
    assert [s.feature for s in spans] == ["other", "other"]


class _OpaqueStream:
    """A stream wrapper such as another instrumentation library might install."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __iter__(self) -> Iterator[Any]:
        return iter(self._raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def test_messages_stream_without_a_raw_stream_to_observe(
        memory: MemoryBackend, api: Any, client: anthropic.Anthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from anthropic.lib.streaming import MessageStream

    original_init = MessageStream.__init__

    def init(self: Any, raw_stream: Any, output_format: Any) -> None:
        original_init(self, _OpaqueStream(raw_stream), output_format)

    monkeypatch.setattr(MessageStream, "__init__", init)
    with client.messages.stream(**request_kwargs()) as stream:
        assert stream.get_final_text() == EXPECTED_TEXT
    span = only_llm_span(memory)
    assert_call(span, api, name="anthropic.messages.stream")
    assert span.ttft_s is None and span.stream is None


def test_raw_response_calls_are_recorded(memory: MemoryBackend, api: Any,
                                         client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(**request_kwargs())
    assert raw.parse().content[0].text == EXPECTED_TEXT  # type: ignore[union-attr]
    span = only_llm_span(memory)
    assert (span.status, span.model) == ("ok", MODEL)
    assert span.attributes["anthropic.raw_response"] is True
    assert span.attributes["anthropic.request_id"] == raw.headers["request-id"]


# -- async ---------------------------------------------------------------------------------


async def test_async_create(memory: MemoryBackend, api: Any) -> None:
    c = await async_client(api)
    with llmvigil.span("request") as parent:
        message = await c.messages.create(**request_kwargs())
    await c.close()
    assert message.content[0].text == EXPECTED_TEXT  # type: ignore[union-attr]
    span = only_llm_span(memory)
    assert_call(span, api)
    assert span.parent_id == parent.span_id


async def test_async_create_stream(memory: MemoryBackend, api: Any) -> None:
    c = await async_client(api)
    api.script = timed_script()
    with llmvigil.span("request") as parent:
        stream = await c.messages.create(**request_kwargs(stream=True))
        assert isinstance(stream, anthropic.AsyncStream)
        async with stream:
            events = [event.type async for event in stream]
    await c.close()
    assert events.count("content_block_delta") == DELTAS
    span = only_llm_span(memory)
    assert_call(span, api)
    assert_timing(span)
    assert span.parent_id == parent.span_id


async def test_async_messages_stream(memory: MemoryBackend, api: Any) -> None:
    c = await async_client(api)
    api.script = timed_script()
    with llmvigil.span("request") as parent:
        async with c.messages.stream(**request_kwargs()) as stream:
            text = "".join([t async for t in stream.text_stream])
            message = await stream.get_final_message()
    await c.close()
    assert text == EXPECTED_TEXT and message.stop_reason == "end_turn"
    span = only_llm_span(memory)
    assert_call(span, api, name="anthropic.messages.stream")
    assert_timing(span)
    assert span.parent_id == parent.span_id


async def test_async_api_error(memory: MemoryBackend, api: Any) -> None:
    c = await async_client(api)
    api.script = quick_script(error_status=529)
    with pytest.raises(anthropic.OverloadedError):
        await c.messages.create(**request_kwargs())
    with pytest.raises(anthropic.OverloadedError):
        async with c.messages.stream(**request_kwargs()):
            pass
    await c.close()
    spans = llm_spans(memory)
    assert [(s.name, s.status) for s in spans] == [
        ("anthropic.messages.create", "error"), ("anthropic.messages.stream", "error")]


async def test_async_stream_closed_early(memory: MemoryBackend, api: Any) -> None:
    c = await async_client(api)
    api.script = timed_script(ttft_s=0.02, tbt_s=0.02)
    stream = await c.messages.create(**request_kwargs(stream=True))
    async for event in stream:
        if event.type == "content_block_delta":
            break
    await stream.close()
    await c.close()
    span = only_llm_span(memory)
    assert span.attributes["stream.closed_early"] is True
    assert span.output == "tok0 "
