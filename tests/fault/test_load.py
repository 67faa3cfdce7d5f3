"""Load: many threads and tasks at once, and several processes on one SQLite store.

The full-size versions of what ``tests/test_concurrency.py`` checks in small: 8
threads x 50,000 spans and 1,000 concurrent asyncio tasks at the same time, every
span delivered with the parent it had in the application; and 4 processes writing
one local store through llmvigil, every span stored exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import llmvigil
import pytest
from fault.fault_servers import quiet_config
from llmvigil.adapters.local import LocalStore
from llmvigil.core.runtime import get_runtime
from vigil_testing import start

THREADS, PER_THREAD, TASKS = 8, 50_000, 1_000


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_threads_and_tasks_at_full_size_keep_every_span_and_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The monitors are off so that 402,000 spans fit the time budget of a 2-core box.
    monkeypatch.setenv("VIGIL_CONFIG", str(quiet_config(tmp_path)))
    # Redaction off: span ids passed as data must come back verbatim (the credit-card
    # detector masks 13-19 digit runs even inside hex ids).
    mem = start(tmp_path, pipeline={"queue_size": 1_000_000}, capture={"redact": []})
    go = threading.Barrier(THREADS + 1)

    @llmvigil.trace(name="leaf")
    def leaf(i: int, parent: str) -> int:
        return i

    def producer(t: int) -> None:
        go.wait()
        for i in range(PER_THREAD // 2):
            with llmvigil.span(f"t{t}") as s:
                leaf(i, s.span_id)

    async def task(i: int, gate: asyncio.Event) -> None:
        await gate.wait()
        with llmvigil.span(f"task{i}") as outer:
            await asyncio.sleep(0)
            with llmvigil.span("inner") as inner:
                inner.set(expected_parent=outer.span_id)
                await asyncio.sleep(0.001 * (i % 7))

    async def all_tasks() -> None:
        gate = asyncio.Event()
        running = [asyncio.create_task(task(i, gate)) for i in range(TASKS)]
        await asyncio.sleep(0)
        go.wait()
        gate.set()
        await asyncio.gather(*running)

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(THREADS)]
    workers.append(threading.Thread(target=lambda: asyncio.run(all_tasks())))
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    produced_s = time.perf_counter() - t0
    assert llmvigil.flush(120)
    rt = get_runtime()
    assert rt is not None
    assert rt.pipeline.status()["dropped_queue_full"] == 0

    spans = mem.spans
    assert len(spans) == THREADS * PER_THREAD + 2 * TASKS
    by_id = {s.id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    names = collections.Counter(s.name for s in spans)
    assert all(names[f"t{t}"] == PER_THREAD // 2 for t in range(THREADS))
    assert names["leaf"] == THREADS * PER_THREAD // 2
    assert names["inner"] == TASKS and all(names[f"task{i}"] == 1 for i in range(TASKS))
    for s in spans:
        if s.name == "leaf":
            # The parent id the application saw, recorded as the call's argument.
            assert s.parent_id == s.input["parent"]
            assert by_id[s.parent_id].trace_id == s.trace_id
        elif s.name == "inner":
            assert s.parent_id == s.attributes["expected_parent"]
            assert by_id[s.parent_id].trace_id == s.trace_id
        else:
            assert s.parent_id is None and s.id == s.trace_id[:16]
    print(f"{len(spans)} spans produced in {produced_s:.1f} s")


CHILD = textwrap.dedent("""
    import json, os, sys, time
    import llmvigil
    db, journal_dir, go, k, n = sys.argv[1:6]
    k, n = int(k), int(n)
    llmvigil.init(backends=[{"name": "local", "path": db}],
                  pipeline={"journal_dir": journal_dir, "batch_size": 256,
                            "flush_interval_s": 0.02})
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(n):
        with llmvigil.span(f"p{k}-{i}", kind="llm", feature=f"proc{k}"):
            pass
    llmvigil.flush(60)
    status = llmvigil.core.runtime.get_runtime().pipeline.status()
    llmvigil.shutdown(30)
    print(json.dumps({"queue_full": status["dropped_queue_full"],
                      **status["backends"]["local"]}))
""")


@pytest.mark.timeout(120)
def test_processes_writing_one_store_at_once_store_every_span_once(tmp_path: Path) -> None:
    procs, per_proc = 4, 10_000
    db, go = tmp_path / "shared.db", tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(tmp_path / "journal"),
                          str(go), str(k), str(per_proc)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(procs)
    ]
    time.sleep(1.0)  # let them all import and open the store, then start together
    go.touch()
    reports = []
    for child in children:
        out, err = child.communicate(timeout=100)
        assert child.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["queue_full"] == 0 and r["dropped"] == 0 for r in reports), reports

    with LocalStore(db) as store:
        assert store.count("spans") == procs * per_proc
        names = collections.Counter(s.name for s in store.read("spans"))
    assert names == collections.Counter(f"p{k}-{i}" for k in range(procs)
                                        for i in range(per_proc))
    assert not list((tmp_path / "journal").rglob("*.batch")), "nothing left undelivered"
