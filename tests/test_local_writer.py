"""The local store written by a child process (``backends: [{name: local, writer: process}]``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import llmvigil
import pytest
from llmvigil.adapters.local import LocalBackend, LocalStore
from llmvigil.adapters.local_writer import WriterError, WriterProcess
from llmvigil.core import runtime
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Metric, Score, Span, new_trace_id
from llmvigil.core.store_queries import TABLES
from vigil_testing import start


def _spans(n: int) -> list[Span]:
    return [Span(trace_id=new_trace_id(), name=f"s{i}", start_ns=1_700_000_000 * 10**9 + i,
                 end_ns=1_700_000_000 * 10**9 + i + 5, cost_usd=i / 3) for i in range(n)]


def test_the_child_writes_what_the_thread_would(tmp_path: Path) -> None:
    records = [*_spans(50), Score(name="thumbs", kind="thumbs_up", value=1.0),
               Metric(name="m", value=2.0, labels={"feature": "x"})]
    with LocalStore(tmp_path / "thread.db") as store:
        store.write(records)
        by_thread = {kind: list(store.read(kind)) for kind in TABLES}
    writer = WriterProcess(LocalStore(tmp_path / "child.db").path)
    try:
        assert writer.child_pid not in (None, os.getpid())
        writer.write(records)
        writer.write(records)  # idempotent, as in-process
    finally:
        writer.close()
    assert writer.child_pid is None
    with LocalStore(tmp_path / "child.db") as store:
        assert {kind: list(store.read(kind)) for kind in TABLES} == by_thread


def test_a_batch_the_child_cannot_write_is_a_failure_not_a_retry(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    LocalStore(path).close()
    writer = WriterProcess(path)
    try:
        too_late = Span(trace_id=new_trace_id(), name="x", start_ns=2**63 + 5, end_ns=2**63 + 6)
        with pytest.raises(WriterError) as caught:
            writer.write([too_late])
        assert not caught.value.retry and "OverflowError" in str(caught.value)
        writer.write(_spans(3))  # the child lives on
    finally:
        writer.close()
    with LocalStore(path) as store:
        assert store.count("spans") == 3


def _writer_children() -> list[int]:
    """Process ids of this process's store writer children (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() \
                and b"llmvigil.adapters.local_writer" in cmdline:
            found.append(int(entry))
    return found


def test_a_killed_writer_loses_nothing(tmp_path: Path) -> None:
    """The child SIGKILLed mid-run: its batch is journaled, a new child writes it."""
    start(tmp_path, backends=[{"name": "local", "writer": "process"}],
          pipeline={"breaker_failures": 100})
    (first_pid,) = _writer_children()

    def traced(n: int) -> None:
        for i in range(n):
            with llmvigil.span("chat", kind="llm", model="claude-sonnet-4-5") as s:
                s.set_usage(input_tokens=10 + i, output_tokens=5)

    traced(300)
    assert llmvigil.flush(20)
    os.kill(first_pid, signal.SIGKILL)
    time.sleep(0.2)
    traced(300)
    assert llmvigil.flush(30)
    status = runtime.get_runtime().pipeline.status()["backends"]["local"]
    (second_pid,) = _writer_children()
    llmvigil.shutdown()
    assert second_pid != first_pid and status["dropped"] == 0
    assert _writer_children() == []  # the new child exited with the runtime
    with LocalStore(tmp_path / "vigil.db") as store:
        assert store.count("spans") == 600


def _bytes_read(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


def test_a_child_killed_mid_batch_is_a_retry_and_the_next_child_writes(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "k.db"
    LocalStore(path).close()
    writer = WriterProcess(path)
    errors: list[WriterError] = []

    def big_write() -> None:
        try:
            writer.write(_spans(200_000))  # seconds of work for the child
        except WriterError as exc:
            errors.append(exc)

    thread = threading.Thread(target=big_write)
    writer.write(_spans(1))  # the child is up and waiting
    (pid,) = _writer_children()
    idle = _bytes_read(pid)
    thread.start()
    deadline = time.monotonic() + 20
    while _bytes_read(pid) < idle + 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.005)  # until the child is reading the batch
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    try:
        assert len(errors) == 1 and errors[0].retry
        writer.write(_spans(10))
        assert _writer_children() not in ([], [pid])
    finally:
        writer.close()
    with LocalStore(path) as store:
        assert store.count("spans") == 11  # the killed batch was one transaction: none of it


def test_unknown_writer_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="writer: 'fork'; expected thread or process"):
        LocalBackend({"path": str(tmp_path / "x.db"), "writer": "fork"})
