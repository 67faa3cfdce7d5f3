"""The LangSmith backend: spans as runs, scores and session events as feedback.

Spans become LangSmith *runs* in one project (a LangSmith "session"), sent with the
SDK's ``Client.multipart_ingest`` (``POST /runs/multipart``); scores and session
events become *feedback* through ``Client.create_feedback`` (``POST /feedback``).

Delivery is synchronous. The SDK's usual path queues runs for a background thread
and reports success at once, so the client is built with ``auto_batch_tracing=False``
and a ready-made ``info`` (no blocking ``GET /info`` round trip at start-up). Even
then ``multipart_ingest`` logs and swallows HTTP errors instead of raising them: they
reach its ``tracing_error_callback``, which this adapter collects per call and maps to
the export result (connection errors, timeouts, 408, 429 and 5xx: RETRY; 401 and 403,
a key that was refused: RETRY too, so records sent while the key is being fixed are
journaled and delivered once it is accepted, with one warning naming the setting; other
4xx: FAILURE; 409, already there: SUCCESS). The client gets no transport-level retries
(the outbox retries, with backoff and a journal) and a requests session that clamps
every request to the time left before the export's deadline (``timeout_s``), because
the SDK's own send timeout for runs is fixed at 10 s.

Ids are deterministic, so a re-delivered batch upserts. LangSmith requires a trace's
id to be the id of its root run and every run to carry its ``dotted_order`` (start
time and id of each ancestor, root first). llmvigil publishes a span when it *ends*,
so children usually reach this adapter before their parents. The rules:

* trace id (32 hex) -> ``trace_id`` and root run id ``UUID(trace_id)``;
  other spans -> run id ``UUID(span_id + trace_id[16:])``, whose first 8 bytes are
  the span id, as LangSmith's own OpenTelemetry bridge expects.
* a span's dotted order is built from the ancestors in the same batch, or from the
  dotted orders already sent (a bounded LRU, ``lineage_size`` spans); when the parent
  is unknown the run is attached to the trace's root run (its real parent span id
  stays in ``metadata.llmvigil_parent_span_id``) and the root's segment carries the
  run's own start time. A trace exported in one batch, or whose parents were exported
  first, gets its exact tree; a child exported before a non-root parent is shown
  higher up, directly under the root. A run re-sent by this process keeps the dotted
  order it was first sent with.
* scores follow the same rule: a span this process exported gets span-level feedback,
  anything else lands on the trace's root run, or on the project without a trace.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..core.errors import ConfigError, MissingExtraError
from ..core.model import Score, SessionEvent, Span, now_ns
from ..core.redaction import Redactor
from ..importers._common import http_status_of, setting
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = [
    "CAPABILITIES",
    "DEFAULT_ENDPOINT",
    "LangSmithBackend",
    "dotted_segment",
    "run_uuid",
    "trace_uuid",
]

_KEY_REDACTOR = Redactor(["api_key"])
_log = logging.getLogger("llmvigil.adapters.langsmith")

DEFAULT_ENDPOINT = "https://api.smith.langchain.com"

CAPABILITIES = Capabilities(
    holds={
        "spans": "runs in the project (POST /runs/multipart): tree, times, run_type, "
                 "usage_metadata with cost, ls_provider/ls_model_name, TTFT as a "
                 "new_token event, user/session/thread ids in metadata",
        "scores": "feedback (key = score name) on the span's run, the trace's root "
                  "run, or the project when the score has no trace",
        "session_events": "feedback key 'session_event' (value = event) on the trace's "
                          "root run, or on the project",
    },
    notes=(
        "metrics: not held; LangSmith computes its own aggregates and has no API to "
        "ingest external time series",
        "alerts: not held; LangSmith has no API to record alerts raised elsewhere",
        "safety_verdicts: not held; one feedback request per response would multiply "
        "API calls and extend every trace's retention",
        "cost: only total_cost (llmvigil does not split input/output cost)",
        "time between tokens (stream stats): in metadata.llmvigil_stream only",
        "root span id: the root run's id is the trace id; the span id is kept in "
        "metadata.llmvigil_span_id",
        "dotted_order: a child exported before a non-root parent is attached to the "
        "root run (see the adapter docs)",
    ),
)

#: llmvigil span kind -> LangSmith run_type (LangSmith has no agent or generic span).
RUN_TYPES: Mapping[str, str] = {
    "llm": "llm", "chain": "chain", "tool": "tool", "retriever": "retriever",
    "embedding": "embedding", "agent": "chain", "span": "chain",
}
_NAMESPACE = uuid.UUID("6c6c6d76-6967-696c-2d6c-616e67736d74")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HEX = frozenset("0123456789abcdef")
_SEGMENT_STAMP = "%Y%m%dT%H%M%S%fZ"
_RETRY_STATUSES = frozenset((408, 425, 429))
#: A refused key is fixable: retried (then journaled) like an outage, never dropped.
_AUTH_STATUSES = frozenset((401, 403))


# -- ids and times ------------------------------------------------------------------


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def trace_uuid(trace_id: str) -> uuid.UUID:
    """The LangSmith trace id (= root run id) of an llmvigil trace id."""
    low = trace_id.lower()
    if _is_hex(low, 32):
        return uuid.UUID(hex=low)
    return uuid.uuid5(_NAMESPACE, f"trace:{trace_id}")


def run_uuid(trace_id: str, span_id: str, *, root: bool = False) -> uuid.UUID:
    """The LangSmith run id of a span: the trace id for a root span, otherwise the
    span id followed by the low half of the trace id."""
    trace = trace_uuid(trace_id)
    if root:
        return trace
    low = span_id.lower()
    if _is_hex(low, 16):
        return uuid.UUID(hex=low + trace.hex[16:])
    return uuid.uuid5(_NAMESPACE, f"span:{trace_id}:{span_id}")


def _datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def dotted_segment(start_ns: int, run_id: uuid.UUID) -> str:
    """One dotted-order segment: the start time (UTC, microseconds) then the run id."""
    return _datetime(start_ns).strftime(_SEGMENT_STAMP) + str(run_id)


def _segment_ids(order: str) -> list[uuid.UUID]:
    return [uuid.UUID(part[-36:]) for part in order.split(".")]


class _Lineage:
    """The dotted orders already computed, by span id, bounded (least recent out)."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self._orders: collections.OrderedDict[str, tuple[str, str]] = (
            collections.OrderedDict()
        )

    def get(self, span_id: str, trace_id: str | None = None) -> tuple[str, str] | None:
        """``(trace_id, dotted_order)`` of a span seen before (of ``trace_id`` if given)."""
        found = self._orders.get(span_id)
        if found is None or (trace_id is not None and found[0] != trace_id):
            return None
        self._orders.move_to_end(span_id)
        return found

    def put(self, span_id: str, trace_id: str, order: str) -> None:
        self._orders[span_id] = (trace_id, order)
        self._orders.move_to_end(span_id)
        while len(self._orders) > self.max_spans:
            self._orders.popitem(last=False)


def dotted_orders(spans: Sequence[Span], lineage: _Lineage) -> list[str]:
    """The dotted order of every span of a batch (see the module docstring)."""
    batch = {s.id: s for s in spans}
    return [_dotted_order(s, batch, lineage) for s in spans]


def _dotted_order(span: Span, batch: Mapping[str, Span], lineage: _Lineage) -> str:
    trace = span.trace_id
    known = lineage.get(span.id, trace)
    if known is not None:
        return known[1]
    chain = [span]
    seen = {span.id}
    prefix: str | None = None
    cur = span
    while cur.parent_id is not None:
        pid = cur.parent_id
        parent_known = lineage.get(pid, trace)
        if parent_known is not None:
            prefix = parent_known[1]
            break
        parent = batch.get(pid)
        if parent is None or parent.trace_id != trace or pid in seen:
            # Unknown parent: hang the run under the root run, which every span of
            # the trace can name, with the run's own start as the root's stand-in time.
            prefix = dotted_segment(cur.start_ns, trace_uuid(trace))
            break
        chain.append(parent)
        seen.add(pid)
        cur = parent
    for node in reversed(chain):
        seg = dotted_segment(node.start_ns, run_uuid(trace, node.id, root=node.parent_id is None))
        prefix = seg if prefix is None else f"{prefix}.{seg}"
        lineage.put(node.id, trace, prefix)
    assert prefix is not None
    return prefix


# -- record mapping -------------------------------------------------------------------


def _as_dict(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return {key: value}


def usage_metadata(span: Span) -> dict[str, Any] | None:
    """LangSmith ``usage_metadata``; its input_tokens include the cached tokens."""
    out: dict[str, Any] = {}
    u = span.usage
    if u is not None:
        inputs = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
        out = {"input_tokens": inputs, "output_tokens": u.output_tokens,
               "total_tokens": inputs + u.output_tokens}
        details = {k: v for k, v in (("cache_read", u.cache_read_tokens),
                                     ("cache_creation", u.cache_write_tokens)) if v}
        if details:
            out["input_token_details"] = details
    if span.cost_usd is not None:
        out["total_cost"] = float(span.cost_usd)
    return out or None


def _metadata(span: Span) -> dict[str, Any]:
    md: dict[str, Any] = {**span.attributes, **span.metadata}
    ours: dict[str, Any] = {
        "ls_provider": span.provider,
        "ls_model_name": span.model or span.response_model,
        "usage_metadata": usage_metadata(span),
        "user_id": span.user_id,
        # LangSmith groups runs into threads by metadata session_id / thread_id.
        "session_id": span.session_id,
        "thread_id": span.session_id,
        "feature": span.feature,
        "environment": span.environment,
        "revision_id": span.release,
        "error_type": span.error_type,
        "response_model": span.response_model,
        "response_id": span.response_id,
        "finish_reasons": span.stop_reason,
        "operation": span.operation,
        "price_source": span.price_source,
        "price_version": span.price_version,
        "ttft_s": span.ttft_s,
        "llmvigil_kind": span.kind,
        "llmvigil_trace_id": span.trace_id,
        "llmvigil_span_id": span.id,
        "llmvigil_parent_span_id": span.parent_id,
    }
    if span.stream is not None:
        ours["llmvigil_stream"] = msgspec.to_builtins(span.stream)
    md.update((k, v) for k, v in ours.items() if v is not None)
    return md


def span_to_run(span: Span, order: str, project: str) -> dict[str, Any]:
    """The run payload of one span, given its dotted order."""
    ids = _segment_ids(order)
    run: dict[str, Any] = {
        "id": ids[-1],
        "trace_id": ids[0],
        "dotted_order": order,
        "name": span.name or span.kind,
        "run_type": RUN_TYPES.get(span.kind, "chain"),
        "start_time": _datetime(span.start_ns),
        "end_time": _datetime(max(span.end_ns, span.start_ns)),
        "session_name": project,
        "tags": list(span.tags),
        "extra": {"metadata": _metadata(span)},
    }
    if len(ids) > 1:
        run["parent_run_id"] = ids[-2]
    inputs = _as_dict(span.input, "input")
    if inputs is not None:
        run["inputs"] = inputs
    outputs = _as_dict(span.output, "output")
    if outputs is not None:
        run["outputs"] = outputs
    if span.status == "error" or span.error:
        kind = span.error_type
        message = span.error or ""
        run["error"] = f"{kind}: {message}" if kind and message else (message or kind or "error")
    if span.ttft_s is not None and span.ttft_s >= 0:
        first = span.start_ns + int(span.ttft_s * 1e9)
        run["events"] = [{"name": "new_token", "time": _datetime(first)}]
    return run


@dataclass
class _Feedback:
    """One feedback to create: where it points and what it says."""

    record_id: str
    feedback_id: uuid.UUID
    time_ns: int
    trace_id: uuid.UUID | None
    run_id: uuid.UUID | None
    key: str
    score: float | None = None
    value: Any = None
    comment: str | None = None
    correction: dict[str, Any] | None = None
    source_info: dict[str, Any] = field(default_factory=dict)
    model_source: bool = False
    extends_retention: bool = True


def _clean(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


# -- the backend -----------------------------------------------------------------------


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


class LangSmithBackend:
    """Delivers spans, scores and session events to one LangSmith project.

    Settings: ``api_key`` (env ``LANGSMITH_API_KEY``, then ``LANGCHAIN_API_KEY``),
    ``endpoint`` (env ``LANGSMITH_ENDPOINT``, then ``LANGCHAIN_ENDPOINT``; default
    ``https://api.smith.langchain.com``), ``project`` (env ``LANGSMITH_PROJECT``, then
    ``LANGCHAIN_PROJECT``; default the service name), ``workspace_id`` (env
    ``LANGSMITH_WORKSPACE_ID``, for org-scoped keys), ``lineage_size`` (dotted orders
    remembered, default 20000), ``orphan_feedback_after_s`` (feedback whose run still
    does not exist after this long goes to the project instead, default 3600),
    ``extend_trace_retention`` (whether score feedback upgrades the trace's retention,
    LangSmith's default: true), plus ``timeout_s`` and ``service`` from llmvigil.

    Raises:
        MissingExtraError: the ``langsmith`` package is not installed.
        ConfigError: a setting is invalid or the hosted endpoint has no API key.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import langsmith
            import requests
            from langsmith import schemas as ls_schemas
            from langsmith import utils as ls_utils
            from urllib3.util.retry import Retry
        except ImportError as exc:
            raise MissingExtraError("langsmith", "langsmith", exc.name or "langsmith") from exc
        self._ls_utils = ls_utils
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        self.endpoint = (setting(settings, "endpoint", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")
                         or DEFAULT_ENDPOINT).rstrip("/")
        self.project = (setting(settings, "project", "LANGSMITH_PROJECT", "LANGCHAIN_PROJECT")
                        or str(settings.get("service") or "llm-app"))
        api_key = setting(settings, "api_key", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
        self._secret = api_key  # only to scrub it from vendor error bodies we log
        host = urlsplit(self.endpoint).hostname or ""
        if api_key is None and (host == "langchain.com" or host.endswith(".langchain.com")):
            raise ConfigError(
                "backends.langsmith: no API key; set api_key or LANGSMITH_API_KEY"
            )
        try:
            self.lineage = _Lineage(max(0, int(settings.get("lineage_size", 20_000))))
            self.orphan_after_ns = int(float(settings.get("orphan_feedback_after_s", 3600)) * 1e9)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backends.langsmith: {exc}") from None
        self.extend_retention = _flag(settings.get("extend_trace_retention", True))
        self._local = threading.local()
        self._session = _deadline_session(requests, self._local)
        self._project_id: uuid.UUID | None = None
        self._sent_feedback: collections.OrderedDict[uuid.UUID, None] = (
            collections.OrderedDict()
        )
        self._last_problem: str | None = None
        kwargs: dict[str, Any] = {
            "api_url": self.endpoint,
            "api_key": api_key,
            "info": ls_schemas.LangSmithInfo(
                batch_ingest_config={"use_multipart_endpoint": True}
            ),
            "auto_batch_tracing": False,
            "timeout_ms": max(1, int(self.timeout_s * 1000)),
            "retry_config": Retry(total=0, read=False, raise_on_status=False,
                                  respect_retry_after_header=False),
            "session": self._session,
            "tracing_error_callback": self._on_sdk_error,
            # Only what llmvigil recorded leaves the process; llmvigil samples itself;
            # never route runs to OpenTelemetry; never touch the global prompt cache.
            "omit_traced_runtime_info": True,
            "tracing_sampling_rate": 1.0,
            "tracing_mode": "langsmith",
            "disable_prompt_cache": True,
            "workspace_id": setting(settings, "workspace_id", "LANGSMITH_WORKSPACE_ID"),
        }
        accepted = inspect.signature(langsmith.Client).parameters
        if "tracing_error_callback" not in accepted:
            raise ConfigError(
                "backends.langsmith: the installed langsmith SDK is too old "
                "(needs tracing_error_callback): pip install 'langsmith>=0.5'"
            )
        self._feedback_params = inspect.signature(langsmith.Client.create_feedback).parameters
        try:
            self.client = langsmith.Client(
                **{k: v for k, v in kwargs.items() if k in accepted}
            )
        except ls_utils.LangSmithUserError as exc:
            raise ConfigError(f"backends.langsmith: {exc}") from None
        # The SDK logs each failure it meets (with a partly masked API key); inside this
        # adapter's calls the outcome is returned, and logged once, by the adapter.
        self._quiet = _QuietDuring(self._local)
        logging.getLogger("langsmith.client").addFilter(self._quiet)

    def __repr__(self) -> str:
        return f"<LangSmithBackend {self.endpoint} project={self.project!r}>"

    # -- delivery plumbing -------------------------------------------------------------

    def _on_sdk_error(self, exc: Exception) -> None:
        errors = getattr(self._local, "errors", None)
        if errors is not None:
            errors.append(exc)

    @contextmanager
    def _deadline(self, timeout_s: float) -> Iterator[list[BaseException]]:
        """Collect the SDK's errors and bound every request to ``timeout_s`` in total."""
        errors: list[BaseException] = []
        self._local.errors = errors
        self._local.deadline = time.monotonic() + timeout_s
        try:
            yield errors
        finally:
            self._local.errors = None
            self._local.deadline = None

    def _call(self, fn: Callable[[], Any]) -> list[BaseException]:
        """Run one SDK call under the export deadline; the errors it met, raised or not."""
        with self._deadline(self.timeout_s) as errors:
            try:
                fn()
            except Exception as exc:
                errors.append(exc)
        return errors

    def _classify(self, exc: BaseException, *, not_found: ExportResult) -> ExportResult:
        u = self._ls_utils
        if isinstance(exc, u.LangSmithConflictError):
            return ExportResult.SUCCESS
        if isinstance(exc, u.LangSmithNotFoundError):
            return not_found
        status = http_status_of(exc)
        if status is not None:
            if status == 409:
                return ExportResult.SUCCESS
            if status == 404:
                return not_found
            if status in _RETRY_STATUSES or status in _AUTH_STATUSES or status >= 500:
                return ExportResult.RETRY
            return ExportResult.FAILURE
        if isinstance(exc, (u.LangSmithUserError, ValueError, TypeError)):
            return ExportResult.FAILURE
        return ExportResult.RETRY  # connection errors, timeouts, anything unexpected

    def _scrub(self, text: str) -> str:
        """A vendor error body without the API key or anything that looks like a key."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return _KEY_REDACTOR.text(text)

    def _describe(self, exc: BaseException) -> str:
        # Never the SDK's message: it embeds a partly masked API key.
        status = http_status_of(exc)
        if status is None:
            return type(exc).__name__
        text = ""
        if 400 <= status < 500:
            for cur in (exc, exc.__cause__, exc.__context__):
                response = getattr(cur, "response", None)
                if response is not None:
                    text = " " + self._scrub(str(getattr(response, "text", ""))[:300])
                    break
        return f"HTTP {status}{text}"

    def _outcome(self, what: str, errors: Sequence[BaseException],
                 not_found: ExportResult = ExportResult.FAILURE) -> ExportResult:
        results = [self._classify(e, not_found=not_found) for e in errors]
        for result in (ExportResult.RETRY, ExportResult.FAILURE):
            if result in results:
                error = errors[results.index(result)]
                status = http_status_of(error)
                if status in _AUTH_STATUSES:
                    # Whatever the batch: one warning while the key stays refused.
                    problem = f"API key refused (HTTP {status})"
                    if problem != self._last_problem:
                        _log.warning(
                            "llmvigil langsmith backend: %s refused the API key (HTTP %d); "
                            "records are kept (retried, then journaled) and sent once it "
                            "is accepted: check api_key / LANGSMITH_API_KEY (and "
                            "workspace_id / LANGSMITH_WORKSPACE_ID for org-scoped keys)",
                            self.endpoint, status)
                    self._last_problem = problem
                    return result
                problem = f"{what}: {self._describe(error)}"
                if problem != self._last_problem:
                    _log.warning("llmvigil langsmith backend: %s failed (%s): %s",
                                 what, result.value, problem)
                self._last_problem = problem
                return result
        self._last_problem = None
        return ExportResult.SUCCESS

    # -- spans -----------------------------------------------------------------------

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        orders = dotted_orders(spans, self.lineage)
        runs = [span_to_run(s, o, self.project) for s, o in zip(spans, orders, strict=True)]
        errors = self._call(lambda: self.client.multipart_ingest(create=runs))
        return self._outcome(f"sending {len(runs)} runs", errors)

    # -- feedback --------------------------------------------------------------------

    def _target(self, trace_id: str | None,
                span_id: str | None) -> tuple[uuid.UUID | None, uuid.UUID | None]:
        """``(trace_uuid, run_uuid)`` a feedback points at; ``(None, None)``: the project."""
        if span_id is not None:
            known = self.lineage.get(span_id, trace_id)
            if known is not None:
                ids = _segment_ids(known[1])
                return ids[0], ids[-1]
        if trace_id is None:
            return None, None
        trace = trace_uuid(trace_id)
        return trace, trace

    def _score_feedback(self, s: Score) -> _Feedback:
        trace, run = self._target(s.trace_id, s.span_id)
        info = _clean({
            "source": s.source, "kind": s.kind, "category": s.category,
            "user_id": s.user_id, "session_id": s.session_id, "feature": s.feature,
            "llmvigil_trace_id": s.trace_id, "llmvigil_span_id": s.span_id,
        })
        info.update(s.metadata)
        return _Feedback(
            record_id=s.id, feedback_id=uuid.uuid5(_NAMESPACE, f"score:{s.id}"),
            time_ns=s.time_ns, trace_id=trace, run_id=run, key=s.name, score=s.value,
            value=s.label if s.label is not None else s.category, comment=s.comment,
            correction={"output": s.correction} if s.correction is not None else None,
            source_info=info, model_source=s.source in ("judge", "model", "canary"),
            extends_retention=self.extend_retention,
        )

    def _event_feedback(self, e: SessionEvent) -> _Feedback:
        trace, run = self._target(e.trace_id, None)
        info = _clean({"session_id": e.session_id, "user_id": e.user_id,
                       "feature": e.feature, "llmvigil_trace_id": e.trace_id})
        info.update(e.metadata)
        return _Feedback(
            record_id=e.id, feedback_id=uuid.uuid5(_NAMESPACE, f"session_event:{e.id}"),
            time_ns=e.time_ns, trace_id=trace, run_id=run, key="session_event",
            value=e.event, source_info=info, extends_retention=False,
        )

    def _project_uuid(self) -> uuid.UUID:
        """The project's id (feedback needs it), read once, created if missing."""
        if self._project_id is None:
            u = self._ls_utils
            try:
                project = self.client.read_project(project_name=self.project)
            except u.LangSmithNotFoundError:
                try:
                    project = self.client.create_project(self.project)
                except u.LangSmithConflictError:  # created meanwhile by a run
                    project = self.client.read_project(project_name=self.project)
            self._project_id = project.id
        return self._project_id

    def _create(self, fb: _Feedback, project: uuid.UUID, *, on_project: bool) -> None:
        kwargs: dict[str, Any] = {
            "key": fb.key, "score": fb.score, "value": fb.value, "comment": fb.comment,
            "correction": fb.correction, "source_info": fb.source_info,
            "feedback_source_type": "model" if fb.model_source else "api",
            "feedback_id": fb.feedback_id, "stop_after_attempt": 1,
            "extend_trace_retention": fb.extends_retention,
        }
        if on_project or fb.run_id is None:
            kwargs["project_id"] = project
        else:
            kwargs.update(run_id=fb.run_id, trace_id=fb.trace_id, session_id=project)
        self.client.create_feedback(
            **{k: v for k, v in kwargs.items() if k in self._feedback_params}
        )

    def _send_feedback(self, what: str, items: Sequence[_Feedback]) -> ExportResult:
        errors: list[BaseException] = []
        permanent: list[BaseException] = []
        with self._deadline(self.timeout_s) as sdk_errors:
            try:
                project = self._project_uuid()
            except Exception as exc:
                errors.append(exc)
            else:
                for fb in items:
                    if fb.feedback_id in self._sent_feedback:
                        continue
                    result = self._create_one(fb, project)
                    if isinstance(result, BaseException):
                        verdict = self._classify(result, not_found=ExportResult.RETRY)
                        if verdict is ExportResult.RETRY:
                            errors.append(result)
                            break
                        if verdict is ExportResult.FAILURE:
                            _log.warning("llmvigil langsmith backend: feedback for %s "
                                         "dropped: %s", fb.record_id, self._describe(result))
                            permanent.append(result)
                            continue
                    self._remember(fb.feedback_id)
            errors.extend(sdk_errors)
        return self._outcome(what, errors or permanent, not_found=ExportResult.RETRY)

    def _create_one(self, fb: _Feedback, project: uuid.UUID) -> BaseException | None:
        try:
            self._create(fb, project, on_project=False)
            return None
        except Exception as exc:
            if (http_status_of(exc) == 404 and fb.run_id is not None
                    and now_ns() - fb.time_ns > self.orphan_after_ns):
                # The run never arrived (sampled out, lost, another project): keep the
                # feedback on the project, with the intended target in its source info.
                try:
                    self._create(fb, project, on_project=True)
                    return None
                except Exception as again:
                    return again
            return exc

    def _remember(self, feedback_id: uuid.UUID) -> None:
        self._sent_feedback[feedback_id] = None
        while len(self._sent_feedback) > self.lineage.max_spans:
            self._sent_feedback.popitem(last=False)

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        items = [self._score_feedback(s) for s in scores]
        return self._send_feedback(f"sending {len(items)} feedback", items)

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        items = [self._event_feedback(e) for e in events]
        return self._send_feedback(f"sending {len(items)} session events", items)

    # -- lifecycle -------------------------------------------------------------------

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        """Read the project (``GET /sessions?name=``): checks endpoint and key, sends nothing."""
        u = self._ls_utils
        with self._deadline(timeout_s):
            try:
                project = self.client.read_project(project_name=self.project)
            except u.LangSmithNotFoundError:
                return (f"LangSmith {self.endpoint}: project {self.project!r} will be "
                        "created by the first run")
            except Exception as exc:
                status = http_status_of(exc)
                if status in (401, 403):
                    raise RuntimeError(
                        f"LangSmith {self.endpoint} rejected the API key (HTTP {status}); "
                        "check api_key / LANGSMITH_API_KEY (and workspace_id for "
                        "org-scoped keys)"
                    ) from None
                verb = "is not reachable" if status is None else "answered"
                raise RuntimeError(
                    f"LangSmith {self.endpoint} {verb}: {self._describe(exc)}"
                ) from None
        self._project_id = project.id
        return f"LangSmith {self.endpoint}: project {self.project!r} ({project.id})"

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        return True  # nothing is buffered: every export is delivered synchronously

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self.client.close(timeout=0)
        logging.getLogger("langsmith.client").removeFilter(self._quiet)


class _QuietDuring(logging.Filter):
    """Drops the SDK's log records emitted on a thread inside one of our calls."""

    def __init__(self, local: threading.local) -> None:
        super().__init__()
        self.local = local

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(self.local, "deadline", None) is None


def _deadline_session(requests: Any, local: threading.local) -> Any:
    """A requests session that gives each request only the time left before
    ``local.deadline`` (``time.monotonic()``), whatever timeout the SDK asks for."""

    class DeadlineSession(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(local, "deadline", None)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise requests.exceptions.ConnectTimeout(
                        f"llmvigil export deadline passed before {method} {url}"
                    )
                kwargs["timeout"] = left
            return super().request(method, url, *args, **kwargs)

    return DeadlineSession()


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="langsmith",
            factory=LangSmithBackend,
            capabilities=CAPABILITIES,
            description="LangSmith (LangChain): spans as runs, scores as feedback",
            extra="langsmith",
        )
    ]
