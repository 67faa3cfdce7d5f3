"""Reading OTLP/JSON export files: OTLP/JSON requests back into records.

Spans written by llmvigil (with the hint attributes of :mod:`.otlp_json_attrs`)
read back as exactly the records written; spans of other OpenTelemetry sources
import on a best-effort mapping of the usual GenAI and OpenInference attributes.
A span or metric point that cannot be read is yielded as a
:class:`~llmvigil.core.migrate.Skipped`, and reading goes on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..model import (
    SPAN_KINDS,
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    StreamStats,
    Usage,
)
from . import Skipped
from .otlp_json_attrs import (
    ALERT,
    ALWAYS_DERIVED,
    H_DERIVED,
    H_END,
    H_ERROR,
    H_JSON,
    H_METRIC_IDS,
    H_METRIC_NAME,
    H_NAME,
    H_PARENT,
    H_SPAN,
    H_TRACE,
    H_TYPE,
    HEX16,
    HEX32,
    META,
    SPAN_FIELDS,
    STREAM,
    USAGE_FIELDS,
)

if TYPE_CHECKING:
    from .otlp_json import OtlpJsonCodec

__all__ = ["OtlpJsonReader", "read_otlp_json"]

#: What reading yields: a record, or a :class:`Skipped` for one that could not be read.
Item = Record | Skipped

_FLOAT_FIELDS = frozenset(("cost_usd", "ttft_s"))
_STREAM_FIELDS: dict[str, type] = {
    f.name: (float if f.name.endswith("_s") else int) for f in msgspec.structs.fields(StreamStats)
}

# Best-effort mapping of spans written by other OpenTelemetry instrumentations.
_KIND_BY_OPERATION = {"chat": "llm", "text_completion": "llm", "generate_content": "llm",
                      "embeddings": "embedding", "execute_tool": "tool",
                      "invoke_agent": "agent", "create_agent": "agent"}
_OPENINFERENCE_KINDS = {"LLM": "llm", "CHAIN": "chain", "TOOL": "tool",
                        "RETRIEVER": "retriever", "EMBEDDING": "embedding", "AGENT": "agent"}
_FOREIGN_FIELDS = {"llm.model_name": "model", "input.value": "input",
                   "output.value": "output"}
_FOREIGN_USAGE = {"gen_ai.usage.prompt_tokens": "input_tokens",
                  "gen_ai.usage.completion_tokens": "output_tokens",
                  "llm.token_count.prompt": "input_tokens",
                  "llm.token_count.completion": "output_tokens"}


_ANY_KEYS = {"stringValue": "string", "string_value": "string", "boolValue": "bool",
             "bool_value": "bool", "intValue": "int", "int_value": "int",
             "doubleValue": "double", "double_value": "double", "arrayValue": "array",
             "array_value": "array", "kvlistValue": "kvlist", "kvlist_value": "kvlist",
             "bytesValue": "bytes", "bytes_value": "bytes"}


def _json_any(value: Any) -> Any:
    """A Python value from an OTLP/JSON ``AnyValue`` object."""
    if not isinstance(value, dict) or not value:
        return None
    key = next(iter(value))
    which, raw = _ANY_KEYS.get(key), value[key]
    if which == "string":
        return str(raw)
    if which == "bool":
        return bool(raw)
    if which == "int":
        return int(raw)
    if which == "double":
        return float(raw)  # also "NaN", "Infinity", "-Infinity"
    if which == "array":
        return [_json_any(v) for v in _get(raw, "values")]
    if which == "kvlist":
        return _json_attrs(_get(raw, "values"))
    if which == "bytes":
        return str(raw)
    raise ValueError(f"unknown attribute value {key!r}")


def _json_attrs(items: Any) -> dict[str, Any]:
    """OTLP/JSON ``KeyValue`` list as a dict."""
    if not isinstance(items, list):
        raise ValueError("attributes: expected a list of {key, value}")
    return {str(kv["key"]): _json_any(kv.get("value")) for kv in items}


def _get(obj: Any, *keys: str) -> Any:
    """The first of ``keys`` (camelCase, then the protobuf field name) in ``obj``, or []."""
    if isinstance(obj, dict):
        for key in keys:
            if key in obj:
                return obj[key]
    return []


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _field(obj: dict[str, Any], camel: str, default: Any = None) -> Any:
    if camel in obj:
        return obj[camel]
    return obj.get(_snake(camel), default)


def _id(value: Any, nbytes: int, what: str) -> str:
    """An id as lowercase hex: OTLP/JSON hex, or the protobuf-JSON base64 some writers use."""
    if not value:
        return ""
    text = str(value)
    if len(text) == nbytes * 2 and (HEX32 if nbytes == 16 else HEX16).match(text):
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != nbytes:
        raise ValueError(f"{what} {text!r} is neither {nbytes * 2} hex digits nor base64")
    return raw.hex()


_STATUS_CODES = {0: "unset", 1: "ok", 2: "error", "STATUS_CODE_UNSET": "unset",
                 "STATUS_CODE_OK": "ok", "STATUS_CODE_ERROR": "error"}


@dataclass
class _OtlpSpan:
    """One span of an OTLP/JSON file, fields checked and converted."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: str
    status_message: str

    @classmethod
    def parse(cls, d: Any) -> _OtlpSpan:
        if not isinstance(d, dict):
            raise ValueError(f"expected a span object, got {type(d).__name__}")
        trace_id = _id(_field(d, "traceId"), 16, "traceId")
        span_id = _id(_field(d, "spanId"), 8, "spanId")
        if not trace_id or not span_id:
            raise ValueError("a span needs a traceId and a spanId")
        status = _field(d, "status") or {}
        code = _field(status, "code", 0)
        return cls(
            trace_id=trace_id, span_id=span_id,
            parent_id=_id(_field(d, "parentSpanId"), 8, "parentSpanId") or None,
            name=str(_field(d, "name", "")),
            start_ns=int(_field(d, "startTimeUnixNano", 0)),
            end_ns=int(_field(d, "endTimeUnixNano", 0)),
            attrs=_json_attrs(_field(d, "attributes", [])),
            events=[(str(_field(e, "name", "")), _json_attrs(_field(e, "attributes", [])))
                    for e in _field(d, "events", [])],
            status=_STATUS_CODES.get(code, "unset"),
            status_message=str(_field(status, "message", "")),
        )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _num(value: Any, kind: type, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"attribute {key}: expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"attribute {key}: expected a number, got {value!r}") from None


class OtlpJsonReader:
    """Decodes OTLP/JSON requests into records.

    Args:
        derived_trace_id: the ``otlp`` backend's trace id for a record without one
            (from the record id), so such records read back without a trace id.
    """

    def __init__(self, derived_trace_id: Callable[[str], str]) -> None:
        self._derived_trace_id = derived_trace_id

    def decode_line(self, doc: Any, where: str) -> Iterator[Item]:
        """Yield the records of one OTLP/JSON request (already parsed JSON)."""
        if not isinstance(doc, dict) or not (
                {"resourceSpans", "resourceMetrics", "resource_spans", "resource_metrics"}
                & set(doc)):
            yield Skipped("not an OTLP/JSON request (no resourceSpans or resourceMetrics)",
                          where)
            return
        for rs in _get(doc, "resourceSpans", "resource_spans"):
            for ss in _get(rs, "scopeSpans", "scope_spans"):
                for span in _get(ss, "spans"):
                    yield self._decode_span(span, where)
        for rm in _get(doc, "resourceMetrics", "resource_metrics"):
            for sm in _get(rm, "scopeMetrics", "scope_metrics"):
                for metric in _get(sm, "metrics"):
                    yield from self._decode_metric(metric, where)

    def _decode_span(self, raw: Any, where: str) -> Item:
        rid = None
        try:
            span = _OtlpSpan.parse(raw)
            attrs = span.attrs
            rid = attrs.get("llmvigil.record.id") or attrs.get(H_SPAN) or span.span_id
            for key in attrs.pop(H_DERIVED, None) or ():
                attrs.pop(key, None)
            for key in attrs.pop(H_JSON, None) or ():
                if isinstance(attrs.get(key), str):
                    attrs[key] = json.loads(attrs[key])
            kind = attrs.pop(H_TYPE, None) or _marker_type(attrs, span)
            if kind == "span":
                return self._to_span(span, attrs)
            return self._to_marker(kind, span, attrs)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            name = raw.get("name") if isinstance(raw, dict) else None
            what = f"OTLP span {name!r}" if name else "OTLP span"
            if rid is None and isinstance(raw, dict):
                rid = _field(raw, "spanId")
            return Skipped(f"cannot read {what}: {exc}", where, _str(rid))

    @staticmethod
    def _ids(span: _OtlpSpan, attrs: dict[str, Any]) -> tuple[str, str, str | None]:
        trace_id = attrs.pop(H_TRACE, None) or span.trace_id
        span_id = attrs.pop(H_SPAN, None) or span.span_id
        parent = attrs.pop(H_PARENT, None) or span.parent_id
        return str(trace_id), str(span_id), _str(parent)

    def _to_span(self, span: _OtlpSpan, attrs: dict[str, Any]) -> Span:
        trace_id, span_id, parent_id = self._ids(span, attrs)
        ours = "llmvigil.span.kind" in attrs
        kind = attrs.pop("llmvigil.span.kind", None) or _foreign_kind(attrs)
        fields: dict[str, Any] = {}
        if not ours:
            _foreign_fields(attrs, fields)
        for key, name in SPAN_FIELDS.items():
            if key not in attrs:
                continue
            value = attrs.pop(key)
            if name == "stop_reason" and isinstance(value, list):
                value = value[0] if value else None
            fields[name] = (_num(value, float, key) if name in _FLOAT_FIELDS
                            else _str(value))
        usage = {name: _num(attrs.pop(key), int, key)
                 for key, name in USAGE_FIELDS.items() if key in attrs}
        if usage or "usage" in fields:
            fields["usage"] = Usage(**{**fields.get("usage", {}), **usage})
        stream = {k[len(STREAM):]: attrs.pop(k) for k in [k for k in attrs
                                                             if k.startswith(STREAM)]}
        if stream:
            fields["stream"] = StreamStats(**{
                k: _num(v, _STREAM_FIELDS[k], STREAM + k) for k, v in stream.items()
                if k in _STREAM_FIELDS})
        metadata = {k[len(META):]: attrs.pop(k) for k in [k for k in attrs
                                                           if k.startswith(META)]}
        tags = attrs.pop("llmvigil.tags", None)
        for key in ("llmvigil.input", "llmvigil.output"):
            if key in attrs:
                fields[key.split(".")[1]] = attrs.pop(key)
        error, error_type = _error(span, attrs.pop(H_ERROR, None))
        if error_type is not None and "error_type" not in fields:
            fields["error_type"] = error_type
        name = attrs.pop(H_NAME, span.name)
        end_ns = int(attrs.pop(H_END, span.end_ns))
        if ours:  # written for OpenTelemetry tools from the fields above, hint or not
            for key in ALWAYS_DERIVED:
                attrs.pop(key, None)
        return Span(
            id=span_id, trace_id=trace_id, parent_id=parent_id, name=str(name),
            kind=str(kind) if kind in SPAN_KINDS else "span", start_ns=span.start_ns,
            end_ns=end_ns, status=span.status, error=error,
            tags=[str(t) for t in tags] if isinstance(tags, list) else [],
            metadata=metadata, attributes=attrs, **fields,
        )

    def _to_marker(self, kind: str, span: _OtlpSpan, attrs: dict[str, Any]) -> Record:
        trace_id, _span_id, parent = self._ids(span, attrs)
        rid = str(attrs.pop("llmvigil.record.id", None) or span.span_id)
        if trace_id == self._derived_trace_id(rid):
            trace_id_or_none: str | None = None
            target = _str(attrs.pop("llmvigil.target.span_id", None))
        else:
            trace_id_or_none, target = trace_id, parent
        time_ns = span.start_ns
        metadata = {k[len(META):]: attrs.pop(k) for k in [k for k in attrs
                                                           if k.startswith(META)]}
        pop = attrs.pop
        if kind == "score":
            name = pop("gen_ai.evaluation.name", None) or span.name.removeprefix("score ")
            return Score(
                id=rid, name=str(name), time_ns=time_ns, trace_id=trace_id_or_none,
                span_id=target, kind=str(pop("llmvigil.score.kind", "custom")),
                value=_num(pop("gen_ai.evaluation.score.value", None), float, "score value"),
                label=_str(pop("gen_ai.evaluation.score.label", None)),
                category=_str(pop("llmvigil.score.category", None)),
                correction=_str(pop("llmvigil.score.correction", None)),
                comment=_str(pop("gen_ai.evaluation.explanation", None)),
                source=str(pop("llmvigil.score.source", "api")),
                user_id=_str(pop("user.id", None)), session_id=_str(pop("session.id", None)),
                feature=_str(pop("llmvigil.feature", None)), metadata=metadata,
            )
        if kind == "session_event":
            return SessionEvent(
                id=rid, session_id=str(pop("session.id", "")), time_ns=time_ns,
                event=str(pop("llmvigil.session.event", None)
                          or span.name.removeprefix("session.")),
                user_id=_str(pop("user.id", None)), trace_id=trace_id_or_none,
                feature=_str(pop("llmvigil.feature", None)), metadata=metadata,
            )
        if kind == "safety_verdict":
            return SafetyVerdict(
                id=rid, action=str(pop("llmvigil.safety.action", "")), time_ns=time_ns,
                reason=str(pop("llmvigil.safety.reason", "")),
                category=_str(pop("llmvigil.safety.category", None)),
                decided_by=_str(pop("llmvigil.safety.decided_by", None)),
                trace_id=trace_id_or_none, span_id=target, metadata=metadata,
            )
        if kind == "alert":
            prefix = f"{ALERT}labels."
            labels = {k[len(prefix):]: str(attrs.pop(k))
                      for k in [k for k in attrs if k.startswith(prefix)]}
            return Alert(
                id=rid, rule=str(pop(f"{ALERT}rule", "")), time_ns=time_ns,
                severity=str(pop(f"{ALERT}severity", "")),
                message=str(pop(f"{ALERT}message", "")),
                value=_num(pop(f"{ALERT}value", None), float, "alert value"),
                threshold=_num(pop(f"{ALERT}threshold", None), float, "alert threshold"),
                labels=labels,
            )
        raise ValueError(f"unknown {H_TYPE} {kind!r}")

    def _decode_metric(self, metric: Any, where: str) -> Iterator[Item]:
        try:
            meta = _json_attrs(_field(metric, "metadata", []))
            proto_name = str(_field(metric, "name", ""))
            name = str(meta.get(H_METRIC_NAME) or proto_name.removeprefix("llmvigil."))
            ids = meta.get(H_METRIC_IDS) or []
            unit = _field(metric, "unit") or None
            data = next(((k, _field(metric, k)) for k in ("gauge", "sum")
                         if _field(metric, k) is not None), None)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            yield Skipped(f"cannot read OTLP metric: {exc}", where, kind="metrics")
            return
        if data is None:
            yield Skipped(f"metric {proto_name!r}: only gauge and sum data points are "
                          "imported", where, kind="metrics")
            return
        for i, point in enumerate(_field(data[1], "dataPoints", [])):
            rid = ids[i] if i < len(ids) else None
            try:
                labels = _json_attrs(_field(point, "attributes", []))
                window = labels.pop("llmvigil.window_s", None)
                raw = _field(point, "asDouble")
                value = float(raw if raw is not None else _field(point, "asInt", 0))
                time_ns = int(_field(point, "timeUnixNano", 0))
                str_labels = {str(k): str(v) for k, v in labels.items()}
                yield Metric(id=str(rid or _metric_id(name, time_ns, str_labels)), name=name,
                             value=value, time_ns=time_ns,
                             window_s=float(window) if window is not None else 0.0,
                             labels=str_labels, unit=str(unit) if unit else None)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                yield Skipped(f"cannot read a point of metric {proto_name!r}: {exc}", where,
                              _str(rid), "metrics")


def _marker_type(attrs: Mapping[str, Any], span: _OtlpSpan) -> str:
    """What a span stands for when it carries no ``llmvigil.record.type`` hint."""
    if "gen_ai.evaluation.name" in attrs or any(
            name == "gen_ai.evaluation.result" for name, _ in span.events):
        return "score"
    if "llmvigil.session.event" in attrs:
        return "session_event"
    if "llmvigil.safety.action" in attrs:
        return "safety_verdict"
    if f"{ALERT}rule" in attrs:
        return "alert"
    return "span"


def _foreign_kind(attrs: Mapping[str, Any]) -> str:
    oi = attrs.get("openinference.span.kind")
    if isinstance(oi, str) and oi.upper() in _OPENINFERENCE_KINDS:
        return _OPENINFERENCE_KINDS[oi.upper()]
    op = attrs.get("gen_ai.operation.name")
    return _KIND_BY_OPERATION.get(op, "span") if isinstance(op, str) else "span"


def _foreign_fields(attrs: dict[str, Any], fields: dict[str, Any]) -> None:
    """Map the usual non-llmvigil GenAI/OpenInference attributes onto span fields."""
    for key, name in _FOREIGN_FIELDS.items():
        if key in attrs:
            fields[name] = attrs.pop(key)
    usage = {name: _num(attrs.pop(key), int, key)
             for key, name in _FOREIGN_USAGE.items() if key in attrs}
    if usage:
        fields["usage"] = usage
    if "gen_ai.system" not in attrs and "gen_ai.provider.name" in attrs:
        attrs["gen_ai.system"] = attrs.pop("gen_ai.provider.name")


def _error(span: _OtlpSpan, hinted: Any) -> tuple[str | None, str | None]:
    """The span's error message and type, from the exception event or the status."""
    for name, ev in span.events:
        if name == "exception":
            return _str(ev.get("exception.message")), _str(ev.get("exception.type"))
    if hinted is not None:
        return str(hinted), None
    return (span.status_message or None), None


def _metric_id(name: str, time_ns: int, labels: Mapping[str, str]) -> str:
    """A stable id for a metric point that arrived without one."""
    key = json.dumps([name, time_ns, sorted(labels.items())])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def read_otlp_json(path: Path, codec: OtlpJsonCodec) -> Iterator[Item]:
    """Yield the records of an OTLP/JSON file: one request per line, or one document."""
    first = True
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                doc = json.loads(line)
            except ValueError as exc:
                if first and line.lstrip().startswith(b"{"):
                    whole = _whole_document(path)
                    if whole is not None:
                        yield from codec.decode_line(whole, str(path))
                        return
                yield Skipped(f"malformed JSON ({exc})", where)
                first = False
                continue
            first = False
            yield from codec.decode_line(doc, where)


def _whole_document(path: Path) -> Any:
    """A pretty-printed OTLP/JSON file (one request over many lines), or ``None``."""
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None
