"""Writing OTLP/JSON export files: records as OTLP/JSON request lines.

Spans and the point-in-time records are built by the ``otlp`` backend (what it would
send a collector), then carry the hint attributes of :mod:`.otlp_json_attrs` that
make them read back as the records written.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ..model import Alert, Metric, Record, SafetyVerdict, Score, SessionEvent, Span
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

__all__ = ["OtlpJsonWriter"]

#: Attributes the otlp encoding sets from the span fields: free attributes with these
#: names are overwritten, so they are never read back as free attributes.
_RESERVED = frozenset((
    *SPAN_FIELDS, *USAGE_FIELDS, "gen_ai.provider.name", "llmvigil.span.kind",
    "llmvigil.input", "llmvigil.output", "llmvigil.tags", "gen_ai.input.messages",
    "gen_ai.output.messages", "gen_ai.system_instructions", H_JSON, H_DERIVED, H_TYPE,
    H_TRACE, H_SPAN, H_PARENT, H_NAME, H_END, H_ERROR,
))
_MARKER_TYPES = {Score: "score", SessionEvent: "session_event",
                 SafetyVerdict: "safety_verdict", Alert: "alert"}


def _w3c(value: str, bits: int) -> bool:
    """Whether an id survives the OTLP encoding unchanged (lowercase W3C hex, not zero)."""
    return (len(value) == bits // 4 and value == value.lower()
            and (HEX32 if bits == 128 else HEX16).match(value) is not None
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


class OtlpJsonWriter:
    """Encodes records as OTLP/JSON lines with the ``otlp`` backend's span builders.

    Args:
        backend: an ``otlp`` backend instance (its ``_span``, ``_score``... builders).
        encode_spans: OpenTelemetry's ``encode_spans`` (readable spans -> request).
        encode_metrics: OpenTelemetry's ``encode_metrics`` (metrics data -> request).
    """

    def __init__(self, backend: Any, encode_spans: Callable[[Any], Any],
                 encode_metrics: Callable[[Any], Any]) -> None:
        self._backend = backend
        self._encode_spans = encode_spans
        self._encode_metrics = encode_metrics

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
            attrs = {f"{ALERT}rule": record.rule, f"{ALERT}severity": record.severity,
                     f"{ALERT}message": record.message, f"{ALERT}value": record.value,
                     f"{ALERT}threshold": record.threshold,
                     **{f"{ALERT}labels.{k}": v for k, v in record.labels.items()}}
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
        free(META, metadata, frozenset())
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
        derived.extend(ALWAYS_DERIVED)
        if span.operation is None:
            derived.append("gen_ai.operation.name")
        if span.usage is not None and not msgspec.to_builtins(span.usage):
            hints["gen_ai.usage.input_tokens"] = 0  # an all-zero usage is still a usage
        if span.stream is not None and not msgspec.to_builtins(span.stream):
            hints[f"{STREAM}items"] = 0
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
