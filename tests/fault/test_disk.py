"""A full disk or an unwritable journal: the app runs on, the loss is counted and shown.

One backend is down, so everything for it goes to the journal, and the journal
cannot take it all: a 1 MiB tmpfs that fills up (when the test runs as root), a
``journal_max_bytes`` that is reached, or a journal path that cannot be a directory.
A second, healthy backend must still get every span; the down backend's counters
must add up; and ``vigil status`` (the CLI, in a subprocess) must report the loss.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from fault.fault_servers import monitors_off
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.journal import Journal
from llmvigil.core.model import Span, decode_many
from llmvigil.core.runtime import get_runtime

N = 2_000


def _mount_tmpfs(directory: Path) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                             str(directory)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def journal_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """The journal root for each kind of disk trouble, and the error it must report."""
    path = tmp_path / "journal"
    kind = request.param
    if kind == "disk_full":
        path.mkdir()
        if not _mount_tmpfs(path):
            pytest.skip("mounting a tmpfs needs root")
        try:
            yield path, "No space left on device"
        finally:
            llmvigil.shutdown(timeout=5)
            subprocess.run(["umount", "-l", str(path)], check=False)
    elif kind == "not_a_directory":
        path.write_text("a file where the journal directory should be")
        yield path, "Not a directory"
    elif kind == "read_only_dir":
        if os.geteuid() == 0:
            pytest.skip("root writes to a 0500 directory anyway (see disk_full)")
        path.mkdir(mode=0o500)
        try:
            yield path, "Permission denied"
        finally:
            path.chmod(0o700)
    else:
        yield path, "journal full"


def write_config(tmp_path: Path, journal: Path, max_bytes: int) -> Path:
    config = {
        "backends": [{"name": "memory", "instance": "ok", "redaction": "full"},
                     {"name": "memory", "instance": "down", "fail": "raise"}],
        "pipeline": {"journal_dir": str(journal), "journal_max_bytes": max_bytes,
                     "batch_size": 64, "flush_interval_s": 0.02, "max_retries": 0,
                     "breaker_failures": 1, "breaker_reset_s": 600},
        "store": {"path": str(tmp_path / "vigil.db")},
        # No monitors: nothing but the spans below is offered while the numbers are read.
        "monitors": monitors_off(),
    }
    path = tmp_path / "vigil.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def vigil(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", *args],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def journaled_records(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(len(decode_many(p.read_bytes().partition(b"\n")[2]))
               for p in directory.glob("*.batch"))


@pytest.mark.parametrize(
    "journal_dir", ["disk_full", "journal_max_bytes", "not_a_directory", "read_only_dir"],
    indirect=True)
def test_journal_trouble_keeps_the_app_running_and_is_reported(
    tmp_path: Path, journal_dir: tuple[Path, str]
) -> None:
    journal, expected_error = journal_dir
    max_bytes = 300_000 if expected_error == "journal full" else 1 << 30
    config = write_config(tmp_path, journal, max_bytes)
    llmvigil.init(config)

    @llmvigil.trace(kind="llm", name="answer")
    def answer(i: int, prompt: str) -> str:
        return f"answer {i}"

    durations = []
    for i in range(N):
        t0 = time.perf_counter()
        assert answer(i, f"{i} " + "lorem ipsum " * 80) == f"answer {i}"
        durations.append(time.perf_counter() - t0)
        if i % 100 == 99:
            time.sleep(0.002)
    assert llmvigil.flush(30)
    rt = get_runtime()
    assert rt is not None
    status: dict[str, Any] = rt.pipeline.status()
    down = status["backends"]["memory:down"]

    # The application and the healthy backend never noticed.
    assert len(get_memory_backend("ok").spans) == N
    typical = statistics.median(durations)
    assert typical < 0.001, f"median call {typical * 1e6:.0f} us"
    # The loss is counted, and every record offered to the down backend is accounted for.
    assert down["dropped"] > 0 and expected_error in (down["journal_error"] or "")
    assert down["journaled"] + down["dropped"] == down["offered"] >= N
    assert down["delivered"] == 0 and down["backlog"] == 0
    if expected_error != "No space left on device":  # see the test below
        assert journaled_records(journal / "memory_down") == down["journaled"]

    # `vigil status` says the same, from the status file, in another process.
    report = json.loads(vigil("status", "--json", "--config", str(config)))
    (mine,) = [p for p in report["processes"] if p["pid"] == os.getpid()]
    shown = mine["backends"]["memory:down"]
    assert (shown["dropped"], shown["journaled"]) == (down["dropped"], down["journaled"])
    assert expected_error in shown["journal_error"]
    text = vigil("status", "--config", str(config))
    row = next(line for line in text.splitlines() if "memory:down" in line)
    assert str(down["dropped"]) in row.split() and expected_error in text


def test_a_full_disk_never_commits_a_truncated_batch(tmp_path: Path) -> None:
    tmp_path.joinpath("fs").mkdir()
    if not _mount_tmpfs(tmp_path / "fs"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        journal = Journal(tmp_path / "fs" / "j", 1 << 30)
        batch = [Span(trace_id="0" * 32, name="x", input="y" * 1000) for _ in range(64)]
        accepted = sum(journal.append("spans", batch) for _ in range(20))
        assert journal.dropped > 0, "the tmpfs never filled up"
        assert journaled_records(tmp_path / "fs" / "j") == accepted * len(batch)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "fs")], check=False)
