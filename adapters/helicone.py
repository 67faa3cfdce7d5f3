"""The Helicone backend: LLM spans as Helicone requests, feedback and scores on them.

Each LLM (and embedding) span becomes one Helicone request through the manual
logger's custom-log endpoint, ``POST {base_url}/custom/v1/log`` (default
``https://api.worker.helicone.ai``), with the body Helicone documents for it::

    {"providerRequest": {"url": "custom-model-nopath", "json": {...}, "meta": {}},
     "providerResponse": {"json": {...}, "status": 200, "headers": {}},
     "timing": {"startTime": {"seconds": s, "milliseconds": ms},
                "endTime": {...}, "timeToFirstToken": ms}}

``providerRequest.json`` holds the model and the recorded input (a dict input is
merged in, a list becomes ``messages``, a string ``prompt``); ``providerResponse.json``
holds the response id and model, the output, and the token usage in the
Anthropic-style ``usage`` block Helicone's token tracking reads. A failed call is
logged with status 500 and its error. Headers carry the ids and the dimensions:
``Helicone-Request-Id`` (a UUID derived from the span id, so a re-delivered span
keeps its id), ``Helicone-User-Id``, ``Helicone-Session-Id``/``-Path``/``-Name``
when the span belongs to a session, and ``Helicone-Property-<Name>`` for the
feature, environment, release, tags, trace/span/parent ids, llmvigil's cost and
every metadata entry. Header values that are not printable ASCII are sent
percent-encoded (UTF-8).

Scores attach to the Helicone request of their span through the REST API
(``api_url``, default ``https://api.helicone.ai``): ``thumbs_up``/``thumbs_down``
as ``POST /v1/request/{id}/feedback {"rating": true|false}``, every other score with
a value as ``POST /v1/request/{id}/score {"scores": {name: int}}``. Helicone scores
are integers, so values are sent as ``round(value * score_multiplier)`` (default
100: 0.92 becomes 92, as Helicone's docs advise).

Not held: spans of other kinds (chain, agent, tool, retriever...) are not sent
unless listed in ``span_kinds``, where they are logged as Helicone tool logs
(``_type: "tool"``); their ids still reach Helicone as the ``Trace-Id``/``Parent-Id``
properties of the LLM requests below them. Scores on a whole trace (no span id) and
scores with no value (a category or correction only) have nowhere to go. Skipped
records are counted in :attr:`HeliconeBackend.not_sent` and logged.

Why not the vendor's ``helicone-helpers`` package: its ``HeliconeManualLogger.send_log``
calls ``requests.post`` with no timeout and swallows every error (it prints it and
returns nothing), so a stalled endpoint would hang the outbox thread and a failed
delivery would look like a success. This module builds the same body (the tests
check it against what ``HeliconeManualLogger`` sends) and posts it with httpx under
``timeout_s``, returning the true outcome: ``RETRY`` on connection errors, timeouts,
408, 429 and 5xx (llmvigil retries, then journals and re-sends later), and on 401/403
(a refused key is fixable: the records wait in the journal until it is accepted, with
one warning per outage naming the setting), ``FAILURE`` on other 4xx. A batch stops at
its first transient failure and is given at most ``timeout_s`` in all; the ids of
recently delivered records are remembered, so a re-sent batch does not post them twice
and always makes progress.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import ConfigError
from ..core.model import Score, Span
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = ["CAPABILITIES", "HeliconeBackend", "log_body", "request_id"]

_log = logging.getLogger("llmvigil.adapters.helicone")

DEFAULT_BASE_URL = "https://api.worker.helicone.ai"
DEFAULT_API_URL = "https://api.helicone.ai"
LOG_PATH = "/custom/v1/log"

#: Namespace of the Helicone request ids derived from llmvigil span ids (uuid5).
REQUEST_ID_NAMESPACE = uuid.UUID("6f1d7c1e-8a7b-5d0e-9c3a-2b4e6f8a0c1d")

CAPABILITIES = Capabilities(
    holds={
        "spans": "LLM and embedding spans: one Helicone request each (custom log); "
                 "other kinds only when listed in span_kinds, as tool logs",
        "scores": "thumbs as request feedback, other scores as request scores (integers)",
    },
    notes=(
        "spans of kinds not in span_kinds (default: chain, agent, tool, retriever) are "
        "not sent; trace and parent ids become request properties",
        "scores without a span id, or without a value, are not sent",
        "score values are integers: sent as round(value * score_multiplier)",
        "score comments, labels, categories and corrections are not kept",
        "Helicone computes its own cost; llmvigil's cost_usd is the Cost-Usd property",
        "stream statistics (TBT) are not kept; only time to first token",
        "session events, metrics, alerts and safety verdicts have no Helicone equivalent",
    ),
)

_THUMBS = {"thumbs_up": True, "thumbs_down": False}
_HEADER_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_MAX_VALUE = 1024
_REMEMBER = 10_000


def request_id(span_id: str) -> str:
    """The Helicone request id of a span: a UUID derived from its llmvigil span id."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, span_id))


def _timestamp(ns: int) -> dict[str, int]:
    return {"seconds": ns // 1_000_000_000, "milliseconds": ns % 1_000_000_000 // 1_000_000}


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _request_json(span: Span) -> dict[str, Any]:
    inp = span.input
    if isinstance(inp, Mapping):
        body: dict[str, Any] = {str(k): v for k, v in inp.items()}
    elif isinstance(inp, (list, tuple)):
        body = {"messages": list(inp)}
    elif isinstance(inp, str):
        body = {"prompt": inp}
    else:
        body = {} if inp is None else {"input": inp}
    if span.model:
        body["model"] = span.model
    if span.stream is not None:
        body["stream"] = True
    return body


def _response_json(span: Span) -> dict[str, Any]:
    out = span.output
    u = span.usage
    body = _without_none({
        "id": span.response_id,
        "model": span.response_model or span.model,
        "stop_reason": span.stop_reason,
        "usage": None if u is None else {
            "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cache_read_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens,
        },
    })
    if isinstance(out, str):
        body["content"] = [{"type": "text", "text": out}]
    elif out is not None:
        body["output"] = out
    if span.status == "error":
        body["error"] = _without_none({"type": span.error_type, "message": span.error})
    return body


def log_body(span: Span, *, as_tool: bool = False) -> dict[str, Any]:
    """The custom-log body Helicone documents, for one span."""
    if as_tool:
        request = {"_type": "tool", "toolName": span.name, "input": span.input}
        response = _without_none({"_type": "tool", "toolName": span.name,
                                  "output": span.output, "error": span.error})
    else:
        request, response = _request_json(span), _response_json(span)
    timing: dict[str, Any] = {
        "startTime": _timestamp(span.start_ns),
        "endTime": _timestamp(max(span.end_ns, span.start_ns)),
    }
    if span.ttft_s is not None:
        timing["timeToFirstToken"] = round(span.ttft_s * 1000)  # integer ms, as the vendor sends
    return {
        "providerRequest": {"url": "custom-model-nopath", "json": request, "meta": {}},
        "providerResponse": {"json": response,
                             "status": 500 if span.status == "error" else 200,
                             "headers": {}},
        "timing": timing,
    }


def _header_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           ensure_ascii=False)
    text = text[:_MAX_VALUE]
    if not _PRINTABLE.match(text):  # HTTP header values are ASCII; keep the content
        text = urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")
    return text


def _property(name: str) -> str:
    return "Helicone-Property-" + (_HEADER_NAME.sub("-", name).strip("-") or "_")


class HeliconeBackend:
    """Logs LLM spans to Helicone and attaches feedback and scores to them."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        import httpx

        key = settings.get("api_key") or os.environ.get("HELICONE_API_KEY")
        if not key:
            raise ConfigError("backends.helicone: api_key is not set "
                              "(set it, or the HELICONE_API_KEY environment variable)")
        self.base_url = str(settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.api_url = str(settings.get("api_url") or DEFAULT_API_URL).rstrip("/")
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        self.score_multiplier = float(settings.get("score_multiplier", 100))
        self.service = str(settings.get("service") or "llmvigil")
        kinds = settings.get("span_kinds") or ("llm", "embedding")
        self.span_kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
        self.properties: dict[str, Any] = dict(settings.get("properties") or {})
        self._client = httpx.Client(
            timeout=self.timeout_s,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        self._httpx = httpx
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Records not sent because Helicone cannot hold them, by reason.
        self.not_sent: collections.Counter[str] = collections.Counter()
        #: Records Helicone refused permanently (4xx), by endpoint.
        self.rejected: collections.Counter[str] = collections.Counter()
        #: The last delivery failure (``None`` after a success).
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<HeliconeBackend base_url={self.base_url!r} api_url={self.api_url!r}>"

    # -- HTTP -----------------------------------------------------------------------------

    def _post(self, what: str, url: str, body: Any, headers: Mapping[str, str],
              timeout: float) -> ExportResult:
        content = json.dumps(body, default=str, ensure_ascii=False).encode()
        try:
            r = self._client.post(url, content=content, headers=dict(headers), timeout=timeout)
        except self._httpx.HTTPError as exc:
            self._warn(f"{what}: {type(exc).__name__}: {exc}")
            return ExportResult.RETRY
        if r.status_code in (408, 429) or r.status_code >= 500:
            self._warn(f"{what}: HTTP {r.status_code}")
            return ExportResult.RETRY
        if r.status_code in (401, 403):
            # The same message for every endpoint and batch: one warning per outage.
            self._warn(f"Helicone refused the API key (HTTP {r.status_code}); records are "
                       "kept (retried, then journaled) and sent once it is accepted: "
                       "check api_key / HELICONE_API_KEY")
            return ExportResult.RETRY
        error = _result_error(r)
        if r.status_code >= 300 or error is not None:
            self.rejected[what] += 1
            self._warn(f"{what} refused: HTTP {r.status_code} {(error or r.text)[:300]}")
            return ExportResult.FAILURE
        self.last_error = None
        return ExportResult.SUCCESS

    def _warn(self, message: str) -> None:
        """Log a failure once, not at every retry of the same outage."""
        if message != self.last_error:
            _log.warning("llmvigil helicone backend: %s", message)
        self.last_error = message

    def _send_all(self, what: str,
                  items: Sequence[tuple[str, str, Any, Mapping[str, str]]]) -> ExportResult:
        """POST ``(key, url, body, headers)`` items in order within ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        delivered = refused = 0
        for key, url, body, headers in items:
            if key in self._recent:
                delivered += 1
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return ExportResult.RETRY
            result = self._post(what, url, body, headers, min(self.timeout_s, left))
            if result is ExportResult.RETRY:
                return result
            if result is ExportResult.FAILURE:
                refused += 1
                continue
            delivered += 1
            self._remember(key)
        if refused and not delivered:
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def _remember(self, key: str) -> None:
        self._recent[key] = None
        if len(self._recent) > _REMEMBER:
            self._recent.popitem(last=False)

    def _skip(self, reason: str) -> None:
        if not self.not_sent[reason]:
            _log.warning("llmvigil helicone backend: not sent (Helicone cannot hold it): %s",
                         reason.replace("_", " "))
        self.not_sent[reason] += 1

    # -- spans ----------------------------------------------------------------------------

    def span_headers(self, span: Span) -> dict[str, str]:
        """The Helicone headers of one span's custom log."""
        headers = {"Helicone-Request-Id": request_id(span.id)}
        if span.user_id:
            headers["Helicone-User-Id"] = _header_value(span.user_id)
        if span.session_id:
            headers["Helicone-Session-Id"] = _header_value(span.session_id)
            headers["Helicone-Session-Path"] = "/" + _header_value(
                span.name.replace("/", "_") or span.kind)
            headers["Helicone-Session-Name"] = _header_value(span.feature or self.service)
        # Later entries win; header names are case-insensitive, so dedupe on lower case.
        props: dict[str, tuple[str, Any]] = {}
        for name, value in [
            *self.properties.items(), *span.metadata.items(),
            ("Feature", span.feature), ("Environment", span.environment),
            ("Release", span.release), ("Provider", span.provider),
            ("Trace-Id", span.trace_id), ("Span-Id", span.id), ("Parent-Id", span.parent_id),
            ("Span-Kind", span.kind), ("Span-Name", span.name),
            ("Tags", ",".join(span.tags) or None),
            ("Cost-Usd", None if span.cost_usd is None else f"{span.cost_usd:.10g}"),
        ]:
            if value is not None and value != "":
                header = _property(str(name))
                props[header.lower()] = (header, value)
        headers.update((header, _header_value(value)) for header, value in props.values())
        return headers

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        items: list[tuple[str, str, Any, Mapping[str, str]]] = []
        url = self.base_url + LOG_PATH
        for span in spans:
            if span.kind not in self.span_kinds:
                self._skip(f"{span.kind}_spans")
                continue
            as_tool = span.kind not in ("llm", "embedding")
            items.append((f"log:{span.id}", url, log_body(span, as_tool=as_tool),
                          self.span_headers(span)))
        return self._send_all("custom log", items)

    # -- scores ---------------------------------------------------------------------------

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        feedback: list[tuple[str, str, Any, Mapping[str, str]]] = []
        values: dict[str, dict[str, int]] = {}
        ids: dict[str, list[str]] = {}
        for s in scores:
            if s.span_id is None:
                self._skip("scores_without_span_id")
            elif s.kind in _THUMBS:
                rid = request_id(s.span_id)
                feedback.append((f"feedback:{s.id}",
                                 f"{self.api_url}/v1/request/{rid}/feedback",
                                 {"rating": _THUMBS[s.kind]}, {}))
            elif s.value is None:
                self._skip("scores_without_value")
            else:
                values.setdefault(s.span_id, {})[s.name] = round(s.value * self.score_multiplier)
                ids.setdefault(s.span_id, []).append(s.id)
        items = feedback + [
            ("score:" + ",".join(ids[span_id]),
             f"{self.api_url}/v1/request/{request_id(span_id)}/score", {"scores": named}, {})
            for span_id, named in values.items()
        ]
        return self._send_all("feedback/score", items)

    # -- lifecycle ------------------------------------------------------------------------

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        """Read a (nonexistent) request: proves the API is reachable and the key valid."""
        url = f"{self.api_url}/v1/request/{uuid.UUID(int=0)}"
        try:
            r = self._client.get(url, timeout=timeout_s)
        except self._httpx.HTTPError as exc:
            raise ConnectionError(f"cannot reach Helicone at {self.api_url}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if r.status_code in (401, 403):
            raise PermissionError(f"Helicone refused the API key (HTTP {r.status_code}); "
                                  "check api_key / HELICONE_API_KEY")
        return f"Helicone logging to {self.base_url}, API {self.api_url}"

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        """Nothing is buffered here: every export delivers before it returns."""
        return True

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self._client.close()


def _result_error(response: Any) -> str | None:
    """The ``error`` of Helicone's ``{"data": ..., "error": ...}`` result, if any."""
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        payload = response.json()
    except ValueError:
        return None
    if isinstance(payload, dict) and payload.get("error") not in (None, ""):
        return str(payload["error"])
    return None


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [AdapterInfo(name="helicone", factory=HeliconeBackend, capabilities=CAPABILITIES,
                        description="Helicone: LLM spans as requests (manual logger), "
                                    "feedback and scores on them",
                        extra="helicone")]
