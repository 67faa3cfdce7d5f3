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

Every endpoint requires ``Authorization: Bearer <api key>``. A request that breaks
the documented shape gets a 400 and its problems are kept in :attr:`errors`, so a
test can assert there were none. :attr:`mode` simulates outages: ``"500"``,
``"429"``, ``"400"``, or ``"hang"`` (accept and never answer, until :meth:`stop` or a
mode change releases the handler).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-helicone-test-key"

_FEEDBACK = re.compile(r"^/v1/request/([^/]+)/feedback$")
_SCORE = re.compile(r"^/v1/request/([^/]+)/score$")
_GET = re.compile(r"^/v1/request/([^/]+)$")


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
        self.scores: dict[str, list[dict[str, Any]]] = defaultdict(list)
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
            return self._reply(h, 200, {"data": None, "error": None})
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

    # -- reading back ------------------------------------------------------------------------

    def delivered_ids(self) -> set[str]:
        """Request ids of the custom logs accepted so far."""
        with self.lock:
            return set(self.logs)
