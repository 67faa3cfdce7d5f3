"""Backends that break on demand, and process probes, for the fault tests and benchmarks.

:class:`FaultyCollector` is the OTLP/HTTP receiver of ``tests/test_adapter_otlp.py``
(reused, not copied) with every way a backend fails in production: refusing
connections, answering 500, answering 429 with ``Retry-After``, accepting and never
answering, or answering slowly. It keeps only the ids of the spans it accepted, so a
run of 100,000 spans does not grow the test process's memory.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "MODES",
    "EchoFailServer",
    "FaultyCollector",
    "free_port",
    "listening_sockets",
    "monitors_off",
    "quiet_config",
    "rss_bytes",
    "wait_until",
]

#: The failure modes of :class:`FaultyCollector` (``ok`` is the healthy one).
MODES = ("refuse", "500", "429", "hang", "slow")


class FaultyCollector:
    """An OTLP/HTTP receiver on 127.0.0.1 whose behaviour :meth:`set_mode` switches.

    Modes: ``ok``; ``refuse`` (nothing listens on the port: connections are refused);
    ``500``; ``429`` (with ``Retry-After: retry_after_s``); ``hang`` (reads the request
    and never answers); ``slow`` (answers correctly after ``slow_s`` seconds).
    """

    def __init__(self, *, retry_after_s: int = 1, slow_s: float = 0.25) -> None:
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.mode = "ok"
        self.received = 0  # spans accepted, duplicates included
        self.requests = 0
        self.answered_slowly = 0
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._collector: Any = None  # test_adapter_otlp.Collector
        self._hung: list[threading.Event] = []
        self.port = self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.url}/v1/traces"

    def _listen(self, port: int) -> int:
        # Imported here: it needs the otlp extra, which the other helpers do not.
        from test_adapter_otlp import Collector

        collector = Collector(port=port)
        base: Any = collector.server.RequestHandlerClass
        owner = self

        class Handler(base):
            def do_POST(self) -> None:
                with owner._lock:
                    owner.requests += 1
                mode = owner.mode
                if mode == "429":
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self.send_response(429)
                    self.send_header("Retry-After", str(owner.retry_after_s))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "slow":
                    time.sleep(owner.slow_s)
                    with owner._lock:
                        owner.answered_slowly += 1
                super().do_POST()
                owner._harvest(collector)

        collector.server.RequestHandlerClass = Handler
        # A client that gave up on a slow or hung answer is part of the test, not news.
        collector.server.handle_error = lambda request, client_address: None
        self._collector = collector
        return int(collector.port)

    def _harvest(self, collector: Any) -> None:
        """Move what the receiver decoded into the id set (and free the protobufs)."""
        with collector.lock:
            spans, collector.spans = collector.spans, []
            collector.metrics.clear()
            collector.headers.clear()
            collector.paths.clear()
        ids = [s.span_id.hex() for _, _, s in spans]
        with self._lock:
            self.received += len(ids)
            self._ids.update(ids)

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; leaving ``hang`` frees the requests left hanging."""
        if mode not in ("ok", *MODES):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "refuse":
            if self._collector is not None:
                self._collector.stop()
                self._collector = None
        elif self._collector is None:
            self._listen(self.port)
        assert self._collector is not None or mode == "refuse"
        if self._collector is not None:
            if mode == "hang":
                self._collector.release.clear()
            else:
                self._collector.release.set()
            self._collector.mode = mode if mode in ("500", "hang") else "ok"
        self.mode = mode

    def span_ids(self) -> set[str]:
        """Distinct ids of every span accepted so far."""
        with self._lock:
            return set(self._ids)

    def distinct(self) -> int:
        """How many distinct span ids were accepted so far."""
        with self._lock:
            return len(self._ids)

    def stop(self) -> None:
        """Free hung requests and stop listening."""
        if self._collector is not None:
            self._collector.stop()
            self._collector = None


class EchoFailServer:
    """An HTTP API that fails every request with ``status`` and echoes it back.

    The error body repeats the request's headers and the start of its body: the
    worst case for a secret, which an SDK may then put in its exception message.
    """

    def __init__(self, status: int = 401) -> None:
        self.status = status
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _fail(self) -> None:
                owner.requests += 1
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length) if length else b""
                payload = json.dumps({
                    "error": "unauthorized", "headers": dict(self.headers.items()),
                    "path": self.path, "body": body[:2000].decode("latin-1"),
                }).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = _fail

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()


def rss_bytes() -> int:
    """Resident memory of this process, in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def listening_sockets(pid: int | None = None) -> list[str]:
    """``proto local-address`` of every listening (TCP) or bound (UDP) socket of ``pid``."""
    mine = _socket_inodes(os.getpid() if pid is None else pid)
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            # TCP state 0A is LISTEN; any UDP socket of ours with a local port receives.
            if inode in mine and (state == "0A" or proto.startswith("udp")):
                found.append(f"{proto} {local}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def monitors_off() -> dict[str, dict[str, bool]]:
    """A ``monitors:`` section that turns every built-in monitor off."""
    from llmvigil.core.monitors import BUILTIN_MONITORS

    return {name: {"enabled": False} for name in BUILTIN_MONITORS}


def quiet_config(directory: Path) -> Path:
    """A config file with every monitor off, for tests about delivery alone: on a
    2-core machine the monitors would only make them slower to get through."""
    path = directory / "vigil.yaml"
    path.write_text(json.dumps({"monitors": monitors_off()}))  # JSON is YAML
    return path
