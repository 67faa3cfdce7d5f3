"""The Phoenix importer: a project's spans and annotations, read back as llmvigil records.

Spans come from Phoenix's REST API, ``GET /v1/projects/{project}/spans`` (the request
behind ``phoenix.client.Client().spans.get_spans``), paged with its ``next_cursor``.
Servers that can sort it by start time (``sort=start_time&order=asc``; a probe with an
invalid ``sort`` tells them apart, they answer 422) stream a project of any size page by
page. Older servers return the newest spans first: their spans are all read, then sorted
in memory (with a warning). After each page, the annotations of that page's spans,
traces and sessions come from ``/span_annotations``, ``/trace_annotations`` and
``/session_annotations`` (100 ids per request, paged with their cursors); they are
yielded after all the spans, sorted by time.

Mapping (the inverse of :mod:`llmvigil.adapters.phoenix` where it can be inverted):

* **ids, parents, times.** Phoenix keeps the OTLP trace and span ids, which are
  llmvigil's, and the parent ids. It stores times in microseconds: start and end
  come back rounded to the microsecond.
* **spans written by llmvigil** (they carry ``llmvigil.span.kind``) get every field
  back from the GenAI and ``llmvigil.*`` attributes the adapter sends along with the
  OpenInference ones: model, response model and id, provider, usage (cache tokens
  included), cost and its price source, TTFT, stream statistics, user, session,
  feature, environment, release, tags, metadata, input and output, status and error.
  What Phoenix fills in from the GenAI attributes is left out: the attributes not
  named by the adapter's ``llmvigil.attribute_keys`` hint (``llm.invocation_parameters``
  made from ``gen_ai.request.*``...), and an output it made up for a span without
  one (the response id and model as JSON, a tool's ``gen_ai.tool.call.result``).
* **other spans** map from OpenInference: ``openinference.span.kind``,
  ``llm.model_name``/``embedding.model_name``, ``llm.provider``/``llm.system``,
  ``llm.token_count.*`` (cached prompt tokens are inside the prompt count there and
  are taken out of the input tokens), ``llm.cost.total``, ``session.id``, ``user.id``,
  ``tag.tags``, ``metadata``, ``input.value``/``output.value`` (JSON when their mime
  type says so), and the ``First Token Stream Event`` for TTFT. Unmapped attributes
  stay in ``attributes``.
* **annotations**: those the adapter wrote (their metadata holds ``llmvigil.kind``, or
  ``llmvigil.time_ns`` for session events and safety verdicts) become the
  :class:`Score`, :class:`SessionEvent` (session annotations ``session.<event>``) and
  :class:`SafetyVerdict` (annotation ``safety``) they came from, with their ids (the
  annotation ``identifier``) and times. Any other annotation becomes a :class:`Score`
  whose id is its identifier (or Phoenix's annotation id), time its creation time,
  source ``human``/``judge``/``code`` from its annotator kind.

Bad data is never fatal: a span or annotation that cannot be mapped (a missing id or
time, a malformed number, JSON that does not parse) is yielded as a
:class:`~llmvigil.core.migrate.Skipped` naming it, counted in
:attr:`PhoenixImporter.skipped`, and reading goes on. A page that cannot be read
(after ``max_retries`` retries for connection errors, timeouts, 429 and 5xx) raises
:class:`PhoenixReadError` naming the request, the page and its cursor.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import msgspec

from ..adapters.otlp import default_operation
from ..adapters.phoenix import ATTRIBUTE_KEYS, OPERATION_EXPLICIT
from ..core.errors import ConfigError, MissingExtraError
from ..core.migrate import Skipped, record_key
from ..core.model import SPAN_KINDS, SafetyVerdict, Score, SessionEvent, Span, StreamStats, Usage
from ..plugins.hookspecs import hookimpl
from ..plugins.types import ImporterInfo
from ._common import (
    EPOCH,
    BadRecord,
    Failure,
    PagedReadError,
    Problems,
    checked_str,
    is_transient,
    iso_time_us_ns,
    limited,
    page_place,
    past_resume_point,
    resume_since,
    setting,
    wanted_kinds,
    with_retries,
)

__all__ = ["PhoenixImporter", "PhoenixReadError", "annotation_to_record", "span_to_record"]

_log = logging.getLogger("llmvigil.importers.phoenix")

DEFAULT_ENDPOINT = "http://127.0.0.1:6006"
FIRST_TOKEN_EVENT = "First Token Stream Event"
#: Ids per annotation request (what ``phoenix.client`` sends; URLs stay short).
IDS_PER_REQUEST = 100
ANNOTATION_KINDS = frozenset(("scores", "session_events", "safety_verdicts"))

_OI_KINDS = {"LLM": "llm", "CHAIN": "chain", "TOOL": "tool", "RETRIEVER": "retriever",
             "EMBEDDING": "embedding", "AGENT": "agent"}
_STATUS = {"OK": "ok", "ERROR": "error", "UNSET": "unset"}
_ANNOTATOR = {"HUMAN": "human", "LLM": "judge", "CODE": "code"}

# Span fields carried as one attribute each: field -> (attribute, type). The attribute
# is the field's encoded (GenAI) name, ``llmvigil.<name>`` when that has no dot, as
# ``adapters.otlp.genai_attributes`` writes them.
_STR_FIELDS = ("error_type", "model", "response_model", "response_id", "provider",
               "price_source", "price_version", "user_id", "session_id", "feature",
               "environment", "release")
_FLOAT_FIELDS = ("cost_usd", "ttft_s")


def _attribute_names() -> dict[str, str]:
    names = {}
    for f in msgspec.structs.fields(Span):
        if f.name in _STR_FIELDS or f.name in _FLOAT_FIELDS or f.name in ("operation",
                                                                          "stop_reason"):
            names[f.name] = f.encode_name if "." in f.encode_name else f"llmvigil.{f.name}"
    return names


_ATTR = _attribute_names()
_USAGE_ATTRS = {f.encode_name: f.name for f in msgspec.structs.fields(Usage)}
_STREAM_PREFIX = "llmvigil.stream."
# OpenInference attributes the adapter derives from the fields above.
_OI_DERIVED_PREFIXES = ("llm.input_messages.", "llm.output_messages.", "llm.token_count.",
                        "metadata.")
_OI_DERIVED = frozenset((
    "openinference.span.kind", "session.id", "user.id", "tag.tags", "metadata",
    "input.value", "input.mime_type", "output.value", "output.mime_type",
    "embedding.model_name", "tool.name", "llm.model_name", "llm.provider", "llm.system",
    "llm.finish_reason", "gen_ai.provider.name", "gen_ai.operation.name",
    "llmvigil.span.kind",
))
# Score metadata keys the adapter writes for fields of its own.
_SCORE_KEYS = frozenset(("llmvigil.kind", "llmvigil.source", "llmvigil.time_ns", "category",
                         "correction", "user.id", "session.id", "feature", "trace_id"))
_EVENT_KEYS = frozenset(("llmvigil.time_ns", "user.id", "trace_id", "feature"))
_VERDICT_KEYS = frozenset(("llmvigil.time_ns", "category", "decided_by"))

Item = Span | Score | SessionEvent | SafetyVerdict | Skipped


class PhoenixReadError(PagedReadError):
    """Reading Phoenix failed for good mid-stream (after retries, or a permanent 4xx).

    The message names the request, the page and its cursor; what was read before it
    was yielded already, so a migration with a checkpoint resumes after it.
    """


# -- small parsers ----------------------------------------------------------------------


def _iso(ns: int) -> str:
    """``ns`` rounded up to Phoenix's microsecond, as ISO 8601 (UTC)."""
    return (EPOCH + timedelta(microseconds=-(-ns // 1000))).isoformat()


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
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


def _content(value: Any, mime: Any, what: str) -> Any:
    """An ``input.value``/``output.value``: JSON when its mime type says so."""
    if value is None or not (isinstance(mime, str) and "json" in mime.lower()):
        return value
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise BadRecord(f"{what} is malformed JSON (mime type {mime})") from None


def _listify(node: Any) -> Any:
    """Dicts keyed ``"0".."n-1"`` (flattened lists) back into lists, recursively."""
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out) and \
            sorted(int(k) for k in out) == list(range(len(out))):
        return [out[str(i)] for i in range(len(out))]
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Phoenix's flattened ``a.b.0.c`` keys back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    result = _listify(root)
    return result if isinstance(result, dict) else {}


def _metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    """Pop the span's metadata: Phoenix parses the JSON and flattens it into ``metadata.*``."""
    raw = attrs.pop("metadata", None)
    flat = {k[len("metadata."):]: attrs.pop(k) for k in [k for k in attrs
                                                          if k.startswith("metadata.")]}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BadRecord("metadata is malformed JSON") from None
    if raw is not None and not isinstance(raw, dict):
        raise BadRecord("metadata is not a JSON object")
    return {**(raw or {}), **unflatten(flat)}


# -- spans ---------------------------------------------------------------------------------


def _events(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    events = raw.get("events") or []
    if not isinstance(events, list):
        raise BadRecord("events is not a list")
    return [e for e in events if isinstance(e, dict)]


def _usage(attrs: dict[str, Any]) -> Usage | None:
    own = {name: _count(attrs.pop(key), key) for key, name in _USAGE_ATTRS.items()
           if key in attrs}
    oi = {k: attrs.pop(k) for k in [k for k in attrs if k.startswith("llm.token_count.")]}
    if own:
        return Usage(**own)
    if not oi:
        return None
    cache_read = _count(oi.get("llm.token_count.prompt_details.cache_read"),
                        "llm.token_count.prompt_details.cache_read")
    cache_write = _count(oi.get("llm.token_count.prompt_details.cache_write"),
                         "llm.token_count.prompt_details.cache_write")
    prompt = _count(oi.get("llm.token_count.prompt"), "llm.token_count.prompt")
    return Usage(input_tokens=max(0, prompt - cache_read - cache_write),
                 output_tokens=_count(oi.get("llm.token_count.completion"),
                                      "llm.token_count.completion"),
                 cache_read_tokens=cache_read, cache_write_tokens=cache_write)


def _stream(attrs: dict[str, Any]) -> StreamStats | None:
    found = {k[len(_STREAM_PREFIX):]: attrs.pop(k)
             for k in [k for k in attrs if k.startswith(_STREAM_PREFIX)]}
    if not found:
        return None
    try:
        return msgspec.convert(found, StreamStats, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRecord(f"llmvigil.stream.*: {exc}") from None


def _error(raw: Mapping[str, Any], events: list[dict[str, Any]]) -> tuple[str | None,
                                                                            str | None]:
    for event in events:
        if event.get("name") == "exception":
            attrs = event.get("attributes") or {}
            return (checked_str(attrs.get("exception.message"), "exception.message"),
                    checked_str(attrs.get("exception.type"), "exception.type"))
    return checked_str(raw.get("status_message"), "status_message"), None


def _ttft(attrs: dict[str, Any], events: list[dict[str, Any]], start_ns: int) -> float | None:
    own = _number(attrs.pop(_ATTR["ttft_s"], None), _ATTR["ttft_s"])
    if own is not None:
        return own
    for event in events:
        if event.get("name") == FIRST_TOKEN_EVENT:
            return max(0, iso_time_us_ns(event.get("timestamp"), "first token event time")
                       - start_ns) / 1e9
    return None


def _operation(attrs: dict[str, Any], ours: bool, kind: str) -> str | None:
    """The span's operation. The adapter writes the one a kind implies on every span:
    that one is the span's own only when the adapter says so."""
    operation = checked_str(attrs.pop(_ATTR["operation"], None), _ATTR["operation"])
    explicit = attrs.pop(OPERATION_EXPLICIT, None) is True
    if ours and not explicit and operation == default_operation(kind):
        return None
    return operation


def _drop_phoenix_content(attrs: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Drop the input/output values Phoenix made up for a llmvigil span that had none.

    The adapter sends a mime type with every value, and JSON only in compact form;
    Phoenix writes a tool's ``gen_ai.tool.call.result`` without one, and the
    response id and model as ``json.dumps`` does, with spaces.
    """
    response = {k: v for k, v in (("id", fields.get("response_id")),
                                  ("model", fields.get("response_model"))) if v}
    made_up = json.dumps(response, ensure_ascii=False) if response else None
    for side in ("input", "output"):
        value, mime = attrs.get(f"{side}.value"), attrs.get(f"{side}.mime_type")
        if value is not None and (mime is None or (side == "output" and value == made_up
                                                   and mime == "application/json")):
            del attrs[f"{side}.value"]
            attrs.pop(f"{side}.mime_type", None)


def span_to_record(raw: Mapping[str, Any]) -> Span:
    """One Phoenix span (REST shape) as a llmvigil span (see the module docstring).

    Raises:
        BadRecord: the span cannot be mapped; the message says why.
    """
    context = raw.get("context")
    if not isinstance(context, dict):
        raise BadRecord("context is missing")
    span_id, trace_id = context.get("span_id"), context.get("trace_id")
    if not span_id or not isinstance(span_id, str):
        raise BadRecord("context.span_id is missing")
    if not trace_id or not isinstance(trace_id, str):
        raise BadRecord("context.trace_id is missing")
    attrs = raw.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise BadRecord("attributes is not an object")
    attrs = dict(attrs)
    start_ns = iso_time_us_ns(raw.get("start_time"), "start_time")
    end = raw.get("end_time")
    end_ns = iso_time_us_ns(end, "end_time") if end not in (None, "") else start_ns
    events = _events(raw)
    ours = "llmvigil.span.kind" in attrs
    kind = attrs.get("llmvigil.span.kind") if ours else \
        _OI_KINDS.get(str(raw.get("span_kind") or attrs.get("openinference.span.kind")))
    # Interned: msgspec omits a default (kind "span") only when it is the same object.
    kind = sys.intern(kind) if isinstance(kind, str) and kind in SPAN_KINDS else "span"

    fields: dict[str, Any] = {}
    for name in _STR_FIELDS:
        key = _ATTR[name]
        if key in attrs:
            fields[name] = checked_str(attrs.pop(key), key)
    fields["cost_usd"] = _number(attrs.pop(_ATTR["cost_usd"], None), _ATTR["cost_usd"])
    fields["ttft_s"] = _ttft(attrs, events, start_ns)
    reasons = attrs.pop(_ATTR["stop_reason"], None)
    if isinstance(reasons, list):
        reasons = reasons[0] if reasons else None
    fields["stop_reason"] = checked_str(reasons, _ATTR["stop_reason"])
    fields["operation"] = _operation(attrs, ours, kind)
    fields["usage"] = _usage(attrs)
    fields["stream"] = _stream(attrs)
    if not ours:  # OpenInference names for what the GenAI attributes did not give
        fields["model"] = fields.get("model") or checked_str(
            attrs.pop("llm.model_name", None) or attrs.pop("embedding.model_name", None),
            "llm.model_name")
        fields["provider"] = fields.get("provider") or checked_str(
            attrs.pop("llm.provider", None) or attrs.pop("llm.system", None), "llm.provider")
        fields["stop_reason"] = fields["stop_reason"] or checked_str(
            attrs.pop("llm.finish_reason", None), "llm.finish_reason")
        if fields["cost_usd"] is None:
            fields["cost_usd"] = _number(attrs.pop("llm.cost.total", None), "llm.cost.total")
    own_keys = attrs.pop(ATTRIBUTE_KEYS, None)
    if ours:
        _drop_phoenix_content(attrs, fields)
    tags = attrs.get("tag.tags") or []
    if not isinstance(tags, list):
        tags = [tags]
    metadata = _metadata(attrs)
    inp = _content(attrs.get("input.value"), attrs.get("input.mime_type"), "input.value")
    out = _content(attrs.get("output.value"), attrs.get("output.mime_type"), "output.value")
    error, error_type = _error(raw, events)
    status = _STATUS.get(str(raw.get("status_code") or "UNSET").upper(), "unset")
    if fields.get("error_type") is None:
        fields["error_type"] = error_type
    if ours:
        for key in [k for k in attrs if k in _OI_DERIVED or k.startswith(_OI_DERIVED_PREFIXES)]:
            del attrs[key]
        if isinstance(own_keys, list):  # the rest is Phoenix's (llm.invocation_parameters...)
            keep = set(own_keys)
            attrs = {k: v for k, v in attrs.items() if k in keep}
    else:
        for key in ("openinference.span.kind", "tag.tags", "input.value", "input.mime_type",
                    "output.value", "output.mime_type"):
            attrs.pop(key, None)
        if fields["provider"] is not None and attrs.get("gen_ai.provider.name") == \
                fields["provider"]:
            del attrs["gen_ai.provider.name"]
    return Span(
        id=span_id, trace_id=trace_id, parent_id=checked_str(raw.get("parent_id"), "parent_id"),
        name=str(raw.get("name") or ""), kind=str(kind), start_ns=start_ns, end_ns=end_ns,
        status=status, error=error, input=inp, output=out, tags=[str(t) for t in tags],
        metadata=metadata, attributes=attrs, **fields,
    )


# -- annotations ---------------------------------------------------------------------------


def _annotation_id(raw: Mapping[str, Any]) -> str:
    rid = raw.get("identifier") or raw.get("id")
    if not rid or not isinstance(rid, str):
        raise BadRecord("neither identifier nor id")
    return rid


def annotation_to_record(raw: Mapping[str, Any], target: str,
                         trace_of: Mapping[str, str] | None = None
                         ) -> Score | SessionEvent | SafetyVerdict:
    """One Phoenix annotation of ``target`` (``span``, ``trace`` or ``session``) as the
    record it came from (see the module docstring). ``trace_of`` maps span ids to
    their trace ids, for annotations that do not say it.

    Raises:
        BadRecord: the annotation cannot be mapped; the message says why.
    """
    rid = _annotation_id(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRecord("name is missing")
    target_id = raw.get(f"{target}_id")
    if not isinstance(target_id, str) or not target_id:
        raise BadRecord(f"{target}_id is missing")
    result = raw.get("result") or {}
    meta = raw.get("metadata") or {}
    if not isinstance(result, dict):
        raise BadRecord("result is not an object")
    if not isinstance(meta, dict):
        raise BadRecord("metadata is not an object")
    own_time = meta.get("llmvigil.time_ns")
    if own_time is not None and (isinstance(own_time, bool) or not isinstance(own_time, int)):
        raise BadRecord(f"metadata llmvigil.time_ns is not an integer ({own_time!r})")
    time_ns = own_time if own_time is not None else iso_time_us_ns(raw.get("created_at"),
                                                             "created_at")
    label = checked_str(result.get("label"), "result.label")
    explanation = checked_str(result.get("explanation"), "result.explanation")
    span_id = target_id if target == "span" else None
    trace_id = target_id if target == "trace" else \
        (trace_of or {}).get(target_id) if span_id else None

    if target == "session" and own_time is not None and name.startswith("session.") \
            and "llmvigil.kind" not in meta:
        return SessionEvent(
            id=rid, session_id=target_id, event=label or name[len("session."):],
            time_ns=time_ns, user_id=checked_str(meta.get("user.id"), "metadata user.id"),
            trace_id=checked_str(meta.get("trace_id"), "metadata trace_id"),
            feature=checked_str(meta.get("feature"), "metadata feature"),
            metadata={k: v for k, v in meta.items() if k not in _EVENT_KEYS})
    if target != "session" and name == "safety" and own_time is not None \
            and "llmvigil.kind" not in meta:
        if label is None:
            raise BadRecord("safety annotation without a label (the action)")
        return SafetyVerdict(
            id=rid, action=label, time_ns=time_ns, reason=explanation or "",
            category=checked_str(meta.get("category"), "metadata category"),
            decided_by=checked_str(meta.get("decided_by"), "metadata decided_by"),
            trace_id=trace_id, span_id=span_id,
            metadata={k: v for k, v in meta.items() if k not in _VERDICT_KEYS})
    value = _number(result.get("score"), "result.score")
    if "llmvigil.kind" in meta:
        kind = sys.intern(str(meta["llmvigil.kind"]))
        category = checked_str(meta.get("category"), "metadata category")
        correction = checked_str(meta.get("correction"), "metadata correction")
        # The adapter writes the label as label or category or kind, the explanation
        # as comment or correction: a default it filled in is not a field.
        if label is not None and label == (category or kind):
            label = None
        comment = None if explanation is not None and explanation == correction \
            else explanation
        return Score(
            id=rid, name="note" if name == "llmvigil.note" else name, time_ns=time_ns,
            trace_id=checked_str(meta.get("trace_id"), "metadata trace_id") or trace_id,
            span_id=span_id, kind=kind, value=value, label=label, category=category,
            correction=correction, comment=comment,
            source=sys.intern(str(meta.get("llmvigil.source") or "api")),
            user_id=checked_str(meta.get("user.id"), "metadata user.id"),
            session_id=checked_str(meta.get("session.id"), "metadata session.id")
            or (target_id if target == "session" else None),
            feature=checked_str(meta.get("feature"), "metadata feature"),
            metadata={k: v for k, v in meta.items() if k not in _SCORE_KEYS})
    return Score(
        id=rid, name=name, time_ns=time_ns, trace_id=trace_id, span_id=span_id,
        value=value, label=label, comment=explanation,
        source=_ANNOTATOR.get(str(raw.get("annotator_kind")), "api"),
        session_id=target_id if target == "session" else None, metadata=dict(meta))


# -- the importer --------------------------------------------------------------------------


def _base_url(setting: str | None) -> str:
    url = (setting or DEFAULT_ENDPOINT).rstrip("/")
    return url[: -len("/v1/traces")] if url.endswith("/v1/traces") else url


class PhoenixImporter:
    """Reads one Phoenix project's spans and annotations (see the module docstring).

    Settings (the ``phoenix`` backend's, see :class:`~llmvigil.adapters.phoenix.
    PhoenixBackend`): ``endpoint`` (env ``PHOENIX_COLLECTOR_ENDPOINT``), ``api_key``
    (env ``PHOENIX_API_KEY``), ``project`` (env ``PHOENIX_PROJECT``/
    ``PHOENIX_PROJECT_NAME``, default ``default``), ``headers``, plus ``page_size``
    (spans per request, 1..1000, default 500), ``max_retries`` (per request, for
    connection errors, timeouts, 408/425/429 and 5xx; default 3), ``retry_backoff_s``
    (first wait, doubled each time, default 1.0) and ``timeout_s`` (per request,
    default 30).

    After :meth:`read`, ``skipped`` counts the records skipped per reason.

    Raises:
        MissingExtraError: ``httpx`` is not installed.
        ConfigError: a setting is invalid.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise MissingExtraError("phoenix", "phoenix", exc.name or "httpx") from exc
        self._httpx = httpx
        self.endpoint = _base_url(setting(settings, "endpoint", "PHOENIX_COLLECTOR_ENDPOINT"))
        self.project = setting(settings, "project", "PHOENIX_PROJECT",
                                "PHOENIX_PROJECT_NAME") or "default"
        raw_headers = settings.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            raise ConfigError("importer phoenix: headers: expected a mapping of header name "
                              "to value")
        self._headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        api_key = setting(settings, "api_key", "PHOENIX_API_KEY")
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        try:
            self.page_size = max(1, min(1000, int(settings.get("page_size", 500))))
            self.max_retries = max(0, int(settings.get("max_retries", 3)))
            self.backoff_s = max(0.0, float(settings.get("retry_backoff_s", 1.0)))
            self.timeout_s = float(settings.get("timeout_s", 30.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"importer phoenix: {exc}") from None
        #: Records not imported, by reason (filled by :meth:`read`).
        self.skipped: Counter[str] = Counter()
        #: Span pages read by the last :meth:`read`.
        self.pages = 0
        self._records = 0

    def __repr__(self) -> str:
        return f"<PhoenixImporter {self.endpoint} project={self.project!r}>"

    def _client(self) -> Any:
        return self._httpx.Client(base_url=self.endpoint, headers=self._headers,
                                  timeout=self.timeout_s)

    # -- requests ----------------------------------------------------------------------

    def _get(self, client: Any, path: str, params: Any, *, page: int,
             cursor: str | None) -> Any:
        """One page's JSON, retried on transient failures.

        Raises:
            PhoenixReadError: the page could not be read.
        """
        where = f"page {page} ({page_place(cursor)})"

        def attempt() -> Any:
            status: int | None = None
            try:
                response = client.get(path, params=params)
                status = response.status_code
                if status < 400:
                    return response.json()
                problem = f"HTTP {status} {response.text[:300]}".rstrip()
                if status in (401, 403):
                    problem += " (check api_key / PHOENIX_API_KEY)"
            except self._httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except ValueError:
                problem = "the answer is not JSON"
            return Failure(problem, status, is_transient(status))

        def give_up(failure: Failure, tries: str) -> PhoenixReadError:
            return PhoenixReadError(
                f"Phoenix {self.endpoint}: GET {path} {where} failed{tries}: "
                f"{failure.problem}; {self._records} records were read before it",
                request=f"GET {path}", page=page, cursor=cursor, status=failure.status,
                records=self._records)

        return with_retries(attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
                            give_up=give_up)

    def _check_project(self, client: Any, project: str) -> dict[str, Any]:
        """The project's REST description; a clear error naming the known ones if absent.

        Raises:
            ConfigError: no such project, or the credentials are refused.
            PhoenixReadError: Phoenix cannot be reached or fails.
        """
        try:
            response = client.get(f"v1/projects/{project}")
        except self._httpx.HTTPError as exc:
            raise PhoenixReadError(
                f"Phoenix {self.endpoint}: cannot reach it: {type(exc).__name__}: {exc}",
                request=f"GET v1/projects/{project}", page=0, cursor=None, status=None,
                records=0) from None
        if response.status_code in (401, 403):
            raise ConfigError(f"Phoenix {self.endpoint} refused the credentials (HTTP "
                              f"{response.status_code}); check api_key / PHOENIX_API_KEY")
        if response.status_code == 404:
            known = []
            try:
                listing = client.get("v1/projects", params={"limit": 100}).json()
                known = [str(p.get("name")) for p in listing.get("data", [])]
            except Exception:
                pass
            raise ConfigError(
                f"Phoenix {self.endpoint}: no project {project!r}"
                + (f"; known projects: {', '.join(known)}" if known else "")
                + " (set the backend's project, or --from-opt project=NAME)")
        if response.status_code >= 400:
            raise PhoenixReadError(
                f"Phoenix {self.endpoint}: GET v1/projects/{project} failed: HTTP "
                f"{response.status_code} {response.text[:300]}".rstrip(),
                request=f"GET v1/projects/{project}", page=0, cursor=None,
                status=response.status_code, records=0)
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            data = None
        return data if isinstance(data, dict) else {}

    # -- reading -------------------------------------------------------------------------

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """The number of spans in the window (Phoenix's own count), or ``None``.

        Annotations are not counted: Phoenix has no count of them per project.
        """
        if "spans" not in wanted_kinds(options):
            return None
        project = str(options.get("project") or self.project)
        time_range: dict[str, str] = {}
        since, until = options.get("since_ns"), options.get("until_ns")
        if since is not None:
            time_range["start"] = _iso(int(since))
        if until is not None:
            time_range["end"] = _iso(int(until))
        query = ("query($id: ID!, $tr: TimeRange) "
                 "{ node(id: $id) { ... on Project { recordCount(timeRange: $tr) } } }")
        try:
            with self._client() as client:
                node_id = self._check_project(client, project).get("id")
                response = client.post("graphql", json={
                    "query": query, "variables": {"id": node_id, "tr": time_range or None}})
                count = int(response.json()["data"]["node"]["recordCount"])
        except Exception:
            return None
        return limited(count, options)

    #: The brief's name for :meth:`estimate`.
    total = estimate

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the project's spans in ``(start, id)`` order, then its scores, session
        events and safety verdicts in ``(time, id)`` order, honouring ``since_ns``/
        ``until_ns`` (spans by start, annotations by their time), ``project``,
        ``kinds``, ``after`` and ``limit``. Bad records come as :class:`Skipped`.

        Raises (from the generator):
            PhoenixReadError: a page failed for good; ConfigError: no such project.
        """
        kinds = wanted_kinds(options)
        project = str(options.get("project") or self.project)
        self.skipped.clear()
        self.pages = 0
        self._records = 0
        return self._read(project, options, kinds)

    def _read(self, project: str, options: Mapping[str, Any],
              kinds: set[str]) -> Iterator[Item]:
        if "spans" not in kinds and not kinds & ANNOTATION_KINDS:
            return
        limit = options.get("limit")
        after = options.get("after") or {}
        since, until = options.get("since_ns"), options.get("until_ns")
        problems = Problems(_log, "phoenix importer", "skipped", self.skipped)
        buffered: list[Score | SessionEvent | SafetyVerdict] = []
        with self._client() as client:
            self._check_project(client, project)
            for item in self._spans(client, project, options, kinds, buffered, problems):
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

        def wanted(record: Score | SessionEvent | SafetyVerdict) -> bool:
            kind = {Score: "scores", SessionEvent: "session_events",
                    SafetyVerdict: "safety_verdicts"}[type(record)]
            t = record.time_ns
            return kind in kinds and (since is None or t >= since) and \
                (until is None or t < until) and past_resume_point(record, after.get(kind))

        for record in sorted(filter(wanted, buffered), key=record_key):
            yield record
            self._records += 1
            if limit is not None and self._records >= limit:
                return
        if self.skipped:
            _log.warning("phoenix importer: %d records skipped (%s)",
                         sum(self.skipped.values()),
                         ", ".join(f"{n} {r}" for r, n in self.skipped.most_common()))

    def _spans(self, client: Any, project: str, options: Mapping[str, Any], kinds: set[str],
               buffered: list[Any], problems: Problems) -> Iterator[Span | Skipped]:
        """The spans in ``(start, id)`` order; each page's annotations into ``buffered``."""
        path = f"v1/projects/{project}/spans"
        params: dict[str, Any] = {"limit": self.page_size}
        streaming = self._sorts(client, path)
        if streaming:
            params.update(sort="start_time", order="asc")
        else:
            _log.warning("phoenix importer: Phoenix at %s cannot sort spans by start time: "
                         "reading them all to sort them in memory (upgrade Phoenix to "
                         "stream them)", self.endpoint)
        # Only spans wanted: start at their resume point (annotations may be older).
        since = resume_since(options, {"spans"}) if kinds <= {"spans"} \
            else options.get("since_ns")
        if since is not None:
            params["start_time"] = _iso(int(since))
        if options.get("until_ns") is not None:
            params["end_time"] = _iso(int(options["until_ns"]))
        annotate = bool(kinds & ANNOTATION_KINDS)
        seen_traces: set[str] = set()
        seen_sessions: set[str] = set()
        same_time: list[Span] = []
        last_start: int | None = None
        cursor: str | None = None
        page = 0
        while True:
            page += 1
            if cursor is not None:
                params["cursor"] = cursor
            data = self._get(client, path, params, page=page, cursor=cursor)
            self.pages = page
            rows = data.get("data") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise PhoenixReadError(
                    f"Phoenix {self.endpoint}: GET {path} page {page}: no 'data' list in the "
                    "answer", request=f"GET {path}", page=page, cursor=cursor, status=None,
                    records=self._records)
            spans: list[Span] = []
            for raw in rows:
                item = self._span(raw, page, problems)
                if isinstance(item, Skipped):
                    yield item
                    continue
                if streaming and last_start is not None and item.start_ns < last_start:
                    raise PhoenixReadError(
                        f"Phoenix {self.endpoint}: GET {path} page {page} is not sorted by "
                        "start time although it accepts sort=start_time",
                        request=f"GET {path}", page=page,
                        cursor=cursor, status=None, records=self._records)
                last_start = item.start_ns
                spans.append(item)
            if annotate and spans:
                for found in self._annotations(client, project, spans, seen_traces,
                                               seen_sessions, page, problems):
                    if isinstance(found, Skipped):
                        yield found
                    else:
                        buffered.append(found)
            if not streaming:
                same_time.extend(spans)
                spans = []
            for span in spans:
                # Phoenix breaks start-time ties by row id: sort them by span id here.
                if same_time and same_time[0].start_ns != span.start_ns:
                    yield from sorted(same_time, key=record_key)
                    same_time.clear()
                same_time.append(span)
            next_cursor = data.get("next_cursor")
            if not rows or not next_cursor:
                break
            cursor = str(next_cursor)
        yield from sorted(same_time, key=record_key)

    def _sorts(self, client: Any, path: str) -> bool:
        """Whether the server sorts spans by start time: one that knows ``sort`` refuses
        an invalid value (422); an older one ignores it."""
        try:
            return bool(client.get(path, params={"sort": "llmvigil-probe",
                                                 "limit": 1}).status_code == 422)
        except self._httpx.HTTPError:
            return True  # let the first page report the failure

    def _span(self, raw: Any, page: int, problems: Problems) -> Span | Skipped:
        context = raw.get("context") if isinstance(raw, dict) else None
        rid = context.get("span_id") if isinstance(context, dict) else None
        rid = str(rid) if rid else None
        try:
            if not isinstance(raw, dict):
                raise BadRecord("not a JSON object")
            return span_to_record(raw)
        except BadRecord as exc:
            reason = f"malformed span: {exc}"
            problems.add(reason, f"span {rid}" if rid else f"a span on page {page}")
            return Skipped(reason, f"Phoenix project {self.project}, page {page}", rid, "spans")

    def _annotations(self, client: Any, project: str, spans: list[Span],
                     seen_traces: set[str], seen_sessions: set[str], page: int,
                     problems: Problems) -> Iterator[Any]:
        """The annotations of these spans, of their new traces and new sessions."""
        trace_of = {s.id: s.trace_id for s in spans}
        traces = sorted({s.trace_id for s in spans} - seen_traces)
        sessions = sorted({s.session_id for s in spans if s.session_id} - seen_sessions)
        seen_traces.update(traces)
        seen_sessions.update(sessions)
        for target, ids in (("span", sorted(trace_of)), ("trace", traces),
                            ("session", sessions)):
            for raw in self._annotation_pages(client, project, target, ids, page):
                try:
                    if not isinstance(raw, dict):
                        raise BadRecord("not a JSON object")
                    yield annotation_to_record(raw, target, trace_of)
                except BadRecord as exc:
                    rid = raw.get("identifier") or raw.get("id") if isinstance(raw, dict) \
                        else None
                    reason = f"malformed {target} annotation: {exc}"
                    problems.add(reason, f"annotation {rid}" if rid else
                                 f"a {target} annotation")
                    yield Skipped(reason, f"Phoenix project {project}",
                                  str(rid) if rid else None, "scores")

    def _annotation_pages(self, client: Any, project: str, target: str, ids: list[str],
                          page: int) -> Iterable[Any]:
        path = f"v1/projects/{project}/{target}_annotations"
        for i in range(0, len(ids), IDS_PER_REQUEST):
            params: dict[str, Any] = {f"{target}_ids": ids[i:i + IDS_PER_REQUEST],
                                      "limit": 1000}
            cursor: str | None = None
            while True:
                if cursor is not None:
                    params["cursor"] = cursor
                try:
                    data = self._get(client, path, params, page=page, cursor=cursor)
                except PhoenixReadError as exc:
                    if exc.status == 404:  # none of these ids has annotations (or exists)
                        break
                    raise
                rows = data.get("data") if isinstance(data, dict) else None
                if not isinstance(rows, list):
                    raise PhoenixReadError(
                        f"Phoenix {self.endpoint}: GET {path} (for span page {page}): no "
                        "'data' list in the answer", request=f"GET {path}", page=page,
                        cursor=cursor, status=None, records=self._records)
                yield from rows
                next_cursor = data.get("next_cursor")
                if not rows or not next_cursor:
                    break
                cursor = str(next_cursor)


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [ImporterInfo(name="phoenix", factory=PhoenixImporter,
                         description="Arize Phoenix: spans (OpenInference) and span, trace "
                                     "and session annotations",
                         extra="phoenix")]
