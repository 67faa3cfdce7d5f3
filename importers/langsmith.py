"""The LangSmith importer: a project's runs and feedback, read back as llmvigil records.

Runs come from the runs query (``POST /runs/query``, the request behind the SDK's
``Client.list_runs``) in ascending start order, page by page with its cursors; feedback
from ``GET /feedback`` (the request behind ``Client.list_feedback``) for the project,
page by page with offsets. Pages are fetched through the SDK client's
``request_with_retries`` one attempt at a time and each item is mapped on its own, so
one malformed run costs that run, not its page (``list_runs`` would validate the page
into SDK models and stop at the first bad one), and a failed page is retried here and
then reported with its page number and cursor.

Mapping (the inverse of :mod:`llmvigil.adapters.langsmith` where it can be inverted):

* **ids.** A run written by llmvigil carries ``llmvigil_trace_id``/``llmvigil_span_id``
  in its metadata; they are used when they map back to the run's own uuids, so a round
  trip keeps every id. Other runs: trace id = the run's trace uuid as 32 hex digits;
  span id = the first 16 hex digits of the run uuid when its last 16 equal the trace's
  (LangSmith's OpenTelemetry convention), otherwise the first 16 hex digits of
  SHA-256(run uuid). The same run always gets the same ids.
* **parents** from ``llmvigil_parent_span_id`` (a run the adapter hung under the root
  keeps its real parent), else from ``parent_run_id`` through the runs already read.
* **times**: LangSmith keeps microseconds, so start/end come back truncated to the µs.
* ``run_type`` -> kind (``prompt``/``parser`` -> ``span``; ``llmvigil_kind`` wins);
  ``usage_metadata`` (input tokens include the cached ones in LangSmith) -> usage with
  cache read/creation tokens; ``total_cost`` -> ``cost_usd``; ``user_id``,
  ``session_id``/``thread_id``/``conversation_id`` from metadata; ``error`` -> status
  ``error`` (any other finished run: ``ok``); TTFT from ``ttft_s`` metadata, else the
  ``new_token`` event, else ``first_token_time``; inputs/outputs unwrapped from the
  ``{"input": x}``/``{"output": x}`` wrapping the adapter adds for non-dict values.
* **feedback** -> :class:`Score`, key ``session_event`` -> :class:`SessionEvent`. A
  feedback's id is its uuid unless its source metadata carries ``llmvigil_record_id``
  (and ``llmvigil_time_ns``) that map back to that uuid.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec

from ..adapters.langsmith import _NAMESPACE as ADAPTER_NAMESPACE
from ..adapters.langsmith import run_uuid, trace_uuid
from ..core.errors import ConfigError, MissingExtraError
from ..core.migrate import Skipped, record_key
from ..core.model import SPAN_KINDS, Score, SessionEvent, Span, StreamStats, Usage
from ..plugins.hookspecs import hookimpl
from ..plugins.types import Importer, ImporterInfo
from ._common import (
    EPOCH,
    BadRecord,
    Failure,
    PagedReadError,
    Problems,
    counts_summary,
    finite_number,
    http_status_of,
    in_window,
    is_transient,
    iso_time_ns,
    json_object,
    limited,
    page_place,
    resume_since,
    setting,
    str_or_none,
    token_count,
    wanted_kinds,
    with_retries,
)

__all__ = [
    "LangSmithImporter",
    "LangSmithReadError",
    "derived_span_id",
    "feedback_to_record",
    "run_to_span",
]

_log = logging.getLogger("llmvigil.importers.langsmith")

DEFAULT_ENDPOINT = "https://api.smith.langchain.com"

#: Run fields asked of ``/runs/query`` (the SDK's ``list_runs`` default, minus
#: attachments and feedback stats).
RUN_SELECT: tuple[str, ...] = (
    "id", "name", "run_type", "start_time", "end_time", "status", "error", "events",
    "extra", "inputs", "outputs", "parent_run_id", "trace_id", "dotted_order",
    "session_id", "tags", "prompt_tokens", "completion_tokens", "total_tokens",
    "total_cost", "first_token_time",
)
KINDS: Mapping[str, str] = {
    "llm": "llm", "chain": "chain", "tool": "tool", "retriever": "retriever",
    "embedding": "embedding", "prompt": "span", "parser": "span",
}
#: Metadata keys the adapter writes for fields of its own; the rest is user metadata.
_OWN_KEYS = frozenset((
    "ls_provider", "ls_model_name", "usage_metadata", "user_id", "session_id", "thread_id",
    "feature", "environment", "revision_id", "error_type", "response_model", "response_id",
    "finish_reasons", "operation", "price_source", "price_version", "ttft_s",
    "llmvigil_kind", "llmvigil_trace_id", "llmvigil_span_id", "llmvigil_parent_span_id",
    "llmvigil_stream",
))
#: Feedback source-metadata keys the adapter writes for fields of its own.
_FEEDBACK_KEYS = frozenset((
    "source", "kind", "category", "user_id", "session_id", "feature", "llmvigil_trace_id",
    "llmvigil_span_id", "llmvigil_record_id", "llmvigil_time_ns", "__run",
))
_ID_CACHE = 100_000

Item = Span | Score | SessionEvent | Skipped


class LangSmithReadError(PagedReadError):
    """Reading LangSmith failed for good mid-stream (after retries, or a permanent 4xx).

    The message names the request, the page and its cursor/offset; what was read
    before it was yielded already, so a migration with a checkpoint resumes after it.
    """


# -- small parsers ----------------------------------------------------------------------


def _iso(ns: int) -> str:
    return (EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uuid(value: Any, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise BadRecord(f"{what} is not a UUID ({value!r})") from None


def _unwrap(value: Any, key: str) -> Any:
    """The adapter's ``{key: x}`` wrapping of a non-dict value, undone."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict) and len(value) == 1 and key in value:
        return value[key]
    return value


def _is_hex(text: Any, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and \
        re.fullmatch(r"[0-9a-f]+", text) is not None


# -- ids ----------------------------------------------------------------------------------


def derived_span_id(run_id: uuid.UUID, trace: uuid.UUID) -> str:
    """The llmvigil span id of a run llmvigil did not write (deterministic)."""
    if run_id != trace and run_id.hex[16:] == trace.hex[16:]:
        return run_id.hex[:16]
    return hashlib.sha256(b"langsmith-run:" + run_id.bytes).hexdigest()[:16]


class _Ids:
    """Run uuid -> llmvigil span id of the runs read so far (bounded, least recent out)."""

    def __init__(self, size: int = _ID_CACHE) -> None:
        self._ids: collections.OrderedDict[uuid.UUID, str] = collections.OrderedDict()
        self._size = size

    def put(self, run_id: uuid.UUID, span_id: str) -> None:
        self._ids[run_id] = span_id
        self._ids.move_to_end(run_id)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def span_id(self, run_id: uuid.UUID, trace: uuid.UUID) -> str:
        """The span id of a run read before, else the one derived from its uuid."""
        return self._ids.get(run_id) or derived_span_id(run_id, trace)


def _own_ids(md: Mapping[str, Any], run_id: uuid.UUID, trace: uuid.UUID,
             root: bool) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` from llmvigil's metadata when they map back to the run."""
    trace_id, span_id = md.get("llmvigil_trace_id"), md.get("llmvigil_span_id")
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    if trace_uuid(trace_id) != trace or run_uuid(trace_id, span_id, root=root) != run_id:
        return None
    return trace_id, span_id


# -- runs -> spans ------------------------------------------------------------------------


def _usage(run: Mapping[str, Any], md: Mapping[str, Any]) -> tuple[Usage | None, float | None]:
    um = md.get("usage_metadata")
    cost_value: Any
    if isinstance(um, dict):
        cache_read = cache_write = 0
        details = um.get("input_token_details")
        if details is not None:
            if not isinstance(details, dict):
                raise BadRecord("usage_metadata.input_token_details is not an object")
            cache_read = token_count(details.get("cache_read"), "input_token_details.cache_read")
            cache_write = token_count(details.get("cache_creation"),
                                 "input_token_details.cache_creation")
        inputs = token_count(um.get("input_tokens"), "usage_metadata.input_tokens")
        outputs = token_count(um.get("output_tokens"), "usage_metadata.output_tokens")
        has_tokens = any(k in um for k in ("input_tokens", "output_tokens", "total_tokens"))
        usage = Usage(input_tokens=max(0, inputs - cache_read - cache_write),
                      output_tokens=outputs, cache_read_tokens=cache_read,
                      cache_write_tokens=cache_write) if has_tokens else None
        cost_value = um.get("total_cost", run.get("total_cost"))
    elif um is not None:
        raise BadRecord("metadata.usage_metadata is not an object")
    else:
        prompt, completion = run.get("prompt_tokens"), run.get("completion_tokens")
        usage = None
        if prompt is not None or completion is not None:
            usage = Usage(input_tokens=token_count(prompt, "prompt_tokens"),
                          output_tokens=token_count(completion, "completion_tokens"))
        cost_value = run.get("total_cost")
    return usage, finite_number(cost_value, "total_cost")


def _error(run: Mapping[str, Any], md: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(error, error_type)``, undoing the adapter's ``"Type: message"``."""
    text = str_or_none(run.get("error"))
    kind = str_or_none(md.get("error_type"))
    if text is None:
        return None, kind
    if kind is not None:
        if text == kind:
            return None, kind
        if text.startswith(f"{kind}: "):
            return text[len(kind) + 2:], kind
    return text, kind


def _ttft(run: Mapping[str, Any], md: Mapping[str, Any], start_ns: int) -> float | None:
    own = md.get("ttft_s")
    if isinstance(own, (int, float)) and not isinstance(own, bool) and math.isfinite(own):
        return float(own)
    events = run.get("events")
    for event in events if isinstance(events, list) else ():
        if isinstance(event, dict) and event.get("name") == "new_token":
            return max(0, iso_time_ns(event.get("time"), "new_token event time") - start_ns) / 1e9
    first = run.get("first_token_time")
    if first:
        return max(0, iso_time_ns(first, "first_token_time") - start_ns) / 1e9
    return None


def run_to_span(run: Mapping[str, Any], ids: _Ids | None = None) -> Span:
    """One run as a span (see the module docstring); ``ids`` resolves parent links.

    Raises:
        BadRecord: the run cannot be mapped; the message says why.
    """
    ids = ids if ids is not None else _Ids()
    run_id = _uuid(run.get("id"), "id")
    trace = _uuid(run.get("trace_id"), "trace_id")
    parent = run.get("parent_run_id")
    parent_run = _uuid(parent, "parent_run_id") if parent not in (None, "") else None
    extra = json_object(run.get("extra"), "extra")
    md = json_object(extra.get("metadata"), "extra.metadata")
    start_ns = iso_time_ns(run.get("start_time"), "start_time")
    end = run.get("end_time")
    end_ns = iso_time_ns(end, "end_time") if end not in (None, "") else start_ns

    own = _own_ids(md, run_id, trace, parent_run is None)
    if own is not None:
        trace_id, span_id = own
        parent_id = str_or_none(md.get("llmvigil_parent_span_id")) \
            if parent_run is not None else None
    else:  # a run another tool wrote
        trace_id = trace.hex
        span_id = ids.span_id(run_id, trace)
        parent_id = ids.span_id(parent_run, trace) if parent_run is not None else None
    if parent_id is None and parent_run is not None:
        parent_id = ids.span_id(parent_run, trace)
    ids.put(run_id, span_id)

    usage, cost = _usage(run, md)
    error, error_type = _error(run, md)
    kind = md.get("llmvigil_kind")
    if not isinstance(kind, str) or kind not in SPAN_KINDS:
        kind = KINDS.get(str(run.get("run_type") or ""), "span")
    stream = None
    if md.get("llmvigil_stream") is not None:
        try:
            stream = msgspec.convert(md["llmvigil_stream"], StreamStats)
        except msgspec.ValidationError as exc:
            raise BadRecord(f"metadata.llmvigil_stream: {exc}") from None
    session = md.get("session_id") or md.get("thread_id")
    metadata = {k: v for k, v in md.items() if k not in _OWN_KEYS}
    if session is None and md.get("conversation_id") is not None:
        session = metadata.pop("conversation_id")
    tags = run.get("tags") or []
    if not isinstance(tags, list):
        raise BadRecord("tags is not a list")
    if error is not None or error_type is not None or run.get("status") == "error":
        status = "error"
    elif run.get("status") == "pending" or end in (None, ""):
        status = "unset"
    else:
        status = "ok"
    return Span(
        id=span_id, trace_id=trace_id, parent_id=parent_id,
        name=str(run.get("name") or ""), kind=str(kind), start_ns=start_ns,
        end_ns=end_ns, status=status, error=error, error_type=error_type,
        input=_unwrap(run.get("inputs"), "input"), output=_unwrap(run.get("outputs"), "output"),
        model=str_or_none(md.get("ls_model_name")),
        response_model=str_or_none(md.get("response_model")),
        response_id=str_or_none(md.get("response_id")),
        provider=str_or_none(md.get("ls_provider")),
        operation=str_or_none(md.get("operation")),
        stop_reason=str_or_none(md.get("finish_reasons")),
        usage=usage, cost_usd=cost, price_source=str_or_none(md.get("price_source")),
        price_version=str_or_none(md.get("price_version")), ttft_s=_ttft(run, md, start_ns),
        stream=stream, user_id=str_or_none(md.get("user_id")), session_id=str_or_none(session),
        feature=str_or_none(md.get("feature")), environment=str_or_none(md.get("environment")),
        release=str_or_none(md.get("revision_id")), tags=[str(t) for t in tags], metadata=metadata,
    )


# -- feedback -> scores and session events -------------------------------------------------


def _own_record(info: Mapping[str, Any], feedback_id: uuid.UUID, prefix: str,
                created_ns: int) -> tuple[str, int]:
    """``(record id, time)``: llmvigil's own when they map back to the feedback uuid."""
    rid = info.get("llmvigil_record_id")
    if isinstance(rid, str) and uuid.uuid5(ADAPTER_NAMESPACE, f"{prefix}:{rid}") == feedback_id:
        t = info.get("llmvigil_time_ns")
        return rid, int(t) if isinstance(t, int) and not isinstance(t, bool) else created_ns
    return str(feedback_id), created_ns


def feedback_to_record(fb: Mapping[str, Any], ids: _Ids | None = None) -> Score | SessionEvent:
    """One feedback as a score, or a session event for key ``session_event``.

    Raises:
        BadRecord: the feedback cannot be mapped; the message says why.
    """
    ids = ids if ids is not None else _Ids()
    feedback_id = _uuid(fb.get("id"), "id")
    key = str_or_none(fb.get("key"))
    if key is None:
        raise BadRecord("key is missing")
    created_ns = iso_time_ns(fb.get("created_at"), "created_at")
    source = json_object(fb.get("feedback_source"), "feedback_source")
    info = json_object(source.get("metadata"), "feedback_source.metadata")
    run, trace = fb.get("run_id"), fb.get("trace_id")
    run_id = _uuid(run, "run_id") if run not in (None, "") else None
    trace_u = _uuid(trace, "trace_id") if trace not in (None, "") else run_id
    own = "llmvigil_trace_id" in info or "llmvigil_span_id" in info  # written by llmvigil
    trace_id = str_or_none(info.get("llmvigil_trace_id")) if own else (
        trace_u.hex if trace_u else None)
    metadata = {k: v for k, v in info.items() if k not in _FEEDBACK_KEYS}
    if key == "session_event":
        session = str_or_none(info.get("session_id"))
        event = str_or_none(fb.get("value"))
        if session is None:
            raise BadRecord("session_event feedback without session_id in its source metadata")
        if event is None:
            raise BadRecord("session_event feedback without a value (the event)")
        rid, t = _own_record(info, feedback_id, "session_event", created_ns)
        return SessionEvent(id=rid, session_id=session, event=event, time_ns=t,
                            user_id=str_or_none(info.get("user_id")), trace_id=trace_id,
                            feature=str_or_none(info.get("feature")), metadata=metadata)
    if own:
        span_id = str_or_none(info.get("llmvigil_span_id"))
    elif run_id is not None and trace_u is not None:
        span_id = ids.span_id(run_id, trace_u)
    else:
        span_id = None
    value = fb.get("value")
    category = str_or_none(info.get("category"))
    label = None if value is None or (category is not None and str(value) == category) \
        else (value if isinstance(value, str) else json.dumps(value))
    correction = fb.get("correction")
    if isinstance(correction, dict) and set(correction) == {"output"}:
        correction = correction["output"]
    if correction is not None and not isinstance(correction, str):
        correction = json.dumps(correction)
    rid, t = _own_record(info, feedback_id, "score", created_ns)
    return Score(
        id=rid, name=key, time_ns=t, trace_id=trace_id, span_id=span_id,
        kind=str_or_none(info.get("kind")) or "custom",
        value=finite_number(fb.get("score"), "score"),
        label=label, category=category, correction=correction,
        comment=str_or_none(fb.get("comment")),
        source=str_or_none(info.get("source")) or str_or_none(source.get("type")) or "api",
        user_id=str_or_none(info.get("user_id")), session_id=str_or_none(info.get("session_id")),
        feature=str_or_none(info.get("feature")), metadata=metadata,
    )


# -- the importer -----------------------------------------------------------------------


def _response_text(exc: BaseException) -> str:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if response is not None:
            return str(getattr(response, "text", ""))[:300]
        cur = cur.__cause__ or cur.__context__
    return ""


class LangSmithImporter:
    """Reads one LangSmith project's runs (as spans) and feedback (as scores and
    session events).

    Settings (the ``langsmith`` backend's, see :class:`~llmvigil.adapters.langsmith.
    LangSmithBackend`): ``api_key``, ``endpoint``, ``project``, ``workspace_id``, plus
    ``page_size`` (runs and feedback per request, default 100), ``max_retries``
    (per page, for connection errors, timeouts, 408/425/429 and 5xx; default 3),
    ``retry_backoff_s`` (first wait, doubled each time, default 1.0), ``timeout_s``
    (per request, default 30) and ``sort_buffer`` (feedback held to sort it by time,
    default 100000).

    After :meth:`read`, ``skipped`` counts the records skipped per reason and
    ``incomplete`` those imported with a gap (an ``llm`` run without cost...).

    Raises:
        MissingExtraError: the ``langsmith`` package is not installed.
        ConfigError: a setting is invalid or the hosted endpoint has no API key.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import langsmith
            from langsmith import schemas as ls_schemas
            from urllib3.util.retry import Retry
        except ImportError as exc:
            raise MissingExtraError("langsmith", "langsmith", exc.name or "langsmith") from exc
        self.endpoint = (setting(settings, "endpoint", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")
                         or DEFAULT_ENDPOINT).rstrip("/")
        self.project = (setting(settings, "project", "LANGSMITH_PROJECT", "LANGCHAIN_PROJECT")
                        or str(settings.get("service") or "llm-app"))
        api_key = setting(settings, "api_key", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
        host = urlsplit(self.endpoint).hostname or ""
        if api_key is None and (host == "langchain.com" or host.endswith(".langchain.com")):
            raise ConfigError("importer langsmith: no API key; set api_key or LANGSMITH_API_KEY")
        try:
            self.page_size = max(1, min(100, int(settings.get("page_size", 100))))
            self.max_retries = max(0, int(settings.get("max_retries", 3)))
            self.backoff_s = max(0.0, float(settings.get("retry_backoff_s", 1.0)))
            self.timeout_s = float(settings.get("timeout_s", 30.0))
            self.sort_buffer = max(1, int(settings.get("sort_buffer", 100_000)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"importer langsmith: {exc}") from None
        self.skipped: Counter[str] = Counter()
        self.incomplete: Counter[str] = Counter()
        self.client = langsmith.Client(
            api_url=self.endpoint, api_key=api_key, auto_batch_tracing=False,
            info=ls_schemas.LangSmithInfo(),
            timeout_ms=max(1, int(self.timeout_s * 1000)),
            # One attempt per call: the retries, and their messages, are this module's.
            retry_config=Retry(total=0, read=False, raise_on_status=False,
                               respect_retry_after_header=False),
            workspace_id=setting(settings, "workspace_id", "LANGSMITH_WORKSPACE_ID"),
        )
        self._records = 0

    def __repr__(self) -> str:
        return f"<LangSmithImporter {self.endpoint} project={self.project!r}>"

    # -- requests ------------------------------------------------------------------

    def _request(self, method: str, path: str, *, page: int, cursor: str | None,
                 **request_kwargs: Any) -> Any:
        """One page's JSON, retried on transient failures.

        Raises:
            LangSmithReadError: the page could not be read.
        """
        what = f"{method} {path}"

        def fail(problem: str, status: int | None) -> LangSmithReadError:
            return LangSmithReadError(
                f"LangSmith {self.endpoint}: {what} page {page} ({page_place(cursor)})"
                f"{problem}; {self._records} records were read before it",
                request=what, page=page, cursor=cursor, status=status,
                records=self._records)

        def attempt() -> Any:
            try:
                response = self.client.request_with_retries(
                    cast(Any, method), path, request_kwargs=request_kwargs,
                    stop_after_attempt=1)
            except Exception as exc:
                status = http_status_of(exc)
                problem = f"HTTP {status}" if status is not None else type(exc).__name__
                if status is not None and 400 <= status < 500:
                    problem += f" {_response_text(exc)}".rstrip()
                return Failure(problem, status, is_transient(status))
            try:
                return response.json()
            except ValueError:
                raise fail(": the answer is not JSON", response.status_code) from None

        return with_retries(
            attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
            give_up=lambda f, tries: fail(f" failed{tries}: {f.problem}", f.status))

    def _project(self, name: str, *, stats: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name, "limit": 1}
        if stats:
            params["include_stats"] = "true"
        found = self._request("GET", "/sessions", page=1, cursor=None, params=params)
        if not isinstance(found, list) or not found or not isinstance(found[0], dict):
            raise ConfigError(f"LangSmith {self.endpoint}: no project {name!r} "
                              "(set the backend's project, or --from-opt project=NAME)")
        return found[0]

    # -- reading ---------------------------------------------------------------------

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """The project's run and feedback counts, when no time window is asked; else None."""
        if options.get("since_ns") is not None or options.get("until_ns") is not None \
                or options.get("after"):
            return None
        try:
            project = self._project(str(options.get("project") or self.project), stats=True)
        except Exception:
            return None
        kinds = wanted_kinds(options)
        total = 0
        if "spans" in kinds:
            total += int(project.get("run_count") or 0)
        if kinds & {"scores", "session_events"}:
            stats = project.get("feedback_stats") or {}
            total += sum(int(s.get("n") or 0) for s in stats.values() if isinstance(s, dict))
        return limited(total, options)

    #: The brief's name for :meth:`estimate`.
    total = estimate

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the project's spans in ``(start, id)`` order, then its scores and session
        events in ``(time, id)`` order, honouring ``since_ns``/``until_ns``, ``project``,
        ``kinds``, ``after`` and ``limit``. Bad records come as :class:`Skipped`.

        Raises (from the generator):
            LangSmithReadError: a page failed for good; ConfigError: no such project.
        """
        kinds = wanted_kinds(options)
        self.skipped.clear()
        self.incomplete.clear()
        self._records = 0
        return self._read(options, kinds, str(options.get("project") or self.project))

    def _read(self, options: Mapping[str, Any], kinds: set[str], name: str
              ) -> Iterator[Item]:
        limit = options.get("limit")
        project_id = str(self._project(name)["id"])
        ids = _Ids()
        skipped = Problems(_log, "langsmith importer", "skipped", once_per_record=True)
        incomplete = Problems(_log, "langsmith importer", "imported incomplete",
                              once_per_record=True)
        where = f"LangSmith {name}"
        streams = []
        if "spans" in kinds:
            streams.append(self._spans(project_id, options, ids, skipped, incomplete, where))
        if kinds & {"scores", "session_events"}:
            streams.append(self._feedback(project_id, options, kinds, ids, skipped, where))
        try:
            for stream in streams:
                for item in stream:
                    if not isinstance(item, Skipped) and not in_window(item, options):
                        continue
                    yield item
                    if isinstance(item, Skipped):
                        continue
                    self._records += 1
                    if limit is not None and self._records >= limit:
                        return
        finally:
            self.skipped.update(skipped.counts)
            self.incomplete.update(incomplete.counts)
            if skipped.counts:
                _log.warning("langsmith importer: skipped %d unreadable record(s): %s",
                             sum(skipped.counts.values()), counts_summary(skipped.counts))

    def _spans(self, project_id: str, options: Mapping[str, Any], ids: _Ids,
               skipped: Problems, incomplete: Problems, where: str) -> Iterator[Item]:
        body: dict[str, Any] = {"session": [project_id], "select": list(RUN_SELECT),
                                "order": "asc", "limit": self.page_size}
        lower = resume_since(options, {"spans"})
        if lower is not None:
            body["start_time"] = _iso(lower)
        until = options.get("until_ns")
        if until is not None:  # start_time < until, in LangSmith's microseconds
            body["filter"] = f'lt(start_time, "{_iso(-(-int(until) // 1000) * 1000)}")'
        same_time: list[Span] = []
        cursor: str | None = None
        page = 0
        while True:
            page += 1
            if cursor is not None:
                body["cursor"] = cursor
            data = self._request("POST", "/runs/query", page=page, cursor=cursor,
                                 data=json.dumps(body))
            runs = data.get("runs") if isinstance(data, dict) else None
            if not isinstance(runs, list):
                raise LangSmithReadError(
                    f"LangSmith {self.endpoint}: POST /runs/query page {page} "
                    f"({'cursor ' + repr(cursor) if cursor else 'first page'}): no 'runs' list "
                    "in the answer", request="POST /runs/query", page=page, cursor=cursor,
                    status=None, records=self._records)
            for run in runs:
                item = self._span(run, ids, skipped, incomplete, page, where)
                if item is None:
                    continue
                if isinstance(item, Skipped):
                    yield item
                    continue
                # The query orders by start time only: equal times are sorted by id here.
                if same_time and same_time[0].start_ns != item.start_ns:
                    yield from sorted(same_time, key=record_key)
                    same_time.clear()
                same_time.append(item)
            cursors = data.get("cursors") if isinstance(data, dict) else None
            cursor = cursors.get("next") if isinstance(cursors, dict) else None
            if not runs or not cursor:
                break
        yield from sorted(same_time, key=record_key)

    def _span(self, run: Any, ids: _Ids, skipped: Problems, incomplete: Problems,
              page: int, source: str) -> Span | Skipped | None:
        """The run as a span, a Skipped for a bad run, None for a bad run seen before."""
        rid = str(run.get("id")) if isinstance(run, dict) and run.get("id") else None
        where = f"run {rid}" if rid else f"a run on page {page}"
        try:
            if not isinstance(run, dict):
                raise BadRecord("not a JSON object")
            span = run_to_span(run, ids)
        except BadRecord as exc:
            if not skipped.add(f"malformed run: {exc}", where):
                return None
            return Skipped(f"malformed run: {exc}", source, rid, "spans")
        if span.kind == "llm":
            if span.usage is None:
                incomplete.add("llm run without token usage", where)
            if span.cost_usd is None:
                incomplete.add(f"llm run without cost (no LangSmith price for model "
                               f"{span.model or '?'!r})", where)
        return span

    def _feedback(self, project_id: str, options: Mapping[str, Any], kinds: set[str],
                  ids: _Ids, skipped: Problems, source: str) -> Iterator[Item]:
        params: dict[str, Any] = {"session": [project_id], "limit": self.page_size}
        lower = resume_since(options, kinds & {"scores", "session_events"})
        if lower is not None:
            # created_at is never before a feedback's own time, so this drops nothing.
            params["min_created_at"] = _iso(lower)
        buffer: list[Score | SessionEvent] = []
        offset = 0
        page = 0
        while True:
            page += 1
            params["offset"] = offset
            items = self._request("GET", "/feedback", page=page, cursor=f"offset {offset}",
                                  params=params)
            if not isinstance(items, list):
                raise LangSmithReadError(
                    f"LangSmith {self.endpoint}: GET /feedback page {page} (offset {offset}): "
                    "the answer is not a list", request="GET /feedback", page=page,
                    cursor=f"offset {offset}", status=None, records=self._records)
            for fb in items:
                fid = str(fb.get("id")) if isinstance(fb, dict) and fb.get("id") else None
                where = f"feedback {fid}" if fid else f"a feedback on page {page}"
                try:
                    if not isinstance(fb, dict):
                        raise BadRecord("not a JSON object")
                    record = feedback_to_record(fb, ids)
                except BadRecord as exc:
                    if skipped.add(f"malformed feedback: {exc}", where):
                        kind = "session_events" if isinstance(fb, dict) and \
                            fb.get("key") == "session_event" else "scores"
                        yield Skipped(f"malformed feedback: {exc}", source, fid, kind)
                    continue
                wanted = "session_events" if isinstance(record, SessionEvent) else "scores"
                if wanted in kinds:
                    buffer.append(record)
            if len(buffer) >= self.sort_buffer:
                _log.info("langsmith importer: more than %d feedback; yielding them in "
                          "chunks (a resumed run re-reads scores)", self.sort_buffer)
                yield from sorted(buffer, key=record_key)
                buffer.clear()
            if len(items) < self.page_size:
                break
            offset += len(items)
        yield from sorted(buffer, key=record_key)


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [
        ImporterInfo(
            name="langsmith",
            # Importer.read is typed Iterator[Record]; this one also yields Skipped,
            # as the engine expects of any importer (see llmvigil.core.migrate).
            factory=cast("Callable[[Mapping[str, Any]], Importer]", LangSmithImporter),
            description="LangSmith: a project's runs as spans, feedback as scores and "
                        "session events",
            extra="langsmith",
        )
    ]


