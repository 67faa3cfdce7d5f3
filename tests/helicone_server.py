"""A local stand-in for Helicone's logging worker and REST API (stdlib only).

It implements the endpoints llmvigil's Helicone backend uses and validates every
request against Helicone's documented API, field by field:

* ``POST /custom/v1/log`` (manual logger, docs "Manual Logger - cURL"): the
  ``HeliconeAsyncLogRequest`` body ``{providerRequest: {url: "custom-model-nopath",
  json: object, meta: Record<string,string>}, providerResponse: {headers:
  Record<string,string>, status: number, json?: object, textBody?: string},
  timing?: {startTime: {seconds, milliseconds}, endTime: {...}, timeToFirstToken?:
  number}}``; ``Helicone-Request-Id``, when sent, must be a UUID.
* ``POST /v1/request/{requestId}/feedback`` (REST "Submit Feedback"): ``{rating: boolean}``.
* ``POST /v1/request/{requestId}/score`` (REST "Submit Score"): ``{scores: {name:
  integer | boolean}}``; floats are rejected as Helicone does.
* ``GET /v1/request/{requestId}`` (REST "Get Single Request"): 401 on a bad key.
* ``POST /v1/request/query-clickhouse`` and ``POST /v1/request/query`` (REST "Get
  Requests"): the ``RequestQueryParams`` body ``{filter, offset?, limit?, sort?,
  isCached?, includeInputs?, isPartOfExperiment?, isScored?}`` (no other key), answered
  ``{data: HeliconeRequest[], error: null}``. The rows are built from the custom logs
  received (the last one per request id), with the fields of the documented
  ``HeliconeRequest``: ``request_created_at``/``response_created_at`` from the timing,
  ``delay_ms``, ``time_to_first_token``, the token columns from the Anthropic-style
  ``usage`` block, ``request_user_id``, ``request_properties`` (``Helicone-Property-*``
  names lower-cased after the prefix, as Helicone's worker reads them from the
  lower-cased header names, plus ``Helicone-Session-Id``/``-Path``/``-Name``),
  ``feedback_rating``/``feedback_created_at`` and ``scores``. Filters understood:
  ``"all"``, ``{}``, ``{left, operator: and|or, right}`` and leaves on
  ``request_response_rmt.request_created_at|request_id|user_id|model|status``,
  ``request.created_at|id|user_id`` and ``properties.<name>``; anything else is refused
  with a 400 and kept in :attr:`errors`. Rows are sorted by ``created_at`` (ties by
  request id) and paged by ``offset``/``limit``.
* ``GET /signed-body/{requestId}``: the row's ``signed_body_url``, a stand-in for the
  pre-signed S3 URL holding ``{request, response}``; like S3 it wants no API key, and
  one sent there is an error kept in :attr:`errors`. With :attr:`inline_bodies` false,
  query rows carry empty bodies and only the signed URL, as Helicone's do.

Every endpoint requires ``Authorization: Bearer <api key>``. A request that breaks
the documented shape gets a 400 and its problems are kept in :attr:`errors`, so a
test can assert there were none. :attr:`mode` simulates outages: ``"500"``,
``"429"``, ``"400"``, or ``"hang"`` (accept and never answer, until :meth:`stop` or a
mode change releases the handler). :attr:`fail_query_at_offset` makes queries at or
past that offset fail with :attr:`fail_query_status` (200: a ``{data: null, error}``
answer), :attr:`fail_query_count` times (``None``: always); :attr:`extra_rows` are raw
rows served as they are after the built ones (not filtered, not sorted).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-helicone-test-key"

_FEEDBACK = re.compile(r"^/v1/request/([^/]+)/feedback$")
_SCORE = re.compile(r"^/v1/request/([^/]+)/score$")
_GET = re.compile(r"^/v1/request/([^/]+)$")
_SIGNED = re.compile(r"^/signed-body/([^/?]+)(\?.*)?$")
QUERY_PATHS = ("/v1/request/query", "/v1/request/query-clickhouse")
_QUERY_KEYS = {"filter", "offset", "limit", "sort", "isCached", "includeInputs",
               "isPartOfExperiment", "isScored"}
_SORT_KEYS = {"random", "created_at", "cache_created_at", "latency", "last_active",
              "total_tokens", "completion_tokens", "prompt_tokens", "user_id", "body_model",
              "is_cached", "request_prompt", "response_text", "properties", "values", "cost"}
_LEAF_TABLES = {"request_response_rmt", "response", "request", "feedback",
                "sessions_request_response_rmt", "properties", "values"}
# (table, column) -> the HeliconeRequest field it filters on, and whether it is a time.
_FILTER_COLUMNS = {
    ("request_response_rmt", "request_created_at"): ("request_created_at", True),
    ("request_response_rmt", "request_id"): ("request_id", False),
    ("request_response_rmt", "user_id"): ("request_user_id", False),
    ("request_response_rmt", "model"): ("model", False),
    ("request_response_rmt", "status"): ("response_status", False),
    ("request", "created_at"): ("request_created_at", True),
    ("request", "id"): ("request_id", False),
    ("request", "user_id"): ("request_user_id", False),
}
_OPERATORS = {"equals", "not-equals", "gte", "lte", "lt", "gt", "contains", "like", "ilike",
              "not-contains"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_keys(where: str, obj: dict[str, Any], required: set[str],
                optional: set[str]) -> list[str]:
    problems = [f"{where}.{k}: required" for k in sorted(required - obj.keys())]
    problems += [f"{where}.{k}: not in the documented type"
                 for k in sorted(obj.keys() - required - optional)]
    return problems


def _string_record(where: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: must be Record<string, string>"]
    return [f"{where}.{k}: must be a string" for k, v in value.items()
            if not isinstance(v, str)]


def _timestamp(where: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: must be {{seconds, milliseconds}}"]
    problems = _check_keys(where, value, {"seconds", "milliseconds"}, set())
    s, ms = value.get("seconds"), value.get("milliseconds")
    if not isinstance(s, int) or isinstance(s, bool) or s < 0:
        problems.append(f"{where}.seconds: must be a non-negative integer")
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= 999:
        problems.append(f"{where}.milliseconds: must be an integer 0..999")
    return problems


def validate_log(body: Any) -> list[str]:
    """Problems of a custom-log body against ``HeliconeAsyncLogRequest``."""
    if not isinstance(body, dict):
        return ["body: must be an object"]
    problems = _check_keys("body", body, {"providerRequest", "providerResponse"}, {"timing"})
    req = body.get("providerRequest")
    if not isinstance(req, dict):
        problems.append("providerRequest: must be an object")
    else:
        problems += _check_keys("providerRequest", req, {"url", "json", "meta"}, set())
        if req.get("url") != "custom-model-nopath":
            problems.append("providerRequest.url: must be 'custom-model-nopath'")
        if not isinstance(req.get("json"), dict):
            problems.append("providerRequest.json: must be an object")
        problems += _string_record("providerRequest.meta", req.get("meta"))
    resp = body.get("providerResponse")
    if not isinstance(resp, dict):
        problems.append("providerResponse: must be an object")
    else:
        problems += _check_keys("providerResponse", resp, {"headers", "status"},
                                {"json", "textBody"})
        problems += _string_record("providerResponse.headers", resp.get("headers"))
        if not _is_number(resp.get("status")):
            problems.append("providerResponse.status: must be a number")
        # Optional fields: absent or null (the vendor's own Python logger sends null).
        if resp.get("json") is not None and not isinstance(resp["json"], dict):
            problems.append("providerResponse.json: must be an object")
        if resp.get("textBody") is not None and not isinstance(resp["textBody"], str):
            problems.append("providerResponse.textBody: must be a string")
    timing = body.get("timing")
    if timing is not None:
        if not isinstance(timing, dict):
            return [*problems, "timing: must be an object"]
        problems += _check_keys("timing", timing, {"startTime", "endTime"},
                                {"timeToFirstToken"})
        problems += _timestamp("timing.startTime", timing.get("startTime"))
        problems += _timestamp("timing.endTime", timing.get("endTime"))
        ttft = timing.get("timeToFirstToken")
        if ttft is not None and not _is_number(ttft):
            problems.append("timing.timeToFirstToken: must be a number (milliseconds)")
    return problems


def validate_feedback(body: Any) -> list[str]:
    """Problems of a feedback body against ``{rating: boolean}``."""
    if not isinstance(body, dict):
        return ["body: must be an object"]
    problems = _check_keys("body", body, {"rating"}, set())
    if not isinstance(body.get("rating"), bool):
        problems.append("rating: must be a boolean")
    return problems


def validate_score(body: Any) -> list[str]:
    """Problems of a score body against ``ScoreRequest`` (integers or booleans)."""
    if not isinstance(body, dict):
        return ["body: must be an object"]
    problems = _check_keys("body", body, {"scores"}, set())
    scores = body.get("scores")
    if not isinstance(scores, dict):
        return [*problems, "scores: must be an object"]
    for name, value in scores.items():
        if not isinstance(value, (int, bool)):
            problems.append(f"scores.{name}: must be an integer or a boolean, "
                            f"got {value!r} (floats are rejected)")
    return problems


def _iso_ms(ms: int) -> str:
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ms(timestamp: dict[str, int]) -> int:
    return int(timestamp["seconds"]) * 1000 + int(timestamp["milliseconds"])


def _parse_time(text: Any) -> float:
    value = str(text).strip().replace(" ", "T").replace("Z", "+00:00")
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH).total_seconds()


class _BadQuery(Exception):
    pass


def validate_query(body: Any) -> list[str]:
    """Problems of a query body against ``RequestQueryParams``."""
    if not isinstance(body, dict):
        return ["body: must be an object"]
    problems = _check_keys("body", body, {"filter"}, _QUERY_KEYS - {"filter"})
    for key in ("offset", "limit"):
        if key in body and (not _is_number(body[key]) or body[key] < 0):
            problems.append(f"{key}: must be a non-negative number")
    sort = body.get("sort")
    if sort is not None:
        if not isinstance(sort, dict):
            problems.append("sort: must be a SortLeafRequest object")
        else:
            problems += [f"sort.{k}: not in SortLeafRequest" for k in sorted(set(sort) -
                                                                             _SORT_KEYS)]
            problems += [f"sort.{k}: must be 'asc' or 'desc'" for k, v in sort.items()
                         if k not in ("random", "properties", "values")
                         and v not in ("asc", "desc")]
    return problems


def _matches(node: Any, row: dict[str, Any]) -> bool:
    """Whether ``row`` passes the filter ``node`` (raises _BadQuery on what is unknown)."""
    if node == "all" or node == {}:
        return True
    if not isinstance(node, dict):
        raise _BadQuery(f"filter node {node!r}: expected 'all', a branch or a leaf")
    if "operator" in node:
        op = node.get("operator")
        if op not in ("and", "or") or set(node) != {"left", "operator", "right"}:
            raise _BadQuery(f"filter branch {node!r}: expected {{left, operator: and|or, "
                            "right}")
        left, right = _matches(node["left"], row), _matches(node["right"], row)
        return (left and right) if op == "and" else (left or right)
    unknown = set(node) - _LEAF_TABLES
    if unknown:
        raise _BadQuery(f"filter leaf tables {sorted(unknown)}: not in FilterLeaf")
    for table, columns in node.items():
        if not isinstance(columns, dict):
            raise _BadQuery(f"filter leaf {table}: must be an object")
        for column, ops in columns.items():
            if table == "properties":
                value, is_time = (row.get("request_properties") or {}).get(column), False
            elif (table, column) in _FILTER_COLUMNS:
                field, is_time = _FILTER_COLUMNS[(table, column)]
                value = row.get(field)
            else:
                raise _BadQuery(f"filter {table}.{column}: not supported by this fake")
            if not isinstance(ops, dict) or not ops or set(ops) - _OPERATORS:
                raise _BadQuery(f"filter {table}.{column}: operators {ops!r}")
            for op, wanted in ops.items():
                if not _compare(value, op, wanted, is_time):
                    return False
    return True


def _compare(value: Any, op: str, wanted: Any, is_time: bool) -> bool:
    if value is None:
        return op in ("not-equals", "not-contains")
    if is_time:
        try:
            value, wanted = _parse_time(value), _parse_time(wanted)
        except ValueError as exc:
            raise _BadQuery(f"not a date-time: {wanted!r} ({exc})") from None
    elif isinstance(value, (int, float)) and _is_number(wanted):
        pass
    else:
        value, wanted = str(value), str(wanted)
    if op == "equals":
        return bool(value == wanted)
    if op == "not-equals":
        return bool(value != wanted)
    if op in ("contains", "like", "ilike"):
        return str(wanted).strip("%").lower() in str(value).lower()
    if op == "not-contains":
        return str(wanted).lower() not in str(value).lower()
    return bool({"gte": value >= wanted, "lte": value <= wanted, "lt": value < wanted,
                 "gt": value > wanted}[op])


def _request_id_problems(headers: dict[str, str]) -> list[str]:
    rid = headers.get("helicone-request-id")
    if rid is None:
        return []
    try:
        uuid.UUID(rid)
    except ValueError:
        return [f"Helicone-Request-Id: {rid!r} is not a UUID"]
    return []


class HeliconeServer:
    """The fake Helicone: start it, point the backend at :attr:`url`, read what it got."""

    def __init__(self, port: int = 0, api_key: str = API_KEY) -> None:
        self.port = port
        self.api_key = api_key
        self._mode = "ok"
        self.lock = threading.Lock()
        #: request id -> [(lower-cased headers, body)] of accepted custom logs
        self.logs: dict[str, list[tuple[dict[str, str], Any]]] = defaultdict(list)
        self.feedback: dict[str, list[bool]] = defaultdict(list)
        #: request id -> server time (ms) of its last feedback
        self.feedback_times: dict[str, int] = {}
        self.scores: dict[str, list[dict[str, Any]]] = defaultdict(list)
        #: served as they are with the rows built from the logs (malformed data tests)
        self.extra_rows: list[Any] = []
        #: whether query rows carry the bodies, or only their ``signed_body_url``
        self.inline_bodies = True
        self.fail_query_at_offset: int | None = None
        self.fail_query_status = 500
        #: how many queries fail before they succeed again (``None``: all of them)
        self.fail_query_count: int | None = None
        #: query bodies received, in order
        self.queries: list[dict[str, Any]] = []
        self.body_fetches = 0
        #: request ids seen in requests that were refused by :attr:`mode`
        self.refused_ids: list[str] = []
        self.errors: list[str] = []
        self.requests = 0
        self.release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = value
        if value != "hang":
            self.release.set()  # let hung handlers go
        else:
            self.release.clear()

    def start(self) -> HeliconeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="helicone-fake", daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- request handling ------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self.lock:
            self.requests += 1
        if method == "GET" and (m := _SIGNED.match(h.path)):
            return self._signed_body(h, m.group(1), headers)
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return self._reply(h, 401, {"data": None, "error": "Unauthorized"})
        if method == "GET":
            if _GET.match(h.path):
                return self._reply(h, 200, {"data": None, "error": None})
            return self._reply(h, 404, {"data": None, "error": "not found"})
        mode = self._mode
        if mode != "ok":
            rid = headers.get("helicone-request-id")
            with self.lock:
                if rid:
                    self.refused_ids.append(rid)
            if mode == "hang":
                self.release.wait(10)
                h.close_connection = True
                return None
            status = int(mode)
            return self._reply(h, status, {"data": None, "error": f"simulated {status}"},
                               {"Retry-After": "0"} if status == 429 else {})
        if "application/json" not in headers.get("content-type", ""):
            return self._invalid(h, [f"{h.path}: Content-Type must be application/json"])
        try:
            body = json.loads(raw)
        except ValueError:
            return self._invalid(h, [f"{h.path}: body is not JSON"])
        if h.path == "/custom/v1/log":
            problems = validate_log(body) + _request_id_problems(headers)
            if problems:
                return self._invalid(h, problems)
            with self.lock:
                self.logs[headers.get("helicone-request-id", "")].append((headers, body))
            return self._reply(h, 200, {"data": None, "error": None})
        if m := _FEEDBACK.match(h.path):
            problems = validate_feedback(body)
            if problems:
                return self._invalid(h, problems)
            with self.lock:
                self.feedback[m.group(1)].append(body["rating"])
                self.feedback_times[m.group(1)] = time.time_ns() // 1_000_000
            return self._reply(h, 200, {"data": None, "error": None})
        if h.path in QUERY_PATHS:
            return self._query(h, body)
        if m := _SCORE.match(h.path):
            problems = validate_score(body)
            if problems:
                return self._invalid(h, problems)
            with self.lock:
                self.scores[m.group(1)].append(body["scores"])
            return self._reply(h, 200, {"data": None, "error": None})
        return self._reply(h, 404, {"data": None, "error": f"no route {h.path}"})

    def _invalid(self, h: BaseHTTPRequestHandler, problems: list[str]) -> None:
        with self.lock:
            self.errors.extend(problems)
        self._reply(h, 400, {"data": None, "error": "; ".join(problems)})

    def _reply(self, h: BaseHTTPRequestHandler, status: int, payload: Any,
               extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    # -- the read API ----------------------------------------------------------------------

    def _query(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        problems = validate_query(body)
        if problems:
            return self._invalid(h, problems)
        with self.lock:
            self.queries.append(body)
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 100))
        if self.fail_query_at_offset is not None and offset >= self.fail_query_at_offset \
                and self.fail_query_count != 0:
            if self.fail_query_count is not None:
                self.fail_query_count -= 1
            status = self.fail_query_status
            return self._reply(h, status, {"data": None,
                                           "error": f"simulated failure at offset {offset}"})
        try:
            rows = [r for r in self.rows() if _matches(body["filter"], r)]
        except _BadQuery as exc:
            return self._invalid(h, [str(exc)])
        descending = (body.get("sort") or {}).get("created_at") == "desc"
        rows.sort(key=lambda r: (r["request_created_at"], r["request_id"]), reverse=descending)
        rows += self.extra_rows  # as they are: unfiltered, after the others
        return self._reply(h, 200, {"data": rows[offset:offset + limit], "error": None})

    def rows(self) -> list[dict[str, Any]]:
        """The requests logged, as Helicone's query API returns them (``HeliconeRequest``)."""
        with self.lock:
            return [self._row(rid, *logs[-1]) for rid, logs in self.logs.items() if rid]

    def _row(self, rid: str, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        req, resp = body["providerRequest"], body["providerResponse"]
        rjson, sjson = req.get("json") or {}, resp.get("json") or {}
        timing = body.get("timing")
        start = _ms(timing["startTime"]) if timing else 0
        end = _ms(timing["endTime"]) if timing else start
        usage = sjson.get("usage") if isinstance(sjson.get("usage"), dict) else {}
        prefix = "helicone-property-"
        props = {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix)}
        for header in ("Helicone-Session-Id", "Helicone-Session-Path", "Helicone-Session-Name"):
            if header.lower() in headers:
                props[header] = headers[header.lower()]
        tokens = {
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "prompt_cache_read_tokens": usage.get("cache_read_input_tokens"),
            "prompt_cache_write_tokens": usage.get("cache_creation_input_tokens"),
        }
        counted = [v for v in tokens.values() if isinstance(v, int)]
        feedback = self.feedback.get(rid)
        merged: dict[str, Any] = {}
        for named in self.scores.get(rid, []):
            merged.update(named)
        response_model = sjson.get("model")
        inline = self.inline_bodies
        return {
            "response_id": str(uuid.uuid5(uuid.NAMESPACE_URL, rid)),
            "response_created_at": _iso_ms(end), "response_body": sjson if inline else {},
            "response_status": resp["status"], "response_model": response_model,
            "request_id": rid, "request_created_at": _iso_ms(start),
            "request_body": rjson if inline else {}, "request_path": req["url"],
            "request_user_id": headers.get("helicone-user-id"),
            "request_properties": props, "request_model": rjson.get("model"),
            "model_override": None, "helicone_user": None, "provider": "CUSTOM",
            "delay_ms": end - start,
            "time_to_first_token": timing.get("timeToFirstToken") if timing else None,
            "total_tokens": sum(counted) if counted else None, **tokens,
            "prompt_audio_tokens": None, "completion_audio_tokens": None, "cost": None,
            "prompt_id": None, "prompt_version": None,
            "feedback_created_at": _iso_ms(self.feedback_times[rid]) if feedback else None,
            "feedback_id": str(uuid.uuid5(uuid.NAMESPACE_OID, rid)) if feedback else None,
            "feedback_rating": feedback[-1] if feedback else None,
            "signed_body_url": f"{self.url}/signed-body/{rid}?X-Amz-Signature=fake",
            "llmSchema": None, "country_code": None, "asset_ids": None, "asset_urls": None,
            "scores": merged or None, "costUSD": None, "properties": props, "assets": [],
            "target_url": req["url"], "model": response_model or rjson.get("model") or "",
            "cache_reference_id": None, "cache_enabled": False,
            "updated_at": _iso_ms(end), "request_referrer": None,
            "ai_gateway_body_mapping": None, "storage_location": "s3",
        }

    def _signed_body(self, h: BaseHTTPRequestHandler, rid: str,
                     headers: dict[str, str]) -> None:
        if "authorization" in headers:
            with self.lock:
                self.errors.append(f"signed body URL of {rid} was sent an Authorization "
                                   "header (the API key must not go to S3)")
            return self._reply(h, 400, {"error": "unexpected Authorization header"})
        with self.lock:
            self.body_fetches += 1
            logs = self.logs.get(rid)
        mode = self._mode
        if mode != "ok" and mode != "hang":
            return self._reply(h, int(mode), {"error": f"simulated {mode}"})
        if not logs:
            return self._reply(h, 404, {"error": "NoSuchKey"})
        body = logs[-1][1]
        return self._reply(h, 200, {"request": body["providerRequest"]["json"],
                                    "response": body["providerResponse"].get("json") or {}})

    # -- reading back ------------------------------------------------------------------------

    def delivered_ids(self) -> set[str]:
        """Request ids of the custom logs accepted so far."""
        with self.lock:
            return set(self.logs)
