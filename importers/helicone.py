"""The Helicone importer: an organization's requests, read back as llmvigil records.

Requests come from Helicone's request query API, ``POST {api_url}/v1/request/
query-clickhouse`` (``query_path`` may name the point-query twin ``/v1/request/query``;
both take the documented ``RequestQueryParams`` body ``{filter, offset, limit, sort}``
and answer ``{data: HeliconeRequest[], error}``), oldest first (``sort: {created_at:
"asc"}``), page by page with ``offset``/``limit``. The time window is a
``request_response_rmt.request_created_at`` filter (``gte``/``lt``). The upper bound is
frozen at the time the read starts, so requests logged meanwhile cannot shift the
offsets; a request met twice anyway is read once. When a request's bodies are not
inline, they are fetched from its ``signed_body_url`` (``{request, response}``, as
Helicone's own export tool does) without the API key.

Mapping (the inverse of :mod:`llmvigil.adapters.helicone` where it can be inverted):

* **ids.** A request llmvigil logged carries its trace, span and parent ids as the
  ``Trace-Id``/``Span-Id``/``Parent-Id`` properties (Helicone lower-cases property
  names): they are used, so a round trip keeps every id and the tree. Other requests:
  trace id = the request UUID as 32 hex digits, span id = the first 16 hex digits of
  SHA-256 of it, no parent.
* **times**: Helicone keeps milliseconds: start (``request_created_at``) and end
  (``response_created_at``, else start + ``delay_ms``) come back truncated to the ms,
  TTFT (``time_to_first_token``) to the ms.
* **fields** from the properties llmvigil sets (``Feature``, ``Environment``,
  ``Release``, ``Provider``, ``Span-Kind``, ``Span-Name``, ``Tags``, ``Cost-Usd``),
  ``request_user_id``, the ``Helicone-Session-Id`` property; model, input, output,
  usage (the Anthropic-style ``usage`` block the adapter logs; else the token columns),
  response id and model, stop reason and error from the bodies; status ``error`` for
  a response status >= 400, else ``ok``. Every other property is metadata (values are
  strings: Helicone keeps ``Record<string, string>``; names lower-cased).
* **feedback and scores**: ``feedback_rating`` becomes a ``thumbs_up``/``thumbs_down``
  score named ``user_feedback``; each entry of ``scores`` a score of that name with
  value ``score / score_multiplier`` (default 100, as the adapter sends them). Helicone
  keeps no id, comment, label or time of its own for them: their ids are derived from
  the request id and the score name (stable across reads), their time is the feedback
  time when Helicone gives one, else the request's end.
* requests llmvigil did not log keep their full request and response bodies as input
  and output, Helicone's own ``cost`` (``price_source`` ``helicone``) and provider.

Bad data is never fatal: a request that cannot be mapped (no id, a malformed time or
number) is yielded as a :class:`~llmvigil.core.migrate.Skipped` naming it and counted
in :attr:`HeliconeImporter.skipped`; one whose bodies cannot be fetched is imported
without its content and counted in :attr:`HeliconeImporter.incomplete`. A page that
cannot be read (after ``max_retries`` retries for connection errors, timeouts, 408,
425, 429 and 5xx), or answered ``{error: ...}``, raises :class:`HeliconeReadError`
naming the page and its offset.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
import urllib.parse
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from ..core.errors import ConfigError, MissingExtraError
from ..core.migrate import Skipped, record_key
from ..core.model import SPAN_KINDS, Score, Span, Usage
from ..plugins.hookspecs import hookimpl
from ..plugins.types import ImporterInfo
from ._common import (
    EPOCH,
    BadRecord,
    Failure,
    ImporterReadError,
    Problems,
    checked_str,
    is_transient,
    iso_time_us_ns,
    past_resume_point,
    resume_since,
    setting,
    wanted_kinds,
    with_retries,
)

__all__ = ["HeliconeImporter", "HeliconeReadError", "request_to_records"]

_log = logging.getLogger("llmvigil.importers.helicone")

DEFAULT_API_URL = "https://api.helicone.ai"
DEFAULT_QUERY_PATH = "/v1/request/query-clickhouse"
TIME_COLUMN = ("request_response_rmt", "request_created_at")

_RECENT_IDS = 10_000
_THUMBS = {True: ("thumbs_up", 1.0), False: ("thumbs_down", 0.0)}
_FEEDBACK_SCORE = "helicone-score-feedback"
# Properties the adapter writes for fields of its own (lower-cased, as Helicone keeps them).
_OWN_PROPS = frozenset((
    "feature", "environment", "release", "provider", "trace-id", "span-id", "parent-id",
    "span-kind", "span-name", "tags", "cost-usd",
))
_SESSION_PROPS = ("helicone-session-id", "helicone-session-path", "helicone-session-name")
_FOREIGN_KINDS = {"tool": "tool", "vector_db": "retriever", "data": "span"}
_SAFE = " !\"#$&'()*+,-./:;<=>?@[]^_`{|}~"

Item = Span | Score | Skipped


class HeliconeReadError(ImporterReadError):
    """Reading Helicone failed for good mid-stream (after retries, a 4xx, or an
    ``{error: ...}`` answer).

    The message names the page and its offset; what was read before it was yielded
    already, so a migration with a checkpoint resumes after it.
    """

    def __init__(self, message: str, *, page: int, offset: int, status: int | None,
                 records: int) -> None:
        super().__init__(message)
        self.page = page
        self.offset = offset
        self.status = status
        self.records = records


# -- small parsers ----------------------------------------------------------------------


def _time_ns(value: Any, what: str) -> int:
    """An ISO 8601 (or ClickHouse ``YYYY-MM-DD hh:mm:ss.sss``, UTC) time in epoch ns."""
    return iso_time_us_ns(value, what, clickhouse=True, described="a time")


def _iso_ms(ns: int) -> str:
    """``ns`` rounded up to Helicone's millisecond, as ``YYYY-MM-DDThh:mm:ss.sssZ``."""
    dt = EPOCH + timedelta(milliseconds=-(-ns // 1_000_000))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, (int, float, str)):
        raise BadRecord(f"{what} is not a number ({value!r})")
    try:
        number = float(value)
    except ValueError:
        raise BadRecord(f"{what} is not a number ({value!r})") from None
    if not math.isfinite(number):
        raise BadRecord(f"{what} is not a finite number ({value!r})")
    return number


def _count(value: Any, what: str) -> int:
    number = _number(value, what)
    if number is None:
        return 0
    if number < 0 or number != int(number):
        raise BadRecord(f"{what} is not a token count ({value!r})")
    return int(number)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise BadRecord(f"{what} is not a JSON object")
    return value


def _header_text(value: str) -> str:
    """A property value as the adapter had it: it percent-encodes non-ASCII text only."""
    if "%" not in value:
        return value
    decoded = urllib.parse.unquote(value)
    if decoded.isascii() or urllib.parse.quote(decoded, safe=_SAFE) != value:
        return value
    return decoded


def _derived_id(*parts: str, digits: int = 16) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:digits]


def foreign_ids(request_id: str) -> tuple[str, str]:
    """``(trace_id, span_id)`` of a request llmvigil did not log (deterministic)."""
    try:
        trace_id = uuid.UUID(request_id).hex
    except ValueError:
        trace_id = _derived_id("helicone-trace", request_id, digits=32)
    return trace_id, _derived_id("helicone-request", request_id)


# -- requests -> records --------------------------------------------------------------------


def _usage(row: Mapping[str, Any], response: Mapping[str, Any], ours: bool) -> Usage | None:
    block = response.get("usage")
    if ours and isinstance(block, dict):
        return Usage(
            input_tokens=_count(block.get("input_tokens"), "usage.input_tokens"),
            output_tokens=_count(block.get("output_tokens"), "usage.output_tokens"),
            cache_read_tokens=_count(block.get("cache_read_input_tokens"),
                                     "usage.cache_read_input_tokens"),
            cache_write_tokens=_count(block.get("cache_creation_input_tokens"),
                                      "usage.cache_creation_input_tokens"))
    columns = ("prompt_tokens", "completion_tokens", "prompt_cache_read_tokens",
               "prompt_cache_write_tokens")
    if all(row.get(c) is None for c in columns):
        return None
    values = [_count(row.get(c), c) for c in columns]
    return Usage(input_tokens=values[0], output_tokens=values[1],
                 cache_read_tokens=values[2], cache_write_tokens=values[3])


def _error(response: Mapping[str, Any]) -> tuple[str | None, str | None]:
    err = response.get("error")
    if isinstance(err, dict):
        return (checked_str(err.get("message"), "error.message"),
                checked_str(err.get("type"), "error.type"))
    return checked_str(err, "error"), None


def _own_input(request: Mapping[str, Any], model: str | None) -> Any:
    """The span input the adapter merged into the request body, taken back out."""
    body = dict(request)
    if model is not None and body.get("model") == model:
        del body["model"]
    if body.get("stream") is True:
        del body["stream"]
    if not body:
        return None
    if len(body) == 1 and "prompt" in body and isinstance(body["prompt"], str):
        return body["prompt"]
    if len(body) == 1 and "input" in body:
        return body["input"]
    return body


def _own_output(response: Mapping[str, Any]) -> Any:
    content = response.get("content")
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict) \
            and content[0].get("type") == "text" and set(content[0]) == {"type", "text"}:
        return content[0]["text"]
    return response.get("output")


def request_to_records(row: Mapping[str, Any], *, score_multiplier: float = 100.0,
                       static_properties: Mapping[str, str] | None = None
                       ) -> tuple[Span, list[Score | BadRecord]]:
    """One ``HeliconeRequest`` (with its bodies) as a span and its feedback/scores.

    A score that cannot be mapped comes back as the :class:`BadRecord` saying why.

    Raises:
        BadRecord: the request cannot be mapped; the message says why.
    """
    rid = row.get("request_id")
    if not isinstance(rid, str) or not rid:
        raise BadRecord("request_id is missing")
    raw_props = row.get("request_properties") or row.get("properties") or {}
    if not isinstance(raw_props, dict):
        raise BadRecord("request_properties is not an object")
    props = {str(k).lower(): _header_text(str(v)) for k, v in raw_props.items()
             if v is not None}
    ours = "span-id" in props and "trace-id" in props
    request = _object(row.get("request_body"), "request_body")
    response = _object(row.get("response_body"), "response_body")
    start_ns = _time_ns(row.get("request_created_at"), "request_created_at")
    if row.get("response_created_at"):
        end_ns = _time_ns(row.get("response_created_at"), "response_created_at")
    else:
        delay = _number(row.get("delay_ms"), "delay_ms")
        end_ns = start_ns + int((delay or 0) * 1_000_000)
    ttft_ms = _number(row.get("time_to_first_token"), "time_to_first_token")
    status_code = _number(row.get("response_status"), "response_status")
    failed = status_code is not None and status_code >= 400

    tool = request.get("_type") == "tool"
    model = checked_str(request.get("model"), "request_body.model") or \
        checked_str(row.get("request_model"), "request_model")
    response_model = checked_str(response.get("model"), "response_body.model") or \
        checked_str(row.get("response_model"), "response_model")
    error, error_type = _error(response)
    if ours:
        trace_id, span_id = props["trace-id"], props["span-id"]
        parent_id = props.get("parent-id")
        kind = props.get("span-kind") or ("tool" if tool else "llm")
        name = props.get("span-name") or ""
        if response_model == model:
            response_model = None
        provider = props.get("provider")
        cost = _number(props.get("cost-usd"), "Cost-Usd property")
        price_source = None
        inp = request.get("input") if tool else _own_input(request, model)
        out = response.get("output") if tool else _own_output(response)
        if tool:
            error, error_type = checked_str(response.get("error"), "error"), None
        hidden = {k for k, v in (static_properties or {}).items()
                  if props.get(k.lower()) == str(v)}
        metadata: dict[str, Any] = {
            k: v for k, v in props.items()
            if k not in _OWN_PROPS and k not in _SESSION_PROPS
            and k not in {h.lower() for h in hidden}}
    else:
        trace_id, span_id = foreign_ids(rid)
        parent_id = None
        kind = _FOREIGN_KINDS.get(str(request.get("_type")), "llm")
        name = str(row.get("request_path") or model or "request")
        provider = checked_str(row.get("provider"), "provider")
        provider = None if provider is None or provider.upper() == "CUSTOM" \
            else provider.lower()
        cost = _number(row.get("cost") if row.get("cost") is not None else row.get("costUSD"),
                       "cost")
        price_source = "helicone" if cost is not None else None
        inp, out = request or None, response or None
        metadata = {k: v for k, v in props.items() if k != "helicone-session-id"}
    kind = sys.intern(kind) if kind in SPAN_KINDS else "span"
    tags = props.get("tags") if ours else None
    span = Span(
        id=span_id, trace_id=trace_id, parent_id=parent_id, name=name, kind=kind,
        start_ns=start_ns, end_ns=end_ns, status="error" if failed or error else "ok",
        error=error, error_type=error_type, input=inp, output=out, model=model,
        response_model=response_model,
        response_id=checked_str(response.get("id"), "response_body.id") if ours and not tool
        else None,
        provider=provider,
        stop_reason=checked_str(response.get("stop_reason"), "response_body.stop_reason")
        if ours and not tool else None,
        usage=None if tool else _usage(row, response, ours), cost_usd=cost,
        price_source=price_source,
        ttft_s=None if ttft_ms is None else ttft_ms / 1000,
        user_id=checked_str(row.get("request_user_id"), "request_user_id"),
        session_id=props.get("helicone-session-id"),
        feature=props.get("feature") if ours else None,
        environment=props.get("environment") if ours else None,
        release=props.get("release") if ours else None,
        tags=tags.split(",") if tags else [], metadata=metadata,
    )
    return span, _scores(row, span, rid, score_multiplier)


def _scores(row: Mapping[str, Any], span: Span, rid: str,
            multiplier: float) -> list[Score | BadRecord]:
    out: list[Score | BadRecord] = []
    rating = row.get("feedback_rating")
    raw_scores = row.get("scores") or {}
    if not isinstance(raw_scores, dict):
        return [BadRecord("scores is not an object")]
    if rating is None and _FEEDBACK_SCORE in raw_scores:
        rating = bool(raw_scores[_FEEDBACK_SCORE])
    if rating is not None:
        try:
            if not isinstance(rating, bool):
                raise BadRecord(f"feedback_rating is not a boolean ({rating!r})")
            when = row.get("feedback_created_at")
            kind, value = _THUMBS[rating]
            out.append(Score(
                id=_derived_id("helicone-feedback", rid), name="user_feedback",
                time_ns=_time_ns(when, "feedback_created_at") if when else span.end_ns,
                trace_id=span.trace_id, span_id=span.id, kind=kind, value=value,
                source="user"))
        except BadRecord as exc:
            out.append(exc)
    for name, raw in sorted(raw_scores.items()):
        if name == _FEEDBACK_SCORE:
            continue
        try:
            number = _number(raw, f"score {name!r}")
            out.append(Score(
                id=_derived_id("helicone-score", rid, str(name)), name=str(name),
                time_ns=span.end_ns, trace_id=span.trace_id, span_id=span.id,
                value=None if number is None else number / multiplier))
        except BadRecord as exc:
            out.append(exc)
    return out


# -- the importer ---------------------------------------------------------------------------


def _empty(body: Any) -> bool:
    return body in (None, "", {})


class HeliconeImporter:
    """Reads the requests of the organization an API key belongs to (see the module
    docstring).

    Settings (the ``helicone`` backend's, see :class:`~llmvigil.adapters.helicone.
    HeliconeBackend`): ``api_key`` (env ``HELICONE_API_KEY``), ``api_url`` (default
    ``https://api.helicone.ai``; ``https://eu.api.helicone.ai`` in the EU),
    ``score_multiplier`` (100) and ``properties`` (the backend's static properties:
    not read back as metadata), plus ``query_path`` (default
    ``/v1/request/query-clickhouse``), ``page_size`` (requests per query, 1..1000,
    default 500), ``fetch_bodies`` (fetch ``signed_body_url`` when the bodies are not
    inline, default true), ``body_workers`` (parallel body fetches, default 8),
    ``max_retries`` (3), ``retry_backoff_s`` (1.0, doubled each time) and
    ``timeout_s`` (per request, 30).

    ``project`` does not apply: the API key selects the organization.
    After :meth:`read`, ``skipped`` counts the records skipped per reason and
    ``incomplete`` those imported without their content.

    Raises:
        MissingExtraError: ``httpx`` is not installed.
        ConfigError: no API key, or a setting is invalid.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise MissingExtraError("helicone", "helicone", exc.name or "httpx") from exc
        self._httpx = httpx
        key = setting(settings, "api_key", "HELICONE_API_KEY")
        if not key:
            raise ConfigError("importer helicone: api_key is not set (set it, or the "
                              "HELICONE_API_KEY environment variable)")
        self._key = key
        self.api_url = (setting(settings, "api_url") or DEFAULT_API_URL).rstrip("/")
        self.query_path = "/" + str(settings.get("query_path") or DEFAULT_QUERY_PATH).lstrip("/")
        props = settings.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ConfigError("importer helicone: properties: expected a mapping")
        self.static_properties = {str(k): str(v) for k, v in props.items()}
        try:
            self.score_multiplier = float(settings.get("score_multiplier", 100))
            self.page_size = max(1, min(1000, int(settings.get("page_size", 500))))
            self.body_workers = max(1, int(settings.get("body_workers", 8)))
            self.max_retries = max(0, int(settings.get("max_retries", 3)))
            self.backoff_s = max(0.0, float(settings.get("retry_backoff_s", 1.0)))
            self.timeout_s = float(settings.get("timeout_s", 30.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"importer helicone: {exc}") from None
        if self.score_multiplier <= 0:
            raise ConfigError("importer helicone: score_multiplier must be positive")
        self.fetch_bodies = bool(settings.get("fetch_bodies", True))
        #: Records not imported, by reason (filled by :meth:`read`).
        self.skipped: Counter[str] = Counter()
        #: Records imported without a part (their bodies), by reason.
        self.incomplete: Counter[str] = Counter()
        #: Query pages read by the last :meth:`read`.
        self.pages = 0
        self._records = 0

    def __repr__(self) -> str:
        return f"<HeliconeImporter {self.api_url}{self.query_path}>"

    # -- requests ----------------------------------------------------------------------

    def _query(self, client: Any, body: dict[str, Any], page: int) -> list[Any]:
        """One page of requests, retried on transient failures.

        Raises:
            HeliconeReadError: the page could not be read.
        """
        where = f"page {page} (offset {body['offset']})"

        def attempt() -> list[Any] | Failure:
            status: int | None = None
            try:
                response = client.post(self.query_path, json=body)
                status = response.status_code
                payload = response.json() if status < 400 else None
                if status >= 400:
                    problem = f"HTTP {status} {response.text[:300]}".rstrip()
                    if status in (401, 403):
                        problem += " (check api_key / HELICONE_API_KEY)"
                elif not isinstance(payload, dict) or payload.get("error") not in (None, ""):
                    error = payload.get("error") if isinstance(payload, dict) else payload
                    raise HeliconeReadError(
                        f"Helicone {self.api_url}: POST {self.query_path} {where}: Helicone "
                        f"answered error {str(error)[:300]!r}; {self._records} records were "
                        "read before it", page=page, offset=body["offset"], status=status,
                        records=self._records)
                elif not isinstance(payload.get("data"), list):
                    raise HeliconeReadError(
                        f"Helicone {self.api_url}: POST {self.query_path} {where}: no 'data' "
                        "list in the answer", page=page, offset=body["offset"],
                        status=status, records=self._records)
                else:
                    return list(payload["data"])
            except self._httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except ValueError:
                problem = "the answer is not JSON"
            return Failure(problem, status, is_transient(status))

        def give_up(failure: Failure, tries: str) -> HeliconeReadError:
            return HeliconeReadError(
                f"Helicone {self.api_url}: POST {self.query_path} {where} failed{tries}: "
                f"{failure.problem}; {self._records} records were read before it",
                page=page, offset=body["offset"], status=failure.status,
                records=self._records)

        return with_retries(attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
                            give_up=give_up)

    def _fetch_body(self, client: Any, url: str) -> dict[str, Any]:
        """``{request, response}`` from a signed URL (no API key is sent there).

        Raises:
            BadRecord: the body could not be fetched after the retries, or is not JSON.
        """
        def attempt() -> dict[str, Any] | Failure:
            status = None
            try:
                r = client.get(url)
                status = r.status_code
                if status < 400:
                    data = r.json()
                    if not isinstance(data, dict):
                        raise BadRecord("signed body is not a JSON object")
                    return data
                problem = f"HTTP {status}"
            except self._httpx.HTTPError as exc:
                problem = type(exc).__name__
            except ValueError:
                raise BadRecord("signed body is not JSON") from None
            return Failure(problem, status, is_transient(status))

        return with_retries(
            attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
            give_up=lambda failure, _: BadRecord(f"signed body unavailable ({failure.problem})"))

    def _with_bodies(self, bodies: Any, rows: list[Any], incomplete: Problems) -> None:
        """Fill in the bodies that are not inline, in parallel, in place."""
        todo = [r for r in rows if isinstance(r, dict) and r.get("signed_body_url")
                and (_empty(r.get("request_body")) or _empty(r.get("response_body")))]
        if not todo or not self.fetch_bodies:
            return

        def fetch(row: dict[str, Any]) -> None:
            try:
                found = self._fetch_body(bodies, str(row["signed_body_url"]))
            except BadRecord as exc:
                incomplete.add(f"imported without its content: {exc}",
                               f"request {row.get('request_id')}")
                return
            for key, column in (("request", "request_body"), ("response", "response_body")):
                if _empty(row.get(column)) and isinstance(found.get(key), dict):
                    row[column] = found[key]

        with ThreadPoolExecutor(max_workers=min(self.body_workers, len(todo))) as pool:
            list(pool.map(fetch, todo))

    # -- reading ---------------------------------------------------------------------------

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """``None``: Helicone's query API has no documented count."""
        return None

    #: The brief's name for :meth:`estimate`.
    total = estimate

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the requests as spans in ``(start, id)`` order, then their feedback and
        scores in ``(time, id)`` order, honouring ``since_ns``/``until_ns`` (spans by
        start, scores by their time), ``kinds``, ``after`` and ``limit``. Bad records come
        as :class:`Skipped`.

        Raises (from the generator):
            HeliconeReadError: a page failed for good.
        """
        kinds = wanted_kinds(options)
        if options.get("project"):
            _log.warning("Helicone has no projects (the API key selects the organization): "
                         "project=%r is ignored", options["project"])
        self.skipped.clear()
        self.incomplete.clear()
        self.pages = 0
        self._records = 0
        return self._read(options, kinds)

    def _filter(self, options: Mapping[str, Any], kinds: set[str]) -> Any:
        """The time filter: ``[since, until)`` in Helicone's ms, until frozen at now."""
        table, column = TIME_COLUMN
        # Only spans wanted: start at their resume point (scores may be older).
        since = resume_since(options, {"spans"}) if kinds <= {"spans"} \
            else options.get("since_ns")
        until = options.get("until_ns")
        until = time.time_ns() + 1_000_000 if until is None else int(until)
        # A start stored in ms is >= since exactly when it is >= since rounded up to the ms.
        node: dict[str, Any] = {table: {column: {"lt": _iso_ms(until)}}}
        if since is not None:
            node = {"left": {table: {column: {"gte": _iso_ms(int(since))}}},
                    "operator": "and", "right": node}
        return node

    def _read(self, options: Mapping[str, Any], kinds: set[str]) -> Iterator[Item]:
        if not kinds & {"spans", "scores"}:
            return
        limit = options.get("limit")
        after = options.get("after") or {}
        since, until = options.get("since_ns"), options.get("until_ns")
        skipped = Problems(_log, "helicone importer", "skipped", self.skipped)
        incomplete = Problems(_log, "helicone importer", "incomplete", self.incomplete)
        scores: list[Score] = []
        with self._httpx.Client(base_url=self.api_url, timeout=self.timeout_s, headers={
                "Authorization": f"Bearer {self._key}",
                "Content-Type": "application/json"}) as client, \
                self._httpx.Client(timeout=self.timeout_s) as bodies:
            for item in self._spans(client, bodies, options, kinds, scores, skipped,
                                    incomplete):
                if isinstance(item, Skipped):
                    yield item
                    continue
                if "spans" not in kinds:
                    continue
                if not past_resume_point(item, after.get("spans")):
                    continue
                yield item
                self._records += 1
                if limit is not None and self._records >= limit:
                    return
        if "scores" in kinds:
            mark = after.get("scores")
            for score in sorted(scores, key=record_key):
                t = score.time_ns
                if (since is not None and t < since) or (until is not None and t >= until) \
                        or not past_resume_point(score, mark):
                    continue
                yield score
                self._records += 1
                if limit is not None and self._records >= limit:
                    return
        if self.skipped or self.incomplete:
            _log.warning("helicone importer: %d records skipped, %d imported incomplete",
                         sum(self.skipped.values()), sum(self.incomplete.values()))

    def _spans(self, client: Any, bodies: Any, options: Mapping[str, Any], kinds: set[str],
               scores: list[Score], skipped: Problems,
               incomplete: Problems) -> Iterator[Span | Skipped]:
        body: dict[str, Any] = {"filter": self._filter(options, kinds), "offset": 0,
                                "limit": self.page_size, "sort": {"created_at": "asc"}}
        recent: OrderedDict[str, None] = OrderedDict()
        same_time: list[Span] = []
        page = 0
        while True:
            page += 1
            rows = self._query(client, body, page)
            self.pages = page
            self._with_bodies(bodies, rows, incomplete)
            for row in rows:
                rid = row.get("request_id") if isinstance(row, dict) else None
                if isinstance(rid, str):
                    if rid in recent:
                        continue  # met again: the offsets moved under us
                    recent[rid] = None
                    if len(recent) > _RECENT_IDS:
                        recent.popitem(last=False)
                for item in self._row(row, page, scores, skipped):
                    if isinstance(item, Skipped):
                        yield item
                        continue
                    # Helicone does not say how it orders equal times: sort them by id.
                    if same_time and same_time[0].start_ns != item.start_ns:
                        yield from sorted(same_time, key=record_key)
                        same_time.clear()
                    same_time.append(item)
            if len(rows) < self.page_size:
                break
            body["offset"] += len(rows)
        yield from sorted(same_time, key=record_key)

    def _row(self, row: Any, page: int, scores: list[Score],
             skipped: Problems) -> list[Span | Skipped]:
        """The request's span (or why it was skipped), and why any of its scores was;
        its good scores go to ``scores``."""
        rid = row.get("request_id") if isinstance(row, dict) else None
        rid = str(rid) if rid else None
        where = f"Helicone {self.api_url}, page {page}"
        try:
            if not isinstance(row, dict):
                raise BadRecord("not a JSON object")
            span, found = request_to_records(row, score_multiplier=self.score_multiplier,
                                             static_properties=self.static_properties)
        except BadRecord as exc:
            reason = f"malformed request: {exc}"
            skipped.add(reason, f"request {rid}" if rid else f"a request on page {page}")
            return [Skipped(reason, where, rid, "spans")]
        out: list[Span | Skipped] = [span]
        for score in found:
            if isinstance(score, BadRecord):
                reason = f"malformed feedback or score: {score}"
                skipped.add(reason, f"request {rid}")
                out.append(Skipped(reason, where, rid, "scores"))
            else:
                scores.append(score)
        return out


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [ImporterInfo(name="helicone", factory=HeliconeImporter,
                         description="Helicone: requests (request query API) with their "
                                     "feedback and scores",
                         extra="helicone")]
