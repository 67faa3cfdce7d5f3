"""A local stand-in for the Langfuse API, decoding the real wire formats.

* ``POST /api/public/otel/v1/traces``: OTLP/HTTP protobuf (gzip or plain), decoded with
  ``opentelemetry-proto``'s ``ExportTraceServiceRequest``; checked like Langfuse does:
  Basic auth, protobuf content type, 16/8-byte ids, and for ``langfuse-sdk`` scopes a
  ``public_key`` scope attribute equal to the authenticated key.
* ``POST /api/public/scores``: a JSON list, each item validated with the SDK's own
  ``CreateScoreRequest`` model plus the server-side rules Langfuse documents (a target
  trace/session, observation only with a trace, value type per ``dataType``, source
  ``API``/``ANNOTATION``, environment pattern, timestamp with offset); invalid items are
  rejected with HTTP 207 like the real batch endpoint.
* ``GET /api/public/projects``: the project of the key.
* reads, answered from what was accepted (the last version of each span and score):
  ``GET /api/public/v2/observations`` (field groups, ``fromStartTime``/``toStartTime``,
  ``traceId``, ``type``, ``userId``, ``sessionId``, ``limit`` <= 1000, cursors; newest
  first; metadata values decoded, those longer than 200 characters truncated unless
  named in ``expandMetadata``; trace tags on every observation of the trace) and
  ``GET /api/public/v3/scores`` (``fields`` ``details``/``subject``,
  ``fromTimestamp``/``toTimestamp``, ``limit`` <= 100, cursors; newest first). Times
  come back in microseconds, as Langfuse stores them. Tests may add raw (even
  malformed) items to :attr:`extra_observations` and :attr:`extra_scores`.

``mode`` switches failures: ``"ok"``, ``"500"``, ``"429"`` (with ``Retry-After``),
``"400"``, ``"207"`` (every score rejected), ``"hang"`` (accept, read, never answer
until released); :meth:`refuse` makes the port refuse connections and :meth:`accept`
brings the server back on the same port; :meth:`fail_next` fails only some requests to
one path (e.g. the third page of a listing).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from langfuse.api import CreateScoreRequest
from langfuse.api.core.pydantic_utilities import parse_obj_as
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OTEL_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
PROJECTS_PATH = "/api/public/projects"
OBSERVATIONS_V2_PATH = "/api/public/v2/observations"
SCORES_V3_PATH = "/api/public/v3/scores"
PROJECT_ID = "proj-test"
OBSERVATION_GROUPS = frozenset((
    "core", "basic", "time", "io", "metadata", "model", "usage", "prompt", "metrics",
    "trace_context",
))
_GROUP_FIELDS = {
    "core": ("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId",
             "type"),
    "basic": ("name", "level", "statusMessage", "version", "environment", "bookmarked",
              "public", "userId", "sessionId", "isRootObservation"),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("model", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_A = "langfuse.observation."
SCORE_FIELDS = frozenset((
    "id", "traceId", "sessionId", "observationId", "datasetRunId", "name", "value",
    "comment", "metadata", "environment", "queueId", "dataType", "configId", "source",
    "timestamp",
))
_ENV = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
_TZ = re.compile(r"(Z|[+-]\d\d:\d\d)$")


@dataclass
class ReceivedSpan:
    """One span as it arrived on the OTLP endpoint."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    scope_name: str
    scope_version: str
    scope_attributes: dict[str, Any]
    resource_attributes: dict[str, Any]


@dataclass
class Attempt:
    """One request, whatever the server did with it."""

    method: str
    path: str
    mode: str
    headers: dict[str, str]
    ids: list[str] = field(default_factory=list)
    status: int | None = None


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


def _iso_ns(ns: int) -> str:
    """Epoch ns as Langfuse shows a time: UTC, microseconds."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _decode(value: Any) -> Any:
    """A JSON-encoded attribute value decoded, as Langfuse does for v5 SDKs."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def observation_of(span: ReceivedSpan, trace_tags: list[str]) -> dict[str, Any]:
    """What Langfuse makes of one OTLP span: the v2 API's observation, every field group."""
    a = span.attributes
    res = span.resource_attributes
    usage = _decode(a.get(_A + "usage_details"))
    costs = _decode(a.get(_A + "cost_details"))
    metadata = {k[len(_A + "metadata."):]: _decode(v) for k, v in a.items()
                if k.startswith(_A + "metadata.")}
    completion = _decode(a.get(_A + "completion_start_time"))
    start = _iso_ns(span.start_ns)
    first = _parse_time(completion) if completion else None
    level = a.get(_A + "level") or ("ERROR" if span.status_code == 2 else "DEFAULT")
    return {
        "id": span.span_id, "traceId": span.trace_id, "startTime": start,
        "endTime": _iso_ns(span.end_ns) if span.end_ns else None, "projectId": PROJECT_ID,
        "parentObservationId": span.parent_span_id or None,
        "type": str(a.get(_A + "type") or "span").upper(),
        "name": span.name, "level": level,
        "statusMessage": a.get(_A + "status_message") or span.status_message or None,
        "version": a.get("langfuse.version"),
        "environment": a.get("langfuse.environment") or res.get("langfuse.environment")
        or "default",
        "bookmarked": False, "public": False, "userId": a.get("user.id"),
        "sessionId": a.get("session.id"),
        "isRootObservation": not span.parent_span_id
        or bool(a.get("langfuse.internal.is_app_root")),
        "completionStartTime": first.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if first else None,
        "createdAt": start, "updatedAt": start,
        "input": a.get(_A + "input"), "output": a.get(_A + "output"),
        "metadata": metadata, "model": a.get(_A + "model.name"), "internalModelId": None,
        "modelParameters": _decode(a.get(_A + "model.parameters")),
        "usageDetails": usage if isinstance(usage, dict) else {},
        "costDetails": costs if isinstance(costs, dict) else {},
        "totalCost": costs.get("total") if isinstance(costs, dict) else None,
        "usagePricingTierName": None, "promptId": None, "promptName": None,
        "promptVersion": None, "latency": (span.end_ns - span.start_ns) / 1e9,
        "timeToFirstToken": (first - _EPOCH).total_seconds() - span.start_ns / 1e9
        if first else None,
        "tags": trace_tags, "release": a.get("langfuse.release") or res.get("langfuse.release"),
        "traceName": a.get("langfuse.trace.name"),
    }


def validate_score(item: Any) -> str | None:
    """Why Langfuse would reject this score item, or None when it is valid."""
    if not isinstance(item, dict):
        return "score must be an object"
    unknown = set(item) - SCORE_FIELDS
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    try:
        score = parse_obj_as(CreateScoreRequest, item)
    except Exception as exc:
        return f"invalid score: {exc}"
    if not (score.trace_id or score.session_id or score.dataset_run_id):
        return "one of traceId, sessionId, datasetRunId is required"
    if score.observation_id and not score.trace_id:
        return "observationId requires traceId"
    data_type = item.get("dataType", "NUMERIC")
    value = item["value"]
    if data_type in ("NUMERIC", "BOOLEAN") and not isinstance(value, (int, float)):
        return f"{data_type} score needs a numeric value"
    if data_type == "BOOLEAN" and value not in (0, 1):
        return "BOOLEAN score value must be 0 or 1"
    if data_type in ("CATEGORICAL", "TEXT") and not isinstance(value, str):
        return f"{data_type} score needs a string value"
    if item.get("source", "API") not in ("API", "ANNOTATION"):
        return "source must be API or ANNOTATION"
    if item.get("environment") is not None and not _ENV.match(item["environment"]):
        return "invalid environment"
    if item.get("timestamp") is not None and not _TZ.search(item["timestamp"]):
        return "timestamp needs a UTC offset"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.owner.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.owner.handle(self, "POST")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LangfuseServer


class LangfuseServer:
    """The fake Langfuse; ``url`` is its base URL, ``spans``/``scores`` what it accepted."""

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test") -> None:
        self.public_key = public_key
        self.secret_key = secret_key
        self.mode = "ok"
        self.lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []
        self.scores: list[dict[str, Any]] = []
        self.attempts: list[Attempt] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.extra_observations: list[dict[str, Any]] = []
        self.extra_scores: list[dict[str, Any]] = []
        self._faults: list[list[Any]] = []
        self._obs_cache: tuple[Any, list[Any]] = (None, [])
        self._score_cache: tuple[Any, list[Any]] = (None, [])
        self._release = threading.Event()
        self._placeholder: socket.socket | None = None
        self._httpd: _HTTPServer | None = None
        self._start(0)
        assert self._httpd is not None
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # -- control ----------------------------------------------------------------------------

    def _start(self, port: int) -> None:
        httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        httpd.owner = self
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self._httpd = httpd

    def set_mode(self, mode: str) -> None:
        """Switch to ``ok``, ``500``, ``429``, ``400``, ``207`` or ``hang``; leaving ``hang`` frees
        the hung requests."""
        with self.lock:
            self.mode = mode
            if mode != "hang":
                self._release.set()
                self._release = threading.Event()

    def fail_next(self, path: str, status: int = 500, *, skip: int = 0, times: int = 1) -> None:
        """Let ``skip`` requests to ``path`` through, then answer the next ``times`` with
        ``status``."""
        with self.lock:
            self._faults.append([path, status, skip, times])

    def _fault(self, path: str) -> int | None:
        with self.lock:
            for fault in self._faults:
                if fault[0] != path or fault[3] <= 0:
                    continue
                if fault[2] > 0:
                    fault[2] -= 1
                    return None
                fault[3] -= 1
                return int(fault[1])
        return None

    def refuse(self) -> None:
        """Stop listening; the port stays bound (never listening) so connects are refused."""
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._placeholder = sock

    def accept(self) -> None:
        """Listen again on the same port, in ``ok`` mode."""
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self.set_mode("ok")
        if self._httpd is None:
            self._start(self.port)

    def close(self) -> None:
        """Free hung requests and stop the server."""
        self.set_mode("ok")
        if self._placeholder is not None:
            self._placeholder.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    # -- views ------------------------------------------------------------------------------

    def span_ids(self) -> set[str]:
        """Ids of every span accepted so far."""
        with self.lock:
            return {s.span_id for s in self.spans}

    def spans_by_id(self) -> dict[str, ReceivedSpan]:
        """The last accepted version of every span, by span id."""
        with self.lock:
            return {s.span_id: s for s in self.spans}

    def scores_by_id(self) -> dict[str, dict[str, Any]]:
        """The last accepted version of every score, by score id (Langfuse upserts)."""
        with self.lock:
            return {s["id"]: s for s in self.scores}

    # -- request handling ------------------------------------------------------------------

    def _authorized(self, h: _Handler) -> bool:
        expected = base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        return h.headers.get("Authorization") == f"Basic {expected}"

    def handle(self, h: _Handler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            mode = self.mode
            release = self._release
            attempt = Attempt(method, h.path, mode, dict(h.headers.items()))
            self.attempts.append(attempt)
        if h.path == SCORES_PATH:
            with contextlib.suppress(Exception):
                attempt.ids = [i.get("id") for i in json.loads(body)]
        if mode == "hang":
            release.wait(30)
            h.close_connection = True
            return
        if mode == "207" and h.path == SCORES_PATH:  # Langfuse's partial-rejection answer
            self._reply_json(h, attempt, 207, {
                "accepted": 0, "rejected": len(attempt.ids),
                "errors": [{"message": "test mode 207"}] * len(attempt.ids)})
            return
        if mode in ("500", "429", "400"):
            extra = {"Retry-After": "1"} if mode == "429" else {}
            self._reply_json(h, attempt, int(mode), {"message": f"test mode {mode}"}, extra)
            return
        split = urlsplit(h.path)
        fault = self._fault(split.path)
        if fault is not None:
            self._reply_json(h, attempt, fault, {"message": f"injected failure {fault}"})
            return
        if not self._authorized(h):
            self._reply_json(h, attempt, 401, {"message": "Invalid credentials"})
            return
        if method == "GET" and split.path in (OBSERVATIONS_V2_PATH, SCORES_V3_PATH):
            try:
                query = parse_qs(split.query)
                if split.path == OBSERVATIONS_V2_PATH:
                    payload = self._observations(query)
                else:
                    payload = self._scores_v3(query)
            except ValueError as exc:
                self._reply_json(h, attempt, 400, {"message": str(exc)})
                return
            self._reply_json(h, attempt, 200, payload)
            return
        if method == "POST" and h.path == OTEL_PATH:
            self._traces(h, attempt, body)
        elif method == "POST" and h.path == SCORES_PATH:
            self._scores(h, attempt, body)
        elif method == "GET" and h.path == PROJECTS_PATH:
            self._reply_json(h, attempt, 200, {"data": [{
                "id": "proj-test", "name": "llmvigil-test", "metadata": {},
                "organization": {"id": "org-test", "name": "test org"},
            }]})
        else:
            self._reply_json(h, attempt, 404, {"message": "not found"})

    def _traces(self, h: _Handler, attempt: Attempt, body: bytes) -> None:
        if h.headers.get("Content-Type") != "application/x-protobuf":
            self._reply_json(h, attempt, 415, {"message": "expected application/x-protobuf"})
            return
        if h.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as exc:
            self._reply_json(h, attempt, 400, {"message": f"bad protobuf: {exc}"})
            return
        received = []
        for resource_spans in request.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope
                scope_attrs = _attrs(scope.attributes)
                if (scope.name.startswith("langfuse-sdk")
                        and scope_attrs.get("public_key") != self.public_key):
                    self._reply_json(h, attempt, 403, {"message": "public key mismatch"})
                    return
                for s in scope_spans.spans:
                    if len(s.trace_id) != 16 or len(s.span_id) != 8 or len(
                            s.parent_span_id) not in (0, 8):
                        self._reply_json(h, attempt, 400, {"message": "bad ids"})
                        return
                    received.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), name=s.name,
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes), status_code=s.status.code,
                        status_message=s.status.message, scope_name=scope.name,
                        scope_version=scope.version, scope_attributes=scope_attrs,
                        resource_attributes=resource,
                    ))
        with self.lock:
            self.requests.append(request)
            self.spans.extend(received)
        attempt.ids = [r.span_id for r in received]
        attempt.status = 200
        data = ExportTraceServiceResponse().SerializeToString()
        h.send_response(200)
        h.send_header("Content-Type", "application/x-protobuf")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _scores(self, h: _Handler, attempt: Attempt, body: bytes) -> None:
        if not (h.headers.get("Content-Type") or "").startswith("application/json"):
            self._reply_json(h, attempt, 400, {"message": "expected JSON"})
            return
        try:
            items = json.loads(body)
        except ValueError:
            self._reply_json(h, attempt, 400, {"message": "invalid JSON"})
            return
        if not isinstance(items, list):
            self._reply_json(h, attempt, 400, {"message": "expected a list of scores"})
            return
        errors = [e for e in (validate_score(i) for i in items) if e]
        accepted = [i for i in items if validate_score(i) is None]
        with self.lock:
            self.scores.extend(accepted)
        if errors:
            self._reply_json(h, attempt, 207, {"accepted": len(accepted),
                                               "rejected": len(errors),
                                               "errors": [{"message": e} for e in errors]})
        else:
            self._reply_json(h, attempt, 202, {"message": "Accepted"})

    # -- reads ------------------------------------------------------------------------------

    @staticmethod
    def _entries(items: list[dict[str, Any]], time_key: str,
                 ids: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any, dict[str, Any]]]:
        """``(order key, time, item)`` newest first by ``(time, *ids)``."""
        out = []
        for item in items:
            when = _parse_time(item.get(time_key))
            stamp = when.strftime("%Y%m%d%H%M%S%f") if when else ""
            out.append(((stamp, *(str(item.get(k) or "") for k in ids)), when, item))
        out.sort(key=lambda e: e[0], reverse=True)
        return out

    @staticmethod
    def _page(entries: list[tuple[tuple[str, ...], Any, dict[str, Any]]],
              query: dict[str, list[str]], max_limit: int, default_limit: int
              ) -> dict[str, Any]:
        """``limit`` items after the cursor's key."""
        limit = int(query.get("limit", [str(default_limit)])[0])
        if not 1 <= limit <= max_limit:
            raise ValueError(f"limit must be between 1 and {max_limit}")
        if query.get("cursor"):
            try:
                last = tuple(json.loads(base64.urlsafe_b64decode(query["cursor"][0])))
            except (ValueError, TypeError):
                raise ValueError("invalid cursor") from None
            entries = [e for e in entries if e[0] < last]
        page = entries[:limit]
        meta: dict[str, Any] = {"limit": limit}
        if len(entries) > limit:
            meta["cursor"] = base64.urlsafe_b64encode(
                json.dumps(list(page[-1][0])).encode()).decode()
        return {"data": [e[2] for e in page], "meta": meta}

    @staticmethod
    def _window(entries: list[tuple[tuple[str, ...], Any, dict[str, Any]]],
                query: dict[str, list[str]], from_param: str, to_param: str
                ) -> list[tuple[tuple[str, ...], Any, dict[str, Any]]]:
        low = _parse_time(query[from_param][0]) if from_param in query else None
        high = _parse_time(query[to_param][0]) if to_param in query else None
        if (from_param in query and low is None) or (to_param in query and high is None):
            raise ValueError(f"{from_param}/{to_param} must be ISO 8601 times")
        return [e for e in entries if e[1] is None or (
            (low is None or e[1] >= low) and (high is None or e[1] < high))]

    def _observations(self, query: dict[str, list[str]]) -> dict[str, Any]:
        groups = (query.get("fields", ["core,basic"])[0]).split(",")
        unknown = set(groups) - OBSERVATION_GROUPS
        if unknown:
            raise ValueError(f"unknown field groups {sorted(unknown)}")
        if query.get("parseIoAsJson", ["false"])[0] == "true":
            raise ValueError("parseIoAsJson is deprecated")
        expand = set((query.get("expandMetadata", [""])[0]).split(","))
        entries = self._window(self._all_observations(), query, "fromStartTime",
                               "toStartTime")
        for param in ("traceId", "type", "userId", "sessionId"):
            if param in query:
                entries = [e for e in entries if e[2].get(param) == query[param][0]]
        page = self._page(entries, query, 1000, 50)
        keep = {f for g in {"core", *groups} for f in _GROUP_FIELDS[g]}
        views = []
        for item in page["data"]:
            view = {k: v for k, v in item.items() if k in keep}
            if isinstance(view.get("metadata"), dict):
                view["metadata"] = {
                    k: v if k in expand or len(json.dumps(v)) <= 200 else json.dumps(v)[:200]
                    for k, v in view["metadata"].items()}
            views.append(view)
        return {"data": views, "meta": page["meta"]}

    def _all_observations(self) -> list[tuple[tuple[str, ...], Any, dict[str, Any]]]:
        """Every observation, newest first (cached until spans arrive or tests add some)."""
        with self.lock:
            key = (id(self.spans), len(self.spans), len(self.extra_observations))
            if self._obs_cache[0] == key:
                return self._obs_cache[1]
            latest = {s.span_id: s for s in self.spans}
            extra = [dict(o) for o in self.extra_observations]
        tags: dict[str, list[str]] = {}
        for span in latest.values():
            for tag in span.attributes.get("langfuse.trace.tags") or ():
                if tag not in tags.setdefault(span.trace_id, []):
                    tags[span.trace_id].append(tag)
        items = [observation_of(s, tags.get(s.trace_id, [])) for s in latest.values()]
        entries = self._entries(items + extra, "startTime", ("traceId", "id"))
        self._obs_cache = (key, entries)
        return entries

    def _score_view(self, item: dict[str, Any]) -> dict[str, Any]:
        when = _parse_time(item.get("timestamp"))
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when else item.get("timestamp")
        data_type = item.get("dataType", "NUMERIC")
        value = item.get("value")
        if data_type == "BOOLEAN":
            value = bool(value)
        if item.get("observationId"):
            subject = {"kind": "observation", "id": item["observationId"],
                       "traceId": item.get("traceId")}
        elif item.get("traceId"):
            subject = {"kind": "trace", "id": item["traceId"]}
        elif item.get("sessionId"):
            subject = {"kind": "session", "id": item["sessionId"]}
        else:
            subject = {"kind": "experiment", "id": item.get("datasetRunId")}
        return {"id": item.get("id"), "projectId": PROJECT_ID, "name": item.get("name"),
                "value": value, "dataType": data_type, "source": item.get("source", "API"),
                "timestamp": stamp, "environment": item.get("environment") or "default",
                "createdAt": stamp, "updatedAt": stamp, "comment": item.get("comment"),
                "configId": item.get("configId"), "metadata": item.get("metadata"),
                "subject": subject}

    def _scores_v3(self, query: dict[str, list[str]]) -> dict[str, Any]:
        groups = [g for g in query.get("fields", [""])[0].split(",") if g]
        unknown = set(groups) - {"details", "subject", "annotation"}
        if unknown:
            raise ValueError(f"unknown field groups {sorted(unknown)}")
        with self.lock:
            key = (id(self.scores), len(self.scores), len(self.extra_scores))
            cached = self._score_cache[1] if self._score_cache[0] == key else None
            latest = {s["id"]: s for s in self.scores}
            extra = [dict(s) for s in self.extra_scores]
        if cached is None:
            items = [self._score_view(s) for s in latest.values()] + extra
            cached = self._entries(items, "timestamp", ("id",))
            self._score_cache = (key, cached)
        entries = self._window(cached, query, "fromTimestamp", "toTimestamp")
        page = self._page(entries, query, 100, 50)
        drop = set()
        if "details" not in groups:
            drop |= {"comment", "configId", "metadata"}
        if "subject" not in groups:
            drop.add("subject")
        page["data"] = [{k: v for k, v in i.items() if k not in drop} for i in page["data"]]
        return page

    @staticmethod
    def _reply_json(h: _Handler, attempt: Attempt, status: int, payload: Any,
                    headers: dict[str, str] | None = None) -> None:
        attempt.status = status
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)
