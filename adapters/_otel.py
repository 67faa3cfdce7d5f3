"""OpenTelemetry plumbing shared by the ``otlp`` and ``phoenix`` backends.

This module imports the OpenTelemetry SDK at import time; the adapters import it
lazily from their factories, so ``llmvigil`` itself never needs the SDK.

It turns llmvigil records into SDK :class:`~opentelemetry.sdk.trace.ReadableSpan`
objects that keep the *original* W3C trace and span ids, and runs an OTLP/HTTP
exporter's ``export()`` synchronously, telling a transient failure (RETRY) from a
permanent one (FAILURE) by the HTTP status the exporter saw.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from ..core.model import Span
from ..plugins.types import ExportResult

__all__ = [
    "SCOPE",
    "HttpSender",
    "attr_value",
    "classify_status",
    "clean_attributes",
    "compression",
    "derived_trace_id",
    "exception_event",
    "input_messages",
    "make_resource",
    "message_text",
    "output_messages",
    "part",
    "readable_span",
    "span_id_int",
    "text_value",
    "trace_id_int",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_json = msgspec.json.Encoder(enc_hook=str, order="deterministic")


def _scope() -> InstrumentationScope:
    from .. import __version__

    return InstrumentationScope("llmvigil", __version__)


#: The instrumentation scope every exported span carries.
SCOPE = _scope()


# -- ids -------------------------------------------------------------------------------


def _id_int(text: str, bits: int) -> int:
    """The id as an integer: its hex value when it is a valid W3C id, else a stable hash."""
    if len(text) == bits // 4:
        try:
            value = int(text, 16)
        except ValueError:
            value = 0
        if value:
            return value
    digest = hashlib.blake2b(text.encode(), digest_size=bits // 8).digest()
    return int.from_bytes(digest, "big") or 1


def trace_id_int(trace_id: str) -> int:
    """A 128-bit OTel trace id from a llmvigil trace id (32 hex digits kept as is)."""
    return _id_int(trace_id, 128)


def span_id_int(span_id: str) -> int:
    """A 64-bit OTel span id from a llmvigil span or record id (16 hex digits kept as is)."""
    return _id_int(span_id, 64)


def derived_trace_id(record_id: str) -> str:
    """A deterministic trace id (32 hex) for a record that belongs to no trace."""
    return hashlib.blake2b(f"llmvigil:{record_id}".encode(), digest_size=16).hexdigest()


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(trace_id_int(trace_id), span_id_int(span_id), is_remote=False,
                       trace_flags=_SAMPLED)


# -- attribute values -----------------------------------------------------------------


def text_value(value: Any) -> str:
    """A string as is; anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _primitive(value: Any) -> bool:
    return isinstance(value, (bool, str, float)) or (
        isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX
    )


def attr_value(value: Any) -> Any:
    """A value OTel accepts as an attribute: primitives and homogeneous lists pass,
    anything else becomes a JSON string; ``None`` stays ``None`` (omit the attribute)."""
    if value is None or _primitive(value):
        return value
    if isinstance(value, (list, tuple)) and value:
        first = type(value[0])
        if all(type(v) is first and _primitive(v) for v in value):
            return list(value)
    return text_value(value)


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with every value made OTel-safe and ``None`` values dropped."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        converted = attr_value(value)
        if converted is not None:
            out[str(key)] = converted
    return out


# -- messages --------------------------------------------------------------------------


def part(block: Any) -> dict[str, Any]:
    """One content block (Anthropic/OpenAI shape) as a GenAI semantic-convention part."""
    if isinstance(block, str):
        return {"type": "text", "content": block}
    if not isinstance(block, Mapping):
        return {"type": "text", "content": text_value(block)}
    kind = block.get("type")
    if kind == "text" or (kind is None and "text" in block):
        return {"type": "text", "content": str(block.get("text", ""))}
    if kind == "tool_use":
        return {"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                "arguments": block.get("input")}
    if kind == "tool_result":
        return {"type": "tool_call_response", "id": block.get("tool_use_id"),
                "response": block.get("content")}
    if kind == "thinking":
        return {"type": "reasoning", "content": str(block.get("thinking", ""))}
    return {"type": str(kind or "unknown"), "content": text_value(block)}


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = [part(b) for b in content] if isinstance(content, list) else [part(content)]
    return {"role": str(message.get("role", "user")), "parts": parts}


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, Mapping) and "role" in m for m in value
    )


def input_messages(value: Any) -> tuple[list[dict[str, Any]], Any] | None:
    """``(messages, system)`` in GenAI semantic-convention form when ``value`` looks like
    a chat request (a ``messages`` list, possibly under ``kwargs``), else ``None``."""
    if isinstance(value, Mapping) and "messages" not in value and isinstance(
        value.get("kwargs"), Mapping
    ):
        value = value["kwargs"]
    system = None
    if isinstance(value, Mapping):
        system = value.get("system")
        value = value.get("messages")
    if not _is_messages(value):
        return None
    return [_message(m) for m in value], system


def output_messages(value: Any, finish_reason: str | None) -> list[dict[str, Any]] | None:
    """The model's reply as GenAI output messages, when ``value`` is text or a message."""
    if isinstance(value, str):
        message: dict[str, Any] = {"role": "assistant", "parts": [part(value)]}
    elif isinstance(value, Mapping) and isinstance(value.get("content"), list):
        message = _message({"role": value.get("role", "assistant"),
                            "content": value["content"]})
        finish_reason = finish_reason or value.get("stop_reason")
    else:
        return None
    if finish_reason:
        message["finish_reason"] = finish_reason
    return [message]


def message_text(message: Mapping[str, Any]) -> str:
    """The text parts of a GenAI message joined; other parts as JSON."""
    texts = [p["content"] if p.get("type") == "text" else text_value(p)
             for p in message.get("parts", ())]
    return "\n".join(str(t) for t in texts)


# -- spans -----------------------------------------------------------------------------


def make_resource(attributes: Mapping[str, Any]) -> Resource:
    """The resource of every exported span (``OTEL_RESOURCE_ATTRIBUTES`` merged in)."""
    return Resource.create(clean_attributes(attributes))


def exception_event(span: Span) -> Event:
    """The OTel ``exception`` event of a failed span."""
    attrs = clean_attributes({"exception.type": span.error_type,
                              "exception.message": span.error})
    return Event("exception", attrs, timestamp=span.end_ns or span.start_ns)


def _status(status: str, error: str | None) -> Status:
    if status == "error":
        return Status(StatusCode.ERROR, error or None)
    if status == "ok":
        return Status(StatusCode.OK)
    return Status(StatusCode.UNSET)


def readable_span(*, name: str, trace_id: str, span_id: str, parent_id: str | None,
                  start_ns: int, end_ns: int, resource: Resource,
                  attributes: Mapping[str, Any], events: Iterable[Event] = (),
                  kind: SpanKind = SpanKind.INTERNAL, status: str = "unset",
                  error: str | None = None) -> ReadableSpan:
    """An SDK span with the given ids (W3C hex), times (ns) and attributes."""
    return ReadableSpan(
        name=name or "span",
        context=_context(trace_id, span_id),
        parent=_context(trace_id, parent_id) if parent_id else None,
        resource=resource,
        attributes=clean_attributes(attributes),
        events=tuple(events),
        kind=kind,
        status=_status(status, error),
        start_time=start_ns,
        end_time=max(end_ns, start_ns),
        instrumentation_scope=SCOPE,
    )


# -- delivery --------------------------------------------------------------------------


def classify_status(status: int | None) -> ExportResult:
    """RETRY for no answer, 401/403 (fixable credentials), 408, 429 and 5xx; else FAILURE."""
    if status is None or status in (401, 403, 408, 429) or status >= 500:
        return ExportResult.RETRY
    return ExportResult.FAILURE


def compression(setting: Any, signal: str = "TRACES") -> Compression:
    """The compression to use: the setting, else the OTel env vars, else gzip."""
    value = (setting or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_COMPRESSION")
             or os.environ.get("OTEL_EXPORTER_OTLP_COMPRESSION") or "gzip")
    try:
        return Compression(str(value).strip().lower())
    except ValueError:
        raise ValueError(
            f"compression: expected 'gzip', 'deflate' or 'none', got {value!r}"
        ) from None


class HttpSender:
    """Runs an OTLP/HTTP exporter synchronously and reports the true outcome.

    The SDK exporter answers only SUCCESS/FAILURE; a response hook on its
    ``requests`` session records the last HTTP status so a 400 (permanent) is told
    from a 503 or a refused connection (transient).
    """

    def __init__(self, make_exporter: Callable[[requests.Session], Any]) -> None:
        self.last_status: int | None = None
        self.session = requests.Session()
        self.session.hooks["response"].append(self._on_response)
        self.exporter = make_exporter(self.session)

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code

    def _outcome(self, ok: bool) -> ExportResult:
        return ExportResult.SUCCESS if ok else classify_status(self.last_status)

    def send_spans(self, spans: Sequence[ReadableSpan]) -> ExportResult:
        """Export one batch of spans now (the exporter bounds it by its timeout)."""
        self.last_status = None
        exporter: SpanExporter = self.exporter
        return self._outcome(exporter.export(spans) is SpanExportResult.SUCCESS)

    def send(self, export: Callable[[], Any], success: Any) -> ExportResult:
        """Run ``export()`` (e.g. a metric exporter's) and compare with ``success``."""
        self.last_status = None
        return self._outcome(export() == success)

    def close(self) -> None:
        """Shut the exporter and its HTTP session down."""
        self.exporter.shutdown()
        self.session.close()
