"""Per-call overhead of @llmvigil.trace against the vendor decorators, side by side.

One process, one run, the same function under each instrumentation:

* no instrumentation,
* ``@llmvigil.trace`` with the local SQLite store as the backend,
* a bare OpenTelemetry SDK span (BatchSpanProcessor, OTLP exporter),
* ``langfuse.observe`` and ``langsmith.traceable`` with tracing on,

every vendor pointed at a local endpoint that refuses connections (127.0.0.1:9),
the situation where a vendor SDK does the most work per call. Each variant makes
``--calls`` calls in batches; the figure is the median per-call time over batches
minus the uninstrumented median. RSS growth is measured per variant.

Then the memory held after ``--million`` traced calls while the only backend is
down: it must stay bounded by the queue, outbox and journal limits.

    python benchmarks/overhead.py [--calls 20000] [--million 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _bench import machine

UNREACHABLE = "http://127.0.0.1:9"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def per_call_us(fn: Callable[[int], Any], calls: int, batch: int = 500) -> float:
    """Median over batches of the per-call time, in microseconds."""
    for i in range(min(2000, calls)):  # warm up
        fn(i)
    samples = []
    for start in range(0, calls, batch):
        t0 = time.perf_counter_ns()
        for i in range(start, start + batch):
            fn(i)
        samples.append((time.perf_counter_ns() - t0) / batch / 1000)
    return statistics.median(samples)


def per_call_async_us(fn: Callable[[int], Any], calls: int, batch: int = 500) -> float:
    async def main() -> float:
        samples = []
        for start in range(0, calls, batch):
            t0 = time.perf_counter_ns()
            for i in range(start, start + batch):
                await fn(i)
            samples.append((time.perf_counter_ns() - t0) / batch / 1000)
        return statistics.median(samples)

    return asyncio.run(main())


def work(x: int) -> int:
    return x * 2


async def awork(x: int) -> int:
    return x * 2


STREAM_ITEMS = 10


def stream(x: int):  # type: ignore[no-untyped-def]
    for i in range(STREAM_ITEMS):
        yield x + i


def consume(fn: Callable[[int], Any]) -> Callable[[int], Any]:
    """A call that creates the stream and reads it to the end."""

    def call(x: int) -> Any:
        for _ in fn(x):
            pass

    return call


Variant = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]


def variants(tmp: str) -> dict[str, Variant]:
    """name -> (sync callable, async callable, streaming generator function)."""
    out: dict[str, Variant] = {"none": (work, awork, stream)}

    import llmvigil

    llmvigil.init(backends=["local"], store={"path": f"{tmp}/vigil.db"},
                  pipeline={"journal_dir": f"{tmp}/journal"})
    out["llmvigil.trace"] = (llmvigil.trace(work), llmvigil.trace(awork),
                             llmvigil.trace(stream))

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{UNREACHABLE}/v1/traces",
                                                timeout=1))
        )
        tracer = provider.get_tracer("bench")

        def otel(x: int) -> int:
            with tracer.start_as_current_span("work"):
                return work(x)

        async def aotel(x: int) -> int:
            with tracer.start_as_current_span("work"):
                return await awork(x)

        def otel_stream(x: int):  # type: ignore[no-untyped-def]
            with tracer.start_as_current_span("stream"):
                yield from stream(x)

        out["opentelemetry span"] = (otel, aotel, otel_stream)
    except ImportError:
        print("opentelemetry-sdk not installed: skipped", file=sys.stderr)

    try:
        from langfuse import Langfuse, observe

        Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", host=UNREACHABLE)
        out["langfuse.observe"] = (observe()(work), observe()(awork), observe()(stream))
    except ImportError:
        print("langfuse not installed: skipped", file=sys.stderr)

    try:
        os.environ.update(LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT=UNREACHABLE,
                          LANGSMITH_API_KEY="lsv2_pt_bench")
        from langsmith import traceable

        out["langsmith.traceable"] = (traceable(work), traceable(awork), traceable(stream))
    except ImportError:
        print("langsmith not installed: skipped", file=sys.stderr)
    return out


def compare(calls: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sync_fn, async_fn, stream_fn) in variants(tmp).items():
            gc.collect()
            before = rss_mb()
            sync_us = per_call_us(sync_fn, calls)
            async_us = per_call_async_us(async_fn, calls)
            stream_us = per_call_us(consume(stream_fn), calls // 2)
            gc.collect()
            rows.append({"name": name, "sync_us": sync_us, "async_us": async_us,
                         "stream_us": stream_us, "rss_growth_mb": rss_mb() - before})
        import llmvigil

        llmvigil.shutdown(timeout=30)
    base = rows[0]
    for row in rows:
        for mode in ("sync", "async", "stream"):
            row[f"overhead_{mode}_us"] = row[f"{mode}_us"] - base[f"{mode}_us"]
    return rows


def memory_when_backend_down(n: int) -> dict[str, Any]:
    """RSS after ``n`` traced calls while the only backend fails every export."""
    import llmvigil

    with tempfile.TemporaryDirectory() as tmp:
        llmvigil.init(
            backends=[{"name": "memory", "instance": "down", "fail": "retry"}],
            pipeline={"journal_dir": f"{tmp}/journal", "queue_size": 100_000,
                      "outbox_max_records": 50_000, "journal_max_bytes": "200MB",
                      "max_retries": 0},
        )
        traced = llmvigil.trace(work)
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        peak = before
        for i in range(n):
            traced(i)
            if i % 100_000 == 0:
                peak = max(peak, rss_mb())
        elapsed = time.perf_counter() - t0
        llmvigil.flush(120)
        peak = max(peak, rss_mb())
        from llmvigil.core import runtime

        rt = runtime.get_runtime()
        status = rt.pipeline.status() if rt else {}
        llmvigil.shutdown(timeout=60)
        box = status.get("backends", {}).get("memory:down", {})
        return {
            "calls": n, "seconds": elapsed, "rss_before_mb": before, "rss_peak_mb": peak,
            "journaled": box.get("journaled", 0), "dropped_journal_full": box.get("dropped", 0),
            "dropped_queue_full": status.get("dropped_queue_full", 0),
        }


def main() -> None:
    import logging

    # The vendor SDKs log every failed upload to the unreachable endpoint; keep the
    # figures readable (their background work still runs and is measured).
    for name in ("langsmith", "langfuse", "opentelemetry", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description="llmvigil per-call overhead vs vendor SDKs")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--million", type=int, default=1_000_000,
                        help="calls for the backend-down memory check (0 to skip)")
    args = parser.parse_args()
    print(machine())
    rows = compare(args.calls)
    vigil = next(r for r in rows if r["name"] == "llmvigil.trace")
    print(f"\nper-call overhead in microseconds over the uninstrumented call "
          f"(stream: a {STREAM_ITEMS}-item generator read to the end)")
    print(f"{'variant':22} {'sync':>9} {'async':>9} {'stream':>9} {'RSS +MB':>8} "
          f"{'x llmvigil (sync)':>18}")
    for r in rows:
        ratio = (r["overhead_sync_us"] / vigil["overhead_sync_us"]
                 if vigil["overhead_sync_us"] > 0 and r["name"] != "none" else float("nan"))
        print(f"{r['name']:22} {r['overhead_sync_us']:9.2f} {r['overhead_async_us']:9.2f} "
              f"{r['overhead_stream_us']:9.2f} {r['rss_growth_mb']:8.1f} {ratio:18.1f}")
    if args.million:
        m = memory_when_backend_down(args.million)
        print(f"\n{m['calls']:,} traced calls with the backend down: {m['seconds']:.1f}s, "
              f"RSS {m['rss_before_mb']:.0f} MB -> peak {m['rss_peak_mb']:.0f} MB; "
              f"journaled {m['journaled']:,}, dropped (journal full) "
              f"{m['dropped_journal_full']:,}, dropped (queue full) {m['dropped_queue_full']:,}")


if __name__ == "__main__":
    main()
