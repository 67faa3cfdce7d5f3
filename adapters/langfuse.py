"""The Langfuse backend: spans become Langfuse observations, scores become Langfuse scores.

Spans travel the way the Langfuse SDK (5.x, OpenTelemetry based) sends them: OTLP/HTTP
protobuf to ``<host>/api/public/otel/v1/traces`` with Basic auth and the SDK's
``x-langfuse-*`` headers, each span carrying Langfuse's own attribute names
(``langfuse.observation.type``, ``...usage_details``, ``user.id``...), built with the
SDK's attribute constants and helpers so the encoding is the SDK's.

Why not ``Langfuse().start_observation()``: the SDK stamps start = now, while llmvigil
delivers finished spans later (and replays them from its journal after an outage), so
original timestamps would be lost; and the SDK exports through a background
``BatchSpanProcessor`` and a background score queue, fire-and-forget, so an outage
would lose data silently. Instead this module builds OpenTelemetry ``ReadableSpan``\\ s
with the original start/end nanoseconds, W3C trace/span ids and parent links, and calls
an ``OTLPSpanExporter``'s ``export()`` synchronously. That exporter retries 429/502/
503/504 by itself within its ``timeout``, which is set to the backend's ``timeout_s``
so one export never outlives it. ``export()`` only says success/failure, so a response
hook on its ``requests`` session records the HTTP status to tell a permanent 4xx
(``FAILURE``) from a transient one (``RETRY``). 401 and 403 (keys refused) are
``RETRY`` too: records sent while the keys are being fixed are journaled and delivered
once they are accepted, with one warning per outage naming the settings to fix.

Scores go through the SDK's synchronous REST client (``langfuse.api.LangfuseAPI``,
``POST /api/public/scores``, a JSON list) with ``max_retries=0`` and the backend
timeout: the outbox owns retries. Score ids are the llmvigil record ids, and the score
timestamp is the record's time, so re-delivery updates the same Langfuse score (the API
upserts on id + timestamp).

Session events are held as **session scores** (categorical ``session_event`` =
``start``/``follow_up``/``task_complete``/``abandon`` on the Langfuse session), so
Langfuse's score analytics can count completions and abandons per session; safety
verdicts as categorical ``safety_verdict`` scores on the span. Metrics and alerts are
not held: Langfuse has no place for free-standing time series or alerts.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import msgspec

from ..core.errors import ConfigError, MissingExtraError
from ..core.model import SafetyVerdict, Score, SessionEvent, Span
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = ["CAPABILITIES", "LangfuseBackend"]

_log = logging.getLogger("llmvigil.adapters.langfuse")

CAPABILITIES = Capabilities(
    holds={
        "spans": "observations (llm -> generation, embedding -> embedding, chain/tool/"
                 "retriever/agent/span alike) in traces, via the OTLP endpoint",
        "scores": "scores on the trace/observation (BOOLEAN thumbs, NUMERIC values, "
                  "CATEGORICAL labels), or on the session when no span is linked",
        "session_events": "CATEGORICAL session score 'session_event' = the event name",
        "safety_verdicts": "CATEGORICAL score 'safety_verdict' = the action, on the span",
    },
    notes=(
        "metrics and alerts: not held (no free-standing time series or alerts)",
        "cost: only the total (cost_details.total); no input/output split",
        "TBT statistics, provider, price source, finish reason, free attributes: "
        "observation metadata key 'llmvigil'",
        "environment: lowercased, characters outside [a-z0-9_-] become '-', max 40; "
        "a value starting with 'langfuse' is dropped (Langfuse rule)",
        "score source: Langfuse accepts only API, so llmvigil's source is in metadata",
        "scores/verdicts linked to nothing Langfuse can hold (no trace, no session) "
        "are skipped with a warning",
        "score environment: that of the trace's (or session's) spans seen by this "
        "process, else the backend's 'environment' setting",
    ),
)

DEFAULT_HOST = "https://cloud.langfuse.com"
OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
_OBSERVATION_TYPES = {
    "llm": "generation", "embedding": "embedding", "chain": "chain", "tool": "tool",
    "retriever": "retriever", "agent": "agent", "span": "span",
}
_GENERATION_LIKE = frozenset(("generation", "embedding"))
_RETRYABLE_4XX = frozenset((408, 425, 429))
_AUTH_STATUSES = frozenset((401, 403))
_HEX = re.compile(r"[0-9a-f]+")
_ENV_INVALID = re.compile(r"[^a-z0-9_-]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CACHE_SIZE = 100_000


class _Lru:
    """A bounded mapping that forgets the least recently written key."""

    def __init__(self, size: int) -> None:
        self._data: collections.OrderedDict[Any, str] = collections.OrderedDict()
        self._size = size

    def put(self, key: Any, value: str) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)

    def get(self, key: Any) -> str | None:
        return self._data.get(key)


def _setting(settings: Mapping[str, Any], key: str, *env_vars: str) -> str | None:
    """A setting from the YAML, else the first set environment variable, else None."""
    value = settings.get(key)
    if value is not None and str(value) != "":
        return str(value)
    for name in env_vars:
        env = os.environ.get(name)
        if env:
            return env
    return None


def langfuse_environment(value: str | None) -> str | None:
    """``value`` made a valid Langfuse environment name, or None when it cannot be."""
    if not value:
        return None
    env = _ENV_INVALID.sub("-", value.strip().lower()).strip("-")[:40]
    if not env or env.startswith("langfuse"):
        return None
    return env


def trace_hex(value: str) -> str:
    """The 32-hex W3C trace id for an llmvigil trace id (non-W3C ids hashed like the SDK)."""
    if len(value) == 32 and _HEX.fullmatch(value) and int(value, 16):
        return value
    return hashlib.sha256(value.encode("utf-8")).digest()[:16].hex()


def span_hex(value: str) -> str:
    """The 16-hex W3C span id for an llmvigil span id (non-W3C ids hashed like the SDK)."""
    if len(value) == 16 and _HEX.fullmatch(value) and int(value, 16):
        return value
    return hashlib.sha256(value.encode("utf-8")).digest()[:8].hex()


def _utc(ns: int) -> datetime:
    """Wall-clock nanoseconds as an aware UTC datetime (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _usage_details(span: Span) -> dict[str, int] | None:
    u = span.usage
    if u is None:
        return None
    details = {"input": u.input_tokens, "output": u.output_tokens}
    if u.cache_read_tokens:
        details["input_cache_read"] = u.cache_read_tokens
    if u.cache_write_tokens:
        details["input_cache_creation"] = u.cache_write_tokens
    details["total"] = u.total_tokens
    return details


def _metadata(span: Span, generation_like: bool) -> dict[str, Any]:
    """User metadata plus the llmvigil fields Langfuse has no column for."""
    extras: dict[str, Any] = {
        "kind": span.kind,
        "provider": span.provider,
        "operation": span.operation,
        "response_id": span.response_id,
        "stop_reason": span.stop_reason,
        "error_type": span.error_type,
        "price_source": span.price_source,
        "price_version": span.price_version,
        "ttft_s": span.ttft_s,
        "stream": msgspec.to_builtins(span.stream) if span.stream is not None else None,
        "attributes": span.attributes or None,
    }
    if generation_like:
        if span.response_model and span.model and span.model != span.response_model:
            extras["request_model"] = span.model
    else:  # span-like observations have no model/usage/cost columns
        extras["model"] = span.response_model or span.model
        extras["usage"] = msgspec.to_builtins(span.usage) if span.usage is not None else None
        extras["cost_usd"] = span.cost_usd
    metadata = dict(span.metadata)
    if span.feature is not None:
        metadata.setdefault("feature", span.feature)
    metadata.setdefault("llmvigil", {k: v for k, v in extras.items() if v is not None})
    return metadata


def span_attributes(span: Span, environment: str | None = None,
                    release: str | None = None) -> dict[str, Any]:
    """The OpenTelemetry attributes, Langfuse names, that describe ``span`` as an observation.

    ``environment``/``release`` are used when the span carries none.
    """
    from langfuse._client.attributes import (
        LangfuseOtelSpanAttributes as A,
    )
    from langfuse._client.attributes import (
        create_generation_attributes,
        create_span_attributes,
    )

    obs_type = _OBSERVATION_TYPES.get(span.kind, "span")
    generation_like = obs_type in _GENERATION_LIKE
    level = None
    status_message = None
    if span.status == "error":
        level = "ERROR"
        message = span.error or "error"
        status_message = f"{span.error_type}: {message}" if span.error_type else message
    metadata = _metadata(span, generation_like)
    attrs: dict[str, Any]
    if generation_like:
        completion_start = None
        if span.ttft_s is not None:
            completion_start = _utc(span.start_ns + round(span.ttft_s * 1e9))
        attrs = create_generation_attributes(
            completion_start_time=completion_start, metadata=metadata,
            level=cast(Any, level), status_message=status_message,
            model=span.response_model or span.model, input=span.input, output=span.output,
            usage_details=_usage_details(span),
            cost_details={"total": span.cost_usd} if span.cost_usd is not None else None,
            observation_type=cast(Any, obs_type),
        )
    else:
        attrs = create_span_attributes(
            metadata=metadata, input=span.input, output=span.output, level=cast(Any, level),
            status_message=status_message, observation_type=cast(Any, obs_type),
        )
    env = langfuse_environment(span.environment) or environment
    if env:
        attrs[A.ENVIRONMENT] = env
    if span.release or release:
        attrs[A.RELEASE] = span.release or release
    if span.user_id is not None:
        attrs[A.TRACE_USER_ID] = str(span.user_id)
    if span.session_id is not None:
        attrs[A.TRACE_SESSION_ID] = str(span.session_id)
    if span.tags:
        attrs[A.TRACE_TAGS] = [str(t) for t in span.tags]
    if span.parent_id is None:
        attrs[A.TRACE_NAME] = span.name
        # Like LangfuseSpanProcessor, which marks the first exported span of a trace.
        attrs[A.IS_APP_ROOT] = True
    return attrs


class LangfuseBackend:
    """Delivers spans, scores, session events and safety verdicts to one Langfuse project.

    Settings: ``public_key`` (env ``LANGFUSE_PUBLIC_KEY``), ``secret_key``
    (``LANGFUSE_SECRET_KEY``), ``host`` or ``base_url`` (``LANGFUSE_BASE_URL``,
    ``LANGFUSE_HOST``, default ``https://cloud.langfuse.com``), ``environment``
    (``LANGFUSE_TRACING_ENVIRONMENT``) and ``release`` (``LANGFUSE_RELEASE``) used for
    spans that carry none, plus ``timeout_s`` and ``service`` from llmvigil.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        public_key = _setting(settings, "public_key", "LANGFUSE_PUBLIC_KEY")
        secret_key = _setting(settings, "secret_key", "LANGFUSE_SECRET_KEY")
        if not public_key or not secret_key:
            missing = [name for name, value in (("public_key", public_key),
                                                ("secret_key", secret_key)) if not value]
            raise ValueError(
                f"{' and '.join(missing)} not set: give it in the backend settings or set "
                + " / ".join(f"LANGFUSE_{m.upper()}" for m in missing)
            )
        host = (_setting(settings, "host")
                or _setting(settings, "base_url", "LANGFUSE_BASE_URL", "LANGFUSE_HOST")
                or DEFAULT_HOST)
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"host must be an http(s) URL, got {host!r}")
        self.host = host.rstrip("/")
        self.public_key = public_key
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        self.environment = langfuse_environment(
            _setting(settings, "environment", "LANGFUSE_TRACING_ENVIRONMENT"))
        self.release = _setting(settings, "release", "LANGFUSE_RELEASE")
        service = str(settings.get("service") or "llm-app")
        try:
            self._init_sdk(public_key, secret_key, service)
        except ImportError as exc:
            raise MissingExtraError("langfuse", "langfuse", exc.name or "langfuse") from exc
        self._lock = threading.Lock()
        self._last_status: int | None = None
        self._auth_warned = False  # the current refused-keys outage was logged
        # What exported spans taught: a span's trace (feedback given by span id) and the
        # environment of a trace or session (scores carry none of their own).
        self._span_traces = _Lru(_CACHE_SIZE)
        self._environments = _Lru(_CACHE_SIZE)

    def _init_sdk(self, public_key: str, secret_key: str, service: str) -> None:
        import httpx
        import requests
        from langfuse._client.attributes import LangfuseOtelSpanAttributes as A
        from langfuse._client.constants import LANGFUSE_TRACER_NAME
        from langfuse._version import __version__ as sdk_version
        from langfuse.api import LangfuseAPI
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        # The same headers LangfuseSpanProcessor sends (langfuse/_client/span_processor.py).
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        headers = {
            "Authorization": f"Basic {token}",
            "x-langfuse-sdk-name": "python",
            "x-langfuse-sdk-version": sdk_version,
            "x-langfuse-public-key": public_key,
            "x-langfuse-ingestion-version": "4",
        }
        session = requests.Session()
        session.hooks["response"].append(self._on_response)
        self._exporter = OTLPSpanExporter(
            endpoint=self.host + OTEL_TRACES_PATH, headers=headers, timeout=self.timeout_s,
            compression=Compression.Gzip, session=session,
        )
        resource_attrs = {"service.name": service}
        if self.environment:
            resource_attrs[A.ENVIRONMENT] = self.environment
        if self.release:
            resource_attrs[A.RELEASE] = self.release
        self._resource = Resource.create(resource_attrs)
        # The SDK's scope: Langfuse then reads only the langfuse.* attributes instead of
        # dumping every attribute into metadata, and checks the public key matches.
        self._scope = InstrumentationScope(
            LANGFUSE_TRACER_NAME, sdk_version, None, {"public_key": public_key})
        self._http = httpx.Client(timeout=self.timeout_s)
        self._api = LangfuseAPI(
            base_url=self.host, username=public_key, password=secret_key,
            x_langfuse_sdk_name="python", x_langfuse_sdk_version=sdk_version,
            x_langfuse_public_key=public_key, httpx_client=self._http, timeout=self.timeout_s,
        )

    def __repr__(self) -> str:
        return f"<LangfuseBackend {self.host} public_key={self.public_key!r}>"

    def _on_response(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self._last_status = response.status_code

    # -- spans -------------------------------------------------------------------------

    def to_otel(self, span: Span) -> Any:
        """``span`` as an OpenTelemetry ``ReadableSpan`` with its original times and ids."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace_id = int(trace_hex(span.trace_id), 16)
        flags = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(trace_id, int(span_hex(span.id), 16), False, flags)
        parent = None
        if span.parent_id:
            parent = SpanContext(trace_id, int(span_hex(span.parent_id), 16), False, flags)
        if span.status == "error":
            status = Status(StatusCode.ERROR, span.error or "error")
        elif span.status == "ok":
            status = Status(StatusCode.OK)
        else:
            status = Status(StatusCode.UNSET)
        return ReadableSpan(
            name=span.name or span.kind, context=context, parent=parent,
            resource=self._resource,
            attributes=span_attributes(span, self.environment, self.release),
            kind=SpanKind.INTERNAL, status=status, start_time=span.start_ns,
            end_time=span.end_ns or span.start_ns, instrumentation_scope=self._scope,
        )

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        otel_spans = [self.to_otel(s) for s in spans]
        with self._lock:
            for s in spans:
                self._remember(s)
            self._last_status = None
            result = self._exporter.export(otel_spans)
            status = self._last_status
        if result is SpanExportResult.SUCCESS:
            self._auth_warned = False
            return ExportResult.SUCCESS
        return self._result_for_status(status, f"{len(spans)} spans")

    def _remember(self, span: Span) -> None:
        self._span_traces.put(span.id, span.trace_id)
        env = langfuse_environment(span.environment) or self.environment
        if env:
            self._environments.put(("trace", span.trace_id), env)
            if span.session_id is not None:
                self._environments.put(("session", str(span.session_id)), env)

    # -- scores, session events, safety verdicts ----------------------------------------

    def _target(self, trace_id: str | None, span_id: str | None,
                session_id: str | None) -> dict[str, str | None] | None:
        """The Langfuse ids (and environment) a score attaches to; None if nothing can."""
        with self._lock:
            if trace_id is None and span_id is not None:
                trace_id = self._span_traces.get(span_id)
            if trace_id is not None:
                target = {"trace_id": trace_hex(trace_id),
                          "environment": self._environments.get(("trace", trace_id))}
                if span_id is not None:
                    target["observation_id"] = span_hex(span_id)
                return target
            if session_id is not None:
                return {"session_id": str(session_id),
                        "environment": self._environments.get(("session", str(session_id)))}
        return None

    def _score_request(self, score: Score) -> dict[str, Any] | None:
        target = self._target(score.trace_id, score.span_id, score.session_id)
        if target is None:
            return None
        value: float | str
        if score.value is not None and math.isfinite(score.value):
            value = float(score.value)
            boolean = score.kind in ("thumbs_up", "thumbs_down") and value in (0.0, 1.0)
            data_type = "BOOLEAN" if boolean else "NUMERIC"
        else:
            value = str(score.label or score.category or score.kind)
            data_type = "CATEGORICAL"
        extra = {
            "kind": score.kind, "source": score.source, "label": score.label,
            "category": score.category, "correction": score.correction,
            "user_id": score.user_id, "session_id": score.session_id,
            "feature": score.feature,
        }
        metadata = {k: v for k, v in extra.items() if v is not None}
        metadata.update(score.metadata)
        return dict(target, id=score.id, name=score.name, value=value, data_type=data_type,
                    comment=score.comment, metadata=metadata, time_ns=score.time_ns)

    def _session_request(self, event: SessionEvent) -> dict[str, Any] | None:
        target = self._target(None, None, event.session_id)
        if target is None:
            return None
        extra = {"user_id": event.user_id, "feature": event.feature, "trace_id": event.trace_id}
        metadata = {k: v for k, v in extra.items() if v is not None}
        metadata.update(event.metadata)
        return dict(target, id=event.id, name="session_event", value=event.event,
                    data_type="CATEGORICAL", metadata=metadata, time_ns=event.time_ns)

    def _verdict_request(self, verdict: SafetyVerdict) -> dict[str, Any] | None:
        target = self._target(verdict.trace_id, verdict.span_id, None)
        if target is None:
            return None
        extra = {"category": verdict.category, "decided_by": verdict.decided_by}
        metadata = {k: v for k, v in extra.items() if v is not None}
        metadata.update(verdict.metadata)
        return dict(target, id=verdict.id, name="safety_verdict", value=verdict.action,
                    data_type="CATEGORICAL", comment=verdict.reason or None,
                    metadata=metadata, time_ns=verdict.time_ns)

    def _send_scores(self, items: list[dict[str, Any] | None], what: str) -> ExportResult:
        import httpx
        from langfuse.api import CreateScoreBatchResults, CreateScoreRequest, CreateScoreSource
        from langfuse.api.core.api_error import ApiError

        batch = []
        unlinked = 0
        for item in items:
            if item is None:
                unlinked += 1
                continue
            fields = {k: v for k, v in item.items() if v is not None}
            fields["timestamp"] = _utc(fields.pop("time_ns"))
            if "environment" not in fields and self.environment:
                fields["environment"] = self.environment
            try:
                # Only fields that are set: the SDK model serialises explicit Nones as null.
                batch.append(CreateScoreRequest(**fields, source=CreateScoreSource.API))
            except ValueError as exc:  # pydantic's ValidationError: permanent for this one
                _log.warning("llmvigil langfuse: %s %s skipped, not a valid Langfuse score: %s",
                             what, item["id"], exc)
        if unlinked:
            _log.warning("llmvigil langfuse: %d of %d %s skipped: linked to no trace, "
                         "span or session Langfuse knows", unlinked, len(items), what)
        if not batch:
            return ExportResult.SUCCESS
        try:
            response = self._api.scores.create(request=batch,
                                               request_options={"max_retries": 0})
        except ApiError as exc:
            return self._result_for_status(exc.status_code, f"{len(batch)} {what}")
        except (httpx.HTTPError, OSError) as exc:  # connection refused, timeouts
            _log.debug("llmvigil langfuse: %s not delivered: %r", what, exc)
            return ExportResult.RETRY
        self._auth_warned = False  # Langfuse answered: the keys are accepted again
        if isinstance(response, CreateScoreBatchResults) and response.rejected:
            _log.warning("llmvigil langfuse: Langfuse rejected %d of %d %s: %s",
                         response.rejected, len(batch), what,
                         "; ".join(e.message for e in response.errors))
            return ExportResult.FAILURE if not response.accepted else ExportResult.SUCCESS
        return ExportResult.SUCCESS

    def _result_for_status(self, status: int | None, what: str) -> ExportResult:
        """FAILURE for a permanent 4xx, RETRY for everything else that failed (401/403
        included: refused keys are fixable, records wait in the journal meanwhile)."""
        if status in _AUTH_STATUSES:
            if not self._auth_warned:
                _log.warning(
                    "llmvigil langfuse: Langfuse at %s refused the keys (HTTP %d); records "
                    "are kept (retried, then journaled) and sent once they are accepted: "
                    "check public_key/secret_key (LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY)",
                    self.host, status)
            self._auth_warned = True
            return ExportResult.RETRY
        if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
            _log.warning("llmvigil langfuse: %s refused with HTTP %d (not retried)",
                         what, status)
            return ExportResult.FAILURE
        return ExportResult.RETRY

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self._send_scores([self._score_request(s) for s in scores], "scores")

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        return self._send_scores([self._session_request(e) for e in events], "session events")

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        return self._send_scores([self._verdict_request(v) for v in verdicts],
                                 "safety verdicts")

    # -- lifecycle -----------------------------------------------------------------------

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        from langfuse.api.core.api_error import ApiError

        options = {"max_retries": 0, "timeout_in_seconds": max(1, math.ceil(timeout_s))}
        try:
            projects = self._api.projects.get(request_options=cast(Any, options))
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise ConfigError(
                    f"Langfuse at {self.host} rejected the keys (HTTP {exc.status_code}): "
                    "check public_key/secret_key (LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY)"
                ) from None
            raise ConnectionError(
                f"Langfuse at {self.host} answered HTTP {exc.status_code}") from None
        except Exception as exc:
            raise ConnectionError(f"cannot reach Langfuse at {self.host}: {exc}") from None
        names = ", ".join(f"{p.name} ({p.id})" for p in projects.data) or "no project"
        return f"Langfuse {self.host}, project {names}"

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        return True  # nothing is buffered: every export is synchronous

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self._exporter.shutdown()
        self._http.close()


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="langfuse",
            factory=LangfuseBackend,
            capabilities=CAPABILITIES,
            description="Langfuse (cloud or self-hosted): OTLP traces, scores API",
            extra="langfuse",
        )
    ]
