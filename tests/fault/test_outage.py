"""A backend outage in the middle of 100,000 spans: nothing lost, the app unaffected.

The otlp adapter exports to a real OTLP/HTTP receiver (:class:`FaultyCollector`)
that, a third of the way in, starts failing in one of five ways, then recovers. The
application thread times every instrumented call; the test compares the p99 call
time before and during the outage, samples the in-memory backlog and the process's
resident memory during the outage, and after recovery counts distinct span ids at
the receiver.
"""

from __future__ import annotations

import statistics
import time
from array import array
from pathlib import Path
from typing import Any

import llmvigil
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs llmvigil[otlp]")

from fault.fault_servers import MODES, FaultyCollector, rss_bytes, wait_until  # noqa: E402
from llmvigil.core.runtime import get_runtime  # noqa: E402

N = 100_000
OUTAGE_START, OUTAGE_END = 30_000, 70_000
QUEUE_SIZE = 5_000
OUTBOX_MAX_RECORDS = 2_000
BATCH_SIZE = 512
PROMPT_CHARS = 2_000
#: Resident bytes one record may cost while held in memory (raw in the queue or
#: materialised in the outbox), measured at ~3 KB for a 2,000-character prompt.
BYTES_PER_RECORD = 8_192
#: Allocator, thread stacks, HTTP buffers and the journal writer's working set.
FIXED_SLACK = 40 * 2**20


def quiet_config(tmp_path: Path) -> Path:
    """A config file with the monitors off: this test is about delivery, and the
    monitors would only make a 2-core machine slower to get through 100,000 spans."""
    path = tmp_path / "vigil.yaml"
    path.write_text("monitors:\n" + "".join(
        f"  {name}: {{enabled: false}}\n" for name in ("cost", "latency", "feedback", "sessions")))
    return path


def start(tmp_path: Path, endpoint: str, **pipeline: Any) -> Any:
    settings = {
        "journal_dir": str(tmp_path / "journal"), "queue_size": QUEUE_SIZE,
        "batch_size": BATCH_SIZE, "flush_interval_s": 0.05, "max_retries": 1,
        "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "breaker_failures": 2,
        "breaker_reset_s": 0.5, "outbox_max_records": OUTBOX_MAX_RECORDS, **pipeline,
    }
    llmvigil.init(quiet_config(tmp_path), backends=[
        {"name": "otlp", "endpoint": endpoint, "timeout_s": 0.3, "compression": "none",
         "redaction": "full"}], pipeline=settings, store={"path": str(tmp_path / "vigil.db")})
    rt = get_runtime()
    assert rt is not None
    return rt


def p99(values: array[int]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", MODES)
def test_outage_loses_nothing_keeps_calls_fast_and_memory_bounded(
    tmp_path: Path, mode: str
) -> None:
    server = FaultyCollector(retry_after_s=1, slow_s=0.25)
    rt = start(tmp_path, server.endpoint)
    pipe = rt.pipeline
    (box,) = pipe.outboxes

    @llmvigil.trace(kind="llm", name="answer")
    def answer(i: int, prompt: str) -> str:
        return "ok"

    before, during = array("q"), array("q")
    rss_start = rss_peak = 0
    queued_peak = backlog_peak = 0
    clock = time.perf_counter_ns
    try:
        for i in range(N):
            if i == OUTAGE_START:
                server.set_mode(mode)
                rss_start = rss_peak = rss_bytes()
            elif i == OUTAGE_END:
                server.set_mode("ok")
            prompt = f"{i:08d}" + "x" * PROMPT_CHARS
            t0 = clock()
            answer(i, prompt)
            elapsed = clock() - t0
            if i < OUTAGE_START:
                before.append(elapsed)
            elif i < OUTAGE_END:
                during.append(elapsed)
                if i % 500 == 0:
                    rss_peak = max(rss_peak, rss_bytes())
                    queued_peak = max(queued_peak, len(pipe._queue))
                    backlog_peak = max(backlog_peak, box.backlog())
            if i % 64 == 63:
                time.sleep(0.004)  # an application doing other work between calls
        outage = dict(vars(box.counters))
        assert llmvigil.flush(60)
        wait_until(lambda: server.distinct() >= N, 120, f"{N} spans at the receiver")
        status = pipe.status()
    finally:
        llmvigil.shutdown(timeout=5)
        server.stop()

    # The outage really happened and was handled by the outbox, not by luck.
    assert outage["journaled"] > 0
    if mode != "slow":
        assert outage["failed_exports"] + outage["retried"] > 0
    # Zero spans lost: every one of them reached the receiver after recovery.
    assert server.distinct() == N
    counts = status["backends"]["otlp"]
    assert status["dropped_queue_full"] == 0 and counts["dropped"] == 0
    assert counts["journal_batches"] == 0
    # The application's calls were as fast during the outage as before it.
    p99_before, p99_during = p99(before), p99(during)
    assert p99_during <= 2 * p99_before + 20_000, (mode, p99_before, p99_during)
    # Memory stayed within what the configuration allows, whatever the outage's length.
    assert queued_peak <= QUEUE_SIZE
    assert backlog_peak <= OUTBOX_MAX_RECORDS + BATCH_SIZE
    bound = (QUEUE_SIZE + OUTBOX_MAX_RECORDS + 2 * BATCH_SIZE) * BYTES_PER_RECORD + FIXED_SLACK
    grown = rss_peak - rss_start
    assert grown <= bound, (mode, grown, bound)
    print(f"{mode}: p99 before {p99_before / 1e3:.1f} us, during {p99_during / 1e3:.1f} us; "
          f"RSS +{grown / 2**20:.1f} MiB (bound {bound / 2**20:.0f} MiB); "
          f"journaled {outage['journaled']}, replayed {counts['replayed']}")
