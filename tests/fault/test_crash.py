"""SIGKILL mid-stream: every span that reached the journal is delivered exactly once.

A child process produces spans while its backend is down, so batches pile up in the
journal; it is killed with SIGKILL at a random moment (possibly mid-write, mid-claim
or mid-replay). The test then reads what the journal holds, straight from the files,
brings the backend back and starts a new runtime on the same journal: the
destination must end up with exactly the journaled spans, each id once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from fault.fault_servers import FaultyCollector, wait_until
from llmvigil.adapters.local import LocalStore
from llmvigil.core.model import Span, decode_many
from llmvigil.core.runtime import get_runtime

CHILD = textwrap.dedent("""
    import sys, time, json
    import llmvigil
    backend, journal_dir = json.loads(sys.argv[1]), sys.argv[2]
    llmvigil.init(backends=[backend], pipeline={
        "journal_dir": journal_dir, "batch_size": 64, "flush_interval_s": 0.01,
        "max_retries": 0, "breaker_failures": 1, "breaker_reset_s": 0.1,
        "backoff_initial_s": 0.01, "backoff_max_s": 0.02})
    print("ready", flush=True)
    i = 0
    while True:
        with llmvigil.span(f"s{i}", kind="llm") as s:
            s.set_usage(input_tokens=i, output_tokens=1)
        i += 1
        if i % 32 == 0:
            time.sleep(0.001)
""")


def journaled_span_ids(directory: Path) -> list[str]:
    """Span ids in every complete batch file (claimed ones included), read raw."""
    ids: list[str] = []
    for path in directory.glob("*.batch"):
        kind, _, body = path.read_bytes().partition(b"\n")
        if kind == b"spans":
            ids.extend(r.id for r in decode_many(body) if isinstance(r, Span))
    return ids


def run_and_kill(backend: dict[str, Any], journal_dir: Path, rng: random.Random) -> int:
    """Start the producer, let the journal grow, SIGKILL it at a random moment."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(backend), str(journal_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        directory = journal_dir / backend["name"]
        wait_until(lambda: len(list(directory.glob("*.batch"))) >= 5, 30, "journaled batches")
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.pid


def restart(tmp_path: Path, backend: dict[str, Any]) -> Any:
    llmvigil.init(backends=[backend], pipeline={
        "journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05,
        "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        store={"path": str(tmp_path / "unused.db")})
    rt = get_runtime()
    assert rt is not None
    return rt.pipeline.outboxes[0]


@pytest.mark.timeout(120)
def test_sigkill_then_restart_delivers_the_journal_to_the_local_store_once(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    db = tmp_path / "vigil.db"
    LocalStore(db).close()
    # The store is "down": another process holds its write lock for the child's life.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        pid = run_and_kill({"name": "local", "path": str(db), "busy_timeout_s": 0.02},
                           tmp_path / "journal", random.Random(seed))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    directory = tmp_path / "journal" / "local"
    before = journaled_span_ids(directory)
    assert before, f"seed {seed}: nothing journaled"
    claimed = [p.name for p in directory.glob(f"*.claimed-{pid}.batch")]

    box = restart(tmp_path, {"name": "local", "path": str(db)})
    wait_until(lambda: box.journal.pending_count() == 0, 30, "the journal to drain")
    llmvigil.shutdown()
    with LocalStore(db) as store:
        delivered = [s.id for s in store.read("spans")]
    assert len(delivered) == len(set(delivered)) == len(set(before)), (seed, claimed)
    assert set(delivered) == set(before), seed


@pytest.mark.timeout(120)
def test_sigkill_then_restart_delivers_the_journal_to_an_otlp_receiver(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs llmvigil[otlp]")
    seed = random.randrange(2**32)
    server = FaultyCollector()
    server.set_mode("refuse")
    backend = {"name": "otlp", "endpoint": server.endpoint, "timeout_s": 0.2,
               "redaction": "full"}
    try:
        run_and_kill(backend, tmp_path / "journal", random.Random(seed))
        before = journaled_span_ids(tmp_path / "journal" / "otlp")
        assert before, f"seed {seed}: nothing journaled"
        server.set_mode("ok")
        box = restart(tmp_path, backend)
        wait_until(lambda: box.journal.pending_count() == 0, 60, "the journal to drain")
        llmvigil.shutdown()
    finally:
        server.stop()
    # The receiver may see a batch twice (a kill between its answer and the journal's
    # delete); ids are what make that an upsert, so compare ids.
    assert server.span_ids() == set(before), seed
    assert server.received >= len(set(before))
