"""A local stand-in for the Anthropic Messages API, for tests with the real SDK.

:class:`AnthropicServer` speaks ``POST /v1/messages`` as documented: it validates the
headers and body the way the real API does, answers with a ``Message`` JSON, or with
``stream: true`` with the documented server-sent event sequence (``message_start``,
``content_block_start``, ``ping``, ``content_block_delta``..., ``content_block_stop``,
``message_delta``, ``message_stop``), chunked and flushed event by event, with the
delays of its :class:`Script` before the first delta and between deltas. Every
request it receives is kept in :attr:`AnthropicServer.requests`.

>>> with AnthropicServer() as server:
...     server.script = Script(chunks=["Hi", "!"], ttft_s=0.3, tbt_s=0.05)
...     client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.url)
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["AnthropicServer", "RecordedRequest", "Script"]

# The error ``type`` the real API puts in the body for each HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Script:
    """What the server answers to the next requests.

    ``chunks`` are the text deltas (their concatenation is the response text);
    ``ttft_s`` is slept before the first delta and ``tbt_s`` between deltas (streaming
    only). ``error_status`` makes every request fail with that HTTP status and the
    API's error body; ``error_after`` instead sends an SSE ``error`` event after that
    many deltas of a stream. ``model`` overrides the model reported in the response
    (defaults to the requested one).
    """

    chunks: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    ttft_s: float = 0.0
    tbt_s: float = 0.0
    input_tokens: int = 25
    output_tokens: int | None = None  # default: one per chunk
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    stop_reason: str = "end_turn"
    model: str | None = None
    error_status: int | None = None
    error_message: str = "Overloaded"
    error_after: int | None = None

    @property
    def text(self) -> str:
        """The full response text."""
        return "".join(self.chunks)

    def usage(self, final: bool) -> dict[str, Any]:
        """The ``usage`` object: the final one, or the one ``message_start`` carries."""
        output = len(self.chunks) if self.output_tokens is None else self.output_tokens
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": output if final else 1,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


class _Invalid(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _validate(headers: dict[str, str], raw: bytes) -> dict[str, Any]:
    """Check a request like the real API; return the body or raise :class:`_Invalid`.

    The API key may come as ``x-api-key`` or as ``Authorization: Bearer``.
    """
    bearer = headers.get("authorization", "")
    # SDK 2.x sends the key as a bearer token; older SDKs and curl use x-api-key.
    if not headers.get("x-api-key") and not (bearer.startswith("Bearer ") and bearer[7:]):
        raise _Invalid(401, "x-api-key header is required")
    if not headers.get("anthropic-version"):
        raise _Invalid(400, "anthropic-version: header is required")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _Invalid(400, f"There was an issue with your request body: {exc}") from None
    if not isinstance(body, dict):
        raise _Invalid(400, "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Invalid(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _Invalid(400, "max_tokens: Field required (an integer >= 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Invalid(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if not isinstance(message.get("content"), (str, list)):
            raise _Invalid(400, f"messages.{i}.content: Field required")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Invalid(400, "stream: Input should be a valid boolean")
    if "system" in body and not isinstance(body["system"], (str, list)):
        raise _Invalid(400, "system: Input should be a valid string or list")
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK hold small
    # SSE writes back by up to 40 ms, which would swamp the inter-token timing.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(RecordedRequest("POST", self.path, headers, body, raw))
            script = owner.script
        if self.path.split("?")[0] != "/v1/messages":
            self._error(404, f"Not found: {self.path}")
            return
        try:
            body = _validate(headers, raw)
        except _Invalid as exc:
            self._error(exc.status, exc.message)
            return
        if script.error_status is not None:
            self._error(script.error_status, script.error_message)
            return
        if body.get("stream"):
            self._stream(script, body)
        else:
            self._message(script, body)

    def _request_id(self) -> str:
        return f"req_{secrets.token_hex(12)}"

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self._request_id())
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        error_type = ERROR_TYPES.get(status, "api_error")
        self._send_json(status, {"type": "error",
                                 "error": {"type": error_type, "message": message}})

    def _message(self, script: Script, body: dict[str, Any]) -> None:
        self._send_json(200, {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": script.text}],
            "model": script.model or body["model"],
            "stop_reason": script.stop_reason,
            "stop_sequence": None,
            "usage": script.usage(final=True),
        })

    def _event(self, name: str, data: dict[str, Any]) -> None:
        payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()

    def _stream(self, script: Script, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", self._request_id())
        self.end_headers()
        try:
            self._events(script, body)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client closed the stream early

    def _events(self, script: Script, body: dict[str, Any]) -> None:
        self._event("message_start", {"type": "message_start", "message": {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": script.model or body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": script.usage(final=False),
        }})
        self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
        self._event("ping", {"type": "ping"})
        for i, chunk in enumerate(script.chunks):
            if script.error_after is not None and i == script.error_after:
                self._event("error", {"type": "error", "error": {
                    "type": "overloaded_error", "message": script.error_message}})
                return
            time.sleep(script.ttft_s if i == 0 else script.tbt_s)
            self._event("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": chunk}})
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        usage = script.usage(final=True)
        self._event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": script.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]}})
        self._event("message_stop", {"type": "message_stop"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: AnthropicServer


class AnthropicServer:
    """The Messages API on ``127.0.0.1`` at a free port, served from a thread.

    Set :attr:`script` to change what the next requests get; read :attr:`requests`
    to see what the client sent.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``base_url=``)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> AnthropicServer:
        """Start serving in a daemon thread; returns the server."""
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="anthropic-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AnthropicServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

