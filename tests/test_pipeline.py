"""Queue, worker, outboxes and journal: nothing blocks, nothing is lost silently."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core import runtime
from llmvigil.core.errors import ConfigError
from llmvigil.core.journal import Journal
from llmvigil.core.model import Score, Span, new_trace_id
from llmvigil.core.outbox import Outbox, OutboxSettings


def _spans(n: int) -> list[Span]:
    return [Span(trace_id=new_trace_id(), name=f"s{i}") for i in range(n)]


def wait_until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_journal_roundtrip_is_atomic_and_private(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", max_bytes=10_000_000)
    spans = _spans(3)
    assert j.append("spans", spans)
    (path,) = list((tmp_path / "j").iterdir())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert j.pending_count() == 1
    entry = j.claim_next()
    assert entry is not None and entry.kind == "spans" and entry.records == spans
    assert j.claim_next() is None, "a claimed batch is not handed out twice"
    j.release(entry)
    again = j.claim_next()
    assert again is not None and again.records == spans
    j.done(again)
    assert j.pending_count() == 0 and j.size_bytes() == 0


def test_journal_full_or_unwritable_counts_the_loss(tmp_path: Path) -> None:
    small = Journal(tmp_path / "small", max_bytes=200)
    assert not small.append("spans", _spans(50))
    assert small.dropped == 50 and "journal full" in (small.last_error or "")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    broken = Journal(blocker / "j", max_bytes=10_000_000)
    assert not broken.append("spans", _spans(2))
    assert broken.dropped == 2 and "cannot write" in (broken.last_error or "")


def test_stale_claims_of_dead_processes_are_taken_back(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", max_bytes=10_000_000)
    j.append("spans", _spans(1))
    (path,) = list((tmp_path / "j").iterdir())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    os.replace(path, path.with_name(f"{path.stem}.claimed-{dead.stdout.strip()}.batch"))
    assert j.claim_next() is None
    assert j.reclaim_stale() == 1
    assert j.claim_next() is not None


class Flaky:
    """An export function that fails until told to recover."""

    def __init__(self, mode: str = "retry") -> None:
        self.mode = mode
        self.received: list[str] = []

    def __call__(self, kind: str, records: list[Span]) -> str | None:
        if self.mode == "retry":
            return "retry"
        if self.mode == "raise":
            raise ConnectionRefusedError("refused")
        if self.mode == "hang":
            time.sleep(3600)
        self.received.extend(r.id for r in records)
        return "success"


FAST = OutboxSettings(max_retries=1, backoff_initial_s=0.001, backoff_max_s=0.002,
                      breaker_failures=2, breaker_reset_s=0.2)


def test_outbox_journals_during_outage_and_replays_after(tmp_path: Path) -> None:
    export = Flaky("raise")
    box = Outbox("flaky", export, Journal(tmp_path / "j", 10_000_000), FAST)
    sent = [_spans(10) for _ in range(5)]
    for batch in sent:
        box.offer("spans", batch)
    assert wait_until(lambda: box.counters.journaled == 50)
    assert box.counters.delivered == 0 and box.counters.dropped == 0
    export.mode = "ok"
    assert wait_until(lambda: box.counters.delivered == 50, timeout=15)
    assert sorted(export.received) == sorted(s.id for b in sent for s in b)
    assert box.journal.pending_count() == 0 and box.counters.replayed == 50
    box.close(1)


def test_hanging_backend_never_blocks_offer_and_memory_stays_bounded(tmp_path: Path) -> None:
    settings = OutboxSettings(max_records=100, max_retries=0)
    box = Outbox("hang", Flaky("hang"), Journal(tmp_path / "j", 100_000_000), settings)
    t0 = time.perf_counter()
    for _ in range(100):
        box.offer("spans", _spans(10))
    assert time.perf_counter() - t0 < 2.0
    assert box.backlog() <= 100
    # one batch is stuck in the hung export; the rest is queued or journaled
    assert box.counters.journaled + box.backlog() + 10 >= 1000
    box.close(0.2)
    assert box.counters.journaled >= 990, "close journals what is queued and in flight"


def test_permanent_failure_is_counted_not_retried(tmp_path: Path) -> None:
    calls = []

    def reject(kind: str, records: list[Span]) -> str:
        calls.append(len(records))
        return "failure"

    box = Outbox("rej", reject, Journal(tmp_path / "j", 10_000_000), FAST)
    box.offer("spans", _spans(4))
    assert wait_until(lambda: box.counters.dropped == 4)
    assert calls == [4] and box.counters.journaled == 0
    box.close(1)


def test_capabilities_decide_what_is_offered(tmp_path: Path) -> None:
    box = Outbox("spans-only", Flaky("ok"), Journal(tmp_path / "j", 10_000_000), FAST,
                 can_hold=lambda kind: kind == "spans")
    box.offer("scores", [Score(name="x")])
    assert box.counters.cannot_hold == 1 and box.counters.offered == 0
    box.close(1)


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    from vigil_testing import start

    mem = start(tmp_path, pipeline={"queue_size": 10, "flush_interval_s": 5})
    rt = runtime.get_runtime()
    assert rt is not None
    rt.pipeline._working = True
    for _ in range(200):
        with llmvigil.span("burst"):
            pass
    st = rt.pipeline.status()
    assert st["dropped_queue_full"] >= 190 - 10
    rt.pipeline._working = False
    assert llmvigil.flush(5)
    assert len(mem.spans) + rt.pipeline.status()["dropped_queue_full"] == 200


def test_full_queue_spills_to_disk_by_policy(tmp_path: Path) -> None:
    from vigil_testing import start

    mem = start(tmp_path, pipeline={"queue_size": 5, "on_full": "spill",
                                    "flush_interval_s": 0.05})
    rt = runtime.get_runtime()
    assert rt is not None
    pipe = rt.pipeline
    pipe._wake.clear()
    for i in range(100):
        with llmvigil.span(f"s{i}"):
            pass
    assert pipe.status()["dropped_queue_full"] == 0
    assert wait_until(lambda: llmvigil.flush(5) and len(mem.spans) == 100, timeout=20)
    assert sorted(s.name for s in mem.spans) == sorted(f"s{i}" for i in range(100))


def test_failing_backend_does_not_delay_others_and_is_journaled(tmp_path: Path) -> None:
    from vigil_testing import start

    mem = start(tmp_path, backends=[{"name": "memory", "instance": "down", "fail": "raise"}])
    down = get_memory_backend("down")
    for i in range(20):
        with llmvigil.span(f"s{i}"):
            pass
    assert llmvigil.flush(10)
    assert len(mem.spans) == 20 and down.spans == []
    rt = runtime.get_runtime()
    assert rt is not None
    status = rt.pipeline.status()["backends"]["memory:down"]
    assert status["journaled"] >= 20 and status["delivered"] == 0
    assert "ConnectionError" in status["last_error"]
    journal = Journal(tmp_path / "journal" / "memory_down", 10**9)
    journaled_spans = []
    while (entry := journal.claim_next()) is not None:
        journaled_spans += [r.name for r in entry.records if isinstance(r, Span)]
    assert sorted(journaled_spans) == sorted(f"s{i}" for i in range(20))
    # the status file read by `vigil status` says the same
    written = json.loads(next((tmp_path / "status").glob("*.json")).read_text())
    assert written["backends"]["memory:down"]["journaled"] == status["journaled"]


def test_journal_survives_restart_and_is_delivered_once(tmp_path: Path) -> None:
    """Records journaled by a process that died are delivered by the next one."""
    store = tmp_path / "vigil.db"
    journal = tmp_path / "journal"
    script = textwrap.dedent(f"""
        import os, llmvigil
        llmvigil.init(backends=[{{"name": "local", "path": "/proc/forbidden/x.db"}}],
                      pipeline={{"journal_dir": {str(journal)!r}, "max_retries": 0}})
    """)
    # A store path that cannot be opened fails at init with a clear config error.
    bad = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert bad.returncode != 0 and "store.path" in bad.stderr

    crash = textwrap.dedent(f"""
        import os, llmvigil
        from llmvigil.core.model import Span, new_trace_id
        from llmvigil.core.journal import Journal
        llmvigil.init(backends=[{{"name": "local", "path": {str(store)!r}}}],
                      pipeline={{"journal_dir": {str(journal)!r}}})
        # what an outage would have left behind: 3 batches in the local journal
        j = Journal({str(journal / "local")!r}, 10**9)
        for b in range(3):
            j.append("spans", [Span(id=f"{{b:08x}}{{i:08x}}", trace_id="0"*32, name="late")
                               for i in range(100)])
        os.kill(os.getpid(), 9)
    """)
    subprocess.run([sys.executable, "-c", crash], check=False)
    assert len(list((journal / "local").glob("*.batch"))) == 3
    deliver = textwrap.dedent(f"""
        import time, llmvigil
        llmvigil.init(backends=[{{"name": "local", "path": {str(store)!r}}}],
                      pipeline={{"journal_dir": {str(journal)!r}}})
        time.sleep(0.5)
        llmvigil.shutdown()
    """)
    for _ in range(2):  # twice: the second run must not duplicate anything
        subprocess.run([sys.executable, "-c", deliver], check=True, timeout=60)
    from llmvigil.adapters.local import LocalStore

    s = LocalStore(store)
    assert s.count("spans") == 300
    s.close()
    assert list((journal / "local").glob("*.batch")) == []


def test_a_batch_the_backend_keeps_refusing_does_not_block_the_rest(tmp_path: Path) -> None:
    delivered: list[str] = []
    down = True

    def export(kind: str, records: list[Span]) -> str:
        if down or any(r.name == "poison" for r in records):
            return "retry"
        delivered.extend(r.name for r in records)
        return "success"

    settings = OutboxSettings(max_retries=0, breaker_failures=1000)
    box = Outbox("picky", export, Journal(tmp_path / "j", 10_000_000), settings)
    box.offer("spans", [Span(trace_id="0" * 32, name="poison")])
    for i in range(5):
        box.offer("spans", [Span(trace_id="0" * 32, name=f"ok{i}")])
    assert wait_until(lambda: box.counters.journaled == 6)
    down = False
    box.wake()
    assert wait_until(lambda: len(delivered) == 5, timeout=20)
    assert sorted(delivered) == [f"ok{i}" for i in range(5)]
    assert box.journal.pending_count() == 1
    box.close(1)


def test_init_monitors_mapping_is_the_config_section(tmp_path: Path) -> None:
    from vigil_testing import start

    start(tmp_path, monitors={"latency": {"enabled": False}})
    rt = runtime.get_runtime()
    assert rt is not None and rt.config.monitors == {"latency": {"enabled": False}}
    assert "LatencyMonitor" not in {type(m).__name__ for m in rt.monitors}


def test_init_monitors_that_are_not_monitors_is_a_clear_error(tmp_path: Path) -> None:
    from vigil_testing import start

    start(tmp_path)
    running = runtime.get_runtime()
    for bad, named in (("all", "got 'all'"), (["latency"], "item 0 is 'latency'"),
                       (42, "got 42")):
        with pytest.raises(ConfigError, match=r"init\(monitors=\.\.\.\)") as info:
            start(tmp_path, monitors=bad)
        assert named in str(info.value) and "observe() and tick()" in str(info.value)
    assert runtime.get_runtime() is running, "the running runtime is kept, not shut down"


def test_a_monitor_failing_on_every_record_is_logged_once_and_counted_always(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from vigil_testing import start

    class Broken:
        def observe(self, record: Any) -> list[Any]:
            raise KeyError("observe bug")

        def tick(self, now_ns: int) -> list[Any]:
            raise ValueError("tick bug")

    backend = start(tmp_path, monitors=[Broken()])
    with caplog.at_level("WARNING", logger="llmvigil"):
        for i in range(50):
            with llmvigil.span(f"call {i}"):
                pass
        assert llmvigil.flush(5)
        rt = runtime.get_runtime()
        assert rt is not None
        rt.pipeline._periodic(force=True)
        rt.pipeline._periodic(force=True)
    assert len(backend.spans) == 50, "the other monitors and the backends are unaffected"
    logged = [r.getMessage() for r in caplog.records if "monitor Broken failed" in r.getMessage()]
    assert len(logged) == 2, logged
    assert sorted(logged) == sorted([
        "llmvigil monitor Broken failed: KeyError('observe bug') (logged once; every "
        "failure is counted in `vigil status` as monitor_errors)",
        "llmvigil monitor Broken failed in tick(): ValueError('tick bug') (logged once; "
        "every failure is counted in `vigil status` as monitor_errors)"])
    assert rt.pipeline.counters.monitor_errors >= 50 + 2


def test_queued_batches_of_one_kind_merge_up_to_the_limit(tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    exports: list[tuple[str, list[str]]] = []

    def export(kind: str, records: list[Any]) -> str:
        release.wait(10)
        exports.append((kind, [r.id for r in records]))
        return "success"

    box = Outbox("store", export, Journal(tmp_path / "j", 10_000_000),
                 OutboxSettings(merge_records=25))
    first = _spans(10)
    box.offer("spans", first)
    assert wait_until(lambda: box.backlog() == 0)  # the first batch is in the export
    later = [_spans(10) for _ in range(4)]
    box.offer("spans", later[0])
    box.offer("spans", later[1])
    box.offer("scores", [Score(name="s", kind="rating", value=1.0)])
    box.offer("spans", later[2])
    box.offer("spans", later[3])
    release.set()
    assert wait_until(lambda: box.counters.delivered == 51)
    ids = [[s.id for s in batch] for batch in later]
    assert [(kind, len(got)) for kind, got in exports] == [
        ("spans", 10), ("spans", 20), ("scores", 1), ("spans", 20)]
    assert exports[1][1] == ids[0] + ids[1] and exports[3][1] == ids[2] + ids[3]
    box.close(1)


def test_monitors_see_the_record_classes_they_declare() -> None:
    from llmvigil.core.pipeline import Pipeline

    class Seen:
        def __init__(self, observes: tuple[type, ...] | None) -> None:
            if observes is not None:
                self.observes = observes
            self.records: list[Any] = []

        def observe(self, record: Any) -> tuple[()]:
            self.records.append(record)
            return ()

        def tick(self, now_ns: int) -> tuple[()]:
            return ()

    scores_only, everything = Seen((Score,)), Seen(None)
    pipe = Pipeline([], [], monitors=[scores_only, everything], flush_interval_s=0.01)
    score = Score(name="s", kind="rating", value=1.0)
    for record in (*_spans(3), score):
        pipe.submit(record)
    assert pipe.flush(5)
    pipe.close(1)
    assert scores_only.records == [score]
    assert len(everything.records) == 4
