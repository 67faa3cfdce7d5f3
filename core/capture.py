"""The capture path: ``@trace``, ``span()`` and the live span handle.

Everything here runs in the application's threads, so it does the least possible:
read two clocks, draw two random ids, link the parent through :mod:`contextvars`,
keep *references* to inputs and outputs, and hand the finished record to the
pipeline's queue. Serialisation, redaction and all I/O happen in the worker.

Nothing raised by llmvigil reaches user code (:func:`guard` logs once, counts and
carries on); exceptions raised by user code pass through unchanged and are recorded
on the span.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from . import context
from .model import SPAN_KINDS, Span, StreamStats, Usage, new_span_id, new_trace_id, now_ns

__all__ = [
    "SpanHandle",
    "StreamTimer",
    "current_span",
    "emit",
    "internal_error",
    "span",
    "start_span",
    "trace",
]

F = TypeVar("F", bound=Callable[..., Any])
_log = logging.getLogger("llmvigil")
_current_get = context.current_handle
_current_set = context._current.set
_current_reset = context._current.reset

_SPAN_FIELDS = frozenset(Span.__struct_fields__) - {"id", "trace_id", "parent_id"}
_INHERITED = ("user_id", "session_id", "feature")
# What a field set through SpanHandle.set must hold, and how a wrong type is mended:
# text fields take str() of anything, number fields a float() or int() that succeeds.
_TEXT_FIELDS = frozenset((
    "name", "status", "error", "error_type", "model", "response_model",
    "response_id", "provider", "operation", "stop_reason", "price_source", "price_version",
    "user_id", "session_id", "feature", "environment", "release"))
_NUMBER_FIELDS: dict[str, type[int] | type[float]] = {
    "cost_usd": float, "ttft_s": float, "start_ns": int, "end_ns": int}
_TYPED_FIELDS = {"usage": Usage, "stream": StreamStats}


# -- the sink: set by the runtime, auto-initialised on first use ---------------------

_sink: Callable[[Any], None] | None = None
_autoinit: Callable[[], Callable[[Any], None] | None] | None = None
_stall_threshold_s = 1.0
_sample: Callable[[], bool] | None = None  # None means "keep every trace"


def emit(record: Any) -> None:
    """Hand a finished record to the pipeline; never raises, never blocks."""
    sink = _sink
    if sink is None:
        if _autoinit is None:
            return
        try:
            sink = _autoinit()
        except Exception as exc:
            internal_error("auto-init", exc)
            return
        if sink is None:
            return
    sink(record)


# -- internal errors: log once per kind, count every one -----------------------------

_errors_lock = threading.Lock()
internal_errors: dict[str, int] = {}


def _first_time(where: str) -> bool:
    """Count one more event at ``where``; whether it is the first there."""
    with _errors_lock:
        seen = internal_errors.get(where, 0)
        internal_errors[where] = seen + 1
    return not seen


def internal_error(where: str, exc: BaseException) -> None:
    """Record a failure of llmvigil itself: counted always, logged once per place."""
    if _first_time(where):
        _log.warning("llmvigil internal error in %s (monitoring continues): %r", where, exc)


def bad_input(where: str, message: str) -> None:
    """Note a value the application passed that llmvigil cannot use as given: counted
    always (with the internal errors), logged once per place."""
    if _first_time(where):
        _log.warning("llmvigil: %s", message[:500])


def tag_list(value: Any) -> list[str]:
    """Tags as a list of strings: one string is one tag, any other iterable its items.

    Raises:
        TypeError: ``value`` is neither a string nor iterable.
    """
    if isinstance(value, str):
        return [value]
    return [str(tag) for tag in value]


def finite_number(kind: type[int] | type[float], value: Any, name: str) -> int | float:
    """``value`` as a finite number of ``kind`` (numeric strings too).

    Raises:
        ValueError, TypeError, OverflowError: ``value`` is no such number; ``name``
            is named in the message.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (int, float)):
        number = float(value)  # "12", numpy scalars, Decimal; raises on the rest
    else:
        number = value
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number")
    if kind is int:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number")
        return int(number)
    return float(number)


# -- streaming timing ----------------------------------------------------------------


class StreamTimer:
    """Measures time to first item and the gaps between items of a stream."""

    __slots__ = ("first_ns", "gaps_ns", "items", "last_ns", "start_ns")

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.first_ns = 0
        self.last_ns = 0
        self.items = 0
        self.gaps_ns: list[int] = []

    def tick(self, t_ns: int | None = None) -> None:
        """Note that one item (chunk, token, event) arrived now (or at ``t_ns``)."""
        t = now_ns() if t_ns is None else t_ns
        if self.items:
            self.gaps_ns.append(t - self.last_ns)
        else:
            self.first_ns = t
        self.last_ns = t
        self.items += 1

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the start to the first item, or ``None`` before any item."""
        return (self.first_ns - self.start_ns) / 1e9 if self.items else None

    def stats(self, stall_threshold_s: float) -> StreamStats:
        """Summarise the gaps: count, mean, p50, p95, max and stalls over the threshold."""
        gaps = sorted(self.gaps_ns)
        n = len(gaps)
        if not n:
            return StreamStats(items=self.items)
        stall_ns = stall_threshold_s * 1e9
        return StreamStats(
            items=self.items,
            n=n,
            mean_s=sum(gaps) / n / 1e9,
            p50_s=_quantile(gaps, 0.50) / 1e9,
            p95_s=_quantile(gaps, 0.95) / 1e9,
            max_s=gaps[-1] / 1e9,
            stalls=sum(1 for g in gaps if g > stall_ns),
        )


def _quantile(sorted_values: Sequence[int], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# -- the live span ---------------------------------------------------------------------


class CallArgs:
    """A call's arguments, kept by reference until the worker serialises them."""

    __slots__ = ("args", "kwargs", "signature")

    def __init__(self, signature: inspect.Signature | None, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.signature = signature
        self.args = args
        self.kwargs = kwargs

    def bound(self) -> dict[str, Any]:
        """The arguments by parameter name (``args``/``kwargs`` when binding fails)."""
        if self.signature is not None:
            try:
                return dict(self.signature.bind_partial(*self.args, **self.kwargs).arguments)
            except TypeError:
                pass
        out: dict[str, Any] = dict(self.kwargs)
        if self.args:
            out["args"] = list(self.args)
        return out


class StreamedOutput:
    """The items of a traced generator, kept by reference for the worker to join."""

    __slots__ = ("items", "truncated")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.truncated = 0


class SpanHandle:
    """The live view of a span while it runs; what :func:`current_span` returns.

    Setters are cheap and never raise; the span is published once, when it ends.
    """

    __slots__ = ("_capture_output", "_ended", "_sampled", "record", "timer")

    def __init__(self, record: Span, sampled: bool, capture_output: bool = True) -> None:
        self.record = record
        self._sampled = sampled
        self._capture_output = capture_output
        self._ended = False
        self.timer: StreamTimer | None = None

    @property
    def trace_id(self) -> str:
        """The W3C trace id (32 hex digits)."""
        return self.record.trace_id

    @property
    def span_id(self) -> str:
        """The span id (16 hex digits)."""
        return self.record.id

    @property
    def is_recording(self) -> bool:
        """Whether this span will be published (not sampled out, not yet ended)."""
        return self._sampled and not self._ended

    def set(self, **fields: Any) -> SpanHandle:
        """Set Span fields (model, provider, user_id, feature, tags, metadata, ...);
        unknown names become free attributes. ``tags`` extend, ``metadata`` merges.

        A value of the wrong type is mended where it can be (``model=123`` becomes
        ``"123"``); one that cannot (``ttft_s="fast"``) is kept as a free attribute of
        that name and logged once. Nothing here raises."""
        rec = self.record
        for key, value in fields.items():
            # the common cases: text as text, a finite number of the field's type
            if type(value) is str:
                if key in _TEXT_FIELDS:
                    setattr(rec, key, value)
                    continue
            elif type(value) is _NUMBER_FIELDS.get(key) and math.isfinite(value):
                setattr(rec, key, value)
                continue
            try:
                self._set_field(key, value)
            except (TypeError, ValueError, OverflowError) as exc:
                rec.attributes[key] = value
                bad_input(f"span.set({key})", f"span field {key!r} cannot hold {value!r} "
                          f"({exc}); kept as a free attribute of that name")
        return self

    def _set_field(self, key: str, value: Any) -> None:
        rec = self.record
        if key == "tags":
            rec.tags.extend(tag_list(value))
        elif key == "metadata":
            rec.metadata.update(value)
        elif key == "usage" and isinstance(value, dict):
            self.set_usage(**value)
        elif key == "kind":
            if value in SPAN_KINDS:
                rec.kind = value
            else:
                rec.attributes["kind"] = value
                bad_input("span(kind)", f"span kind {value!r} is not one of "
                          f"{sorted(SPAN_KINDS)}; recorded as {rec.kind!r}, with the kind "
                          "given as the attribute 'kind'")
        elif key not in _SPAN_FIELDS:
            rec.attributes[key] = value
        elif value is None or key in ("input", "output"):
            setattr(rec, key, value)
        elif key in _TEXT_FIELDS:
            setattr(rec, key, str(value))
        elif key in _NUMBER_FIELDS:
            setattr(rec, key, finite_number(_NUMBER_FIELDS[key], value, key))
        elif key in _TYPED_FIELDS and not isinstance(value, _TYPED_FIELDS[key]):
            raise TypeError(f"expected {_TYPED_FIELDS[key].__name__}")
        else:
            setattr(rec, key, value)

    def set_usage(self, input_tokens: int | None = None, output_tokens: int | None = None,
                  cache_read_tokens: int | None = None,
                  cache_write_tokens: int | None = None) -> SpanHandle:
        """Set token counts; arguments left as ``None`` keep their previous value.

        A count that is not a whole number of tokens >= 0 (``"abc"``, NaN, -5) is kept
        as the free attribute ``usage.<name>`` and logged once; nothing here raises."""
        usage = self.record.usage
        if usage is None:
            usage = self.record.usage = Usage()
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                            ("cache_read_tokens", cache_read_tokens),
                            ("cache_write_tokens", cache_write_tokens)):
            if value is None:
                continue
            if type(value) is int and value >= 0:  # the common case
                setattr(usage, name, value)
                continue
            try:
                count = finite_number(int, value, name)
                if count < 0:
                    raise ValueError("a token count cannot be negative")
                setattr(usage, name, count)
            except (TypeError, ValueError, OverflowError) as exc:
                self.record.attributes[f"usage.{name}"] = value
                bad_input(f"span.set_usage({name})", f"{name}={value!r} is not a token count "
                          f"({exc}); kept as the free attribute 'usage.{name}'")
        return self

    def set_input(self, value: Any) -> SpanHandle:
        """Replace the recorded input."""
        self.record.input = value
        return self

    def set_output(self, value: Any) -> SpanHandle:
        """Set the recorded output (the return value is used when this is not called)."""
        self.record.output = value
        self._capture_output = False  # an explicit output wins over the return value
        return self

    def tick(self, t_ns: int | None = None) -> None:
        """Note one streamed item (token, chunk, event) for TTFT and TBT."""
        timer = self.timer
        if timer is None:
            timer = self.timer = StreamTimer(self.record.start_ns)
        timer.tick(t_ns)

    def end(self, error: BaseException | None = None, output: Any = None,
            has_output: bool = False) -> None:
        """Finish the span (idempotent) and publish it unless it is sampled out."""
        if self._ended:
            return
        self._ended = True
        rec = self.record
        rec.end_ns = now_ns()
        if error is not None:
            rec.status = "error"
            rec.error_type = type(error).__qualname__
            try:
                rec.error = str(error)
            except Exception:
                rec.error = f"<{type(error).__name__}>"
        elif rec.status == "unset":
            rec.status = "ok"
        if has_output and self._capture_output:
            rec.output = output
        timer = self.timer
        if timer is not None:
            if rec.ttft_s is None:
                rec.ttft_s = timer.ttft_s
            rec.stream = timer.stats(_stall_threshold_s)
        if self._sampled:
            emit(rec)

    def __repr__(self) -> str:
        return f"<SpanHandle {self.record.name!r} trace={self.trace_id} span={self.span_id}>"


def start_span(name: str, kind: str = "span", **fields: Any) -> SpanHandle:
    """Create a span, child of the current one, without making it current.

    Most code wants :func:`span` or :func:`trace`; this is for instrumentation that
    manages the span's lifetime itself (streams that outlive a ``with`` block).
    """
    if type(name) is not str or kind not in SPAN_KINDS:  # set(), below, mends them
        fields = {**fields, "name": name, "kind": kind}
        name, kind = "", "span"
    parent = _current_get()
    t = now_ns()
    if parent is None:
        sampled = _sample() if _sample is not None else True
        # The root's span id is the first half of its trace id: any descendant, in any
        # batch, can name its trace's root (LangSmith needs it), and it saves a draw.
        trace_id = new_trace_id()
        rec = Span(id=trace_id[:16], trace_id=trace_id, name=name, kind=kind, start_ns=t)
    else:
        sampled = parent._sampled
        prec = parent.record
        rec = Span(id=new_span_id(), trace_id=prec.trace_id, parent_id=prec.id, name=name,
                   kind=kind, start_ns=t, user_id=prec.user_id, session_id=prec.session_id,
                   feature=prec.feature)
    handle = SpanHandle(rec, sampled)
    if fields:
        handle.set(**fields)
    return handle


def current_span() -> SpanHandle | None:
    """Return the live span of the current context, or ``None`` outside any span."""
    return _current_get()


@contextmanager
def span(name: str, kind: str = "span", **fields: Any) -> Iterator[SpanHandle]:
    """Open a span around a block; it becomes the current span inside the block.

    >>> with llmvigil.span("retrieve", kind="retriever") as s:
    ...     s.set(metadata={"k": 5})
    """
    try:
        handle = start_span(name, kind, **fields)
        token = _current_set(handle)
    except Exception as exc:
        internal_error("span.start", exc)
        handle = SpanHandle(Span(trace_id=new_trace_id(), name=name), sampled=False)
        token = _current_set(handle)
    try:
        yield handle
    except BaseException as exc:
        _finish(handle, token, exc)
        raise
    _finish(handle, token, None)


def _finish(handle: SpanHandle, token: Any, error: BaseException | None,
            output: Any = None, has_output: bool = False) -> None:
    try:  # noqa: SIM105 - contextlib.suppress costs ~0.3 us on the hot path
        _current_reset(token)
    except ValueError:  # reset from another context (a generator resumed elsewhere)
        pass
    try:
        handle.end(error, output, has_output)
    except Exception as exc:
        internal_error("span.end", exc)


# -- @trace ----------------------------------------------------------------------------


def _decorator_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The span fields given to ``@trace``, checked once at decoration: tags as a list
    of strings, metadata as a dict, the rest (feature, user_id...) as text.

    Raises:
        ValueError: tags or metadata of a type that cannot be used.
    """
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "tags":
            try:
                out[key] = tag_list(value)
            except TypeError:
                raise ValueError(f"trace(tags=...): expected a list of strings, "
                                 f"got {value!r:.100}") from None
        elif key == "metadata":
            if not isinstance(value, Mapping):
                raise ValueError(f"trace(metadata=...): expected a mapping, got {value!r:.100}")
            out[key] = dict(value)
        else:
            out[key] = str(value)
    return out


class _Options:
    __slots__ = ("capture_input", "capture_output", "fields", "kind", "name", "signature")

    def __init__(self, fn: Callable[..., Any], name: str | None, kind: str,
                 capture_input: bool, capture_output: bool, fields: dict[str, Any]) -> None:
        if kind not in SPAN_KINDS:
            raise ValueError(f"kind must be one of {sorted(SPAN_KINDS)}, got {kind!r}")
        self.name = str(name) if name else getattr(fn, "__qualname__", None) or repr(fn)
        self.kind = kind
        self.capture_input = capture_input
        self.capture_output = capture_output
        self.fields = _decorator_fields(fields)
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None

    def open(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SpanHandle:
        handle = start_span(self.name, self.kind)
        rec = handle.record
        fields = self.fields
        if fields:
            for key, value in fields.items():
                if key == "tags":
                    rec.tags = list(value)
                elif key == "metadata":
                    rec.metadata = dict(value)
                else:
                    setattr(rec, key, value)
        if self.capture_input:
            rec.input = CallArgs(self.signature, args, kwargs)
        handle._capture_output = self.capture_output
        return handle


def _open(opts: _Options, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SpanHandle | None:
    try:
        return opts.open(args, kwargs)
    except Exception as exc:
        internal_error("trace.start", exc)
        return None


@overload
def trace(fn: F, /) -> F: ...


@overload
def trace(
    fn: None = None, /, *, name: str | None = None, kind: str = "span",
    feature: str | None = None, user_id: str | None = None, session_id: str | None = None,
    tags: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
    capture_input: bool = True, capture_output: bool = True,
) -> Callable[[F], F]: ...


def trace(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, kind: str = "span",
    feature: str | None = None, user_id: str | None = None, session_id: str | None = None,
    tags: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
    capture_input: bool = True, capture_output: bool = True,
) -> Any:
    """Record every call of the decorated function as a span.

    Works bare (``@trace``) or with arguments (``@trace(name="extract", kind="llm")``)
    on sync and async functions, generators and async generators. On generators the
    span stays open until the generator is exhausted, closed or raises, and records
    the time to the first item (``ttft_s``) and the gaps between items (``stream``).

    Args:
        name: span name; defaults to the function's qualified name.
        kind: one of ``llm``, ``chain``, ``tool``, ``retriever``, ``embedding``,
            ``agent``, ``span``.
        feature, user_id, session_id: attribution; children inherit them.
        tags, metadata: attached to every span of this function.
        capture_input, capture_output: record arguments and return value (subject to
            the ``capture:`` config, which can turn capture off globally).
    """
    fields = {"feature": feature, "user_id": user_id, "session_id": session_id,
              "tags": tags, "metadata": metadata}

    def decorate(func: F) -> F:
        opts = _Options(func, name, kind, capture_input, capture_output, fields)
        if inspect.isasyncgenfunction(func):
            wrapper: Callable[..., Any] = _wrap_async_generator(func, opts)
        elif inspect.isgeneratorfunction(func):
            wrapper = _wrap_generator(func, opts)
        elif inspect.iscoroutinefunction(func):
            wrapper = _wrap_coroutine(func, opts)
        else:
            wrapper = _wrap_function(func, opts)
        return functools.wraps(func)(wrapper)  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _wrap_function(func: Callable[..., Any], opts: _Options) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = _open(opts, args, kwargs)
        if handle is None:
            return func(*args, **kwargs)
        token = _current_set(handle)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _finish(handle, token, exc)
            raise
        _finish(handle, token, None, result, True)
        return result

    return wrapper


def _wrap_coroutine(func: Callable[..., Awaitable[Any]], opts: _Options) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = _open(opts, args, kwargs)
        if handle is None:
            return await func(*args, **kwargs)
        token = _current_set(handle)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            _finish(handle, token, exc)
            raise
        _finish(handle, token, None, result, True)
        return result

    return wrapper


def _keep_item(out: StreamedOutput, item: Any, max_items: int = 10_000) -> None:
    if len(out.items) < max_items:
        out.items.append(item)
    else:
        out.truncated += 1


def _wrap_generator(func: Callable[..., Iterator[Any]], opts: _Options) -> Callable[..., Any]:
    # A plain function, not a generator function: the span (and so its parent) is
    # fixed when the generator is *created*, wherever it is later resumed.
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = _open(opts, args, kwargs)
        gen = func(*args, **kwargs)
        if handle is None:
            return gen
        return _drive(gen, handle)

    return wrapper


def _drive(gen: Any, handle: SpanHandle) -> Any:
    out = StreamedOutput()
    timer = handle.timer = StreamTimer(handle.record.start_ns)
    send_value: Any = None
    error: BaseException | None = None
    pending_throw: BaseException | None = None
    try:
        while True:
            # The span is current only while the generator body runs, in whatever
            # thread or task resumed it.
            token = _current_set(handle)
            try:
                if pending_throw is not None:
                    exc, pending_throw = pending_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(send_value)
            finally:
                _current_reset(token)
            timer.tick()
            _keep_item(out, item)
            try:
                send_value = yield item
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as exc:
                pending_throw = exc
    except StopIteration as stop:
        return stop.value
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            error = exc
        raise
    finally:
        try:
            handle.end(error, out, True)
        except Exception as exc:
            internal_error("trace.generator.end", exc)


def _wrap_async_generator(func: Callable[..., AsyncIterator[Any]],
                          opts: _Options) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = _open(opts, args, kwargs)
        agen = func(*args, **kwargs)
        if handle is None:
            return agen
        return _drive_async(agen, handle)

    return wrapper


async def _drive_async(agen: Any, handle: SpanHandle) -> Any:
    out = StreamedOutput()
    timer = handle.timer = StreamTimer(handle.record.start_ns)
    error: BaseException | None = None
    try:
        while True:
            token = _current_set(handle)
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                break
            finally:
                _current_reset(token)
            timer.tick()
            _keep_item(out, item)
            try:
                yield item
            except GeneratorExit:
                await agen.aclose()
                raise
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            error = exc
        raise
    finally:
        try:
            handle.end(error, out, True)
        except Exception as exc:
            internal_error("trace.asyncgen.end", exc)
