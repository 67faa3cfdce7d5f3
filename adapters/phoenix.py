"""The ``phoenix`` backend: Arize Phoenix, self-hosted or cloud.

Spans go over OTLP/HTTP with OpenInference attributes (``openinference.span.kind``,
``llm.model_name``, ``llm.token_count.*``, ``input.value``/``output.value``,
``llm.input_messages``..., ``session.id``, ``user.id``, ``metadata``,
``tag.tags``), the original trace/span ids and times, a ``First Token Stream
Event`` for time to first token, and the project named by the
``openinference.project.name`` resource attribute. The GenAI attributes of the
``otlp`` backend ride along (without duplicating content) so nothing llmvigil knows
is lost. Phoenix fills in OpenInference attributes it finds missing from the GenAI
ones (``llm.invocation_parameters`` from ``gen_ai.request.*``, an ``output.value``
from the response model and id...); two hints let the importer tell the span's own
from those: ``llmvigil.attribute_keys`` lists the span's own attribute names, and
``llmvigil.operation.explicit`` says an operation equal to the one its kind implies
was the span's own (the GenAI attributes always carry one).

Delivery is batched and synchronous: the outbox hands a batch to
``phoenix.otel.HTTPSpanExporter.export()`` (the batched path; no
``SimpleSpanProcessor``, no SDK background queue), so an outage is reported as
RETRY and the batch journaled.

Scores, session events and safety verdicts become Phoenix annotations through
``phoenix.client`` with ``sync=True``: span annotations (trace annotations when
only the trace is known, session annotations when only the session is). Phoenix
ingests spans asynchronously and refuses to annotate a span it has not stored yet
(HTTP 404 "... do not exist"), so that answer means RETRY, for at most
``annotation_wait_s`` after Phoenix first said so, after which the annotation is
dropped with a warning. Every annotation's ``identifier`` is the llmvigil record
id, so re-delivery upserts.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import MissingExtraError
from ..core.model import SafetyVerdict, Score, SessionEvent, Span
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult
from .otlp import default_operation, genai_attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["ATTRIBUTE_KEYS", "CAPABILITIES", "OPERATION_EXPLICIT", "PhoenixBackend",
           "openinference_attributes"]

_log = logging.getLogger("llmvigil.adapters.phoenix")

DEFAULT_ENDPOINT = "http://127.0.0.1:6006"
FIRST_TOKEN_EVENT = "First Token Stream Event"
#: The names of the span's own attributes (Phoenix adds attributes of its own).
ATTRIBUTE_KEYS = "llmvigil.attribute_keys"
#: ``True``: the span's operation is its own, although its kind implies the same one.
OPERATION_EXPLICIT = "llmvigil.operation.explicit"

CAPABILITIES = Capabilities(
    holds={
        "spans": "Phoenix spans (OTLP, OpenInference attributes) in the configured project",
        "scores": "span annotations (trace annotations for trace-level scores, session "
                  "annotations for session-only ones); name=score name, score=value, "
                  "label, explanation=comment",
        "session_events": "session annotations named 'session.<event>' on the session",
        "safety_verdicts": "span annotation 'safety' (label=action, explanation=reason)",
    },
    notes=(
        "metrics and alerts are not held: Phoenix has no store for aggregates",
        "annotation times are Phoenix's receive times; the record time is in the "
        "annotation metadata (llmvigil.time_ns)",
        "a score linked to no span, trace or session (a verdict to no span or trace) "
        "cannot be placed: it is not sent, with a warning in the log",
        "annotations of spans Phoenix never receives (sampled out, sent elsewhere) are "
        "retried for annotation_wait_s, then dropped with a warning",
    ),
)

_OI_KINDS = {"llm": "LLM", "chain": "CHAIN", "tool": "TOOL", "retriever": "RETRIEVER",
             "embedding": "EMBEDDING", "agent": "AGENT"}
_ANNOTATOR = {"user": "HUMAN", "review": "HUMAN", "human": "HUMAN", "judge": "LLM",
              "llm": "LLM"}
_MISSING = re.compile(r"with IDs (.*) do not exist", re.DOTALL)
# Content is carried by the OpenInference attributes; GenAI copies would double it.
_GENAI_CONTENT = ("llmvigil.input", "llmvigil.output", "gen_ai.input.messages",
                  "gen_ai.output.messages", "gen_ai.system_instructions", "llmvigil.tags")


def _mime(value: Any) -> str:
    return "text/plain" if isinstance(value, str) else "application/json"


def openinference_attributes(span: Span) -> dict[str, Any]:
    """The span's attributes under OpenInference names (GenAI extras included)."""
    from . import _otel

    out = {k: v for k, v in genai_attributes(span).items()
           if k not in _GENAI_CONTENT and not k.startswith("llmvigil.metadata.")}
    if span.attributes:
        out[ATTRIBUTE_KEYS] = sorted(span.attributes)
    if span.operation is not None and span.operation == default_operation(span.kind):
        out[OPERATION_EXPLICIT] = True
    out["openinference.span.kind"] = _OI_KINDS.get(span.kind, "CHAIN")
    out["session.id"] = span.session_id
    out["user.id"] = span.user_id
    if span.tags:
        out["tag.tags"] = list(span.tags)
    if span.metadata:
        out["metadata"] = _otel.text_value(span.metadata)
    if span.input is not None:
        out["input.value"] = _otel.text_value(span.input)
        out["input.mime_type"] = _mime(span.input)
    if span.output is not None:
        out["output.value"] = _otel.text_value(span.output)
        out["output.mime_type"] = _mime(span.output)
    model = span.response_model or span.model
    if span.kind == "embedding":
        out["embedding.model_name"] = model
    elif span.kind == "tool":
        out["tool.name"] = span.name
    if span.kind == "llm":
        out["llm.model_name"] = model
        out["llm.provider"] = span.provider
        out["llm.system"] = span.provider
        out["llm.finish_reason"] = span.stop_reason
        _messages(out, span)
    u = span.usage
    if u is not None:
        # OpenInference counts cached prompt tokens inside the prompt total, with
        # the cache split as details (as its Anthropic instrumentation does).
        prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
        out["llm.token_count.prompt"] = prompt
        out["llm.token_count.completion"] = u.output_tokens
        out["llm.token_count.total"] = prompt + u.output_tokens
        out["llm.token_count.prompt_details.cache_read"] = u.cache_read_tokens
        out["llm.token_count.prompt_details.cache_write"] = u.cache_write_tokens
    return out


def _messages(out: dict[str, Any], span: Span) -> None:
    from . import _otel

    chat = _otel.input_messages(span.input)
    if chat is not None:
        messages, system = chat
        if system:
            parts = system if isinstance(system, list) else [system]
            messages = [{"role": "system", "parts": [_otel.part(p) for p in parts]},
                        *messages]
        for i, m in enumerate(messages):
            out[f"llm.input_messages.{i}.message.role"] = m["role"]
            out[f"llm.input_messages.{i}.message.content"] = _otel.message_text(m)
    reply = _otel.output_messages(span.output, span.stop_reason)
    if reply is not None:
        out["llm.output_messages.0.message.role"] = reply[0]["role"]
        out["llm.output_messages.0.message.content"] = _otel.message_text(reply[0])


def _base_url(setting: Any) -> str:
    url = str(setting or os.environ.get("PHOENIX_COLLECTOR_ENDPOINT") or DEFAULT_ENDPOINT)
    url = url.rstrip("/")
    return url[: -len("/v1/traces")] if url.endswith("/v1/traces") else url


class PhoenixBackend:
    """Exports spans to Phoenix over OTLP and scores/sessions as annotations.

    Settings: ``endpoint`` (base URL; env ``PHOENIX_COLLECTOR_ENDPOINT``),
    ``api_key`` (env ``PHOENIX_API_KEY``), ``project`` (env ``PHOENIX_PROJECT`` or
    ``PHOENIX_PROJECT_NAME``, default ``default``), ``headers`` (env
    ``PHOENIX_CLIENT_HEADERS``), ``compression``
    (``gzip`` default), ``annotation_wait_s`` (30), plus ``timeout_s`` and
    ``service`` from llmvigil.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import httpx
            from phoenix.client import Client
            from phoenix.client.exceptions import PhoenixException
            from phoenix.otel import HTTPSpanExporter
            from phoenix.otel.settings import get_env_client_headers

            from . import _otel
        except ModuleNotFoundError as exc:
            raise MissingExtraError("phoenix", "phoenix", exc.name or "arize-phoenix-otel") \
                from exc
        self._otel = _otel
        self._httpx = httpx
        self._phoenix_error = PhoenixException
        self.endpoint = _base_url(settings.get("endpoint"))
        # Phoenix's own precedence: PHOENIX_PROJECT, then its alias PHOENIX_PROJECT_NAME.
        self.project = str(settings.get("project") or os.environ.get("PHOENIX_PROJECT")
                           or os.environ.get("PHOENIX_PROJECT_NAME") or "default")
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        self.annotation_wait_s = float(settings.get("annotation_wait_s", 30.0))
        raw_headers = settings.get("headers") or get_env_client_headers() or {}
        if not isinstance(raw_headers, Mapping):
            raise ValueError("headers: expected a mapping of header name to value")
        headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        api_key = settings.get("api_key") or os.environ.get("PHOENIX_API_KEY")
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        comp = _otel.compression(settings.get("compression"))
        self.resource = _otel.make_resource({
            "service.name": settings.get("service", "llm-app"),
            "openinference.project.name": self.project,
        })
        traces_url = f"{self.endpoint}/v1/traces"
        self.sender = _otel.HttpSender(lambda session: HTTPSpanExporter(
            endpoint=traces_url, headers=headers or None, timeout=self.timeout_s,
            compression=comp, session=session))
        self._http = httpx.Client(base_url=self.endpoint, headers=headers,
                                  timeout=self.timeout_s)
        self.client = Client(http_client=self._http)
        # (kind, id) -> monotonic time Phoenix first said the target does not exist.
        self._missing_since: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"<PhoenixBackend {self.endpoint} project={self.project!r}>"

    # -- spans -----------------------------------------------------------------------

    def _span(self, span: Span) -> ReadableSpan:
        from opentelemetry.sdk.trace import Event
        from opentelemetry.trace import SpanKind

        o = self._otel
        events = []
        if span.ttft_s is not None:
            events.append(Event(FIRST_TOKEN_EVENT,
                                {"gen_ai.server.time_to_first_token": span.ttft_s},
                                timestamp=span.start_ns + int(span.ttft_s * 1e9)))
        if span.status == "error" or span.error_type:
            events.append(o.exception_event(span))
        kind = SpanKind.CLIENT if span.kind in ("llm", "embedding") else SpanKind.INTERNAL
        return o.readable_span(
            name=span.name, trace_id=span.trace_id, span_id=span.id,
            parent_id=span.parent_id, start_ns=span.start_ns, end_ns=span.end_ns,
            resource=self.resource, attributes=openinference_attributes(span),
            events=events, kind=kind, status=span.status, error=span.error,
        )

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self.sender.send_spans([self._span(s) for s in spans])

    # -- annotations -------------------------------------------------------------------

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        groups: dict[str, list[dict[str, Any]]] = {"span": [], "trace": [], "session": []}
        unplaced = 0
        for s in scores:
            target = (("span", s.span_id) if s.span_id else ("trace", s.trace_id)
                      if s.trace_id else ("session", s.session_id) if s.session_id
                      else None)
            if target is None:
                unplaced += 1
                continue
            meta = {"llmvigil.kind": s.kind, "llmvigil.source": s.source,
                    "llmvigil.time_ns": s.time_ns, "category": s.category,
                    "correction": s.correction, "user.id": s.user_id,
                    "session.id": s.session_id, "feature": s.feature,
                    "trace_id": s.trace_id, **s.metadata}
            groups[target[0]].append(_annotation(
                target, name=s.name, kind=_ANNOTATOR.get(s.source.lower(), "CODE"),
                label=s.label or s.category or s.kind, score=s.value,
                explanation=s.comment or s.correction, metadata=meta, identifier=s.id))
        result = self._annotate_groups(groups)
        if unplaced:
            _log.warning("phoenix: %d score(s) name no span, trace or session; not sent",
                         unplaced)
            if result is ExportResult.SUCCESS and unplaced == len(scores):
                return ExportResult.FAILURE
        return result

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        annotations = [
            _annotation(("session", e.session_id), name=f"session.{e.event}", kind="CODE",
                        label=e.event, score=None, explanation=None, identifier=e.id,
                        metadata={"llmvigil.time_ns": e.time_ns, "user.id": e.user_id,
                                  "trace_id": e.trace_id, "feature": e.feature,
                                  **e.metadata})
            for e in events
        ]
        return self._annotate("session", annotations)

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        groups: dict[str, list[dict[str, Any]]] = {"span": [], "trace": [], "session": []}
        for v in verdicts:
            target = ("span", v.span_id) if v.span_id else ("trace", v.trace_id)
            if target[1] is None:
                _log.warning("phoenix: safety verdict %s names no span or trace", v.id)
                continue
            groups[target[0]].append(_annotation(
                target, name="safety",
                kind="LLM" if (v.decided_by or "").startswith("judge") else "CODE",
                label=v.action, score=None, explanation=v.reason or None, identifier=v.id,
                metadata={"llmvigil.time_ns": v.time_ns, "category": v.category,
                          "decided_by": v.decided_by, **v.metadata}))
        return self._annotate_groups(groups)

    def _annotate_groups(self, groups: Mapping[str, list[dict[str, Any]]]) -> ExportResult:
        results = [self._annotate(kind, items) for kind, items in groups.items() if items]
        for worst in (ExportResult.RETRY, ExportResult.FAILURE):
            if worst in results:
                return worst
        return ExportResult.SUCCESS

    def _poster(self, kind: str) -> Callable[[list[dict[str, Any]]], Any]:
        c: Any = self.client  # annotations are built as plain dicts (the REST shape)
        if kind == "span":
            return lambda items: c.spans.log_span_annotations(span_annotations=items,
                                                              sync=True)
        if kind == "trace":
            return lambda items: c.traces.log_trace_annotations(trace_annotations=items,
                                                                sync=True)
        return lambda items: c.sessions.log_session_annotations(session_annotations=items,
                                                                sync=True)

    def _annotate(self, kind: str, items: list[dict[str, Any]]) -> ExportResult:
        """POST one kind of annotation; on "unknown target" send the rest, then wait."""
        key = f"{kind}_id"
        post = self._poster(kind)
        httpx = self._httpx
        try:
            post(items)
        except httpx.HTTPStatusError as exc:
            response = exc.response
            missing = _missing_ids(response) if response.status_code == 404 else None
            if missing is None:
                _log.warning("phoenix: %s annotations refused: HTTP %s %s", kind,
                             response.status_code, response.text[:200])
                return self._otel.classify_status(response.status_code)
            present = [a for a in items if str(a[key]).strip() not in missing]
            if len(present) < len(items) and present:
                result = self._annotate(kind, present)
                if result is not ExportResult.SUCCESS:
                    return result
            return self._still_waiting(kind, missing)
        except httpx.TransportError:
            return ExportResult.RETRY
        except self._phoenix_error as exc:
            if "requires Phoenix" in str(exc):  # the server is too old for this route
                _log.warning("phoenix: %s", exc)
                return ExportResult.FAILURE
            return ExportResult.RETRY
        for a in items:
            self._missing_since.pop((kind, a[key]), None)
        return ExportResult.SUCCESS

    def _still_waiting(self, kind: str, missing: set[str]) -> ExportResult:
        now = time.monotonic()
        expired = [i for i in missing
                   if now - self._missing_since.setdefault((kind, i), now)
                   > self.annotation_wait_s]
        if len(expired) < len(missing):
            return ExportResult.RETRY
        for i in expired:
            self._missing_since.pop((kind, i), None)
        _log.warning("phoenix: %d %s(s) still unknown to Phoenix after %.0fs; their "
                     "annotations are dropped", len(expired), kind, self.annotation_wait_s)
        return ExportResult.FAILURE

    # -- lifecycle -------------------------------------------------------------------

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        response = self._http.get("v1/projects", params={"limit": 1}, timeout=timeout_s)
        if response.status_code in (401, 403):
            raise PermissionError(f"Phoenix at {self.endpoint} refused the credentials "
                                  f"(HTTP {response.status_code}); check api_key")
        response.raise_for_status()
        version = self._http.get("arize_phoenix_version", timeout=timeout_s).text.strip()
        return f"Phoenix {version} at {self.endpoint}, project {self.project!r}"

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        return True  # nothing is buffered: every export is synchronous

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self.sender.close()
        self._http.close()


def _annotation(target: tuple[str, str | None], *, name: str, kind: str, label: str | None,
                score: float | None, explanation: str | None, metadata: Mapping[str, Any],
                identifier: str) -> dict[str, Any]:
    """One annotation in Phoenix's REST shape (``note`` is a reserved name)."""
    result: dict[str, Any] = {}
    if label:
        result["label"] = label
    if score is not None:
        result["score"] = score
    if explanation:
        result["explanation"] = explanation
    return {
        f"{target[0]}_id": target[1],
        "name": "llmvigil.note" if name == "note" else name,
        "annotator_kind": kind,
        "result": result,
        "metadata": {k: v for k, v in metadata.items() if v is not None},
        "identifier": identifier,
    }


def _missing_ids(response: Any) -> set[str] | None:
    """The ids in Phoenix's "X with IDs a, b do not exist." 404, or ``None``."""
    try:
        detail = response.json().get("detail", "")
    except Exception:
        detail = response.text
    match = _MISSING.search(str(detail))
    return {i.strip() for i in match.group(1).split(", ")} if match else None


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="phoenix",
            factory=PhoenixBackend,
            capabilities=CAPABILITIES,
            description="Arize Phoenix: OpenInference spans over OTLP, scores as annotations",
            extra="phoenix",
        )
    ]
