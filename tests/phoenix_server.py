"""A real Arize Phoenix server for the phoenix adapter tests.

The server (package ``arize-phoenix``) lives in its own virtualenv, ``.venv-phoenix``
at the repository root, made by ``scripts/phoenix-venv.sh``, because it pins
libraries (an older anthropic) that the project's ``.venv`` must not get.

Everything stays on this machine: HTTP on 127.0.0.1 and, since Phoenix binds its
OTLP/gRPC receiver to ``[::]`` with no setting for the host, the server is started
through a tiny launcher that rewrites that bind address to 127.0.0.1 before
running ``phoenix serve``. Data goes to SQLite in a temp dir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOENIX_PYTHON = ROOT / ".venv-phoenix" / "bin" / "python"
READY_TIMEOUT_S = 90.0

# Runs in .venv-phoenix's interpreter: `phoenix serve` with gRPC bound to loopback.
_LAUNCHER = """
import sys
import grpc.aio

_make_server = grpc.aio.server

def _loopback_server(*args, **kwargs):
    server = _make_server(*args, **kwargs)
    add_insecure, add_secure = server.add_insecure_port, server.add_secure_port
    server.add_insecure_port = lambda addr: add_insecure(addr.replace("[::]:", "127.0.0.1:"))
    server.add_secure_port = lambda addr, creds: add_secure(
        addr.replace("[::]:", "127.0.0.1:"), creds)
    return server

grpc.aio.server = _loopback_server
from phoenix.server.main import main
sys.argv = ["phoenix", "serve"]
sys.exit(main())
"""


@dataclass
class PhoenixServer:
    """A running Phoenix: its base URL, ports, process and log file."""

    url: str
    port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/arize_phoenix_version", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# /proc/net/tcp{,6} local addresses that are loopback: 127.0.0.1, ::1, ::ffff:127.0.0.1.
_LOOPBACK = {"0100007F", "00000000000000000000000001000000",
             "0000000000000000FFFF00000100007F"}


def non_loopback_listeners(ports: set[int]) -> list[str]:
    """Listening sockets on ``ports`` bound to anything but loopback (Linux /proc)."""
    bad = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) in ports and address not in _LOOPBACK:
                bad.append(f"{table}: {address}:{int(port, 16)}")
    return bad


def start_phoenix(workdir: Path) -> PhoenixServer:
    """Start ``phoenix serve`` on free loopback ports and wait until it answers.

    Raises:
        RuntimeError: the server exited or was not ready within ``READY_TIMEOUT_S``.
    """
    port, grpc_port = _free_port(), _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{workdir / 'phoenix.db'}",
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }
    log_path = workdir / "phoenix.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(PHOENIX_PYTHON), "-c", _LAUNCHER], env=env, cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = PhoenixServer(f"http://127.0.0.1:{port}", port, grpc_port, process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"phoenix serve exited ({process.returncode}):\n"
                               f"{server.log_tail()}")
        if _ready(server.url):
            exposed = non_loopback_listeners({port, grpc_port})
            if exposed:
                stop_phoenix(server)
                raise RuntimeError(f"phoenix serve listens beyond loopback: {exposed}")
            return server
        time.sleep(0.5)
    stop_phoenix(server)
    raise RuntimeError(f"phoenix serve not ready after {READY_TIMEOUT_S:.0f}s:\n"
                       f"{server.log_tail()}")


def stop_phoenix(server: PhoenixServer) -> None:
    """Terminate the server (kill it if it does not stop within 15 s)."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


@pytest.fixture(scope="session")
def phoenix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    """A Phoenix server shared by the session; skips when .venv-phoenix is missing."""
    if not PHOENIX_PYTHON.exists():
        pytest.skip("the Phoenix server is not installed: run scripts/phoenix-venv.sh "
                    "(creates .venv-phoenix with arize-phoenix)")
    server = start_phoenix(tmp_path_factory.mktemp("phoenix"))
    try:
        yield server
    finally:
        stop_phoenix(server)


if __name__ == "__main__":  # manual use: python tests/phoenix_server.py
    srv = start_phoenix(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/phoenix-dev"))
    print(f"Phoenix at {srv.url} (gRPC 127.0.0.1:{srv.grpc_port}); Ctrl-C to stop")
    try:
        srv.process.wait()
    except KeyboardInterrupt:
        stop_phoenix(srv)
