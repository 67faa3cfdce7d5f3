"""A local stand-in for the LangSmith API, for tests with the real ``langsmith`` SDK.

:class:`LangSmithServer` answers the endpoints a synchronous SDK client calls:

* ``POST /runs/multipart``: ``multipart/form-data`` (optionally ``Content-Encoding:
  gzip`` or ``zstd``) with parts ``post|patch.<run_id>[.<field>]``, ``feedback.<id>``
  and ``attachment.<run_id>.<name>``, each with ``Content-Type`` and ``Content-Length``
  (or a ``length`` parameter) and no per-part encoding, as the API reference documents;
* ``POST /runs/batch``: ``{"post": [...], "patch": [...]}`` JSON;
* ``POST /feedback``, ``GET /sessions`` (``name``, ``limit``, ``include_stats``),
  ``POST /sessions``, ``GET /info``;
* reads, answered from what was ingested: ``POST /runs/query`` (``session``,
  ``start_time``, a ``filter`` of ``lt``/``lte``/``gt``/``gte`` on ``start_time``,
  ``order``, ``limit`` <= 100, ``select``, opaque ``cursor`` -> ``{"runs", "cursors"}``),
  and ``GET /feedback`` (``run``, ``session``, ``key``, ``min_created_at``,
  ``max_created_at``, ``limit`` <= 100, ``offset``; newest first). Runs come back as the
  API shows them: naive UTC times, ``session_id``, ``status``, and the token and cost
  columns LangSmith derives from ``usage_metadata``.

Every run is checked field by field against the documented run schema (the SDK's own
``langsmith.schemas.Run`` for types, plus the ingest rules: known fields, ``run_type``
enum, ``dotted_order`` structure against ``id``/``trace_id``/``parent_run_id``/
``start_time``, ``usage_metadata`` keys) and every feedback against
``langsmith.schemas.FeedbackCreate``; a feedback's run must exist (404 otherwise, as
the API answers before the run is ingested). The ``x-api-key`` header is checked.
Invalid payloads get a 422 and their reason is kept in :attr:`LangSmithServer.invalid`.

The server can be switched to refuse connections (:meth:`refuse`), answer every request
with an error (:meth:`fail`, e.g. 500, or 429 with ``Retry-After``) or accept and never
answer (:meth:`hang`); :meth:`recover` brings it back on the same port.
:meth:`fail_next` fails only some requests to one endpoint (e.g. the third page of a
query). Tests may put raw (even malformed) runs and feedback in :attr:`runs` and
:attr:`feedback` to see how a reader copes.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from langsmith import schemas as ls_schemas
from langsmith.run_trees import validate_extracted_usage_metadata

__all__ = ["Invalid", "LangSmithServer", "RecordedRequest", "parse_multipart"]

#: Properties of the documented run ingest schema (``RunIngest``).
RUN_FIELDS = frozenset((
    "id", "name", "run_type", "start_time", "end_time", "extra", "error", "serialized",
    "events", "inputs", "outputs", "reference_example_id", "parent_run_id", "tags",
    "trace_id", "dotted_order", "session_id", "session_name", "status",
    "input_attachments", "output_attachments",
))
RUN_TYPES = frozenset(("llm", "tool", "chain", "retriever", "embedding", "prompt", "parser"))
OUT_OF_BAND = frozenset(("inputs", "outputs", "events", "error", "extra", "serialized"))
_PART_NAME = re.compile(
    r"^(?:(?P<op>post|patch)\.(?P<run>[0-9a-f-]{36})(?:\.(?P<field>[a-z_]+))?"
    r"|feedback\.(?P<feedback>[0-9a-f-]{36})"
    r"|attachment\.(?P<att_run>[0-9a-f-]{36})\.(?P<att_name>[^.]+))$"
)
_SEGMENT = re.compile(r"^(\d{8}T\d{6}\d{6}Z)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                      r"[0-9a-f]{4}-[0-9a-f]{12})$")
_INPUT_TOKEN_DETAILS = frozenset(ls_schemas.InputTokenDetails.__annotations__)
_OUTPUT_TOKEN_DETAILS = frozenset(ls_schemas.OutputTokenDetails.__annotations__)


class Invalid(Exception):
    """A request that the real API would reject; the message says why."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    status: int | None
    headers: dict[str, str]
    time: float


@dataclass
class Part:
    """One part of a multipart body."""

    name: str
    headers: dict[str, str]
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a ``multipart/form-data`` body, checking each part's declared length."""
    m = re.match(r'multipart/form-data;\s*boundary="?([^";]+)"?', content_type)
    if m is None:
        raise Invalid(f"expected multipart/form-data with a boundary, got {content_type!r}")
    delim = b"--" + m.group(1).encode()
    if not body.startswith(delim + b"\r\n"):
        raise Invalid("multipart body does not start with the boundary")
    parts: list[Part] = []
    pos = len(delim) + 2
    while True:
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise Invalid("multipart part without a header block")
        headers: dict[str, str] = {}
        for line in body[pos:head_end].decode("utf-8").split("\r\n"):
            key, sep, value = line.partition(":")
            if not sep:
                raise Invalid(f"malformed part header {line!r}")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_match = re.match(r'form-data;\s*name="([^"]+)"', disposition)
        if name_match is None:
            raise Invalid(f"part without form-data name: {disposition!r}")
        name = name_match.group(1)
        ctype = headers.get("content-type")
        if not ctype:
            raise Invalid(f"part {name}: Content-Type is required")
        if "content-encoding" in headers:
            raise Invalid(f"part {name}: per-part Content-Encoding is not allowed")
        length_param = re.search(r";\s*length=(\d+)", ctype)
        declared = headers.get("content-length") or (length_param and length_param.group(1))
        if not declared:
            raise Invalid(f"part {name}: Content-Length header or length parameter required")
        start = head_end + 4
        end = start + int(declared)
        if body[end:end + 2 + len(delim)] != b"\r\n" + delim:
            raise Invalid(f"part {name}: data does not match its declared length {declared}")
        parts.append(Part(name, headers, body[start:end]))
        pos = end + 2 + len(delim)
        if body[pos:pos + 2] == b"--":
            if body[pos + 2:].strip(b"\r\n"):
                raise Invalid("data after the closing boundary")
            return parts
        if body[pos:pos + 2] != b"\r\n":
            raise Invalid("boundary not followed by CRLF")
        pos += 2


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise Invalid(f"{what}: expected an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"{what}: not an ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _uuid(value: Any, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Invalid(f"{what}: not a UUID: {value!r}") from None


def validate_dotted_order(run: dict[str, Any]) -> None:
    """The ingest rules for ``dotted_order`` (the API's own error messages)."""
    order = run.get("dotted_order")
    if not isinstance(order, str) or not order:
        raise Invalid(f"run {run.get('id')}: dotted_order is required")
    segments = []
    for part in order.split("."):
        m = _SEGMENT.match(part)
        if m is None:
            raise Invalid(f"invalid 'dotted_order' segment {part!r}")
        stamp = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
        segments.append((stamp, uuid.UUID(m.group(2))))
    run_id, trace_id = _uuid(run["id"], "id"), _uuid(run.get("trace_id"), "trace_id")
    parent = run.get("parent_run_id")
    if parent is None and len(segments) != 1:
        raise Invalid(f"dotted_order must contain a single part for root runs for run_id:{run_id}")
    if parent is None and run_id != trace_id:
        raise Invalid(f"trace_id must equal the run id for root runs for run_id:{run_id}")
    if parent is not None and len(segments) < 2:
        raise Invalid(
            f"dotted_order must contain at least two parts for child runs for run_id:{run_id}"
        )
    if segments[0][1] != trace_id:
        raise Invalid(f"trace_id {trace_id} does not match first part of dotted_order")
    if segments[-1][1] != run_id:
        raise Invalid(f"run_id {run_id} does not match last part of dotted_order")
    if parent is not None and segments[-2][1] != _uuid(parent, "parent_run_id"):
        raise Invalid(f"parent_run_id {parent} does not match dotted_order")
    if segments[-1][0] != _time(run.get("start_time"), "start_time"):
        raise Invalid(f"run {run_id}: last dotted_order time differs from start_time")


def validate_usage_metadata(usage: Any) -> None:
    """``usage_metadata`` as LangSmith recognises it (cost tracking docs)."""
    if not isinstance(usage, dict):
        raise Invalid("usage_metadata must be an object")
    try:
        validate_extracted_usage_metadata(usage)  # type: ignore[arg-type]
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        if key in usage and (not isinstance(usage[key], int) or usage[key] < 0):
            raise Invalid(f"usage_metadata.{key} must be a non-negative integer")
    for key in ("input_cost", "output_cost", "total_cost"):
        if key in usage and not isinstance(usage[key], (int, float)):
            raise Invalid(f"usage_metadata.{key} must be a number")
    for key, allowed in (("input_token_details", _INPUT_TOKEN_DETAILS),
                         ("output_token_details", _OUTPUT_TOKEN_DETAILS)):
        details = usage.get(key, {})
        if not isinstance(details, dict) or not set(details) <= allowed:
            raise Invalid(f"usage_metadata.{key}: unexpected {details!r}")
        if not all(isinstance(v, int) and v >= 0 for v in details.values()):
            raise Invalid(f"usage_metadata.{key}: counts must be non-negative integers")


def validate_run(run: dict[str, Any], op: str) -> None:
    """One run of a ``post`` (full) or ``patch`` (partial) operation."""
    unknown = set(run) - RUN_FIELDS
    if unknown:
        raise Invalid(f"run {run.get('id')}: unknown fields {sorted(unknown)}")
    if op == "post":
        for key in ("id", "name", "run_type", "start_time", "trace_id", "dotted_order"):
            if run.get(key) in (None, ""):
                raise Invalid(f"run {run.get('id')}: {key} is required")
        if not (run.get("session_name") or run.get("session_id")):
            raise Invalid(f"run {run['id']}: session_name or session_id is required")
    try:
        ls_schemas.Run(**{"name": "", "run_type": "chain", "start_time": run.get("start_time")
                          or "1970-01-01T00:00:00+00:00", **run})
    except Exception as exc:  # pydantic.ValidationError, with the field names
        raise Invalid(f"run {run.get('id')}: {exc}") from None
    if "run_type" in run and run["run_type"] not in RUN_TYPES:
        raise Invalid(f"run {run['id']}: run_type {run['run_type']!r} not in {sorted(RUN_TYPES)}")
    if op == "post":
        validate_dotted_order(run)
    if (run.get("end_time") is not None and run.get("start_time") is not None
            and _time(run["end_time"], "end_time") < _time(run["start_time"], "start_time")):
        raise Invalid(f"run {run['id']}: end_time before start_time")
    for key in ("inputs", "outputs", "extra"):
        if key in run and not isinstance(run[key], dict):
            raise Invalid(f"run {run.get('id')}: {key} must be an object")
    if "error" in run and not isinstance(run["error"], str):
        raise Invalid(f"run {run.get('id')}: error must be a string")
    for event in run.get("events") or ():
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            raise Invalid(f"run {run.get('id')}: event without a name: {event!r}")
        _time(event.get("time"), f"run {run.get('id')}: event time")
    metadata = (run.get("extra") or {}).get("metadata", {})
    if not isinstance(metadata, dict):
        raise Invalid(f"run {run.get('id')}: extra.metadata must be an object")
    if "usage_metadata" in metadata:
        validate_usage_metadata(metadata["usage_metadata"])


class LangSmithServer:
    """The LangSmith API on ``127.0.0.1``, recording what arrives (see module docstring)."""

    def __init__(self, api_key: str = "lsv2_pt_test_0123456789abcdef") -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.invalid: list[str] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.run_posts: list[str] = []
        self.feedback: dict[str, dict[str, Any]] = {}
        self.feedback_posts: list[str] = []
        self.projects: dict[str, dict[str, Any]] = {}
        self.tenant_id = str(uuid.uuid4())
        self._mode: tuple[str, int, float | None] = ("ok", 0, None)
        self._faults: list[list[Any]] = []
        self._ingests = 0
        self._sorted: tuple[Any, list[Any]] = (None, [])
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0
        self._listen()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``langsmith.Client(api_url=...)``."""
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="langsmith-server",
                         daemon=True).start()

    def _unlisten(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def refuse(self) -> None:
        """Stop listening: connections are refused until :meth:`recover`."""
        self._unlisten()

    def fail(self, status: int, retry_after: float | None = None) -> None:
        """Answer every request with ``status`` (and ``Retry-After`` if given)."""
        self._mode = ("fail", status, retry_after)

    def fail_next(self, method: str, path: str, status: int = 500, *, skip: int = 0,
                  times: int = 1) -> None:
        """Let ``skip`` requests to ``method path`` through, then answer the next ``times``
        with ``status``."""
        with self.lock:
            self._faults.append([method, path, status, skip, times])

    def _fault(self, method: str, path: str) -> int | None:
        with self.lock:
            for fault in self._faults:
                if (fault[0], fault[1]) != (method, path) or fault[4] <= 0:
                    continue
                if fault[3] > 0:
                    fault[3] -= 1
                    return None
                fault[4] -= 1
                return int(fault[2])
        return None

    def hang(self) -> None:
        """Read every request, then never answer it (until :meth:`recover` or close)."""
        self._release = threading.Event()
        self._mode = ("hang", 0, None)

    def recover(self) -> None:
        """Back to normal: listening and answering; hung requests are dropped."""
        self._mode = ("ok", 0, None)
        self._release.set()
        if self._httpd is None:
            self._listen()

    def close(self) -> None:
        """Stop the server and release hung requests."""
        self._release.set()
        self._unlisten()

    def __enter__(self) -> LangSmithServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- queries for tests -------------------------------------------------------------

    def count(self, method: str, path: str) -> int:
        """How many requests hit ``method path`` (any outcome)."""
        with self.lock:
            return sum(1 for r in self.requests if (r.method, r.path) == (method, path))

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.01)
        with self.lock:
            return bool(predicate(self))

    # -- endpoints -------------------------------------------------------------------

    def _project(self, name: str) -> dict[str, Any]:
        project = self.projects.get(name)
        if project is None:
            project = self.projects[name] = {
                "id": str(uuid.uuid4()), "name": name, "tenant_id": self.tenant_id,
                "start_time": datetime.now(timezone.utc).isoformat(),
                "reference_dataset_id": None, "extra": None, "description": None,
            }
        return project

    def _project_by_id(self, project_id: Any) -> dict[str, Any] | None:
        return next((p for p in self.projects.values() if p["id"] == str(project_id)), None)

    def _ingest(self, ops: list[tuple[str, dict[str, Any]]],
                feedback: list[dict[str, Any]]) -> None:
        for op, run in ops:
            validate_run(run, op)
        for body in feedback:
            self._check_feedback(body, multipart=True)
        self._ingests += 1
        for op, run in ops:
            if op == "post":
                project = run.get("session_name")
                if project:
                    self._project(project)
                self.runs[str(run["id"])] = dict(run)
                self.run_posts.append(str(run["id"]))
            else:
                self.runs.setdefault(str(run["id"]), {}).update(run)
        for body in feedback:
            self.feedback[str(body["id"])] = body
            self.feedback_posts.append(str(body["id"]))

    def _multipart(self, body: bytes, content_type: str) -> None:
        ops: dict[tuple[str, str], dict[str, Any]] = {}
        feedback: list[dict[str, Any]] = []
        for part in parse_multipart(body, content_type):
            m = _PART_NAME.match(part.name)
            if m is None:
                raise Invalid(f"unexpected part name {part.name!r}")
            if m.group("att_run"):
                continue  # attachments are opaque bytes
            if not part.headers["content-type"].startswith("application/json"):
                raise Invalid(f"part {part.name}: expected application/json")
            try:
                value = json.loads(part.data)
            except ValueError:
                raise Invalid(f"part {part.name}: not JSON") from None
            if m.group("feedback"):
                if str(value.get("id")) != m.group("feedback"):
                    raise Invalid(f"part {part.name}: id does not match the part name")
                feedback.append(value)
                continue
            key = (m.group("op"), m.group("run"))
            fieldname = m.group("field")
            run = ops.setdefault(key, {})
            if fieldname is None:
                if not isinstance(value, dict):
                    raise Invalid(f"part {part.name}: the run must be an object")
                if set(value) & OUT_OF_BAND & set(run):
                    raise Invalid(f"part {part.name}: field sent twice")
                if str(value.get("id")) != key[1]:
                    raise Invalid(f"part {part.name}: id does not match the part name")
                run.update(value)
            elif fieldname not in OUT_OF_BAND:
                raise Invalid(f"part {part.name}: unknown out-of-band field {fieldname!r}")
            elif fieldname in run:
                raise Invalid(f"part {part.name}: field sent twice")
            else:
                run[fieldname] = value
        for (op, run_id), run in ops.items():
            if "id" not in run:
                raise Invalid(f"{op}.{run_id}: out-of-band fields without the run part")
        self._ingest([(op, run) for (op, _), run in ops.items()], feedback)

    def _batch(self, body: bytes) -> None:
        data = json.loads(body)
        if not isinstance(data, dict) or not set(data) <= {"post", "patch"}:
            raise Invalid("expected an object with post and/or patch arrays")
        self._ingest([(op, run) for op in ("post", "patch") for run in data.get(op, [])], [])

    def _check_feedback(self, body: dict[str, Any], multipart: bool = False) -> None:
        try:  # run_id and trace_id may be left out: project-level feedback
            ls_schemas.FeedbackCreate(**{"run_id": None, "trace_id": None, **body})
        except Exception as exc:
            raise Invalid(f"feedback: {exc}") from None
        if not body.get("key"):
            raise Invalid("feedback: key is required")
        if multipart and not body.get("trace_id"):
            raise Invalid("feedback part must include trace_id")
        run_id, session_id = body.get("run_id"), body.get("session_id")
        if session_id is not None and self._project_by_id(session_id) is None:
            raise Invalid(f"feedback: session_id {session_id} names no tracer session", 404)
        if run_id is None:
            if session_id is None:
                raise Invalid("feedback: one of run_id, trace_id or session_id is required")
            return
        run = self.runs.get(str(run_id))
        if run is None:
            raise Invalid(f"feedback: run {run_id} not found", 404)
        if body.get("trace_id") is not None and str(body["trace_id"]) != str(run["trace_id"]):
            raise Invalid(f"feedback: trace_id {body['trace_id']} is not the run's trace")
        if session_id is not None and self._project_by_id(session_id) != self.projects.get(
                run.get("session_name", "")):
            raise Invalid(f"feedback: run {run_id} is not in session {session_id}")

    def _sessions_get(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        limit = int(query.get("limit", ["100"])[0])
        found = list(self.projects.values())
        if "name" in query:
            found = [p for p in found if p["name"] == query["name"][0]]
        if query.get("include_stats", ["false"])[0].lower() == "true":
            found = [dict(p, **self._stats(p)) for p in found]
        return found[:limit]

    def _stats(self, project: dict[str, Any]) -> dict[str, Any]:
        runs = [r for r in self.runs.values() if self._run_project(r) == project["id"]]
        keys: dict[str, int] = {}
        for fb in self.feedback.values():
            if str(fb.get("session_id")) == project["id"]:
                keys[fb.get("key", "")] = keys.get(fb.get("key", ""), 0) + 1
        return {"run_count": len(runs),
                "feedback_stats": {k: {"n": n} for k, n in keys.items()}}

    # -- reads ------------------------------------------------------------------------

    def _run_project(self, run: dict[str, Any]) -> str | None:
        if run.get("session_id"):
            return str(run["session_id"])
        project = self.projects.get(str(run.get("session_name", "")))
        return project["id"] if project else None

    @staticmethod
    def _sort_time(value: Any) -> datetime:
        try:
            return _time(value, "time")
        except Invalid:
            return datetime.min.replace(tzinfo=timezone.utc)

    @staticmethod
    def _api_time(value: Any) -> Any:
        """A time as the API shows it: naive UTC ISO 8601 with microseconds."""
        try:
            return _time(value, "time").astimezone(timezone.utc).replace(
                tzinfo=None).isoformat(timespec="microseconds")
        except Invalid:
            return value  # a malformed run put here by a test stays malformed

    def _run_view(self, run: dict[str, Any]) -> dict[str, Any]:
        view = dict(run)
        view.pop("session_name", None)
        for key in ("start_time", "end_time"):
            if view.get(key) is not None:
                view[key] = self._api_time(view[key])
        view["session_id"] = self._run_project(run)
        view["status"] = "error" if run.get("error") else (
            "success" if run.get("end_time") else "pending")
        extra = run.get("extra")
        usage = (extra.get("metadata") or {}).get("usage_metadata") if isinstance(
            extra, dict) else None
        if isinstance(usage, dict):
            view["prompt_tokens"] = usage.get("input_tokens")
            view["completion_tokens"] = usage.get("output_tokens")
            view["total_tokens"] = usage.get("total_tokens")
            view["total_cost"] = usage.get("total_cost")
        for event in run.get("events") or ():
            if isinstance(event, dict) and event.get("name") == "new_token":
                view["first_token_time"] = self._api_time(event.get("time"))
                break
        return view

    def _runs_by_time(self) -> list[tuple[datetime, str, str | None, dict[str, Any]]]:
        """``(start_time, id, project id, run)`` of every run, oldest first (cached until
        the runs change)."""
        key = (id(self.runs), len(self.runs), self._ingests)
        if self._sorted[0] != key:
            entries = [(self._sort_time(r.get("start_time")), str(r.get("id")),
                        self._run_project(r), r) for r in self.runs.values()]
            entries.sort(key=lambda e: (e[0], e[1]))
            self._sorted = (key, entries)
        return self._sorted[1]

    _FILTER = re.compile(r'^(lt|lte|gt|gte)\(start_time,\s*"([^"]+)"\)$')

    def _runs_query(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Invalid("runs query: expected a JSON object")
        limit = int(body.get("limit") or 100)
        if not 1 <= limit <= 100:
            raise Invalid("runs query: limit must be between 1 and 100")
        sessions = {str(x) for x in body.get("session") or ()}
        entries = self._runs_by_time()
        if body.get("start_time"):
            since = _time(body["start_time"], "start_time")
            entries = entries[bisect.bisect_left(entries, (since,)):]
        if sessions:
            entries = [e for e in entries if e[2] in sessions]
        if body.get("filter"):
            m = self._FILTER.match(str(body["filter"]).strip())
            if m is None:
                raise Invalid(f"runs query: unsupported filter {body['filter']!r}")
            op, bound = m.group(1), _time(m.group(2), "filter time")
            compare = {"lt": lambda t: t < bound, "lte": lambda t: t <= bound,
                       "gt": lambda t: t > bound, "gte": lambda t: t >= bound}[op]
            entries = [e for e in entries if compare(e[0])]
        order = body.get("order", "desc")
        if order not in ("asc", "desc"):
            raise Invalid(f"runs query: order {order!r}")
        runs = [e[3] for e in (reversed(entries) if order == "desc" else entries)]
        offset = 0
        if body.get("cursor"):
            try:
                offset = int(json.loads(base64.b64decode(body["cursor"]))["offset"])
            except (ValueError, KeyError, TypeError):
                raise Invalid(f"runs query: bad cursor {body['cursor']!r}") from None
        page = runs[offset:offset + limit]
        select = body.get("select")
        views = []
        for run in page:
            view = self._run_view(run)
            if select:
                view = {k: v for k, v in view.items() if k in select or k == "id"}
            views.append(view)
        more = offset + limit < len(runs)
        cursor = base64.b64encode(json.dumps({"offset": offset + limit}).encode()).decode()
        return {"runs": views, "cursors": {"next": cursor if more else None}}

    def _feedback_list(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        limit = int(query.get("limit", ["100"])[0])
        offset = int(query.get("offset", ["0"])[0])
        if not 1 <= limit <= 100:
            raise Invalid("feedback: limit must be between 1 and 100")
        found = list(self.feedback.values())
        if "run" in query:
            found = [f for f in found if str(f.get("run_id")) in query["run"]]
        if "session" in query:
            found = [f for f in found if str(f.get("session_id")) in query["session"]]
        if "key" in query:
            found = [f for f in found if f.get("key") in query["key"]]
        if "min_created_at" in query:
            low = _time(query["min_created_at"][0], "min_created_at")
            found = [f for f in found if self._sort_time(f.get("created_at")) >= low]
        if "max_created_at" in query:
            high = _time(query["max_created_at"][0], "max_created_at")
            found = [f for f in found if self._sort_time(f.get("created_at")) <= high]
        found.sort(key=lambda f: (self._sort_time(f.get("created_at")), str(f.get("id"))),
                   reverse=True)
        return found[offset:offset + limit]

    def _sessions_post(self, body: dict[str, Any], query: dict[str, list[str]]
                       ) -> tuple[int, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise Invalid("session: name is required")
        if name in self.projects and query.get("upsert", ["false"])[0].lower() != "true":
            return 409, {"detail": f"session {name!r} already exists"}
        created = name not in self.projects
        project = self._project(name)
        if created and body.get("id"):
            project["id"] = str(_uuid(body["id"], "id"))
        return 200, project

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                headers: Any, body: bytes) -> tuple[int, Any]:
        if path == "/info" and method == "GET":
            return 200, {"version": "0.test", "batch_ingest_config": {
                "use_multipart_endpoint": True, "size_limit_bytes": 20_971_520}}
        if headers.get("x-api-key") != self.api_key:
            return 401, {"detail": "Invalid token"}
        encoding = (headers.get("content-encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif encoding:
            raise Invalid(f"unsupported Content-Encoding {encoding!r}", 415)
        if (method, path) == ("POST", "/runs/multipart"):
            self._multipart(body, headers.get("content-type", ""))
            return 202, {}
        if (method, path) == ("POST", "/runs/batch"):
            self._batch(body)
            return 202, {}
        if (method, path) == ("POST", "/feedback"):
            fb = json.loads(body)
            if str(fb.get("id")) in self.feedback:
                return 409, {"detail": f"feedback {fb.get('id')} already exists"}
            self._check_feedback(fb)
            self.feedback[str(fb["id"])] = fb
            self.feedback_posts.append(str(fb["id"]))
            return 200, fb
        if (method, path) == ("GET", "/sessions"):
            return 200, self._sessions_get(query)
        if (method, path) == ("POST", "/sessions"):
            return self._sessions_post(json.loads(body), query)
        if (method, path) == ("POST", "/runs/query"):
            return 200, self._runs_query(json.loads(body))
        if (method, path) == ("GET", "/feedback"):
            return 200, self._feedback_list(query)
        return 404, {"detail": "Not Found"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = RecordedRequest(method, split.path, None,
                                         {k.lower(): v for k, v in self.headers.items()},
                                         time.monotonic())
                with server.lock:
                    server.requests.append(record)
                mode, status, retry_after = server._mode
                fault = server._fault(method, split.path) if mode == "ok" else None
                if fault is not None:
                    mode, status = "fail", fault
                if mode == "hang":
                    server._release.wait(30)
                    self.close_connection = True
                    return
                extra: dict[str, str] = {}
                if mode == "fail":
                    payload: Any = {"detail": f"injected failure {status}"}
                    if retry_after is not None:
                        extra["Retry-After"] = str(retry_after)
                else:
                    try:
                        with server.lock:
                            status, payload = server._handle(
                                method, split.path, parse_qs(split.query), self.headers, body)
                    except Invalid as exc:
                        status, payload = exc.status, {"detail": str(exc)}
                        if exc.status == 422:
                            with server.lock:
                                server.invalid.append(str(exc))
                    except ValueError as exc:
                        status, payload = 400, {"detail": f"malformed body: {exc}"}
                        with server.lock:
                            server.invalid.append(str(exc))
                record.status = status
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler
