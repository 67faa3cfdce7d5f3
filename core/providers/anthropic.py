"""Spans for the Anthropic SDK: ``messages.create`` (plain and ``stream=True``) and
``messages.stream``, on ``anthropic.Anthropic`` and ``anthropic.AsyncAnthropic``.

Only the given client *instance* is patched. Each call becomes one ``llm`` span,
current while the SDK runs, with the request model, the provider-reported model and
response id, stop reason, token usage (cache reads and writes included), the
request messages as input and the response text as output. Streams record the time
from the request to the first ``content_block_delta`` (TTFT) and the gaps between
deltas (TBT); their span ends when the stream is exhausted, closed or fails.

The API key is never recorded: only the request body's messages/system and a few
scalar parameters are kept, and of the response headers only ``request-id``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from contextvars import Token
from types import TracebackType
from typing import Any

from .. import capture, context

__all__ = ["instrument_client"]

PROVIDER = "anthropic"
CREATE_SPAN = "anthropic.messages.create"
STREAM_SPAN = "anthropic.messages.stream"
REQUEST_ID_HEADER = "request-id"

# Scalar request parameters copied to attributes, by their GenAI convention name.
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
}


class _Instrumentation:
    """What the wrappers of one client share: the span fields and the SDK's types."""

    __slots__ = ("async_messages_type", "async_stream_type", "fields", "message_type",
                 "stream_type")

    def __init__(self, fields: dict[str, Any]) -> None:
        import anthropic

        self.fields = dict(fields)
        self.message_type: type[Any] = anthropic.types.Message
        self.stream_type: type[Any] = anthropic.Stream
        self.async_stream_type: type[Any] = anthropic.AsyncStream
        self.async_messages_type: type[Any] = anthropic.resources.AsyncMessages


def instrument_client(client: Any, fields: dict[str, Any]) -> None:
    """Record every ``messages.create`` and ``messages.stream`` call made through
    ``client`` (sync or async) as an ``llm`` span carrying ``fields``.

    Instrumenting a client again replaces its fields; clients derived from it with
    ``with_options()``/``copy()`` are instrumented with the same fields.

    Raises:
        TypeError: the client has no ``messages`` resource.
    """
    messages = getattr(client, "messages", None)
    if messages is None:
        raise TypeError(f"{type(client).__qualname__} has no messages API to instrument")
    state: _Instrumentation | None = getattr(messages, "_llmvigil", None)
    if state is not None:
        state.fields = dict(fields)
        return
    state = _Instrumentation(fields)
    if isinstance(messages, state.async_messages_type):
        messages.create = _wrap_async_create(messages.create, state)
        messages.stream = _wrap_stream(messages.stream, state, _AsyncMessageStreamManagerProxy)
    else:
        messages.create = _wrap_sync_create(messages.create, state)
        messages.stream = _wrap_stream(messages.stream, state, _MessageStreamManagerProxy)
    messages._llmvigil = state
    original_copy = getattr(client, "copy", None)
    if callable(original_copy):
        derive = _wrap_copy(original_copy, state)
        client.copy = derive
        client.with_options = derive


def _wrap_copy(original: Callable[..., Any], state: _Instrumentation) -> Callable[..., Any]:
    @functools.wraps(original)
    def copy(*args: Any, **kwargs: Any) -> Any:
        derived = original(*args, **kwargs)
        try:
            instrument_client(derived, state.fields)
        except Exception as exc:
            capture.internal_error("anthropic.copy", exc)
        return derived

    return copy


# -- span lifecycle ---------------------------------------------------------------------


def _start(state: _Instrumentation, name: str, kwargs: dict[str, Any]) -> capture.SpanHandle | None:
    """Open the span of one call; ``None`` if llmvigil itself failed."""
    try:
        handle = capture.start_span(name, "llm", provider=PROVIDER, operation="chat")
        rec = handle.record
        model = kwargs.get("model")
        if isinstance(model, str):
            rec.model = model
        request: dict[str, Any] = {"messages": kwargs.get("messages")}
        system = kwargs.get("system")
        if isinstance(system, (str, list, tuple)):
            request["system"] = system
        rec.input = request
        attributes = rec.attributes
        for param, key in _REQUEST_PARAMS.items():
            value = kwargs.get(param)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[key] = value
        metadata = kwargs.get("metadata")
        if rec.user_id is None and isinstance(metadata, dict):
            user = metadata.get("user_id")
            if isinstance(user, str):
                rec.user_id = user
        if state.fields:
            handle.set(**state.fields)
        return handle
    except Exception as exc:
        capture.internal_error("anthropic.start", exc)
        return None


def _enter(handle: capture.SpanHandle) -> Token[Any] | None:
    try:
        return context._current.set(handle)
    except Exception as exc:
        capture.internal_error("anthropic.enter", exc)
        return None


def _leave(token: Token[Any] | None) -> None:
    if token is None:
        return
    try:
        context._current.reset(token)
    except Exception as exc:  # ValueError: reset from another context
        capture.internal_error("anthropic.leave", exc)


def _fail(handle: capture.SpanHandle, error: BaseException) -> None:
    """End the span with an error raised by the SDK or the user."""
    try:
        status = getattr(error, "status_code", None)
        if isinstance(status, int):
            handle.record.attributes["http.response.status_code"] = status
        request_id = getattr(error, "request_id", None)
        if isinstance(request_id, str):
            handle.record.attributes["anthropic.request_id"] = request_id
        handle.end(error)
    except Exception as exc:
        capture.internal_error("anthropic.fail", exc)


class _SpanCurrent:
    """Makes a span current while one SDK call runs, sync or awaited (``with``).

    An exception leaving the block ends the span as failed (:meth:`failed`) and
    goes on to the caller.
    """

    __slots__ = ("handle", "token")

    def __init__(self, handle: capture.SpanHandle) -> None:
        self.handle = handle
        self.token: Token[Any] | None = None

    def __enter__(self) -> None:
        self.token = _enter(self.handle)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _leave(self.token)
        if exc is not None:
            self.failed(exc)

    def failed(self, error: BaseException) -> None:
        """End the span for ``error``, raised by the call."""
        _fail(self.handle, error)


def _text_of(content: Any) -> Any:
    """The text of a response's content blocks; the blocks themselves if none is text."""
    texts = [block.text for block in content if getattr(block, "type", None) == "text"]
    return "".join(texts) if texts else content


def _set_usage(handle: capture.SpanHandle, usage: Any, output: bool) -> None:
    if usage is None:
        return
    handle.set_usage(
        input_tokens=getattr(usage, "input_tokens", None),
        output_tokens=getattr(usage, "output_tokens", None) if output else None,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", None),
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", None),
    )


def _set_message(handle: capture.SpanHandle, message: Any, output: bool = True) -> None:
    """Copy a Message's id, model, stop reason and usage onto the span."""
    rec = handle.record
    rec.response_id = getattr(message, "id", None) or rec.response_id
    rec.response_model = getattr(message, "model", None) or rec.response_model
    rec.stop_reason = getattr(message, "stop_reason", None) or rec.stop_reason
    _set_usage(handle, getattr(message, "usage", None), output)


def _finish_message(handle: capture.SpanHandle, message: Any) -> None:
    """End the span of a non-streaming call with its response."""
    _set_message(handle, message)
    request_id = getattr(message, "_request_id", None)
    if isinstance(request_id, str):
        handle.record.attributes["anthropic.request_id"] = request_id
    handle.end(None, _text_of(message.content), True)


# -- streams ----------------------------------------------------------------------------


class _StreamRecorder:
    """Turns raw Messages stream events into span fields and ends the span once."""

    __slots__ = ("complete", "done", "handle", "text")

    def __init__(self, handle: capture.SpanHandle) -> None:
        self.handle = handle
        self.text: list[str] = []
        self.complete = False
        self.done = False

    def response(self, stream: Any) -> None:
        """Note the response headers worth keeping (the request id)."""
        try:
            request_id = stream.response.headers.get(REQUEST_ID_HEADER)
            if request_id:
                self.handle.record.attributes["anthropic.request_id"] = request_id
        except Exception as exc:
            capture.internal_error("anthropic.stream.response", exc)

    def event(self, event: Any) -> None:
        """Account for one raw stream event."""
        try:
            kind = event.type
            if kind == "content_block_delta":
                self.handle.tick()
                delta = event.delta
                if delta.type == "text_delta":
                    self.text.append(delta.text)
            elif kind == "message_start":
                _set_message(self.handle, event.message, output=False)
            elif kind == "message_delta":
                stop_reason = event.delta.stop_reason
                if stop_reason:
                    self.handle.record.stop_reason = stop_reason
                _set_usage(self.handle, event.usage, output=True)
            elif kind == "message_stop":
                self.complete = True
        except Exception as exc:
            capture.internal_error("anthropic.stream.event", exc)

    def finish(self, error: BaseException | None = None) -> None:
        """End the span: exhausted, closed early (marked ``stream.closed_early``) or
        failed with ``error``."""
        if self.done:
            return
        self.done = True
        try:
            if error is None and not self.complete:
                self.handle.record.attributes["stream.closed_early"] = True
            if error is not None:
                _fail(self.handle, error)
            else:
                self.handle.end(None, "".join(self.text), True)
        except Exception as exc:
            capture.internal_error("anthropic.stream.finish", exc)

    def finish_from(self, message_stream: Any, error: BaseException | None = None) -> None:
        """End the span from a stream helper's accumulated message, for when the raw
        events could not be observed (no TTFT/TBT then)."""
        if self.done:
            return
        try:
            message = message_stream.current_message_snapshot
        except Exception:  # no message_start arrived
            message = None
        if message is not None:
            try:
                _set_message(self.handle, message)
                self.complete = message.stop_reason is not None
                text = _text_of(message.content)
                if isinstance(text, str):
                    self.text = [text]
            except Exception as exc:
                capture.internal_error("anthropic.stream.snapshot", exc)
        self.finish(error)


def _errored(exc: BaseException) -> BaseException | None:
    """The error to record for an exception ending a stream (not a generator close)."""
    return None if isinstance(exc, GeneratorExit) else exc


class _ReadingEvent(_SpanCurrent):
    """Makes a stream's span current while the SDK reads its next event.

    The end of the stream (``exhausted``) or any other exception ends the span
    through the recorder.
    """

    __slots__ = ("exhausted", "recorder")

    def __init__(self, recorder: _StreamRecorder, exhausted: type[BaseException]) -> None:
        super().__init__(recorder.handle)
        self.recorder = recorder
        self.exhausted = exhausted

    def failed(self, error: BaseException) -> None:
        """End the span: exhausted, or failed with ``error``."""
        self.recorder.finish(None if isinstance(error, self.exhausted) else _errored(error))


class _ProxyBase:
    """Attribute passthrough shared by the stream proxies; looks like the SDK stream to
    ``isinstance`` too."""

    __slots__ = ("__weakref__", "_vigil_recorder", "_vigil_stream")

    _vigil_stream: Any
    _vigil_recorder: _StreamRecorder

    def __init__(self, stream: Any, recorder: _StreamRecorder) -> None:
        object.__setattr__(self, "_vigil_stream", stream)
        object.__setattr__(self, "_vigil_recorder", recorder)
        recorder.response(stream)
        # A stream dropped without being read to the end or closed still ends its span.
        fin = weakref.finalize(self, recorder.finish)
        fin.atexit = False

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        return type(self._vigil_stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vigil_stream, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._vigil_stream, name, value)

    def __repr__(self) -> str:
        return repr(self._vigil_stream)


class _SyncStreamProxy(_ProxyBase):
    """A ``Stream`` of raw Messages events that records what flows through it."""

    __slots__ = ()

    def __iter__(self) -> _SyncStreamProxy:
        return self

    def __next__(self) -> Any:
        recorder = self._vigil_recorder
        with _ReadingEvent(recorder, StopIteration):
            event = self._vigil_stream.__next__()
        recorder.event(event)
        return event

    def close(self) -> None:
        """Close the response and end the span."""
        try:
            self._vigil_stream.close()
        finally:
            self._vigil_recorder.finish()

    def __enter__(self) -> _SyncStreamProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _AsyncStreamProxy(_ProxyBase):
    """An ``AsyncStream`` of raw Messages events that records what flows through it."""

    __slots__ = ()

    def __aiter__(self) -> _AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        recorder = self._vigil_recorder
        with _ReadingEvent(recorder, StopAsyncIteration):
            event = await self._vigil_stream.__anext__()
        recorder.event(event)
        return event

    async def close(self) -> None:
        """Close the response and end the span."""
        try:
            await self._vigil_stream.close()
        finally:
            self._vigil_recorder.finish()

    async def __aenter__(self) -> _AsyncStreamProxy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def _returned(result: Any, handle: capture.SpanHandle, state: _Instrumentation) -> Any:
    """What ``create`` gives back: a message ends the span, an SDK stream is wrapped in
    a recording proxy, anything else (``with_raw_response``...) is returned as is."""
    try:
        if isinstance(result, state.message_type):
            _finish_message(handle, result)
        elif isinstance(result, state.stream_type):
            return _SyncStreamProxy(result, _StreamRecorder(handle))
        elif isinstance(result, state.async_stream_type):
            return _AsyncStreamProxy(result, _StreamRecorder(handle))
        else:
            # The body is parsed later by the caller, out of our sight: no usage or
            # output, but the span says why.
            rec = handle.record
            rec.attributes["anthropic.raw_response"] = True
            headers = getattr(result, "headers", None)
            request_id = headers.get(REQUEST_ID_HEADER) if headers is not None else None
            if isinstance(request_id, str):
                rec.attributes["anthropic.request_id"] = request_id
            handle.end()
    except Exception as exc:
        capture.internal_error("anthropic.result", exc)
    return result


# -- messages.create --------------------------------------------------------------------


def _wrap_sync_create(original: Callable[..., Any],
                      state: _Instrumentation) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        handle = _start(state, CREATE_SPAN, kwargs)
        if handle is None:
            return original(*args, **kwargs)
        with _SpanCurrent(handle):
            result = original(*args, **kwargs)
        return _returned(result, handle, state)

    return create


def _wrap_async_create(original: Callable[..., Any],
                       state: _Instrumentation) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        handle = _start(state, CREATE_SPAN, kwargs)
        if handle is None:
            return await original(*args, **kwargs)
        with _SpanCurrent(handle):
            result = await original(*args, **kwargs)
        return _returned(result, handle, state)

    return create


# -- messages.stream --------------------------------------------------------------------


def _observe_raw_stream(message_stream: Any, recorder: _StreamRecorder,
                        proxy_type: type[_ProxyBase], stream_type: type[Any]) -> None:
    """Route the stream helper's raw event stream through a recording proxy.

    ``_raw_stream`` is private to the SDK; when it is missing the span is still
    recorded, from the helper's final message, without TTFT/TBT.
    """
    try:
        raw = getattr(message_stream, "_raw_stream", None)
        if isinstance(raw, stream_type):
            message_stream._raw_stream = proxy_type(raw, recorder)
        else:
            recorder.response(message_stream)
    except Exception as exc:
        capture.internal_error("anthropic.stream.observe", exc)


class _ManagerProxyBase:
    """What the stand-ins for the SDK's stream managers share: the request, made on
    entering, is one span, ended on leaving from what the stream delivered."""

    def __init__(self, manager: Any, state: _Instrumentation, kwargs: dict[str, Any]) -> None:
        self._manager = manager
        self._state = state
        self._kwargs = kwargs
        self._recorder: _StreamRecorder | None = None
        self._stream: Any = None

    def _start_span(self) -> capture.SpanHandle | None:
        return _start(self._state, STREAM_SPAN, self._kwargs)

    def _opened(self, handle: capture.SpanHandle, stream: Any,
                proxy_type: type[_ProxyBase], stream_type: type[Any]) -> Any:
        """Record ``stream``, the helper the manager opened, on ``handle``'s span."""
        self._stream = stream
        self._recorder = recorder = _StreamRecorder(handle)
        _observe_raw_stream(stream, recorder, proxy_type, stream_type)
        return stream

    def _closed(self) -> None:
        if self._recorder is not None:
            self._recorder.finish_from(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


class _MessageStreamManagerProxy(_ManagerProxyBase):
    """Stands in for ``MessageStreamManager``."""

    def __enter__(self) -> Any:
        handle = self._start_span()
        if handle is None:
            return self._manager.__enter__()
        with _SpanCurrent(handle):
            stream = self._manager.__enter__()
        return self._opened(handle, stream, _SyncStreamProxy, self._state.stream_type)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Any:
        try:
            return self._manager.__exit__(exc_type, exc, tb)
        finally:
            self._closed()


class _AsyncMessageStreamManagerProxy(_ManagerProxyBase):
    """Stands in for ``AsyncMessageStreamManager``."""

    async def __aenter__(self) -> Any:
        handle = self._start_span()
        if handle is None:
            return await self._manager.__aenter__()
        with _SpanCurrent(handle):
            stream = await self._manager.__aenter__()
        return self._opened(handle, stream, _AsyncStreamProxy, self._state.async_stream_type)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> Any:
        try:
            return await self._manager.__aexit__(exc_type, exc, tb)
        finally:
            self._closed()


def _wrap_stream(original: Callable[..., Any], state: _Instrumentation,
                 proxy_type: type[_ManagerProxyBase]) -> Callable[..., Any]:
    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        try:
            return proxy_type(manager, state, kwargs)
        except Exception as exc:
            capture.internal_error("anthropic.stream", exc)
            return manager

    return stream
