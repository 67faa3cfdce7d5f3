"""The Langfuse importer: a project's observations and scores, read back as llmvigil records.

Observations come from the v2 observations API (``GET /api/public/v2/observations``,
the SDK's ``api.observations.get_many``), scores from the v3 scores API
(``GET /api/public/v3/scores``, ``api.scores.get_many``), both with cursors. Pages are
fetched with ``httpx`` (the SDK's HTTP client) and the SDK's headers, and each item is
mapped on its own: the SDK's ``get_many`` validates a whole page into models, so one
malformed observation would cost its page. A failed page is retried here, then
reported with its page number and cursor (:class:`LangfuseReadError`).

**Order.** Both APIs list newest first, while a migration checkpoint needs each record
kind oldest first. So each stream is read in two passes: a *scan* of only the core
fields (ids and times, up to 1000 observations a request) finds time boundaries that
cut the selection into windows of about ``sort_window`` records, then each window,
oldest first, is read in full, sorted by ``(time, id)`` and yielded. Memory holds one
window plus 8 bytes per record for the scan; the scan's count is :meth:`estimate`.

Mapping (the inverse of :mod:`llmvigil.adapters.langfuse`):

* ids are Langfuse's own: observation ids are the 16-hex span ids and trace ids the
  32-hex trace ids llmvigil sent through OpenTelemetry (non-W3C ids were hashed by the
  adapter and come back hashed); ``parentObservationId`` is the parent span.
* ``GENERATION`` -> ``llm``, ``EMBEDDING``/``AGENT``/``TOOL``/``CHAIN``/``RETRIEVER``
  alike, ``SPAN``/``EVENT``/``EVALUATOR``/``GUARDRAIL`` -> ``span`` (the adapter's
  ``llmvigil.kind`` metadata wins); level ``ERROR`` -> status ``error`` with the
  status message as the error; start/end times as Langfuse holds them (microseconds);
  ``usageDetails`` (``input``, ``output``, ``input_cache_read``,
  ``input_cache_creation``) -> usage; ``costDetails.total`` (or ``totalCost``) -> cost;
  ``completionStartTime`` -> ``ttft_s`` (the exact ``llmvigil.ttft_s`` when present);
  ``userId``, ``sessionId``, ``release``, ``environment`` (``default`` -> none) from
  the observation; the trace's ``tags`` (repeated on each observation) on the root
  span only; metadata key ``llmvigil`` restores the fields Langfuse has no column for.
* scores keep their ids (the adapter sends llmvigil's record ids) and timestamps:
  ``NUMERIC``/``BOOLEAN`` -> ``value``, ``CATEGORICAL``/``TEXT`` -> ``label``,
  ``CORRECTION`` -> ``correction``; ``session_event`` scores -> :class:`SessionEvent`,
  ``safety_verdict`` scores -> :class:`SafetyVerdict`; experiment scores are skipped.
"""

from __future__ import annotations

import array
import base64
import contextlib
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import msgspec

from ..core.errors import ConfigError, MissingExtraError
from ..core.migrate import Skipped, record_key
from ..core.model import (
    SPAN_KINDS,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    StreamStats,
    Usage,
)
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
    "LangfuseImporter",
    "LangfuseReadError",
    "observation_to_span",
    "score_to_record",
]

_log = logging.getLogger("llmvigil.importers.langfuse")

DEFAULT_HOST = "https://cloud.langfuse.com"
OBSERVATIONS_PATH = "/api/public/v2/observations"
SCORES_PATH = "/api/public/v3/scores"
PROJECTS_PATH = "/api/public/projects"
OBSERVATION_FIELDS = "core,basic,time,io,metadata,model,usage,metrics,trace_context"
KINDS: Mapping[str, str] = {
    "GENERATION": "llm", "EMBEDDING": "embedding", "AGENT": "agent", "TOOL": "tool",
    "CHAIN": "chain", "RETRIEVER": "retriever", "SPAN": "span", "EVENT": "span",
    "EVALUATOR": "span", "GUARDRAIL": "span",
}
_GENERATION_LIKE = frozenset(("GENERATION", "EMBEDDING"))
#: usageDetails keys, Langfuse's first, then common provider spellings.
_USAGE_KEYS: Mapping[str, tuple[str, ...]] = {
    "input_tokens": ("input", "input_tokens", "prompt_tokens"),
    "output_tokens": ("output", "output_tokens", "completion_tokens"),
    "cache_read_tokens": ("input_cache_read", "cache_read_input_tokens", "input_cached_tokens"),
    "cache_write_tokens": ("input_cache_creation", "cache_creation_input_tokens"),
}
#: Score metadata keys the adapter writes for fields of its own.
_SCORE_KEYS = frozenset((
    "kind", "source", "label", "category", "correction", "user_id", "session_id", "feature",
    "trace_id", "decided_by",
))
_SOURCES = {"API": "api", "ANNOTATION": "review", "EVAL": "judge"}
_SCORE_KINDS = frozenset(("scores", "session_events", "safety_verdicts"))

Item = Span | Score | SessionEvent | SafetyVerdict | Skipped


class LangfuseReadError(PagedReadError):
    """Reading Langfuse failed for good mid-stream (after retries, or a permanent 4xx).

    The message names the request, the page and its cursor; what was read before it
    was yielded already, so a migration with a checkpoint resumes after it.
    """


# -- small parsers ----------------------------------------------------------------------


def _iso_us(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _io(value: Any) -> Any:
    """Input/output as recorded: the API returns raw strings, JSON for non-strings."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# -- observations -> spans -------------------------------------------------------------


def _usage_details(details: Mapping[str, Any]) -> Usage | None:
    found: dict[str, int] = {}
    for name, keys in _USAGE_KEYS.items():
        key = next((k for k in keys if k in details), None)
        if key is not None:
            found[name] = token_count(details[key], f"usageDetails.{key}")
    if not found:
        return None
    return Usage(**found)


def observation_to_span(obs: Mapping[str, Any]) -> Span:
    """One v2 observation as a span (see the module docstring).

    Raises:
        BadRecord: the observation cannot be mapped; the message says why.
    """
    obs_id = str_or_none(obs.get("id"))
    if obs_id is None:
        raise BadRecord("id is missing")
    trace_id = str_or_none(obs.get("traceId"))
    if trace_id is None:
        raise BadRecord("traceId is missing")
    start_ns = iso_time_ns(obs.get("startTime"), "startTime")
    end = obs.get("endTime")
    end_ns = iso_time_ns(end, "endTime") if end not in (None, "") else start_ns
    md = json_object(obs.get("metadata"), "metadata")
    own = json_object(md.pop("llmvigil", None), "metadata.llmvigil")
    obs_type = str(obs.get("type") or "SPAN").upper()
    kind = own.get("kind")
    if not isinstance(kind, str) or kind not in SPAN_KINDS:
        kind = KINDS.get(obs_type, "span")

    usage: Usage | None
    if obs_type in _GENERATION_LIKE:
        details = obs.get("usageDetails")
        if details is not None and not isinstance(details, dict):
            raise BadRecord("usageDetails is not an object")
        usage = _usage_details(details or {})
        costs = obs.get("costDetails")
        if costs is not None and not isinstance(costs, dict):
            raise BadRecord("costDetails is not an object")
        cost = finite_number((costs or {}).get("total", obs.get("totalCost")), "costDetails.total")
        model = str_or_none(own.get("request_model")) or str_or_none(obs.get("model"))
        response_model = str_or_none(obs.get("model")) if own.get("request_model") else None
    else:
        usage = None
        if own.get("usage") is not None:
            try:
                usage = msgspec.convert(own["usage"], Usage)
            except msgspec.ValidationError as exc:
                raise BadRecord(f"metadata.llmvigil.usage: {exc}") from None
        cost = finite_number(own.get("cost_usd"), "metadata.llmvigil.cost_usd")
        model, response_model = str_or_none(own.get("model")), None

    level = str(obs.get("level") or "DEFAULT").upper()
    message = str_or_none(obs.get("statusMessage"))
    error_type = str_or_none(own.get("error_type"))
    error = None
    attributes: dict[str, Any] = {}
    if own.get("attributes") is not None:
        attributes = json_object(own["attributes"], "metadata.llmvigil.attributes")
    if level == "ERROR":
        status = "error"
        error = message
        if error is not None and error_type is not None:
            error = None if error == error_type else error.removeprefix(f"{error_type}: ")
    else:
        status = "ok"
        if level != "DEFAULT":
            attributes["langfuse.level"] = level
            if message is not None:
                attributes["langfuse.status_message"] = message

    ttft: float | None = None
    own_ttft = own.get("ttft_s")
    if isinstance(own_ttft, (int, float)) and not isinstance(own_ttft, bool) \
            and math.isfinite(own_ttft):
        ttft = float(own_ttft)
    elif obs.get("completionStartTime"):
        first = iso_time_ns(obs["completionStartTime"], "completionStartTime")
        ttft = max(0, first - start_ns) / 1e9
    elif obs.get("timeToFirstToken") is not None:
        ttft = finite_number(obs["timeToFirstToken"], "timeToFirstToken")
    stream = None
    if own.get("stream") is not None:
        try:
            stream = msgspec.convert(own["stream"], StreamStats)
        except msgspec.ValidationError as exc:
            raise BadRecord(f"metadata.llmvigil.stream: {exc}") from None
    parent_id = str_or_none(obs.get("parentObservationId"))
    tags = obs.get("tags") or []
    if not isinstance(tags, list):
        raise BadRecord("tags is not a list")
    if parent_id is not None:  # trace tags, repeated on every observation: the root's
        tags = []
    environment = str_or_none(obs.get("environment"))
    feature = md.pop("feature", None)
    return Span(
        id=obs_id, trace_id=trace_id, parent_id=parent_id,
        name=str(obs.get("name") or ""), kind=str(kind), start_ns=start_ns, end_ns=end_ns,
        status=status, error=error, error_type=error_type, input=_io(obs.get("input")),
        output=_io(obs.get("output")), model=model, response_model=response_model,
        response_id=str_or_none(own.get("response_id")),
        provider=str_or_none(own.get("provider")),
        operation=str_or_none(own.get("operation")),
        stop_reason=str_or_none(own.get("stop_reason")),
        usage=usage, cost_usd=cost, price_source=str_or_none(own.get("price_source")),
        price_version=str_or_none(own.get("price_version")),
        ttft_s=ttft, stream=stream,
        user_id=str_or_none(obs.get("userId")), session_id=str_or_none(obs.get("sessionId")),
        feature=str_or_none(feature), environment=None if environment == "default" else environment,
        release=str_or_none(obs.get("release")), tags=[str(t) for t in tags], metadata=md,
        attributes=attributes,
    )


# -- scores -> scores, session events, safety verdicts -------------------------------------


def score_to_record(item: Mapping[str, Any]) -> Score | SessionEvent | SafetyVerdict:
    """One v3 score as the record the adapter made it from (see the module docstring).

    Raises:
        BadRecord: the score cannot be mapped; the message says why.
    """
    score_id = str_or_none(item.get("id"))
    if score_id is None:
        raise BadRecord("id is missing")
    name = str_or_none(item.get("name"))
    if name is None:
        raise BadRecord("name is missing")
    time_ns = iso_time_ns(item.get("timestamp"), "timestamp")
    subject = item.get("subject")
    if not isinstance(subject, dict) or not subject.get("id"):
        raise BadRecord("no subject (the trace, observation or session it is about)")
    target = str(subject.get("kind") or "")
    trace_id = span_id = session_id = None
    if target == "observation":
        span_id, trace_id = str(subject["id"]), str_or_none(subject.get("traceId"))
    elif target == "trace":
        trace_id = str(subject["id"])
    elif target == "session":
        session_id = str(subject["id"])
    elif target == "experiment":
        raise BadRecord("a dataset experiment score (llmvigil has no experiments)")
    else:
        raise BadRecord(f"unknown subject kind {target!r}")
    md = json_object(item.get("metadata"), "metadata")
    data_type = str(item.get("dataType") or "NUMERIC").upper()
    value = item.get("value")
    rest = {k: v for k, v in md.items() if k not in _SCORE_KEYS}
    comment = str_or_none(item.get("comment"))

    if name == "session_event" and data_type == "CATEGORICAL":
        session = session_id or str_or_none(md.get("session_id"))
        if session is None:
            raise BadRecord("a session_event score not on a session")
        if not isinstance(value, str) or not value:
            raise BadRecord("a session_event score without an event value")
        return SessionEvent(id=score_id, session_id=session, event=value, time_ns=time_ns,
                            user_id=str_or_none(md.get("user_id")),
                            trace_id=str_or_none(md.get("trace_id")) or trace_id,
                            feature=str_or_none(md.get("feature")), metadata=rest)
    if name == "safety_verdict" and data_type == "CATEGORICAL":
        if not isinstance(value, str) or not value:
            raise BadRecord("a safety_verdict score without an action value")
        return SafetyVerdict(id=score_id, action=value, time_ns=time_ns, reason=comment or "",
                             category=str_or_none(md.get("category")),
                             decided_by=str_or_none(md.get("decided_by")), trace_id=trace_id,
                             span_id=span_id, metadata=rest)

    number: float | None = None
    label = str_or_none(md.get("label"))
    correction = str_or_none(md.get("correction"))
    if data_type in ("NUMERIC", "BOOLEAN"):
        if data_type == "BOOLEAN" and value not in (True, False, 0, 1):
            raise BadRecord(f"BOOLEAN value {value!r}")
        number = finite_number(value, "value")
        if number is None:
            raise BadRecord(f"{data_type} score without a value")
    elif data_type in ("CATEGORICAL", "TEXT"):
        if not isinstance(value, str):
            raise BadRecord(f"{data_type} value {value!r} is not a string")
        if label is None and "kind" not in md:  # written by another tool: value is the label
            label = value
    elif data_type == "CORRECTION":
        correction = correction or str_or_none(value)
    else:
        raise BadRecord(f"unknown dataType {data_type!r}")
    source = str_or_none(md.get("source")) or _SOURCES.get(str(item.get("source") or "API"), "api")
    return Score(
        id=score_id, name=name, time_ns=time_ns, trace_id=trace_id, span_id=span_id,
        kind=str_or_none(md.get("kind")) or "custom", value=number, label=label,
        category=str_or_none(md.get("category")), correction=correction, comment=comment,
        source=source, user_id=str_or_none(md.get("user_id")),
        session_id=session_id or str_or_none(md.get("session_id")),
        feature=str_or_none(md.get("feature")),
        metadata=rest,
    )


# -- reading in time order ---------------------------------------------------------------


@dataclass(frozen=True)
class _Stream:
    """A newest-first list endpoint and how to window it by time."""

    what: str
    path: str
    time_key: str
    from_param: str
    to_param: str
    max_page: int
    fields: str


_OBSERVATIONS = _Stream("observation", OBSERVATIONS_PATH, "startTime", "fromStartTime",
                        "toStartTime", 1000, OBSERVATION_FIELDS)
_SCORES = _Stream("score", SCORES_PATH, "timestamp", "fromTimestamp", "toTimestamp", 100,
                  "details,subject")


@dataclass
class _Plan:
    """The scan of one stream: how many records, and the windows to read them in."""

    count: int
    windows: list[tuple[int | None, int | None]]


def windows(times: Sequence[int], lo: int | None, hi: int | None,
            size: int) -> list[tuple[int | None, int | None]]:
    """Consecutive ``[start, end)`` µs windows from ``lo`` to ``hi`` holding about ``size``
    of the sorted ``times`` each (records sharing one time stay in one window)."""
    edges: list[int | None] = [lo]
    for i in range(size, len(times), size):
        t = times[i]
        last = edges[-1]
        if (last is None or t > last) and (hi is None or t < hi):
            edges.append(t)
    edges.append(hi)
    return list(itertools.pairwise(edges))


class LangfuseImporter:
    """Reads one Langfuse project (the one of the API keys): observations as spans,
    scores as scores, session events and safety verdicts.

    Settings (the ``langfuse`` backend's, see :class:`~llmvigil.adapters.langfuse.
    LangfuseBackend`): ``public_key``, ``secret_key``, ``host``/``base_url``, plus
    ``page_size`` (observations per request, at most 1000, default 500; scores go 100
    at a time), ``sort_window`` (records per ordered window, default 2000),
    ``max_retries`` (per page, for connection errors, timeouts, 408/425/429 and 5xx;
    default 3), ``retry_backoff_s`` (first wait, doubled each time, honouring
    ``Retry-After``; default 1.0), ``timeout_s`` (per request, default 30) and
    ``expand_metadata`` (metadata keys to fetch untruncated besides ``llmvigil``,
    ``feature``; a list or a comma-separated string).

    After :meth:`read`, ``skipped`` counts the records skipped per reason and
    ``incomplete`` those imported with a gap (a generation without cost...).

    Raises:
        MissingExtraError: the ``langfuse`` package is not installed.
        ConfigError: a setting is missing or invalid.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import httpx
            from langfuse._version import __version__ as sdk_version
        except ImportError as exc:
            raise MissingExtraError("langfuse", "langfuse", exc.name or "langfuse") from exc
        public_key = setting(settings, "public_key", "LANGFUSE_PUBLIC_KEY")
        secret_key = setting(settings, "secret_key", "LANGFUSE_SECRET_KEY")
        if not public_key or not secret_key:
            missing = [n for n, v in (("public_key", public_key), ("secret_key", secret_key))
                       if not v]
            raise ConfigError(
                f"importer langfuse: {' and '.join(missing)} not set: give it in the "
                "backend settings or set " + " / ".join(f"LANGFUSE_{m.upper()}"
                                                         for m in missing))
        host = (setting(settings, "host")
                or setting(settings, "base_url", "LANGFUSE_BASE_URL", "LANGFUSE_HOST")
                or DEFAULT_HOST)
        if not host.startswith(("http://", "https://")):
            raise ConfigError(f"importer langfuse: host must be an http(s) URL, got {host!r}")
        self.host = host.rstrip("/")
        try:
            self.page_size = max(1, min(1000, int(settings.get("page_size", 500))))
            self.sort_window = max(1, int(settings.get("sort_window", 2000)))
            self.max_retries = max(0, int(settings.get("max_retries", 3)))
            self.backoff_s = max(0.0, float(settings.get("retry_backoff_s", 1.0)))
            timeout_s = float(settings.get("timeout_s", 30.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"importer langfuse: {exc}") from None
        expand = settings.get("expand_metadata") or []
        if isinstance(expand, str):
            expand = [k.strip() for k in expand.split(",") if k.strip()]
        self.expand_metadata = ",".join(dict.fromkeys(["llmvigil", "feature",
                                                       *map(str, expand)]))
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        self._http = httpx.Client(base_url=self.host, timeout=timeout_s, headers={
            "Authorization": f"Basic {token}",
            "x-langfuse-sdk-name": "python",
            "x-langfuse-sdk-version": sdk_version,
            "x-langfuse-public-key": public_key,
        })
        self._httpx = httpx
        self.skipped: Counter[str] = Counter()
        self.incomplete: Counter[str] = Counter()
        self._plans: dict[tuple[str, int | None, int | None], _Plan] = {}
        self._records = 0

    def __repr__(self) -> str:
        return f"<LangfuseImporter {self.host}>"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # -- requests ------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any], *, page: int,
             cursor: str | None, what: str) -> dict[str, Any]:
        """One page's JSON object, retried on transient failures.

        Raises:
            LangfuseReadError: the page could not be read.
        """
        request = f"GET {path}" + (f" ({what})" if what else "")

        def attempt() -> dict[str, Any] | Failure:
            try:
                response = self._http.get(path, params={k: v for k, v in params.items()
                                                        if v is not None})
            except self._httpx.TransportError as exc:  # connection refused, timeouts
                return Failure(type(exc).__name__)
            status = response.status_code
            if status < 400:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    return data
                return Failure("the answer is not a JSON object with a 'data' list", status,
                               retryable=False)
            if not is_transient(status):
                return Failure(f"HTTP {status} {response.text[:300]}".rstrip(), status,
                               retryable=False)
            wait = 0.0
            if response.headers.get("Retry-After"):
                with contextlib.suppress(ValueError):
                    wait = min(float(response.headers["Retry-After"]), 60.0)
            return Failure(f"HTTP {status}", status, retry_after=wait)

        def give_up(failure: Failure, tries: str) -> LangfuseReadError:
            return LangfuseReadError(
                f"Langfuse {self.host}: {request} page {page} ({page_place(cursor)}) "
                f"failed{tries}: {failure.problem}; {self._records} records were read "
                "before it", request=request, page=page, cursor=cursor,
                status=failure.status, records=self._records)

        return with_retries(attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
                            give_up=give_up)

    def _pages(self, stream: _Stream, params: dict[str, Any], what: str
               ) -> Iterator[list[Any]]:
        """Every page of ``stream`` with ``params``, following the cursors."""
        cursor: str | None = None
        page = 0
        while True:
            page += 1
            data = self._get(stream.path, {**params, "cursor": cursor}, page=page,
                             cursor=cursor, what=what)
            yield data["data"]
            meta = data.get("meta")
            cursor = meta.get("cursor") if isinstance(meta, dict) else None
            if not data["data"] or not cursor:
                return

    def _window_params(self, stream: _Stream, lo: int | None, hi: int | None
                       ) -> dict[str, Any]:
        return {stream.from_param: _iso_us(lo) if lo is not None else None,
                stream.to_param: _iso_us(hi) if hi is not None else None}

    def _plan(self, stream: _Stream, lo: int | None, hi: int | None) -> _Plan:
        """Scan the core fields of ``[lo, hi)`` and cut it into ordered windows."""
        key = (stream.path, lo, hi)
        cached = self._plans.pop(key, None)
        if cached is not None:
            return cached
        times = array.array("q")
        params = {**self._window_params(stream, lo, hi),
                  "limit": stream.max_page if stream is _SCORES else 1000}
        if stream is _OBSERVATIONS:
            params["fields"] = "core"
        for items in self._pages(stream, params, "scan"):
            for item in items:
                try:
                    times.append(iso_time_ns(item.get(stream.time_key), stream.time_key) // 1000)
                except (BadRecord, AttributeError):
                    continue  # reported when its window is read
        ordered = sorted(times)
        return _Plan(len(ordered), windows(ordered, lo, hi, self.sort_window))

    # -- reading ---------------------------------------------------------------------

    def _bounds(self, options: Mapping[str, Any], kinds: set[str]
                ) -> tuple[int | None, int | None]:
        """The µs ``[lo, hi)`` to read for ``kinds``, counting their resume points."""
        low = resume_since(options, kinds)
        until = options.get("until_ns")
        return (None if low is None else int(low) // 1000,
                None if until is None else -(-int(until) // 1000))

    def _streams(self, options: Mapping[str, Any]) -> list[tuple[_Stream, set[str]]]:
        kinds = wanted_kinds(options)
        out = []
        if "spans" in kinds:
            out.append((_OBSERVATIONS, {"spans"}))
        if kinds & _SCORE_KINDS:
            out.append((_SCORES, kinds & _SCORE_KINDS))
        return out

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """How many records :meth:`read` will yield (from the scan it needs anyway)."""
        total = 0
        try:
            for stream, kinds in self._streams(options):
                lo, hi = self._bounds(options, kinds)
                plan = self._plan(stream, lo, hi)
                self._plans[(stream.path, lo, hi)] = plan  # read() starts from it
                total += plan.count
        except Exception:
            return None
        return limited(total, options)

    #: The brief's name for :meth:`estimate`.
    total = estimate

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the project's spans in ``(start, id)`` order, then its scores, session
        events and safety verdicts, each kind in ``(time, id)`` order, honouring
        ``since_ns``/``until_ns``, ``kinds``, ``after`` and ``limit``; ``project`` must
        name the keys' project (Langfuse keys are per project). Bad records come as
        :class:`Skipped`.

        Raises (from the generator):
            LangfuseReadError: a page failed for good; ConfigError: another project.
        """
        self.skipped.clear()
        self.incomplete.clear()
        self._records = 0
        return self._read(options)

    def _read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        if options.get("project"):
            self._check_project(str(options["project"]))
        limit = options.get("limit")
        skipped = Problems(_log, "langfuse importer", "skipped", once_per_record=True)
        incomplete = Problems(_log, "langfuse importer", "imported incomplete",
                              once_per_record=True)
        try:
            for stream, kinds in self._streams(options):
                lo, hi = self._bounds(options, kinds)
                for item in self._ordered(stream, kinds, lo, hi, skipped, incomplete):
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
                _log.warning("langfuse importer: skipped %d unreadable record(s): %s",
                             sum(skipped.counts.values()), counts_summary(skipped.counts))

    def _check_project(self, project: str) -> None:
        data = self._get(PROJECTS_PATH, {}, page=1, cursor=None, what="")
        names = {str(p.get(k)) for p in data["data"] if isinstance(p, dict)
                 for k in ("id", "name")}
        if project not in names:
            raise ConfigError(f"Langfuse {self.host}: the API keys belong to project "
                              f"{' / '.join(sorted(names)) or '?'}, not {project!r}; "
                              "Langfuse keys are per project: use that project's keys")

    def _ordered(self, stream: _Stream, kinds: set[str], lo: int | None, hi: int | None,
                 skipped: Problems, incomplete: Problems) -> Iterator[Item]:
        plan = self._plan(stream, lo, hi)
        for w_lo, w_hi in plan.windows:
            params = {**self._window_params(stream, w_lo, w_hi), "fields": stream.fields,
                      "limit": min(self.page_size, stream.max_page)}
            if stream is _OBSERVATIONS:
                params["expandMetadata"] = self.expand_metadata
            window: list[Any] = []
            for page, items in enumerate(self._pages(stream, params, ""), start=1):
                for item in items:
                    record = self._record(stream, item, page, skipped, incomplete)
                    if record is None:
                        continue
                    if isinstance(record, Skipped):
                        yield record
                    elif _kind(record) in kinds:
                        window.append(record)
            yield from sorted(window, key=record_key)

    def _record(self, stream: _Stream, item: Any, page: int, skipped: Problems,
                incomplete: Problems) -> Item | None:
        """The record of one item; a Skipped for a bad one, None for one seen before."""
        rid = str_or_none(item.get("id")) if isinstance(item, dict) else None
        where = f"{stream.what} {rid}" if rid else f"an {stream.what} on page {page}"
        try:
            if not isinstance(item, dict):
                raise BadRecord("not a JSON object")
            if stream is _OBSERVATIONS:
                record: Item = observation_to_span(item)
            else:
                record = score_to_record(item)
        except BadRecord as exc:
            reason = f"malformed {stream.what}: {exc}"
            if not skipped.add(reason, where):
                return None
            return Skipped(reason, f"Langfuse {self.host}", rid, _item_kind(stream, item))
        if isinstance(record, Span) and record.kind == "llm":
            if record.usage is None:
                incomplete.add("generation without token usage", where)
            if record.cost_usd is None:
                incomplete.add(f"generation without cost (no Langfuse price for model "
                               f"{record.model or '?'!r})", where)
        return record


def _item_kind(stream: _Stream, item: Any) -> str:
    """The record kind a (possibly malformed) item would have been."""
    if stream is _OBSERVATIONS:
        return "spans"
    name = item.get("name") if isinstance(item, dict) else None
    return {"session_event": "session_events", "safety_verdict": "safety_verdicts"}.get(
        str(name), "scores")


def _kind(record: Any) -> str:
    if isinstance(record, Span):
        return "spans"
    if isinstance(record, SessionEvent):
        return "session_events"
    if isinstance(record, SafetyVerdict):
        return "safety_verdicts"
    return "scores"


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [
        ImporterInfo(
            name="langfuse",
            # Importer.read is typed Iterator[Record]; this one also yields Skipped,
            # as the engine expects of any importer (see llmvigil.core.migrate).
            factory=cast("Callable[[Mapping[str, Any]], Importer]", LangfuseImporter),
            description="Langfuse: observations as spans; scores as scores, session "
                        "events and safety verdicts",
            extra="langfuse",
        )
    ]
