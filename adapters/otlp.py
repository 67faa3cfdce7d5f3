"""The ``otlp`` backend: any OpenTelemetry collector, over OTLP/HTTP (protobuf).

Spans keep their llmvigil W3C trace and span ids, parent links, wall-clock times
and status. Their attributes are llmvigil's encoded field names, which already are
OpenTelemetry GenAI semantic-convention names (``gen_ai.request.model``,
``gen_ai.usage.input_tokens``...), plus ``gen_ai.operation.name``, the chat
messages (``gen_ai.input.messages``/``gen_ai.output.messages`` when the content is
a chat exchange; ``llmvigil.input``/``llmvigil.output`` always) and llmvigil's own
fields under ``llmvigil.*``. LLM and embedding calls are ``CLIENT`` spans; time
to first token is also a ``llmvigil.first_token`` span event.

Scores, session events and safety verdicts have no OTLP signal of their own: each
becomes a zero-length span in its trace (a child of the scored span when known),
a score carrying the GenAI ``gen_ai.evaluation.result`` event. Metrics are OTLP
gauges. Alerts are not held (route them to an alert sink).

Delivery: ``OTLPSpanExporter.export()`` / ``OTLPMetricExporter.export()`` called
synchronously on the outbox's batch, never the SDK's background processors, so an
outage is reported to the outbox (RETRY) and the batch journaled instead of lost.
The exporter itself retries 429/502/503/504 within ``timeout_s`` (honouring
``Retry-After``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..core.errors import MissingExtraError
from ..core.model import Metric, SafetyVerdict, Score, SessionEvent, Span, to_builtins
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Event, ReadableSpan

__all__ = ["CAPABILITIES", "OtlpBackend", "default_operation", "genai_attributes"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/traces"

CAPABILITIES = Capabilities(
    holds={
        "spans": "OTLP spans with the original trace/span ids and GenAI attributes",
        "scores": "zero-length child span of the scored span with a gen_ai.evaluation.result "
                  "event (gen_ai.evaluation.name/score.value/score.label)",
        "session_events": "zero-length span 'session.<event>' with session.id, in the "
                          "event's trace when known",
        "metrics": "OTLP gauge 'llmvigil.<name>' with the labels as attributes",
        "safety_verdicts": "zero-length child span 'llmvigil.safety' of the checked span",
    },
    notes=(
        "alerts are not exported (no OTLP signal for them): route them to an alert sink",
        "a score or verdict linked to a span id only (no trace id) lands in a trace of its "
        "own, with llmvigil.target.span_id naming the span",
        "metric record ids are not representable; a re-sent gauge point repeats its "
        "timestamp and value",
    ),
)

# Record fields carried by the span's structure rather than as attributes.
_STRUCTURAL = frozenset((
    "type", "id", "trace_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status",
    "error", "input", "output", "usage", "stream", "tags", "metadata", "attributes",
))

_OPERATIONS = {"llm": "chat", "embedding": "embeddings", "tool": "execute_tool",
               "agent": "invoke_agent"}


def default_operation(kind: str) -> str | None:
    """The GenAI ``gen_ai.operation.name`` implied by a llmvigil span kind."""
    return _OPERATIONS.get(kind)


def genai_attributes(span: Span) -> dict[str, Any]:
    """The span's attributes under GenAI semantic-convention and ``llmvigil.*`` names."""
    from . import _otel

    data = to_builtins(span)
    out: dict[str, Any] = dict(span.attributes)
    for key, value in data.items():
        if key in _STRUCTURAL or value is None:
            continue
        out[key if "." in key else f"llmvigil.{key}"] = value
    for key, value in (data.get("usage") or {}).items():
        out[key] = value
    for key, value in (data.get("stream") or {}).items():
        out[f"llmvigil.stream.{key}"] = value
    for key, value in span.metadata.items():
        out[f"llmvigil.metadata.{key}"] = value
    if span.tags:
        out["llmvigil.tags"] = list(span.tags)
    if span.stop_reason:
        out["gen_ai.response.finish_reasons"] = [span.stop_reason]
    if span.provider:
        out["gen_ai.provider.name"] = span.provider
    out["gen_ai.operation.name"] = span.operation or default_operation(span.kind)
    out["llmvigil.span.kind"] = span.kind
    if span.input is not None:
        out["llmvigil.input"] = _otel.text_value(span.input)
        chat = _otel.input_messages(span.input) if span.kind == "llm" else None
        if chat is not None:
            messages, system = chat
            out["gen_ai.input.messages"] = _otel.text_value(messages)
            if system:
                parts = system if isinstance(system, list) else [system]
                out["gen_ai.system_instructions"] = _otel.text_value(
                    [_otel.part(p) for p in parts])
    if span.output is not None:
        out["llmvigil.output"] = _otel.text_value(span.output)
        if span.kind == "llm":
            reply = _otel.output_messages(span.output, span.stop_reason)
            if reply is not None:
                out["gen_ai.output.messages"] = _otel.text_value(reply)
    return out


def _endpoint(setting: Any, signal: str) -> str:
    """The full OTLP/HTTP URL of ``signal`` (``traces`` or ``metrics``)."""
    path = f"/v1/{signal}"
    if setting:
        url = str(setting).rstrip("/")
        return url if urlsplit(url).path not in ("", "/") else url + path
    if env := os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"):
        return env
    if env := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return env.rstrip("/") + path
    return DEFAULT_ENDPOINT.replace("/v1/traces", path)


class OtlpBackend:
    """Exports llmvigil records to an OpenTelemetry collector over OTLP/HTTP.

    Settings: ``endpoint`` (the traces URL; a bare ``http://host:4318`` gets
    ``/v1/traces``), ``metrics_endpoint``, ``headers`` (a mapping), ``compression``
    (``gzip`` default, ``deflate``, ``none``), ``resource`` (extra resource
    attributes), plus ``timeout_s`` and ``service`` from llmvigil.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            from . import _otel
        except ModuleNotFoundError as exc:
            raise MissingExtraError("otlp", "otlp", exc.name or "opentelemetry-sdk") from exc
        self._otel = _otel
        self.endpoint = _endpoint(settings.get("endpoint"), "traces")
        default_metrics = (self.endpoint[: -len("/v1/traces")] + "/v1/metrics"
                           if self.endpoint.endswith("/v1/traces") else None)
        self.metrics_endpoint = (
            str(settings["metrics_endpoint"]) if settings.get("metrics_endpoint")
            else os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            or default_metrics or _endpoint(None, "metrics")
        )
        raw_headers = settings.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            raise ValueError("headers: expected a mapping of header name to value")
        headers = {str(k): str(v) for k, v in raw_headers.items()}
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        comp = _otel.compression(settings.get("compression"))
        metrics_comp = _otel.compression(settings.get("compression"), "METRICS")
        extra_resource = settings.get("resource") or {}
        self.resource = _otel.make_resource(
            {**dict(extra_resource), "service.name": settings.get("service", "llm-app")}
        )
        self.spans = _otel.HttpSender(lambda session: OTLPSpanExporter(
            endpoint=self.endpoint, headers=headers, timeout=self.timeout_s,
            compression=comp, session=session))
        self.metrics = _otel.HttpSender(lambda session: OTLPMetricExporter(
            endpoint=self.metrics_endpoint, headers=headers, timeout=self.timeout_s,
            compression=metrics_comp, session=session))

    def __repr__(self) -> str:
        return f"<OtlpBackend {self.endpoint}>"

    # -- building spans ----------------------------------------------------------------

    def _span(self, span: Span) -> ReadableSpan:
        from opentelemetry.sdk.trace import Event
        from opentelemetry.trace import SpanKind

        o = self._otel
        events: list[Event] = []
        if span.ttft_s is not None:
            events.append(Event("llmvigil.first_token",
                                {"gen_ai.server.time_to_first_token": span.ttft_s},
                                timestamp=span.start_ns + int(span.ttft_s * 1e9)))
        if span.status == "error" or span.error_type:
            events.append(o.exception_event(span))
        kind = SpanKind.CLIENT if span.kind in ("llm", "embedding") else SpanKind.INTERNAL
        return o.readable_span(
            name=span.name, trace_id=span.trace_id, span_id=span.id,
            parent_id=span.parent_id, start_ns=span.start_ns, end_ns=span.end_ns,
            resource=self.resource, attributes=genai_attributes(span), events=events,
            kind=kind, status=span.status, error=span.error,
        )

    def _marker(self, name: str, record_id: str, trace_id: str | None,
                target_span: str | None, time_ns: int, attributes: dict[str, Any],
                events: Sequence[Event] = ()) -> ReadableSpan:
        """A zero-length span standing for a point-in-time record."""
        parent = target_span if trace_id else None
        if target_span and not trace_id:
            attributes["llmvigil.target.span_id"] = target_span
        attributes["llmvigil.record.id"] = record_id
        return self._otel.readable_span(
            name=name, trace_id=trace_id or self._otel.derived_trace_id(record_id),
            span_id=record_id, parent_id=parent, start_ns=time_ns, end_ns=time_ns,
            resource=self.resource, attributes=attributes, events=events,
        )

    def _score(self, score: Score) -> ReadableSpan:
        from opentelemetry.sdk.trace import Event

        evaluation = self._otel.clean_attributes({
            "gen_ai.evaluation.name": score.name,
            "gen_ai.evaluation.score.value": score.value,
            "gen_ai.evaluation.score.label": score.label or score.category or score.kind,
            "gen_ai.evaluation.explanation": score.comment,
        })
        attrs: dict[str, Any] = {
            **evaluation,
            "llmvigil.score.kind": score.kind, "llmvigil.score.source": score.source,
            "llmvigil.score.category": score.category,
            "llmvigil.score.correction": score.correction,
            "user.id": score.user_id, "session.id": score.session_id,
            "llmvigil.feature": score.feature,
            **{f"llmvigil.metadata.{k}": v for k, v in score.metadata.items()},
        }
        event = Event("gen_ai.evaluation.result", evaluation, timestamp=score.time_ns)
        return self._marker(f"score {score.name}", score.id, score.trace_id, score.span_id,
                            score.time_ns, attrs, [event])

    def _session_event(self, ev: SessionEvent) -> ReadableSpan:
        attrs: dict[str, Any] = {
            "session.id": ev.session_id, "user.id": ev.user_id,
            "llmvigil.session.event": ev.event, "llmvigil.feature": ev.feature,
            **{f"llmvigil.metadata.{k}": v for k, v in ev.metadata.items()},
        }
        return self._marker(f"session.{ev.event}", ev.id, ev.trace_id, None, ev.time_ns,
                            attrs)

    def _verdict(self, v: SafetyVerdict) -> ReadableSpan:
        attrs: dict[str, Any] = {
            "llmvigil.safety.action": v.action, "llmvigil.safety.reason": v.reason,
            "llmvigil.safety.category": v.category,
            "llmvigil.safety.decided_by": v.decided_by,
            **{f"llmvigil.metadata.{k}": val for k, val in v.metadata.items()},
        }
        return self._marker("llmvigil.safety", v.id, v.trace_id, v.span_id, v.time_ns, attrs)

    # -- export hooks ------------------------------------------------------------------

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self.spans.send_spans([self._span(s) for s in spans])

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self.spans.send_spans([self._score(s) for s in scores])

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        return self.spans.send_spans([self._session_event(e) for e in events])

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        return self.spans.send_spans([self._verdict(v) for v in verdicts])

    @hookimpl
    def llmvigil_export_metrics(self, metrics: Sequence[Metric]) -> ExportResult:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        data = self._metrics_data(metrics)
        exporter = self.metrics.exporter
        return self.metrics.send(
            lambda: exporter.export(data, timeout_millis=self.timeout_s * 1000),
            MetricExportResult.SUCCESS,
        )

    def _metrics_data(self, metrics: Sequence[Metric]) -> Any:
        from opentelemetry.sdk.metrics.export import (
            Gauge,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.metrics.export import Metric as OtelMetric

        o = self._otel
        points: dict[tuple[str, str | None], list[NumberDataPoint]] = {}
        for m in metrics:
            attrs = o.clean_attributes({**m.labels, "llmvigil.window_s": m.window_s or None})
            start = m.time_ns - int(m.window_s * 1e9) if m.window_s else m.time_ns
            points.setdefault((m.name, m.unit), []).append(NumberDataPoint(
                attributes=attrs, start_time_unix_nano=start, time_unix_nano=m.time_ns,
                value=m.value))
        otel_metrics = [
            OtelMetric(name=name if name.startswith("llmvigil.") else f"llmvigil.{name}",
                       description=None, unit=unit,
                       data=Gauge(data_points=dps))
            for (name, unit), dps in points.items()
        ]
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=self.resource,
            scope_metrics=[ScopeMetrics(scope=o.SCOPE, metrics=otel_metrics, schema_url="")],
            schema_url="",
        )])

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        # An empty ExportTraceServiceRequest is valid OTLP: it tests the endpoint and
        # the headers without sending any data.
        if self.spans.send_spans([]) is not ExportResult.SUCCESS:
            status = self.spans.last_status
            raise ConnectionError(
                f"OTLP endpoint {self.endpoint} "
                + (f"answered HTTP {status}" if status else "did not answer")
                + "; check endpoint/headers (or OTEL_EXPORTER_OTLP_ENDPOINT)"
            )
        return f"OTLP/HTTP collector at {self.endpoint}"

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        return True  # nothing is buffered: every export is synchronous

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self.spans.close()
        self.metrics.close()


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="otlp",
            factory=OtlpBackend,
            capabilities=CAPABILITIES,
            description="any OpenTelemetry collector over OTLP/HTTP (GenAI conventions)",
            extra="otlp",
        )
    ]
