"""The background worker: throughput through the operational monitors, and their memory.

1. **Throughput.** LLM spans as the capture path hands them over (raw input messages
   and output text, usage, TTFT and stream timings, users, sessions, features,
   models) are submitted to a runtime whose only backend is the local SQLite store,
   with the operational monitors on (cost with budgets, latency with change
   detection, feedback, sessions) and two alert rules; the figure is spans per second
   from the first submit until the store holds every span, the spans fed in chunks of
   5,000 whenever the queue holds fewer (the rate the worker sustains, not a burst).
   Once with the store written by the outbox thread (``writer: thread``, the
   default) and once by a child process (``writer: process``); then with every
   monitor of the default configuration (fingerprint, drift, safety too). The CPU
   time of each llmvigil thread per span is printed beside each figure. The spans
   are built before the clock starts: the application's own cost is measured by
   ``benchmarks/overhead.py``.
2. **Monitor memory.** 1,000,000 spans over 10,000 users, 20 features and 4 models
   fed straight to the operational monitors (no store, no backend): the monitors'
   own size (every object they reach) and the process RSS at checkpoints, to show
   that the state stops growing once every key is seen.

    python benchmarks/worker.py [--quick] [--spans 200000] [--memory-spans 1000000]
                                [--only throughput,memory]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmvigil
from _bench import machine
from llmvigil.core.config import load_config
from llmvigil.core.model import Span, StreamStats, Usage, new_trace_id
from llmvigil.core.runtime import get_runtime

#: Records submitted at a time while the queue holds at most this many.
BACKLOG = 20_000
USERS, FEATURES, MODELS = 10_000, 20, ("claude-sonnet-4-5", "claude-haiku-4-5",
                                       "claude-opus-4-1", "claude-3-5-haiku-latest")
OPERATIONAL = {"fingerprint": {"enabled": False}, "drift": {"enabled": False},
               "safety": {"enabled": False}}
ALERTS = {"rules": [
    {"name": "slow-first-token", "metric": "latency.ttft_p95_s", "op": ">", "threshold": 5,
     "labels": {"feature": "*"}, "min_samples": 30, "cooldown_s": 600},
    {"name": "unhappy-users", "metric": "feedback.satisfaction_rate", "op": "<",
     "threshold": 0.7, "labels": {"feature": "*"}, "min_samples": 30},
]}


def spans(n: int, start_ns: int) -> Iterator[Span]:
    """``n`` LLM spans of varied traffic, one a millisecond from ``start_ns``."""
    for i in range(n):
        trace = new_trace_id()
        t = start_ns + i * 1_000_000
        ttft = 0.2 + (i % 97) / 100
        yield Span(
            id=trace[:16], trace_id=trace, name="chat",
            kind="llm", start_ns=t, end_ns=t + int((ttft + 1.5) * 1e9), status="ok",
            model=MODELS[i % len(MODELS)], provider="anthropic",
            feature=f"feature-{i % FEATURES}", user_id=f"user-{i % USERS}",
            session_id=f"session-{i // 4}",
            usage=Usage(input_tokens=200 + i % 800, output_tokens=20 + i % 300,
                        cache_read_tokens=(i % 3) * 100),
            ttft_s=ttft,
            stream=StreamStats(items=40, n=39, mean_s=0.03, p50_s=0.025, p95_s=0.08,
                               max_s=0.3),
            input=[{"role": "system", "content": "Extract the invoice date as YYYY-MM-DD."},
                   {"role": "user", "content": f"Invoice {i} from ACME Ltd, issued "
                                               f"{1 + i % 28:02d}/{1 + i % 12:02d}/2025, "
                                               f"total {i % 1000}.{i % 100:02d} EUR."}],
            output=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
        )


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"thread {tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def store_count(db: Path, *, exact: bool = False) -> int:
    """Spans in the store: while waiting, the highest rowid (every span here is new, so
    it is the count, found in a few page reads; COUNT(*) would scan an index each
    time and take CPU from what is measured); ``exact`` counts them."""
    query = "SELECT COUNT(*) FROM spans" if exact else "SELECT IFNULL(MAX(rowid), 0) FROM spans"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


def throughput(n: int, monitors: dict[str, Any], label: str, writer: str = "thread") -> float:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        db = Path(tmp) / "vigil.db"
        llmvigil.init(backends=[{"name": "local", "writer": writer}], store={"path": str(db)},
                      monitors=monitors,
                      alerts=ALERTS, service={"name": "bench"},
                      pipeline={"journal_dir": f"{tmp}/journal"})
        runtime = get_runtime()
        records = list(spans(n, time.time_ns() - n * 1_000_000))
        # The records waiting to be submitted are not the application's garbage: keep
        # them out of the collector's walks, as if they did not exist yet.
        gc.collect()
        gc.freeze()
        before = thread_cpu()
        t0 = time.perf_counter()
        # Feed as fast as the worker takes them, with a backlog of at most one chunk
        # queued (a full queue of records waiting would be a different workload).
        for i in range(0, n, BACKLOG):
            while runtime.pipeline.queued() > BACKLOG:
                time.sleep(0.005)
            for record in records[i : i + BACKLOG]:
                runtime.submit(record)
        del records
        while store_count(db) < n:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        assert store_count(db, exact=True) == n
        used = {k: v - before.get(k, 0.0) for k, v in thread_cpu().items()}
        status = settled_status(runtime)
        llmvigil.shutdown(timeout=30)
        gc.unfreeze()
    rate = n / elapsed
    print(f"  {label:44} {rate:10,.0f} spans/s  ({elapsed:.1f} s)")
    for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
        if cpu >= 0.05 and name.startswith("llmvigil"):
            print(f"      {name:40} {cpu / n * 1e6:6.1f} µs CPU per span")
    box = status["backends"]["local"]
    if box["journaled"]:
        print(f"      the store fell behind: {box['journaled']:,} records journaled "
              f"(outbox limit {runtime.config.pipeline.outbox_max_records:,}), "
              f"{box['replayed']:,} replayed, {box['journal_batches']:,} batches left")
    lost = status["dropped_queue_full"] + status["monitor_errors"]
    if lost:
        print(f"      (dropped {status['dropped_queue_full']}, monitor errors "
              f"{status['monitor_errors']})")
    return rate


def settled_status(runtime: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    """The pipeline's counters once the local journal is replayed: every span is in the
    store by now, but a journaled batch of metrics or alerts may still be waiting."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = runtime.pipeline.status()
        if not status["backends"]["local"]["journal_batches"] or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from ``root`` (shared modules and types left out)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    skip = (type, type(sys), type(len), type(deep_size))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def monitor_memory(n: int) -> None:
    from llmvigil.core.monitors import build_monitors
    from llmvigil.plugins.manager import new_plugin_manager

    config = load_config(monitors=OPERATIONAL)
    monitors = build_monitors(config, new_plugin_manager())
    checkpoints = sorted({n // 10, n // 4, n // 2, n})
    print(f"\n2. monitor memory, {n:,} spans over {USERS:,} users, {FEATURES} features, "
          f"{len(MODELS)} models")
    print(f"  {'spans':>10} {'monitors':>12} {'RSS':>10}   per monitor")
    start = time.time_ns() - n * 1_000_000
    t0 = time.perf_counter()
    for i, span in enumerate(spans(n, start), 1):
        for monitor in monitors:
            monitor.observe(span)
        if i % 1000 == 0:
            for monitor in monitors:
                monitor.tick(span.end_ns or 0)
        if i in checkpoints:
            sizes = {type(m).__name__.removesuffix("Monitor"): deep_size(m) for m in monitors}
            per = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sizes.items())
            print(f"  {i:>10,} {sum(sizes.values()) / 1e6:9.1f} MB {rss_mb():7.0f} MB   {per}",
                  flush=True)
    print(f"  ({n / (time.perf_counter() - t0):,.0f} spans/s through the monitors alone, "
          "sizes measured included)")
    for monitor in monitors:
        close = getattr(monitor, "close", None)
        if callable(close):
            close()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (under a minute)")
    parser.add_argument("--spans", type=int, help="spans per throughput run (200,000)")
    parser.add_argument("--memory-spans", type=int, help="spans fed to the monitors (1e6)")
    parser.add_argument("--only", default="throughput,memory")
    args = parser.parse_args()
    n = args.spans or (20_000 if args.quick else 200_000)
    memory_n = args.memory_spans or (100_000 if args.quick else 1_000_000)
    only = set(args.only.split(","))
    print(machine())
    if "throughput" in only:
        print(f"\n1. worker throughput into the local store, {n:,} LLM spans")
        throughput(n, OPERATIONAL, "operational monitors, writer: thread")
        throughput(n, OPERATIONAL, "operational monitors, writer: process", "process")
        throughput(n, {}, "every default monitor, writer: process", "process")
    if "memory" in only:
        monitor_memory(memory_n)


if __name__ == "__main__":
    main()
