"""``vigil serve``: an OTLP/HTTP trace receiver feeding llmvigil's pipeline.

Any OpenTelemetry instrumentation (OpenInference, OpenLLMetry, OpenLIT, the GenAI
instrumentations, another language's SDK, or llmvigil's own ``otlp`` backend) exports
to ``POST /v1/traces``; each span is mapped by :mod:`.otlp_map` and submitted like a
span captured in-process, so it is redacted, runs through the monitors and fans out to
the configured backends.

The protocol follows the OTLP/HTTP specification:

* request bodies: ``application/x-protobuf`` or ``application/json``, optionally
  ``Content-Encoding: gzip`` (or ``deflate``); ``Content-Length`` or chunked;
* ``200`` with an ``ExportTraceServiceResponse`` in the request's encoding, carrying
  ``partial_success`` when some spans were rejected (bad ids; not to be retried);
* ``400`` for an undecodable body, with a ``google.rpc.Status`` saying why; ``415`` for
  another content type or encoding; ``413`` above ``max_body_bytes`` (before or after
  decompression); ``404``/``405`` for other paths and methods;
* ``503`` with ``Retry-After`` when the pipeline's queue cannot take the whole batch
  (with ``pipeline.on_full: drop``), while shutting down, or when ``max_connections``
  are busy: the exporter retries, nothing is dropped here.

``GET /healthz`` answers ``200`` with the counters (``503`` while stopping) for load
balancers. The collector keeps no state of its own: several run behind a load
balancer, their records meeting in the shared backends (PostgreSQL, Redis).

Binding: loopback only unless ``allow_remote`` (the CLI sets it when ``--host`` is
given on the command line), since OTLP carries prompts and answers and has no
authentication here; put TLS and authentication in front of a remote listener.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .otlp_map import PayloadError, decode_request, iter_records

__all__ = ["Collector", "is_loopback", "run"]

_log = logging.getLogger("llmvigil.collector")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_MEDIA = {"application/x-protobuf": PROTOBUF, "application/protobuf": PROTOBUF,
          "application/json": JSON}
# gRPC status codes carried by google.rpc.Status bodies.
_GRPC_CODE = {400: 3, 404: 5, 405: 12, 411: 3, 413: 8, 415: 3, 500: 13, 503: 14}


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (``""`` is not)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos)


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.spans_received = 0
        self.spans_accepted = 0
        self.spans_rejected = 0
        self.spans_sampled_out = 0
        self.bad_requests = 0
        self.overloaded = 0
        self.in_flight = 0


class Collector:
    """An OTLP/HTTP receiver submitting mapped records to ``submit``.

    Args:
        host: address to bind; a non-loopback one needs ``allow_remote=True``.
        port: TCP port (``0`` picks a free one; see :attr:`address`).
        submit: where records go (default :func:`llmvigil.core.capture.emit`).
        room: how many more records the pipeline takes now (``None``: unbounded);
            a batch larger than that is answered ``503`` so the sender retries.
        sample_rate: fraction of *traces* kept, decided from the trace id so every
            collector keeps or drops the same traces.
        sampled_out: called with the number of spans sampled out of each request.
        max_body_bytes: largest request body, compressed or not.
        max_connections: connections served at once; more are answered ``503``.
        request_timeout_s: a connection idle or stalled this long is closed.

    Raises:
        ConfigError: ``host`` is not loopback and ``allow_remote`` is false, or the
            address cannot be bound.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 4318, *,
                 allow_remote: bool = False, submit: Callable[[Any], None] | None = None,
                 room: Callable[[], int] | None = None, sample_rate: float = 1.0,
                 sampled_out: Callable[[int], None] | None = None,
                 max_body_bytes: int = 20 << 20, max_connections: int = 256,
                 request_timeout_s: float = 30.0) -> None:
        if not is_loopback(host) and not allow_remote:
            raise ConfigError(
                f"refusing to listen on {host or 'all interfaces'!r}: the collector receives "
                "prompts and answers without authentication, so it binds loopback by "
                "default; pass --host explicitly to listen on a network interface")
        if submit is None:
            from ..capture import emit

            submit = emit
        self.submit: Callable[[Any], None] = submit
        self.room = room
        self.sample_rate = float(sample_rate)
        self.sampled_out = sampled_out
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout_s = float(request_timeout_s)
        self.counters = _Counters()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = False
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        try:
            self._server = _Server((host.strip("[]"), port), _Handler, self, family)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The traces endpoint, e.g. ``http://127.0.0.1:4318/v1/traces``."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/v1/traces"

    def start(self) -> Collector:
        """Serve in a background thread; returns ``self``."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="llmvigil-collector", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Stop accepting, answer ``503`` to new requests, wait for the ones in flight.

        Returns ``True`` when every request in flight finished within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self.counters.lock:
            self._stopping = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._server.server_close()
        while time.monotonic() < deadline:
            with self.counters.lock:
                if self.counters.in_flight == 0:
                    return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict[str, Any]:
        """Requests, spans received/accepted/rejected/sampled out, bad and refused requests."""
        c = self.counters
        with c.lock:
            return {"requests": c.requests, "spans_received": c.spans_received,
                    "spans_accepted": c.spans_accepted, "spans_rejected": c.spans_rejected,
                    "spans_sampled_out": c.spans_sampled_out, "bad_requests": c.bad_requests,
                    "overloaded": c.overloaded, "in_flight": c.in_flight,
                    "stopping": self._stopping}

    # -- one export request ------------------------------------------------------------

    def _enter(self) -> bool:
        with self.counters.lock:
            if self._stopping:
                return False
            self.counters.in_flight += 1
            self.counters.requests += 1
            return True

    def _leave(self) -> None:
        with self.counters.lock:
            self.counters.in_flight -= 1

    def export(self, body: bytes, media: str) -> tuple[int, bytes, dict[str, str]]:
        """Handle a decoded-encoding export body: ``(status, response body, headers)``."""
        try:
            spans = decode_request(body, media)
        except PayloadError as exc:
            with self.counters.lock:
                self.counters.bad_requests += 1
            return _status(400, str(exc), media)
        kept = spans
        if self.sample_rate < 1.0:
            kept = [s for s in spans if _trace_fraction(s.trace_id) < self.sample_rate]
        dropped = len(spans) - len(kept)
        room = self.room() if self.room is not None else None
        if room is not None and room < len(kept):
            with self.counters.lock:
                self.counters.overloaded += 1
            status, payload, headers = _status(
                503, "the pipeline queue is full; retry later", media)
            headers["Retry-After"] = "1"
            return status, payload, headers
        accepted = rejected = 0
        first_error = ""
        for _, record, why in iter_records(kept):
            if record is None:
                rejected += 1
                first_error = first_error or why
                continue
            self.submit(record)
            accepted += 1
        if dropped and self.sampled_out is not None:
            self.sampled_out(dropped)
        with self.counters.lock:
            c = self.counters
            c.spans_received += len(spans)
            c.spans_accepted += accepted
            c.spans_rejected += rejected
            c.spans_sampled_out += dropped
        if rejected:
            _log.warning("llmvigil collector rejected %d of %d spans: %s", rejected,
                         len(spans), first_error)
        return 200, _response(media, rejected, first_error), {"Content-Type": media}


def _trace_fraction(trace_id: str) -> float:
    """The trace id's low 64 bits as a fraction of 2**64 (W3C ids are random there)."""
    try:
        return int(trace_id[-16:], 16) / 2.0**64
    except ValueError:
        return 0.0


def _response(media: str, rejected: int, message: str) -> bytes:
    if media == JSON:
        if not rejected:
            return b"{}"
        return json.dumps({"partialSuccess": {"rejectedSpans": str(rejected),
                                              "errorMessage": message}}).encode()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return bytes(response.SerializeToString())


def _status(code: int, message: str, media: str) -> tuple[int, bytes, dict[str, str]]:
    """An error answer: a ``google.rpc.Status`` in the request's encoding."""
    grpc = _GRPC_CODE.get(code, 2)
    if media == PROTOBUF:
        from google.rpc.status_pb2 import Status

        return code, bytes(Status(code=grpc, message=message).SerializeToString()), \
            {"Content-Type": PROTOBUF}
    return code, json.dumps({"code": grpc, "message": message}).encode(), \
        {"Content-Type": JSON}


class _TooLarge(Exception):
    pass


class _LengthRequired(ValueError):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 collector: Collector, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.collector = collector
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.collector._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            with self.collector.counters.lock:
                self.collector.counters.overloaded += 1
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.collector._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.collector._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmvigil-collector"
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(self.server.collector.request_timeout_s)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, code: int, message: str, media: str = JSON) -> None:
        status, body, headers = _status(code, message, media)
        self._send(status, body, headers)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/healthz", "/"):
            self.close_connection = True
            self._fail(404, "not found; send traces to POST /v1/traces")
            return
        stats = self.server.collector.stats()
        code = 503 if stats["stopping"] else 200
        body = json.dumps({"status": "stopping" if stats["stopping"] else "ok", **stats})
        self._send(code, body.encode(), {"Content-Type": JSON})

    def _not_allowed(self) -> None:
        self.close_connection = True
        status, body, headers = _status(405, f"method {self.command} not allowed; "
                                             "send traces with POST /v1/traces", JSON)
        headers["Allow"] = "POST, GET"
        self._send(status, body, headers)

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def do_POST(self) -> None:
        collector = self.server.collector
        media = _MEDIA.get(self.headers.get("Content-Type", "").split(";", 1)[0]
                           .strip().lower(), "")
        error_media = media or JSON
        if self.path.split("?", 1)[0] != "/v1/traces":
            self.close_connection = True
            self._fail(404, f"unknown path {self.path!r}; this collector serves "
                            "POST /v1/traces only", error_media)
            return
        if not collector._enter():
            self.close_connection = True
            status, body, headers = _status(503, "the collector is shutting down",
                                            error_media)
            headers["Retry-After"] = "1"
            self._send(status, body, headers)
            return
        try:
            self._export(collector, media, error_media)
        finally:
            collector._leave()

    def _export(self, collector: Collector, media: str, error_media: str) -> None:
        try:
            raw = self._read_body(collector.max_body_bytes)
        except _TooLarge:
            self.close_connection = True
            self._fail(413, f"request body above {collector.max_body_bytes} bytes",
                       error_media)
            return
        except ValueError as exc:
            self.close_connection = True
            self._fail(411 if isinstance(exc, _LengthRequired) else 400, str(exc), error_media)
            return
        if not media:
            self._fail(415, f"unsupported Content-Type "
                            f"{self.headers.get('Content-Type')!r}; send "
                            f"{PROTOBUF} or {JSON}", JSON)
            return
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            body = _decompress(raw, encoding, collector.max_body_bytes)
        except _TooLarge:
            self._fail(413, f"decompressed body above {collector.max_body_bytes} bytes",
                       media)
            return
        except LookupError:
            self._fail(415, f"unsupported Content-Encoding {encoding!r}; use gzip, "
                            "deflate or none", media)
            return
        except zlib.error as exc:
            with collector.counters.lock:
                collector.counters.bad_requests += 1
            self._fail(400, f"the body is not valid {encoding} data ({exc})", media)
            return
        try:
            status, payload, headers = collector.export(body, media)
        except Exception as exc:  # a bug here must answer, not hang the exporter
            _log.exception("llmvigil collector failed on a request")
            self._fail(500, f"internal error: {exc!r}", media)
            return
        self._send(status, payload, headers)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length = self.headers.get("Content-Length")
        if length is None:
            raise _LengthRequired("Content-Length is required (or chunked transfer encoding)")
        try:
            size = int(length)
        except ValueError:
            raise ValueError(f"bad Content-Length {length!r}") from None
        if size < 0:
            raise ValueError(f"bad Content-Length {length!r}")
        if size > limit:
            raise _TooLarge
        return self.rfile.read(size)

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise _TooLarge
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity", "none"):
        return data
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    elif encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some senders send raw deflate.
        wbits = zlib.MAX_WBITS if data[:1] == b"\x78" else -zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
    else:
        raise LookupError(encoding)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise _TooLarge
    return out


# -- the process: init llmvigil, serve, stop on SIGTERM/SIGINT ---------------------------


def run(config: str | Path | None = None, host: str = "127.0.0.1", port: int = 4318, *,
        allow_remote: bool = False, max_body_bytes: int = 20 << 20,
        max_connections: int = 256, shutdown_timeout_s: float = 10.0,
        announce: Callable[[str], None] = print, plugin_manager: Any = None) -> int:
    """Run a collector until SIGTERM or SIGINT, then drain it and flush llmvigil.

    ``plugin_manager`` is handed to :func:`llmvigil.init` (embedding, extra adapters).
    Returns the process exit code (0).

    Raises:
        ConfigError: invalid config, or the address is refused or cannot be bound.
        MissingExtraError: a configured backend's extra is not installed.
    """
    import llmvigil

    from .. import runtime as rt_module

    try:  # decoded per request: say what is missing now, not at the first request
        import google.rpc.status_pb2  # noqa: F401
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError(f"vigil serve needs the {exc.name!r} package: "
                          "pip install 'llmvigil[otlp]'") from None
    runtime = llmvigil.init(config, plugin_manager=plugin_manager)
    try:
        pipe = runtime.pipeline
        room = None
        if runtime.config.pipeline.on_full == "drop":
            def room() -> int:
                return pipe.queue_size - pipe.queued()

        def sampled_out(n: int) -> None:
            with pipe.counters.lock:
                pipe.counters.sampled_out += n

        collector = Collector(host, port, allow_remote=allow_remote, room=room,
                              sample_rate=runtime.config.capture.sample_rate,
                              sampled_out=sampled_out, max_body_bytes=max_body_bytes,
                              max_connections=max_connections)
    except BaseException:
        llmvigil.shutdown(timeout=shutdown_timeout_s)
        raise
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    collector.start()
    backends = ", ".join(runtime.backends) or "none"
    announce(f"llmvigil collector listening on {collector.url} "
             f"(config: {runtime.config.source or 'defaults'}; backends: {backends})")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        drained = collector.shutdown(shutdown_timeout_s)
        flushed = rt_module.flush(shutdown_timeout_s)
        llmvigil.shutdown(timeout=shutdown_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        s = collector.stats()
        announce(f"llmvigil collector stopped: {s['spans_accepted']} spans accepted, "
                 f"{s['spans_rejected']} rejected, {s['bad_requests']} bad requests"
                 + ("" if drained and flushed else " (shutdown timed out: some records "
                    "may be in the journal, re-sent on the next start)"))
    return 0
