"""OTLP trace payloads -> llmvigil records.

Two steps, each usable alone:

1. :func:`decode_request` reads an OTLP ``ExportTraceServiceRequest``, protobuf or
   OTLP/JSON (hex ids, lowerCamelCase or snake_case field names, integer or named
   enums, 64-bit integers as strings or numbers), into flat :class:`OtlpSpan` values;
   anything undecodable raises :class:`PayloadError` with a message for the sender.
2. :func:`to_record` maps one :class:`OtlpSpan` to a llmvigil record, keeping the
   original W3C trace/span ids, the parent link and the nanosecond times.

The attribute conventions understood, first match wins:

=================  ===========================================================================
field              attributes
=================  ===========================================================================
kind               ``llmvigil.span.kind``; OpenInference ``openinference.span.kind``;
                   OpenLLMetry ``traceloop.span.kind`` (workflow/task -> chain);
                   GenAI ``gen_ai.operation.name`` (chat -> llm, embeddings -> embedding,
                   execute_tool -> tool, invoke_agent -> agent); ``llm.request.type``;
                   else ``llm`` when a model is named, else ``span``
model              ``gen_ai.request.model``, ``llm.request.model_name``, ``llm.model_name``
response model     ``gen_ai.response.model``, ``llm.response.model_name``
provider           ``gen_ai.provider.name``, ``gen_ai.system``, ``llm.provider``, ``llm.system``
usage              ``gen_ai.usage.input_tokens``/``output_tokens`` (or ``prompt_tokens``/
                   ``completion_tokens``), ``llm.token_count.prompt``/``completion``,
                   ``llm.usage.prompt_tokens``/``completion_tokens``; cache reads/writes from
                   ``gen_ai.usage.cache_read.input_tokens``/``cache_creation.input_tokens``,
                   OpenLLMetry ``gen_ai.usage.cache_read_input_tokens``/
                   ``cache_creation_input_tokens``, ``llm.token_count.prompt_details.*``
input / output     ``llmvigil.input``/``output``; OpenInference ``input.value``/``output.value``
                   (parsed when the mime type is JSON); GenAI ``gen_ai.input.messages``/
                   ``gen_ai.output.messages`` (+ ``gen_ai.system_instructions``);
                   OpenInference ``llm.input_messages.*``/``llm.output_messages.*``;
                   OpenLLMetry ``gen_ai.prompt.<i>.*``/``gen_ai.completion.<i>.*`` and
                   ``traceloop.entity.input``/``output``; ``gen_ai.prompt``/``gen_ai.completion``
                   attributes or ``gen_ai.content.prompt``/``completion`` events (OpenLIT)
ttft               ``gen_ai.server.time_to_first_token`` (s); else the first event whose name
                   says "first token" (``llmvigil.first_token``, OpenInference's "First Token
                   Stream Event"...); else the first streamed-chunk event
user / session     ``user.id``, ``enduser.id``, ``traceloop.association.properties.user_id``,
                   ``langfuse.user.id``; ``session.id``, ``gen_ai.conversation.id``,
                   ``traceloop.association.properties.session_id``, ``langfuse.session.id``
feature            ``llmvigil.feature``, ``feature``, ``traceloop.association.properties.feature``,
                   the ``feature`` key of OpenInference ``metadata``
cost               ``gen_ai.usage.cost``, ``llm.cost.total`` (the cost monitor keeps a cost the
                   sender computed unless ``monitors.cost.overwrite``)
=================  ===========================================================================

Token semantics: llmvigil's ``input_tokens`` counts *uncached* input (as Anthropic
reports it), whereas the GenAI conventions, OpenInference and OpenLLMetry count all
input tokens, cached ones included; so the cache reads and writes are subtracted from
a foreign input count. Spans exported by llmvigil's own ``otlp`` backend (they carry
``llmvigil.span.kind``) are taken as they are, and so are its marker spans for
scores, session events and safety verdicts, which map back to those records: a
replica exporting to ``vigil serve`` lands the same records it holds itself.

A foreign span whose status is UNSET (how OpenTelemetry instrumentations leave a
call that succeeded) is ``ok``, as a span that ended without error in-process.

Attributes no rule consumed are kept in :attr:`Span.attributes` (with the sender's
``service.name`` for spans not exported by llmvigil); unknown events go there too,
under ``otel.events``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from ..model import SafetyVerdict, Score, SessionEvent, Span, StreamStats, Usage

__all__ = ["OtlpEvent", "OtlpSpan", "PayloadError", "decode_json", "decode_protobuf",
           "decode_request", "iter_records", "to_record"]

Record = Span | Score | SessionEvent | SafetyVerdict


class PayloadError(ValueError):
    """The request body is not a decodable OTLP trace export (HTTP 400)."""


class OtlpEvent(NamedTuple):
    """A span event: name, time (ns) and attributes."""

    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class OtlpSpan:
    """One span of an OTLP export, flattened: ids as lowercase hex, times in ns.

    ``status_code`` is the OTLP code (0 unset, 1 ok, 2 error); ``resource`` holds the
    resource attributes and ``scope`` the instrumentation scope's name.
    """

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    kind: int = 0
    status_code: int = 0
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[OtlpEvent] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


# -- decoding: protobuf -------------------------------------------------------------------


def decode_request(body: bytes, content_type: str) -> list[OtlpSpan]:
    """The spans of an export request; ``content_type`` picks protobuf or JSON.

    Raises:
        PayloadError: the body does not decode as that content type.
        ValueError: ``content_type`` is neither ``application/x-protobuf`` nor
            ``application/json``.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf"):
        return decode_protobuf(body)
    if media == "application/json":
        return decode_json(body)
    raise ValueError(f"unsupported content type {content_type!r}")


def decode_protobuf(body: bytes) -> list[OtlpSpan]:
    """The spans of a protobuf ``ExportTraceServiceRequest``.

    Raises:
        PayloadError: the bytes are not such a message.
    """
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, TypeError) as exc:
        raise PayloadError(f"the body is not a protobuf ExportTraceServiceRequest "
                           f"({exc})") from None
    out: list[OtlpSpan] = []
    for rs in request.resource_spans:
        resource = _pb_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                out.append(OtlpSpan(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_id=s.parent_span_id.hex() or None, name=s.name,
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    kind=s.kind, status_code=s.status.code, status_message=s.status.message,
                    attributes=_pb_attributes(s.attributes),
                    events=[OtlpEvent(e.name, e.time_unix_nano, _pb_attributes(e.attributes))
                            for e in s.events],
                    resource=resource, scope=scope,
                ))
    return out


def _pb_attributes(items: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in items}


def _pb_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


# -- decoding: JSON ------------------------------------------------------------------------

_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_KIND_NAMES = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2,
               "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}


def decode_json(body: bytes) -> list[OtlpSpan]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest``.

    Raises:
        PayloadError: not JSON, or not shaped like the request; the message gives
            the path of the offending field (``resourceSpans[0].scopeSpans[1]...``).
    """
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PayloadError("expected a JSON object (an ExportTraceServiceRequest)")
    out: list[OtlpSpan] = []
    for i, rs in enumerate(_items(data, "resourceSpans", "resource_spans", where="")):
        where = f"resourceSpans[{i}]"
        resource = _json_attributes(_obj(_get(rs, "resource"), f"{where}.resource"),
                                    f"{where}.resource")
        groups = [*_items(rs, "scopeSpans", "scope_spans", where=where),
                  *_items(rs, "instrumentationLibrarySpans", where=where)]
        for j, ss in enumerate(groups):
            at = f"{where}.scopeSpans[{j}]"
            scope = _obj(_get(ss, "scope") or _get(ss, "instrumentationLibrary"),
                         f"{at}.scope")
            scope_name = str(scope.get("name") or "")
            for k, s in enumerate(_items(ss, "spans", where=at)):
                out.append(_json_span(s, resource, scope_name, f"{at}.spans[{k}]"))
    return out


def _get(obj: Mapping[str, Any], camel: str, snake: str | None = None) -> Any:
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake or _snake(camel))
    return value


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _items(obj: Mapping[str, Any], camel: str, snake: str | None = None, *,
           where: str) -> list[dict[str, Any]]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    name = f"{where}.{camel}" if where else camel
    if not isinstance(value, list):
        raise PayloadError(f"{name}: expected a list, got {type(value).__name__}")
    for n, item in enumerate(value):
        if not isinstance(item, dict):
            raise PayloadError(f"{name}[{n}]: expected an object, got {type(item).__name__}")
    return value


def _json_span(s: dict[str, Any], resource: dict[str, Any], scope: str,
               where: str) -> OtlpSpan:
    status = _obj(s.get("status"), f"{where}.status")
    events = []
    for n, e in enumerate(_items(s, "events", where=where)):
        at = f"{where}.events[{n}]"
        events.append(OtlpEvent(str(e.get("name") or ""),
                                _uint(_get(e, "timeUnixNano"), f"{at}.timeUnixNano"),
                                _json_attributes(e, at)))
    return OtlpSpan(
        trace_id=_json_id(_get(s, "traceId"), 16, f"{where}.traceId"),
        span_id=_json_id(_get(s, "spanId"), 8, f"{where}.spanId"),
        parent_id=_json_id(_get(s, "parentSpanId"), 8, f"{where}.parentSpanId") or None,
        name=str(s.get("name") or ""),
        start_ns=_uint(_get(s, "startTimeUnixNano"), f"{where}.startTimeUnixNano"),
        end_ns=_uint(_get(s, "endTimeUnixNano"), f"{where}.endTimeUnixNano"),
        kind=_enum(s.get("kind"), _KIND_NAMES, f"{where}.kind"),
        status_code=_enum(status.get("code"), _STATUS_NAMES, f"{where}.status.code"),
        status_message=str(status.get("message") or ""),
        attributes=_json_attributes(s, where),
        events=events, resource=resource, scope=scope,
    )


def _json_id(value: Any, size: int, where: str) -> str:
    """A hex id; OTLP/JSON sends hex, a protobuf-JSON encoder base64 (both accepted)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected a hex string, got {type(value).__name__}")
    if len(value) == 2 * size:
        try:
            return bytes.fromhex(value).hex()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == size:
        return raw.hex()
    raise PayloadError(f"{where}: expected {2 * size} hex digits, got {value!r}")


def _uint(value: Any, where: str) -> int:
    if value is None or value == "":
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"{where}: expected an integer, got {value!r}") from None
    if number < 0 or isinstance(value, bool):
        raise PayloadError(f"{where}: expected a non-negative integer, got {value!r}")
    return number


def _enum(value: Any, names: Mapping[str, int], where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PayloadError(f"{where}: expected an enum number or name, got {value!r}")


def _json_attributes(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, kv in enumerate(_items(obj, "attributes", where=where)):
        key = kv.get("key")
        if not isinstance(key, str):
            raise PayloadError(f"{where}.attributes[{n}].key: expected a string")
        out[key] = _json_value(kv.get("value"), f"{where}.attributes[{n}].value")
    return out


def _json_value(value: Any, where: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an AnyValue object, got {type(value).__name__}")
    for key, raw in value.items():
        kind = _snake(key)
        if kind == "string_value":
            return str(raw)
        if kind == "bool_value":
            return bool(raw)
        if kind == "int_value":
            try:
                return int(raw)
            except (TypeError, ValueError):
                raise PayloadError(f"{where}.intValue: expected an integer, "
                                   f"got {raw!r}") from None
        if kind == "double_value":
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise PayloadError(f"{where}.doubleValue: expected a number, "
                                   f"got {raw!r}") from None
        if kind == "array_value":
            values = _obj(raw, f"{where}.arrayValue").get("values") or []
            return [_json_value(v, f"{where}.arrayValue.values[{i}]")
                    for i, v in enumerate(values)]
        if kind == "kvlist_value":
            return _json_attributes({"attributes": _obj(raw, where).get("values") or []},
                                    f"{where}.kvlistValue")
        if kind == "bytes_value":
            return str(raw)
    return None


# -- mapping ------------------------------------------------------------------------------

_OPENINFERENCE_KINDS = {"LLM": "llm", "CHAIN": "chain", "TOOL": "tool",
                        "RETRIEVER": "retriever", "RERANKER": "retriever",
                        "EMBEDDING": "embedding", "AGENT": "agent"}
_TRACELOOP_KINDS = {"workflow": "chain", "task": "chain", "agent": "agent", "tool": "tool"}
_OPERATION_KINDS = {"chat": "llm", "text_completion": "llm", "generate_content": "llm",
                    "completion": "llm", "embeddings": "embedding", "embedding": "embedding",
                    "execute_tool": "tool", "invoke_agent": "agent", "create_agent": "agent"}
_REQUEST_TYPE_KINDS = {"chat": "llm", "completion": "llm", "embedding": "embedding",
                       "rerank": "retriever"}
#: The operation llmvigil's exporter writes for a kind when the span had none.
_DEFAULT_OPERATION = {"llm": "chat", "embedding": "embeddings", "tool": "execute_tool",
                      "agent": "invoke_agent"}
_STATUS = {1: "ok", 2: "error"}
_CHUNK_EVENTS = frozenset(("llm.content.completion.chunk", "gen_ai.content.completion.chunk",
                           "new_token", "new token"))
_STREAM_FIELDS = frozenset(StreamStats.__struct_fields__)

#: Logical field -> the attributes that may carry it, preferred first.
_SOURCES: dict[str, tuple[str, ...]] = {
    "own_kind": ("llmvigil.span.kind",),
    "oi_kind": ("openinference.span.kind",),
    "traceloop_kind": ("traceloop.span.kind",),
    "request_type": ("llm.request.type",),
    "operation": ("gen_ai.operation.name",),
    "model": ("gen_ai.request.model", "llm.request.model_name", "llm.model_name"),
    "response_model": ("gen_ai.response.model", "llm.response.model_name"),
    "provider": ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    "response_id": ("gen_ai.response.id",),
    "finish": ("gen_ai.response.finish_reasons", "llm.finish_reason"),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                     "llm.token_count.prompt", "llm.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                      "llm.token_count.completion", "llm.usage.completion_tokens"),
    "cache_read": ("gen_ai.usage.cache_read.input_tokens",
                   "gen_ai.usage.cache_read_input_tokens",
                   "llm.token_count.prompt_details.cache_read"),
    "cache_write": ("gen_ai.usage.cache_creation.input_tokens",
                    "gen_ai.usage.cache_creation_input_tokens",
                    "llm.token_count.prompt_details.cache_write"),
    "total_tokens": ("llm.token_count.total", "llm.usage.total_tokens",
                     "gen_ai.usage.total_tokens"),  # derivable: consumed, not kept
    "cost": ("gen_ai.usage.cost", "llm.cost.total"),
    "price_source": ("llmvigil.price_source",),
    "price_version": ("llmvigil.price_version",),
    "ttft": ("gen_ai.server.time_to_first_token",),
    "feature": ("llmvigil.feature", "feature", "traceloop.association.properties.feature"),
    "user": ("user.id", "enduser.id", "traceloop.association.properties.user_id",
             "langfuse.user.id"),
    "session": ("session.id", "gen_ai.conversation.id",
                "traceloop.association.properties.session_id", "langfuse.session.id"),
    "environment": ("deployment.environment",),
    "release": ("service.version",),
    "tags": ("llmvigil.tags", "tag.tags", "langfuse.trace.tags"),
    "metadata": ("metadata",),
    "error_type": ("error.type",),
    "own_input": ("llmvigil.input",),
    "own_output": ("llmvigil.output",),
    "oi_input": ("input.value",),
    "oi_input_mime": ("input.mime_type",),
    "oi_output": ("output.value",),
    "oi_output_mime": ("output.mime_type",),
    "genai_input": ("gen_ai.input.messages",),
    "genai_system": ("gen_ai.system_instructions",),
    "genai_output": ("gen_ai.output.messages",),
    "tl_input": ("traceloop.entity.input",),
    "tl_output": ("traceloop.entity.output",),
    "lit_input": ("gen_ai.prompt",),
    "lit_output": ("gen_ai.completion",),
}
_FIELD_OF: dict[str, tuple[str, int]] = {
    key: (name, rank) for name, keys in _SOURCES.items() for rank, key in enumerate(keys)}
#: Attribute families flattened with an index or a sub-key after the prefix.
_GROUPS = ("llmvigil.metadata.", "llmvigil.stream.", "llm.input_messages.",
           "llm.output_messages.", "gen_ai.prompt.", "gen_ai.completion.")


class _Attrs:
    """A span's attributes indexed in one pass: known fields, prefixed families, the rest.

    Every attribute a rule knows is consumed, the preferred non-empty one giving the
    field's value; what no rule knows stays in :attr:`rest`.
    """

    __slots__ = ("groups", "rest", "values")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.values: dict[str, tuple[int, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.rest: dict[str, Any] = {}
        values, field_of = self.values, _FIELD_OF
        for key, value in data.items():
            if value is None:
                continue
            hit = field_of.get(key)
            if hit is not None:
                if value == "" or value == []:
                    continue
                held = values.get(hit[0])
                if held is None or hit[1] < held[0]:
                    values[hit[0]] = (hit[1], value)
            elif key.startswith(_GROUPS):
                prefix = next(p for p in _GROUPS if key.startswith(p))
                self.groups.setdefault(prefix, {})[key[len(prefix):]] = value
            else:
                self.rest[key] = value

    def get(self, name: str) -> Any:
        held = self.values.get(name)
        return None if held is None else held[1]

    def text(self, name: str) -> str | None:
        held = self.values.get(name)
        return None if held is None else str(held[1])

    def group(self, prefix: str) -> dict[str, Any]:
        return self.groups.get(prefix, {})


def to_record(raw: OtlpSpan) -> Record:
    """The llmvigil record an OTLP span stands for (usually a :class:`Span`).

    Raises:
        ValueError: the span's trace or span id is missing, zero or malformed.
    """
    _check_id(raw.trace_id, 32, "trace id")
    _check_id(raw.span_id, 16, "span id")
    if "llmvigil.record.id" in raw.attributes:
        marker = _marker_record(raw)
        if marker is not None:
            return marker
    return _span(raw, _Attrs(raw.attributes))


def _check_id(value: str, digits: int, what: str) -> None:
    if len(value) != digits or not value.strip("0"):
        raise ValueError(f"invalid {what} {value!r}: expected {digits} hex digits, not all zero")
    try:
        int(value, 16)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: expected {digits} hex digits") from None


def _span(raw: OtlpSpan, a: _Attrs) -> Span:
    own = a.text("own_kind")  # exported by llmvigil itself: an exact round trip
    model = a.text("model")
    response_model = a.text("response_model")
    operation = a.text("operation")
    kind = own or _kind(a, operation, model or response_model)
    if own is not None and operation == _DEFAULT_OPERATION.get(kind):
        operation = None
    metadata = _metadata(a)
    feature = a.text("feature")
    if feature is None and isinstance(metadata.get("feature"), str):
        feature = metadata["feature"]
    resource = raw.resource
    span = Span(
        id=raw.span_id, trace_id=raw.trace_id, parent_id=raw.parent_id, name=raw.name,
        kind=kind, start_ns=raw.start_ns, end_ns=raw.end_ns,
        # OTel instrumentations leave a successful span UNSET; llmvigil says "ok".
        status=_STATUS.get(raw.status_code, "unset" if own else "ok"),
        model=model, response_model=response_model, operation=operation,
        provider=a.text("provider"), response_id=a.text("response_id"),
        usage=_usage(a, exact=own is not None), cost_usd=_float(a.get("cost")),
        price_source=a.text("price_source"), price_version=a.text("price_version"),
        stop_reason=_finish_reason(a), metadata=metadata, feature=feature,
        user_id=a.text("user"), session_id=a.text("session"),
        environment=a.text("environment") or _text(
            resource.get("deployment.environment.name")
            or resource.get("deployment.environment")),
        release=a.text("release") or _text(resource.get("service.version")),
    )
    tags = a.get("tags")
    if isinstance(tags, list):
        span.tags = [str(t) for t in tags]
    elif tags is not None:
        span.tags = [str(tags)]
    stream = {k: v for k, v in a.group("llmvigil.stream.").items() if k in _STREAM_FIELDS}
    if stream:
        try:
            span.stream = msgspec.convert(stream, StreamStats, strict=False)
        except msgspec.ValidationError:
            a.rest.update({f"llmvigil.stream.{k}": v for k, v in stream.items()})
    events = raw.events
    used: set[int] = set()
    span.input = _input(a, events, used)
    span.output = _output(a, events, used, span)
    _errors(raw, a, span, events, used)
    span.ttft_s = _ttft(raw, a, events, used)
    rest = a.rest
    leftover = [e for i, e in enumerate(events) if i not in used]
    if leftover:
        rest["otel.events"] = [{"name": e.name, "time_ns": e.time_ns,
                                **({"attributes": e.attributes} if e.attributes else {})}
                               for e in leftover]
    if own is None and resource.get("service.name") is not None:
        rest.setdefault("service.name", resource["service.name"])
    span.attributes = rest
    return span


def _kind(a: _Attrs, operation: str | None, model: str | None) -> str:
    for name, table in (("oi_kind", _OPENINFERENCE_KINDS), ("traceloop_kind", _TRACELOOP_KINDS)):
        value = a.text(name)
        if value is not None:
            kind = table.get(value.upper() if name == "oi_kind" else value.lower())
            if kind is not None:
                return kind
    if operation is not None and operation.lower() in _OPERATION_KINDS:
        return _OPERATION_KINDS[operation.lower()]
    request_type = a.text("request_type")
    if request_type is not None and request_type.lower() in _REQUEST_TYPE_KINDS:
        return _REQUEST_TYPE_KINDS[request_type.lower()]
    return "llm" if model else "span"


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _usage(a: _Attrs, *, exact: bool) -> Usage | None:
    inp = _int(a.get("input_tokens"))
    out = _int(a.get("output_tokens"))
    read = _int(a.get("cache_read"))
    write = _int(a.get("cache_write"))
    if inp is None and out is None and read is None and write is None:
        return None
    uncached = inp or 0
    if not exact:  # foreign conventions count cached input tokens in the input count
        uncached = max(0, uncached - (read or 0) - (write or 0))
    return Usage(input_tokens=uncached, output_tokens=out or 0,
                 cache_read_tokens=read or 0, cache_write_tokens=write or 0)


def _maybe_json(value: Any) -> Any:
    """A JSON object or array held in a string, decoded; anything else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def _metadata(a: _Attrs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = _maybe_json(a.get("metadata"))
    if isinstance(raw, dict):
        out.update(raw)
    for key, value in a.group("llmvigil.metadata.").items():
        out[key] = _maybe_json(value)
    return out


def _finish_reason(a: _Attrs) -> str | None:
    value = a.get("finish")
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


def _unflatten(flat: Mapping[str, Any]) -> Any:
    """``{"0.role": "user", "0.content": "hi"}`` -> ``[{"role": "user", "content": "hi"}]``."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _openinference_messages(flat: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in _as_list(_unflatten(flat)):
        m = entry.get("message") if isinstance(entry, dict) else None
        if not isinstance(m, dict):
            continue
        message: dict[str, Any] = {"role": m.get("role", "user")}
        content = m.get("content")
        if content is None and m.get("contents"):
            content = [c.get("message_content", c) for c in _as_list(m.get("contents"))
                       if isinstance(c, dict)]
        message["content"] = content
        calls = [c.get("tool_call", c) for c in _as_list(m.get("tool_calls"))
                 if isinstance(c, dict)]
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    return out


def _indexed_messages(flat: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [m for m in _as_list(_unflatten(flat)) if isinstance(m, dict)]


def _genai_messages(value: Any) -> list[dict[str, Any]]:
    """GenAI semantic-convention messages (role + parts) as role + content."""
    out = []
    for m in _as_list(_maybe_json(value)):
        if isinstance(m, dict):
            out.append({"role": m.get("role", "user"),
                        "content": _genai_content(_as_list(m.get("parts")))})
    return out


def _genai_content(parts: list[Any]) -> Any:
    texts = [p.get("content") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    if len(texts) == len(parts) == 1:
        return texts[0]
    blocks: list[Any] = []
    for p in parts:
        if isinstance(p, dict) and p.get("type") == "text":
            blocks.append({"type": "text", "text": p.get("content")})
        else:
            blocks.append(p)
    return blocks


def _reply(messages: list[dict[str, Any]]) -> Any:
    """A single text reply as its text; anything else as the list of messages."""
    if len(messages) == 1 and isinstance(messages[0].get("content"), str) \
            and "tool_calls" not in messages[0]:
        return messages[0]["content"]
    return messages


def _mime_value(value: Any, mime: Any) -> Any:
    """An OpenInference ``input.value``/``output.value``, decoded when its mime type is JSON."""
    if isinstance(value, str) and mime is not None and "json" in str(mime).lower():
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def _event_value(events: list[OtlpEvent], name: str, key: str, used: set[int]) -> Any:
    for i, e in enumerate(events):
        if e.name == name:
            used.add(i)
            return _maybe_json(e.attributes.get(key))
    return None


def _input(a: _Attrs, events: list[OtlpEvent], used: set[int]) -> Any:
    """The span's input from the first convention that carries one."""
    prompt_event = _event_value(events, "gen_ai.content.prompt", "gen_ai.prompt", used)
    if (value := a.get("own_input")) is not None:
        return _maybe_json(value)
    if (value := a.get("oi_input")) is not None:
        return _mime_value(value, a.get("oi_input_mime"))
    if messages := _genai_messages(a.get("genai_input")):
        out: dict[str, Any] = {"messages": messages}
        system = _maybe_json(a.get("genai_system"))
        if system:
            parts = system if isinstance(system, list) else [system]
            out["system"] = _genai_content(
                [p if isinstance(p, dict) else {"type": "text", "content": p} for p in parts])
        return out
    messages = (_openinference_messages(a.group("llm.input_messages."))
                or _indexed_messages(a.group("gen_ai.prompt.")))
    if messages:
        return {"messages": messages}
    if (value := a.get("tl_input")) is not None:
        return _maybe_json(value)
    if (value := a.get("lit_input")) is not None:
        return _maybe_json(value)
    return prompt_event


def _output(a: _Attrs, events: list[OtlpEvent], used: set[int], span: Span) -> Any:
    """The span's output from the first convention that carries one."""
    completion_event = _event_value(events, "gen_ai.content.completion", "gen_ai.completion",
                                    used)
    if (value := a.get("own_output")) is not None:
        return _maybe_json(value)
    if (value := a.get("oi_output")) is not None:
        return _mime_value(value, a.get("oi_output_mime"))
    if messages := _genai_messages(a.get("genai_output")):
        return _reply(messages)
    if messages := _openinference_messages(a.group("llm.output_messages.")):
        return _reply(messages)
    if messages := _indexed_messages(a.group("gen_ai.completion.")):
        if span.stop_reason is None and messages[0].get("finish_reason"):
            span.stop_reason = str(messages[0]["finish_reason"])
        return _reply([{k: v for k, v in m.items() if k != "finish_reason"}
                       for m in messages])
    if (value := a.get("tl_output")) is not None:
        return _maybe_json(value)
    if (value := a.get("lit_output")) is not None:
        return _maybe_json(value)
    return completion_event


def _errors(raw: OtlpSpan, a: _Attrs, span: Span, events: list[OtlpEvent],
            used: set[int]) -> None:
    error_type = a.text("error_type")
    message = raw.status_message or None
    for i, e in enumerate(events):
        if e.name == "exception":
            used.add(i)
            error_type = error_type or _text(e.attributes.get("exception.type"))
            message = message or _text(e.attributes.get("exception.message"))
    span.error_type = error_type
    if span.status == "error" or (message and error_type):
        span.error = message


def _ttft(raw: OtlpSpan, a: _Attrs, events: list[OtlpEvent], used: set[int]) -> float | None:
    value = _float(a.get("ttft"))
    first: int | None = None
    chunk: int | None = None
    for i, e in enumerate(events):
        name = re.sub(r"[\s.\-]+", "_", e.name.lower())
        if "first_token" in name:
            used.add(i)
            first = e.time_ns if first is None else min(first, e.time_ns)
        elif e.name.lower() in _CHUNK_EVENTS and (chunk is None or e.time_ns < chunk):
            chunk = e.time_ns
    if value is not None:
        return value
    at = first if first is not None else chunk
    if at is None or not raw.start_ns:
        return None
    return max(0, at - raw.start_ns) / 1e9


# -- llmvigil's marker spans (scores, session events, safety verdicts) -------------------


def _own_trace(raw: OtlpSpan, record_id: str) -> str | None:
    """The record's trace id; ``None`` when the exporter derived one for a traceless record."""
    derived = hashlib.blake2b(f"llmvigil:{record_id}".encode(), digest_size=16).hexdigest()
    return None if raw.trace_id == derived else raw.trace_id


def _marker_record(raw: OtlpSpan) -> Record | None:
    d = raw.attributes
    record_id = str(d["llmvigil.record.id"])
    trace_id = _own_trace(raw, record_id)
    target = d.get("llmvigil.target.span_id") or raw.parent_id
    metadata = {k[len("llmvigil.metadata."):]: _maybe_json(v) for k, v in d.items()
                if k.startswith("llmvigil.metadata.")}
    if "llmvigil.score.kind" in d:
        kind = str(d["llmvigil.score.kind"])
        category = _text(d.get("llmvigil.score.category"))
        label = _text(d.get("gen_ai.evaluation.score.label"))
        return Score(
            id=record_id, name=str(d.get("gen_ai.evaluation.name") or ""),
            time_ns=raw.start_ns, trace_id=trace_id, span_id=_text(target), kind=kind,
            value=_float(d.get("gen_ai.evaluation.score.value")),
            label=None if label in (category, kind) else label, category=category,
            correction=_text(d.get("llmvigil.score.correction")),
            comment=_text(d.get("gen_ai.evaluation.explanation")),
            source=str(d.get("llmvigil.score.source") or "api"),
            user_id=_text(d.get("user.id")), session_id=_text(d.get("session.id")),
            feature=_text(d.get("llmvigil.feature")), metadata=metadata)
    if "llmvigil.session.event" in d:
        return SessionEvent(
            id=record_id, session_id=str(d.get("session.id") or ""),
            event=str(d["llmvigil.session.event"]), time_ns=raw.start_ns,
            user_id=_text(d.get("user.id")), trace_id=trace_id,
            feature=_text(d.get("llmvigil.feature")), metadata=metadata)
    if "llmvigil.safety.action" in d:
        return SafetyVerdict(
            id=record_id, action=str(d["llmvigil.safety.action"]), time_ns=raw.start_ns,
            reason=str(d.get("llmvigil.safety.reason") or ""),
            category=_text(d.get("llmvigil.safety.category")),
            decided_by=_text(d.get("llmvigil.safety.decided_by")),
            trace_id=trace_id, span_id=_text(target), metadata=metadata)
    return None


def iter_records(spans: Iterable[OtlpSpan]) -> Iterator[tuple[OtlpSpan, Record | None, str]]:
    """``(span, record, "")`` per span, or ``(span, None, why)`` for a span that maps to none."""
    for raw in spans:
        try:
            yield raw, to_record(raw), ""
        except Exception as exc:  # one odd span is rejected, never the whole request
            yield raw, None, f"span {raw.span_id or '?'}: {exc}"
