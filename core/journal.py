"""The write-ahead journal: batches a backend could not take, kept on disk until it can.

One directory per backend; one file per batch, written to a temporary name, fsynced
and renamed, so a crash at any point leaves either a whole batch or nothing. Files
are created with mode 0600. A batch is *claimed* (renamed with the claiming
process id) before it is re-sent and deleted only after the backend accepted it;
claims left by a dead process are taken back at start-up. Re-sending can therefore
deliver a batch twice, never zero times, and record ids make the second delivery an
upsert at the destination.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import model

__all__ = ["Journal", "JournalEntry"]

_log = logging.getLogger("llmvigil.journal")
_SUFFIX = ".batch"


class JournalEntry:
    """One journaled batch: its file, record kind and records."""

    __slots__ = ("kind", "path", "records")

    def __init__(self, path: Path, kind: str, records: list[Any]) -> None:
        self.path = path
        self.kind = kind
        self.records = records


class Journal:
    """The on-disk queue of undelivered batches for one backend.

    Never raises from :meth:`append`: a full or unwritable journal counts the loss
    (``dropped``) and says why in ``last_error``, for ``vigil status``.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self.appended = 0
        self.dropped = 0
        #: Batches that could not be read back and were moved aside as ``*.corrupt``.
        self.corrupt = 0
        self.last_error: str | None = None
        self._bytes: int | None = None

    # -- writing --------------------------------------------------------------------

    def append(self, kind: str, records: Sequence[Any]) -> bool:
        """Persist one batch; return ``False`` (and count the records) when it cannot."""
        try:
            payload = kind.encode() + b"\n" + model.encode(list(records))
        except Exception as exc:
            return self._lose(records, f"cannot encode batch: {exc!r}")
        with self._lock:
            try:
                self._ensure_dir()
                if self.size_bytes() + len(payload) > self.max_bytes:
                    return self._lose(records, f"journal full ({self.max_bytes} bytes)")
                self._seq += 1
                name = f"{model.now_ns():020d}-{os.getpid()}-{self._seq:06d}"
                tmp = self.directory / f".{name}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(payload)
                    while view:  # a full disk can write part of a batch without raising
                        written = os.write(fd, view)
                        if written <= 0:
                            raise OSError(errno.ENOSPC, "no space left for the batch")
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.directory / f"{name}{_SUFFIX}")
                self._fsync_dir()
            except OSError as exc:
                with contextlib.suppress(OSError, UnboundLocalError):
                    os.unlink(tmp)
                return self._lose(records, f"cannot write {self.directory}: {exc}")
            self._bytes = (self._bytes or 0) + len(payload)
            self.appended += len(records)
            return True

    def _lose(self, records: Sequence[Any], why: str) -> bool:
        self.dropped += len(records)
        if self.last_error != why:
            _log.error("llmvigil journal lost %d records: %s", len(records), why)
        self.last_error = why
        return False

    def _ensure_dir(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- reading back -----------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes held on disk (computed once, then tracked)."""
        if self._bytes is None:
            self._bytes = sum(p.stat().st_size for p in self._files("*"))
        return self._bytes

    def pending_count(self) -> int:
        """Number of batch files waiting to be re-sent (claimed ones included)."""
        return len(self._files("*"))

    def _files(self, pattern: str) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"{pattern}{_SUFFIX}"))
        except OSError:
            return []

    def claim_next(self) -> JournalEntry | None:
        """Claim the oldest unclaimed batch for re-sending, or return ``None``."""
        with self._lock:
            for path in self._files("[0-9]*"):
                if ".claimed-" in path.name:
                    continue
                claimed = path.with_name(f"{path.stem}.claimed-{os.getpid()}{_SUFFIX}")
                try:
                    os.replace(path, claimed)
                except FileNotFoundError:  # another process claimed it first
                    continue
                entry = self._load(claimed)
                if entry is not None:
                    return entry
        return None

    def _load(self, path: Path) -> JournalEntry | None:
        try:
            data = path.read_bytes()
            kind, _, body = data.partition(b"\n")
            return JournalEntry(path, kind.decode(), list(model.decode_many(body)))
        except Exception as exc:
            bad = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(path, bad)
            self.corrupt += 1
            self.last_error = f"unreadable batch moved to {bad.name}"
            _log.error("llmvigil journal: unreadable batch moved to %s: %r", bad, exc)
            return None

    def done(self, entry: JournalEntry) -> None:
        """Forget a batch the backend accepted."""
        with self._lock:
            try:
                size = entry.path.stat().st_size
                entry.path.unlink()
                if self._bytes is not None:
                    self._bytes = max(0, self._bytes - size)
            except OSError:
                pass

    def defer(self, entry: JournalEntry) -> None:
        """Give a claimed batch back at the end of the queue, so a batch the backend
        keeps refusing does not hold back the ones behind it."""
        with self._lock:
            self._seq += 1
            name = f"{model.now_ns():020d}-{os.getpid()}-{self._seq:06d}{_SUFFIX}"
            with contextlib.suppress(OSError):
                os.replace(entry.path, self.directory / name)

    def release(self, entry: JournalEntry) -> None:
        """Give a claimed batch back (the backend is still down)."""
        name = entry.path.name.split(".claimed-")[0] + _SUFFIX
        with contextlib.suppress(OSError):
            os.replace(entry.path, entry.path.with_name(name))

    def reclaim_stale(self) -> int:
        """Take back batches claimed by processes that no longer run; return how many."""
        n = 0
        for path in self._files("*.claimed-*"):
            try:
                pid = int(path.name.split(".claimed-")[1].removesuffix(_SUFFIX))
            except ValueError:
                continue
            if pid == os.getpid() or _alive(pid):
                continue
            self.release(JournalEntry(path, "", []))
            n += 1
        return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
