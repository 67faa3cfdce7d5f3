"""Canonical files and the built-in importers ``file`` and ``local``.

Two file formats hold llmvigil history outside any backend:

* **JSON lines** (``jsonl``): one record per line, exactly as
  :func:`llmvigil.core.model.encode` writes it (tagged by ``type``). Lossless: a
  record read back equals the record written.
* **OTLP/JSON** (``otlp-json``): the OpenTelemetry JSON encoding of
  ``ExportTraceServiceRequest``/``ExportMetricsServiceRequest``, one request per line
  as the OpenTelemetry Collector's file exporter writes it (hex trace and span ids,
  integer enums), readable by any OpenTelemetry tool. Spans, scores, session events,
  safety verdicts and metrics are encoded as the ``otlp`` backend sends them (GenAI
  attribute names; point-in-time records as zero-length spans); alerts become
  zero-length ``llmvigil.alert`` spans. A few ``llmvigil.*`` hint attributes (which
  attribute values are JSON, which were derived for OpenTelemetry tools, ids that are
  not W3C hex) make a re-import give back the records that were written; files from
  other OpenTelemetry sources import on a best-effort mapping.

The importers: ``file`` reads either format (detected from the content), ``local``
reads the local SQLite store read-only. A line or row that cannot be read is yielded
as a :class:`~llmvigil.core.migrate.Skipped` naming the line (or row) and the record
id, and reading goes on.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import msgspec

from ...plugins.hookspecs import hookimpl
from ...plugins.types import RECORD_KINDS, Importer, ImporterInfo
from ..errors import ConfigError, InputFileError, MissingExtraError, PluginError
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
    decode,
    encode,
)
from ..store_queries import DEFAULT_STORE_PATH, TABLES, connect_readonly
from . import Skipped, record_kind, record_time

__all__ = [
    "FORMATS",
    "ExportSummary",
    "FileImporter",
    "LocalImporter",
    "OtlpJsonCodec",
    "detect_format",
    "llmvigil_importers",
    "read_file",
    "write_file",
]

_log = logging.getLogger("llmvigil.migrate")

#: The file formats ``vigil export``/``vigil import`` know.
FORMATS: tuple[str, ...] = ("jsonl", "otlp-json")

_TAGS = {"span": "spans", "score": "scores", "session_event": "session_events",
         "metric": "metrics", "alert": "alerts", "safety_verdict": "safety_verdicts"}

Item = Record | Skipped


# ---------------------------------------------------------------------------
# Filters shared by the importers
# ---------------------------------------------------------------------------


def _kinds(options: Mapping[str, Any]) -> tuple[str, ...]:
    kinds = options.get("kinds")
    if not kinds:
        return RECORD_KINDS
    unknown = [k for k in kinds if k not in RECORD_KINDS]
    if unknown:
        raise ValueError(f"unknown record kind(s) {', '.join(unknown)}; known kinds: "
                         f"{', '.join(RECORD_KINDS)}")
    return tuple(k for k in RECORD_KINDS if k in kinds)


def _in_window(record: Record, options: Mapping[str, Any]) -> bool:
    t = record_time(record)
    since, until = options.get("since_ns"), options.get("until_ns")
    return (since is None or t >= since) and (until is None or t < until)


def _filtered(items: Iterable[Item], options: Mapping[str, Any]) -> Iterator[Item]:
    """Apply the kinds, time window and limit options to a stream of file records."""
    kinds = set(_kinds(options))
    limit = options.get("limit")
    n = 0
    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        if record_kind(item) not in kinds or not _in_window(item, options):
            continue
        yield item
        n += 1
        if limit is not None and n >= limit:
            return


# ---------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------


def _jsonl_problem(where: str, line: bytes, exc: Exception) -> Skipped:
    """A clear message for a line that is not a valid llmvigil record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return Skipped(f"malformed JSON ({exc})", where)
    if not isinstance(obj, dict):
        return Skipped(f"expected a JSON object (a record), got {type(obj).__name__}", where)
    rid = obj.get("id") if isinstance(obj.get("id"), str) else None
    tag = obj.get("type")
    known = ", ".join(_TAGS)
    if tag is None:
        return Skipped(f"no 'type' field (expected one of {known})", where, rid)
    if tag not in _TAGS:
        return Skipped(f"unknown record type {tag!r} (known: {known})", where, rid)
    return Skipped(f"invalid {tag}: {exc}", where, rid, _TAGS[tag])


def read_jsonl(path: Path) -> Iterator[Item]:
    """Yield the records of a JSON-lines file; a bad line yields a :class:`Skipped`."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                yield _jsonl_problem(f"{path}:{lineno}", line, exc)


# ---------------------------------------------------------------------------
# OTLP/JSON
# ---------------------------------------------------------------------------

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")

# Hint attributes this writer adds; see the module docstring and docs/migration.md.
H_JSON = "llmvigil.json_attributes"
H_DERIVED = "llmvigil.derived_attributes"
H_TYPE = "llmvigil.record.type"
H_TRACE, H_SPAN, H_PARENT = "llmvigil.trace.id", "llmvigil.span.id", "llmvigil.parent.id"
H_NAME, H_END, H_ERROR = "llmvigil.span.name", "llmvigil.span.end_ns", "llmvigil.error"
H_METRIC_NAME, H_METRIC_IDS = "llmvigil.metric.name", "llmvigil.record.ids"
_META = "llmvigil.metadata."
_STREAM = "llmvigil.stream."
_ALERT = "llmvigil.alert."

#: Span fields that the OTLP span carries structurally, not as an attribute.
_STRUCTURAL = frozenset((
    "id", "trace_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status", "error",
    "input", "output", "usage", "stream", "tags", "metadata", "attributes",
))
#: Attribute key -> Span field, for the fields written as attributes (the otlp rule:
#: a GenAI name when the encoded name has a dot, else ``llmvigil.<field>``).
_SPAN_FIELDS: dict[str, str] = {
    (f.encode_name if "." in f.encode_name else f"llmvigil.{f.name}"): f.name
    for f in msgspec.structs.fields(Span) if f.name not in _STRUCTURAL
}
_FLOAT_FIELDS = frozenset(("cost_usd", "ttft_s"))
_USAGE_FIELDS: dict[str, str] = {f.encode_name: f.name for f in msgspec.structs.fields(Usage)}
_STREAM_FIELDS: dict[str, type] = {
    f.name: (float if f.name.endswith("_s") else int) for f in msgspec.structs.fields(StreamStats)
}
#: Attributes the otlp encoding sets from the span fields: free attributes with these
#: names are overwritten, so they are never read back as free attributes.
_RESERVED = frozenset((
    *_SPAN_FIELDS, *_USAGE_FIELDS, "gen_ai.provider.name", "llmvigil.span.kind",
    "llmvigil.input", "llmvigil.output", "llmvigil.tags", "gen_ai.input.messages",
    "gen_ai.output.messages", "gen_ai.system_instructions", H_JSON, H_DERIVED, H_TYPE,
    H_TRACE, H_SPAN, H_PARENT, H_NAME, H_END, H_ERROR,
))
_ALWAYS_DERIVED = ("gen_ai.provider.name", "gen_ai.input.messages", "gen_ai.output.messages",
                   "gen_ai.system_instructions")
_MARKER_TYPES = {Score: "score", SessionEvent: "session_event",
                 SafetyVerdict: "safety_verdict", Alert: "alert"}

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


def _w3c(value: str, bits: int) -> bool:
    """Whether an id survives the OTLP encoding unchanged (lowercase W3C hex, not zero)."""
    return (len(value) == bits // 4 and value == value.lower()
            and (_HEX32 if bits == 128 else _HEX16).match(value) is not None
            and int(value, 16) != 0)


def _primitive(value: Any) -> bool:
    return isinstance(value, (bool, str, float)) or (
        isinstance(value, int) and -(2**63) <= value < 2**63)


def _needs_json(value: Any) -> bool:
    """Whether the otlp encoding turns ``value`` into a JSON string (see ``attr_value``):
    anything but ``None``, a primitive or a non-empty list of primitives of one type."""
    if value is None or _primitive(value):
        return False
    if isinstance(value, (list, tuple)) and value:
        first = type(value[0])
        return not all(type(v) is first and _primitive(v) for v in value)
    return True


def _any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` message for a primitive or a list of strings."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


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
    if len(text) == nbytes * 2 and (_HEX32 if nbytes == 16 else _HEX16).match(text):
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


class OtlpJsonCodec:
    """Encodes records as OTLP/JSON lines and decodes them back.

    The span building is the ``otlp`` backend's own (reached through the plugin
    manager, as core reaches every adapter), so a file holds exactly what that backend
    would send a collector, plus the hint attributes. Needs ``llmvigil[otlp]``.

    Raises:
        MissingExtraError: the OpenTelemetry packages are not installed.
        PluginError: no ``otlp`` adapter is registered, or it lacks the span builders.
    """

    _BUILDERS = ("_span", "_score", "_session_event", "_verdict", "_marker",
                 "_metrics_data", "_otel")

    def __init__(self, *, service: str = "llmvigil", pm: Any = None) -> None:
        from ...plugins.manager import get_adapter, new_plugin_manager

        try:
            from google.protobuf import json_format  # noqa: F401 - checks the extra
            from opentelemetry.exporter.otlp.proto.common.metrics_encoder import (
                encode_metrics,
            )
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        except ModuleNotFoundError as exc:
            raise MissingExtraError("otlp-json files", "otlp", exc.name or "?") from exc
        info = get_adapter(pm if pm is not None else new_plugin_manager(), "otlp")
        backend: Any = info.factory({"endpoint": "http://127.0.0.1:9/v1/traces",
                                "service": service, "compression": "none"})
        missing = [name for name in self._BUILDERS if not hasattr(backend, name)]
        if missing:
            raise PluginError(f"the otlp adapter lacks {', '.join(missing)}, which "
                              "OTLP/JSON files are built with")
        self._backend: Any = backend
        self._derived_trace_id: Callable[[str], str] = backend._otel.derived_trace_id
        self._encode_spans = encode_spans
        self._encode_metrics = encode_metrics

    def close(self) -> None:
        """Release the otlp backend the codec borrowed its builders from."""
        with contextlib.suppress(Exception):
            self._backend.llmvigil_shutdown(timeout_s=1.0)

    # -- encoding ------------------------------------------------------------------

    def encode(self, records: Sequence[Record]) -> list[bytes]:
        """One OTLP/JSON line for the span-like records, one for the metrics (if any)."""
        spanlike = [r for r in records if not isinstance(r, Metric)]
        metrics = [r for r in records if isinstance(r, Metric)]
        lines: list[bytes] = []
        if spanlike:
            lines.append(self._encode_spanlike(spanlike))
        if metrics:
            lines.append(self._encode_metric_records(metrics))
        return lines

    def _readable(self, record: Record) -> Any:
        b = self._backend
        if isinstance(record, Span):
            return b._span(record)
        if isinstance(record, Score):
            return b._score(record)
        if isinstance(record, SessionEvent):
            return b._session_event(record)
        if isinstance(record, SafetyVerdict):
            return b._verdict(record)
        if isinstance(record, Alert):
            attrs = {f"{_ALERT}rule": record.rule, f"{_ALERT}severity": record.severity,
                     f"{_ALERT}message": record.message, f"{_ALERT}value": record.value,
                     f"{_ALERT}threshold": record.threshold,
                     **{f"{_ALERT}labels.{k}": v for k, v in record.labels.items()}}
            return b._marker("llmvigil.alert", record.id, None, None, record.time_ns, attrs)
        raise TypeError(f"not an llmvigil record: {type(record).__name__}")

    def _encode_spanlike(self, records: Sequence[Record]) -> bytes:
        request = self._encode_spans([self._readable(r) for r in records])
        protos = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        if len(protos) != len(records):  # one resource and scope: order is kept
            raise RuntimeError("the OTLP encoder regrouped the spans; cannot add hints")
        for proto, record in zip(protos, records, strict=True):
            for key, value in self._hints(record).items():
                proto.attributes.add(key=key, value=_any_value(value))
        return self._line(request)

    def _encode_metric_records(self, metrics: Sequence[Metric]) -> bytes:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        groups: dict[tuple[str, str | None], list[Metric]] = {}
        for m in metrics:
            groups.setdefault((m.name, m.unit), []).append(m)
        out = ExportMetricsServiceRequest()
        target = None
        for (name, _unit), group in groups.items():
            # One metric per call, so each encoded metric is known to be this group's.
            request = self._encode_metrics(self._backend._metrics_data(group))
            rm = request.resource_metrics[0]
            metric = rm.scope_metrics[0].metrics[0]
            metric.metadata.add(key=H_METRIC_NAME, value=_any_value(name))
            metric.metadata.add(key=H_METRIC_IDS, value=_any_value([m.id for m in group]))
            if target is None:
                out.resource_metrics.add().CopyFrom(rm)
                target = out.resource_metrics[0].scope_metrics[0]
            else:
                target.metrics.add().CopyFrom(metric)
        return self._line(out)

    @staticmethod
    def _line(message: Any) -> bytes:
        from google.protobuf.json_format import MessageToDict

        doc = MessageToDict(message, use_integers_for_enums=True)
        for rs in doc.get("resourceSpans") or ():
            for ss in rs.get("scopeSpans") or ():
                for span in ss.get("spans") or ():
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if span.get(key):  # OTLP/JSON ids are hex, not protobuf's base64
                            span[key] = base64.b64decode(span[key]).hex()
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def _hints(self, record: Record) -> dict[str, Any]:
        """The attributes that make the OTLP span read back as exactly ``record``."""
        hints: dict[str, Any] = {}
        json_keys: list[str] = []
        derived: list[str] = []

        def free(prefix: str, values: Mapping[str, Any], reserved: frozenset[str]) -> None:
            for k, v in values.items():
                key = prefix + str(k)
                if key in reserved:
                    continue
                if v is None:  # dropped by the encoding: write it as JSON null
                    hints[key] = "null"
                    json_keys.append(key)
                elif _needs_json(v):
                    json_keys.append(key)

        metadata = getattr(record, "metadata", None) or {}
        free(_META, metadata, frozenset())
        if isinstance(record, Span):
            self._span_hints(record, hints, json_keys, derived)
            free("", record.attributes, _RESERVED)
        else:
            hints[H_TYPE] = _MARKER_TYPES[type(record)]
            trace_id = getattr(record, "trace_id", None)
            if trace_id is not None and not _w3c(trace_id, 128):
                hints[H_TRACE] = trace_id
            target = getattr(record, "span_id", None)
            if trace_id is not None and target is not None and not _w3c(target, 64):
                hints[H_PARENT] = target
            if isinstance(record, Score) and record.label is None:
                derived.append("gen_ai.evaluation.score.label")
        if json_keys:
            hints[H_JSON] = json_keys
        if derived:
            hints[H_DERIVED] = derived
        return hints

    @staticmethod
    def _span_hints(span: Span, hints: dict[str, Any], json_keys: list[str],
                    derived: list[str]) -> None:
        for key, value in (("llmvigil.input", span.input), ("llmvigil.output", span.output)):
            if value is not None and not isinstance(value, str):
                json_keys.append(key)
        derived.extend(_ALWAYS_DERIVED)
        if span.operation is None:
            derived.append("gen_ai.operation.name")
        if span.usage is not None and not msgspec.to_builtins(span.usage):
            hints["gen_ai.usage.input_tokens"] = 0  # an all-zero usage is still a usage
        if span.stream is not None and not msgspec.to_builtins(span.stream):
            hints[f"{_STREAM}items"] = 0
        if span.error is not None and span.status != "error" and not span.error_type:
            hints[H_ERROR] = span.error  # no exception event carries it
        if span.end_ns < span.start_ns:
            hints[H_END] = span.end_ns
        if not span.name:
            hints[H_NAME] = span.name
        for key, value, bits in ((H_TRACE, span.trace_id, 128), (H_SPAN, span.id, 64),
                                 (H_PARENT, span.parent_id, 64)):
            if value is not None and not _w3c(value, bits):
                hints[key] = value

    # -- decoding ------------------------------------------------------------------

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
        for key, name in _SPAN_FIELDS.items():
            if key not in attrs:
                continue
            value = attrs.pop(key)
            if name == "stop_reason" and isinstance(value, list):
                value = value[0] if value else None
            fields[name] = (_num(value, float, key) if name in _FLOAT_FIELDS
                            else _str(value))
        usage = {name: _num(attrs.pop(key), int, key)
                 for key, name in _USAGE_FIELDS.items() if key in attrs}
        if usage or "usage" in fields:
            fields["usage"] = Usage(**{**fields.get("usage", {}), **usage})
        stream = {k[len(_STREAM):]: attrs.pop(k) for k in [k for k in attrs
                                                             if k.startswith(_STREAM)]}
        if stream:
            fields["stream"] = StreamStats(**{
                k: _num(v, _STREAM_FIELDS[k], _STREAM + k) for k, v in stream.items()
                if k in _STREAM_FIELDS})
        metadata = {k[len(_META):]: attrs.pop(k) for k in [k for k in attrs
                                                           if k.startswith(_META)]}
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
            for key in _ALWAYS_DERIVED:
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
        metadata = {k[len(_META):]: attrs.pop(k) for k in [k for k in attrs
                                                           if k.startswith(_META)]}
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
            prefix = f"{_ALERT}labels."
            labels = {k[len(prefix):]: str(attrs.pop(k))
                      for k in [k for k in attrs if k.startswith(prefix)]}
            return Alert(
                id=rid, rule=str(pop(f"{_ALERT}rule", "")), time_ns=time_ns,
                severity=str(pop(f"{_ALERT}severity", "")),
                message=str(pop(f"{_ALERT}message", "")),
                value=_num(pop(f"{_ALERT}value", None), float, "alert value"),
                threshold=_num(pop(f"{_ALERT}threshold", None), float, "alert threshold"),
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
    if f"{_ALERT}rule" in attrs:
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


# ---------------------------------------------------------------------------
# Format detection, reading and writing files
# ---------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """``jsonl`` or ``otlp-json``, from the first non-blank line (then the file name).

    Raises:
        InputFileError: the file cannot be read.
    """
    try:
        with path.open("rb") as f:
            first = next((line for line in f if line.strip()), b"")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        obj = json.loads(first) if first else None
    except ValueError:
        obj = None
        if first.strip() == b"{" or path.suffix == ".json":
            return "otlp-json"
    if isinstance(obj, dict):
        if "resourceSpans" in obj or "resourceMetrics" in obj:
            return "otlp-json"
        if "type" in obj:
            return "jsonl"
    return "otlp-json" if path.suffix == ".json" else "jsonl"


def read_file(path: str | os.PathLike[str], fmt: str = "auto", *,
              codec: OtlpJsonCodec | None = None) -> Iterator[Item]:
    """Yield every record of an export file (and a :class:`Skipped` per bad line).

    Raises:
        InputFileError: the file does not exist or cannot be read, or ``fmt`` is unknown.
        MissingExtraError: an OTLP/JSON file without ``llmvigil[otlp]`` installed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "jsonl":
        yield from read_jsonl(p)
    elif fmt == "otlp-json":
        own = codec is None
        codec = codec or OtlpJsonCodec()
        try:
            yield from read_otlp_json(p, codec)
        finally:
            if own:
                codec.close()
    else:
        raise InputFileError(f"{p}: unknown format {fmt!r}; known formats: "
                             f"{', '.join(FORMATS)} (or auto)")


@dataclass
class ExportSummary:
    """What :func:`write_file` wrote: records per kind, and what it could not read."""

    path: str
    format: str
    written: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Records written, all kinds."""
        return sum(self.written.values())


def write_file(items: Iterable[Item], path: str | os.PathLike[str], fmt: str = "jsonl", *,
               service: str = "llmvigil", batch_size: int = 1000,
               on_record: Callable[[Item], None] | None = None) -> ExportSummary:
    """Write records to an export file, atomically (``-`` writes to standard output).

    ``Skipped`` items (what the reading side could not read) are counted in the
    summary, not written. ``on_record`` is called with every item (progress).

    Raises:
        InputFileError: ``fmt`` is unknown, or the file cannot be written.
        MissingExtraError: ``otlp-json`` without ``llmvigil[otlp]`` installed.
    """
    if fmt not in FORMATS:
        raise InputFileError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    codec = OtlpJsonCodec(service=service) if fmt == "otlp-json" else None
    summary = ExportSummary(str(path), fmt)
    try:
        with _atomic_output(path) as out:
            batch: list[Record] = []
            for item in items:
                if on_record is not None:
                    on_record(item)
                if isinstance(item, Skipped):
                    summary.skipped.append(item)
                    continue
                kind = record_kind(item)
                if kind is None:
                    summary.skipped.append(Skipped(f"not a record: {type(item).__name__}"))
                    continue
                summary.written[kind] += 1
                if codec is None:
                    out.write(encode(item))
                    out.write(b"\n")
                    continue
                batch.append(item)
                if len(batch) >= batch_size:
                    _write_lines(out, codec.encode(batch))
                    batch = []
            if batch and codec is not None:
                _write_lines(out, codec.encode(batch))
    finally:
        if codec is not None:
            codec.close()
    return summary


def _write_lines(out: IO[bytes], lines: Iterable[bytes]) -> None:
    for line in lines:
        out.write(line)
        out.write(b"\n")


@contextlib.contextmanager
def _atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` only once it is complete."""
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path).expanduser()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise InputFileError(f"{target}: cannot write here: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# The importers
# ---------------------------------------------------------------------------


class FileImporter:
    """The ``file`` importer: an export file (JSON lines or OTLP/JSON).

    Settings: ``path`` (required) and ``format`` (``auto`` default, ``jsonl``,
    ``otlp-json``). Honours ``since_ns``/``until_ns``, ``kinds`` and ``limit``.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        path = settings.get("path")
        if not path:
            raise ConfigError("importer 'file' needs the file: give path=FILE "
                              "(e.g. --from-opt path=history.jsonl)")
        self.path = Path(str(path)).expanduser()
        self.format = str(settings.get("format") or "auto")
        if self.format != "auto" and self.format not in FORMATS:
            raise ConfigError(f"importer 'file': format {self.format!r}; expected auto, "
                              f"{', '.join(FORMATS)}")

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the file's records matching ``options`` (file order)."""
        return _filtered(read_file(self.path, self.format), options)

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """The number of lines of a JSON-lines file (one record each), else ``None``."""
        try:
            fmt = self.format if self.format != "auto" else detect_format(self.path)
            if fmt != "jsonl" or options.get("since_ns") or options.get("until_ns") \
                    or options.get("kinds"):
                return None
            with self.path.open("rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except (OSError, InputFileError):
            return None
        limit = options.get("limit")
        return min(lines, limit) if limit is not None else lines


class LocalImporter:
    """The ``local`` importer: the local SQLite store, read-only, kind by kind.

    Settings: ``path`` (default ``store.path``). Each kind comes in ``(time, id)``
    order; honours ``since_ns``/``until_ns``, ``kinds``, ``after`` and ``limit``.
    ``project`` does not apply (the store has no projects) and is ignored.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.path = Path(str(settings.get("path") or DEFAULT_STORE_PATH)).expanduser()

    def _where(self, kind: str, options: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        t = TABLES[kind].time_column
        conditions: list[str] = []
        params: list[Any] = []
        if options.get("since_ns") is not None:
            conditions.append(f"{t} >= ?")
            params.append(int(options["since_ns"]))
        if options.get("until_ns") is not None:
            conditions.append(f"{t} < ?")
            params.append(int(options["until_ns"]))
        after = (options.get("after") or {}).get(kind)
        if after is not None:
            conditions.append(f"({t}, id) > (?, ?)")
            params.extend((int(after[0]), str(after[1])))
        return conditions, params

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """How many records :meth:`read` will yield."""
        try:
            conn = connect_readonly(self.path)
        except (FileNotFoundError, sqlite3.Error):
            return None
        try:
            existing = _tables(conn)
            total = 0
            for kind in _kinds(options):
                if kind not in existing:
                    continue
                conditions, params = self._where(kind, options)
                where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
                total += int(conn.execute(f"SELECT COUNT(*) FROM {kind}{where}",
                                          params).fetchone()[0])
        finally:
            conn.close()
        limit = options.get("limit")
        return min(total, limit) if limit is not None else total

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the stored records matching ``options``: spans first, then each kind.

        Raises:
            FileNotFoundError: the store does not exist.
        """
        if options.get("project"):
            _log.warning("the local store has no projects: project=%r is ignored",
                         options["project"])
        kinds = _kinds(options)
        conn = connect_readonly(self.path)
        return self._rows(conn, kinds, options)

    def _rows(self, conn: sqlite3.Connection, kinds: Sequence[str],
              options: Mapping[str, Any]) -> Iterator[Item]:
        limit = options.get("limit")
        n = 0
        try:
            existing = _tables(conn)
            for kind in kinds:
                if kind not in existing:
                    continue
                t = TABLES[kind].time_column
                conditions, params = self._where(kind, options)
                last: tuple[int, str] | None = None
                while True:
                    where = list(conditions)
                    args = list(params)
                    if last is not None:
                        where.append(f"({t}, id) > (?, ?)")
                        args.extend(last)
                    sql = (f"SELECT {t}, id, data FROM {kind}"
                           + (f" WHERE {' AND '.join(where)}" if where else "")
                           + f" ORDER BY {t}, id LIMIT {_PAGE}")
                    rows = conn.execute(sql, args).fetchall()
                    for _time, rid, data in rows:
                        try:
                            yield decode(data)
                        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                            yield Skipped(f"undecodable row: {exc}", f"{self.path} {kind}",
                                          rid, kind)
                        n += 1
                        if limit is not None and n >= limit:
                            return
                    if len(rows) < _PAGE:
                        break
                    last = (rows[-1][0], rows[-1][1])
        finally:
            conn.close()


_PAGE = 1000


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _importer(cls: type) -> Callable[[Mapping[str, Any]], Importer]:
    # Importer.read is typed Iterator[Record]; these also yield Skipped (see the package
    # docstring), which the engine expects from any importer.
    return cast("Callable[[Mapping[str, Any]], Importer]", cls)


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [
        ImporterInfo(name="file", factory=_importer(FileImporter),
                     description="an export file: JSON lines of llmvigil records or OTLP/JSON"),
        ImporterInfo(name="local", factory=_importer(LocalImporter),
                     description="the local SQLite store (store.path)"),
    ]

