"""A child process that writes the local store, for the ``local`` backend's
``writer: process`` setting.

In-process, the SQLite writer shares the interpreter with the worker: both take
turns on one GIL, and under sustained load (tens of thousands of spans a second)
that, not SQLite, caps the throughput. With ``writer: process`` the outbox thread
hands each batch to ``python -m llmvigil.adapters.local_writer PATH`` and waits for
its answer; the child runs :meth:`LocalStore.write` exactly as the thread would,
on its own interpreter and core.

The pipe protocol, both ways a 4-byte big-endian length then the payload:

- parent -> child: the batch as MessagePack (a list of tagged records);
- child -> parent: one status byte (``0`` written, ``1`` store busy: retry,
  ``2`` cannot be written) then a UTF-8 message (empty when written).

The child exits when its input closes (the parent shut down or died). If the child
dies, the batch in flight is reported as not written (the outbox journals and
retries it) and the next write starts a new child. A process forked from the
parent starts its own child rather than sharing the parent's pipes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import msgspec

from ..core.model import Record

__all__ = ["WriterError", "WriterProcess", "main"]

_log = logging.getLogger("llmvigil.adapters.local")

WRITTEN, BUSY, FAILED = 0, 1, 2
_encoder = msgspec.msgpack.Encoder()


class WriterError(Exception):
    """The writer process could not take the batch.

    ``retry`` says whether sending the batch again may succeed (the child died or
    the store was busy) or not (the child could not write these records).
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class WriterProcess:
    """The parent's end: starts the child on first use and sends it batches.

    Args:
        path: the store file (created by the caller; the child opens it).
        busy_timeout_s: the child's SQLite busy timeout.

    Raises:
        OSError: the child cannot be started (no Python interpreter at
            ``sys.executable``, out of processes).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._start()

    @property
    def child_pid(self) -> int | None:
        """The writer's process id, or ``None`` when none is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # The child imports llmvigil from wherever this process found it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "llmvigil.adapters.local_writer", str(self.path),
             str(self.busy_timeout_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self._pid = os.getpid()
        return self._proc

    def write(self, records: Sequence[Record]) -> None:
        """Write ``records`` through the child, in one transaction of the child's.

        Raises:
            WriterError: the batch was not written (``retry`` says whether it may be).
        """
        payload = _encoder.encode(list(records))
        with self._lock:
            proc = self._proc
            if proc is None or self._pid != os.getpid() or proc.poll() is not None:
                if proc is not None and self._pid == os.getpid():
                    self._reap(proc)
                proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(_frame(payload))
                proc.stdin.flush()
                size = int.from_bytes(_read_exactly(proc.stdout, 4), "big")
                answer = _read_exactly(proc.stdout, size)
            except (OSError, EOFError, ValueError) as exc:
                self._reap(proc)
                self._proc = None
                raise WriterError(f"the store writer process stopped: {exc}",
                                  retry=True) from None
        status, message = answer[0], answer[1:].decode("utf-8", "replace")
        if status == BUSY:
            raise WriterError(message, retry=True)
        if status != WRITTEN:
            raise WriterError(message, retry=False)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.kill()
            proc.wait(2)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def close(self, timeout_s: float = 5.0) -> None:
        """Let the child finish and exit (closing its input); kill it after ``timeout_s``."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or self._pid != os.getpid():
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self._reap(proc)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The child: write each batch read from stdin, answer on stdout, exit at EOF."""
    import sqlite3

    from .local import LocalStore

    args = list(sys.argv[1:] if argv is None else argv)
    path, busy_timeout_s = args[0], float(args[1]) if len(args) > 1 else 30.0
    logging.basicConfig(level=logging.WARNING, format="llmvigil store writer: %(message)s")
    decoder = msgspec.msgpack.Decoder(list[Record])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    store = LocalStore(path, busy_timeout_s=busy_timeout_s)
    try:
        while True:
            try:
                size = int.from_bytes(_read_exactly(stdin, 4), "big")
                payload = _read_exactly(stdin, size)
            except EOFError:
                return 0
            try:
                store.write(decoder.decode(payload))
                status, message = WRITTEN, ""
            except sqlite3.OperationalError as exc:
                status, message = BUSY, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # answer, never die: the parent decides
                status, message = FAILED, f"{type(exc).__name__}: {exc}"
            stdout.write(_frame(bytes([status]) + message.encode()))
            stdout.flush()
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
