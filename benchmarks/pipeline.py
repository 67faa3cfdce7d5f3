"""The pipeline end to end: throughput per destination, report time, memory when down.

Three figures, each in its own section of the output:

1. Throughput, spans per second from the first submit until the destination holds
   every span, into the local SQLite store and into the otlp, langsmith, langfuse
   and helicone adapters' local endpoints (the stand-in servers of ``tests/``,
   which decode the real wire formats). Beside each adapter, the vendor SDK's own
   throughput to the same endpoint where it has one: OpenTelemetry's
   ``BatchSpanProcessor`` + OTLP/HTTP exporter, ``langsmith.traceable`` with its
   batching client, ``langfuse.observe``. Every variant sends the same LLM span
   (model, usage, a two-message input, a short output). The servers run in this
   process, so they share its GIL with the sender: the figures compare variants on
   equal terms, they are not a server's capacity.
2. ``vigil report`` over 1,000,000 spans in the local store: the query in-process
   (``store_queries.report``) and the CLI as a user runs it (``vigil report --json``,
   a fresh process, imports included). ``benchmarks/report.py`` goes deeper.
3. Memory after 1,000,000 traced calls while the only backend (otlp) refuses every
   connection, made as fast as the application can: peak and final RSS of that
   process, what was journaled and what the queue policy dropped (both counted).

    python benchmarks/pipeline.py [--quick] [--spans 20000] [--report-spans 1000000]
                                  [--down-spans 1000000] [--only throughput,report,memory]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fault")]

MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the ISO form of the date 03/04/2025?"}]
OUTPUT = "2025-04-03 (3 April 2025, read as DD/MM/YYYY)."


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load}")


def wait_for(count: Callable[[], int], n: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while count() < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- 1. throughput ---------------------------------------------------------------------------


def llmvigil_rate(backend: dict[str, Any], count: Callable[[], int], n: int,
                  tmp: Path) -> tuple[float, float]:
    """(delivered spans/s, app-side calls/s) through llmvigil into one backend."""
    import llmvigil

    llmvigil.init(backends=[backend], store={"path": str(tmp / "vigil.db")},
                  service={"name": "bench"},
                  pipeline={"journal_dir": str(tmp / "journal"), "queue_size": 2 * n + 1000,
                            "flush_interval_s": 0.05})
    try:
        t0 = time.perf_counter()
        for i in range(n):
            with llmvigil.span("chat", kind="llm", model="claude-sonnet-4-5",
                               provider="anthropic", user_id=f"u{i % 50}") as s:
                s.set_input(MESSAGES)
                s.set_usage(input_tokens=120, output_tokens=30)
                s.set_output(OUTPUT)
        submitted = time.perf_counter() - t0
        done = wait_for(count, n, timeout_s=max(120, n / 200))
        elapsed = time.perf_counter() - t0
    finally:
        llmvigil.shutdown(timeout=30)
    return (n / elapsed if done else float("nan")), n / submitted


def otel_rate(endpoint: str, count: Callable[[], int], n: int) -> tuple[float, float]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, timeout=10), max_queue_size=2 * n + 1000,
        max_export_batch_size=512, schedule_delay_millis=50))
    tracer = provider.get_tracer("bench")
    messages = json.dumps(MESSAGES)
    t0 = time.perf_counter()
    for i in range(n):
        with tracer.start_as_current_span("chat", kind=SpanKind.CLIENT) as s:
            s.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5", "user.id": f"u{i % 50}",
                "gen_ai.input.messages": messages, "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30, "gen_ai.output.messages": OUTPUT})
    submitted = time.perf_counter() - t0
    provider.force_flush(120_000)
    done = wait_for(count, n, timeout_s=max(120, n / 200))
    elapsed = time.perf_counter() - t0
    provider.shutdown()
    return (n / elapsed if done else float("nan")), n / submitted


def langsmith_rate(server: Any, n: int) -> tuple[float, float]:
    import langsmith
    from langsmith import schemas

    os.environ["LANGSMITH_TRACING"] = "true"
    # The SDK's defaults as the real /info gives them (the stand-in's /info has only
    # two of the keys, and the SDK's batching thread dies on the missing size_limit).
    config = schemas.BatchIngestConfig(
        use_multipart_endpoint=True, scale_up_qsize_trigger=1000, scale_up_nthreads_limit=16,
        scale_down_nempty_trigger=4, size_limit=100, size_limit_bytes=20_971_520)
    client = langsmith.Client(api_url=server.url, api_key=server.api_key,
                              auto_batch_tracing=True,
                              info=schemas.LangSmithInfo(batch_ingest_config=config))

    @langsmith.traceable(run_type="llm", name="chat", client=client, project_name="bench",
                         metadata={"ls_provider": "anthropic",
                                   "ls_model_name": "claude-sonnet-4-5"})
    def chat(messages: list[dict[str, str]], user: str) -> dict[str, Any]:
        return {"output": OUTPUT,
                "usage_metadata": {"input_tokens": 120, "output_tokens": 30,
                                   "total_tokens": 150}}

    t0 = time.perf_counter()
    for i in range(n):
        chat(MESSAGES, f"u{i % 50}")
    submitted = time.perf_counter() - t0
    client.flush()
    done = wait_for(lambda: len(server.runs), n, timeout_s=max(120, n / 200))
    elapsed = time.perf_counter() - t0
    client.cleanup()
    return (n / elapsed if done else float("nan")), n / submitted


def langfuse_rate(server: Any, n: int) -> tuple[float, float]:
    from langfuse import Langfuse, observe

    client = Langfuse(public_key=server.public_key, secret_key=server.secret_key,
                      host=server.url, flush_at=512, flush_interval=0.05)

    @observe(name="chat", as_type="generation")
    def chat(messages: list[dict[str, str]], user: str) -> str:
        client.update_current_generation(
            model="claude-sonnet-4-5", usage_details={"input": 120, "output": 30})
        return OUTPUT

    t0 = time.perf_counter()
    for i in range(n):
        chat(MESSAGES, f"u{i % 50}")
    submitted = time.perf_counter() - t0
    client.flush()
    done = wait_for(lambda: len(server.span_ids()), n, timeout_s=max(120, n / 200))
    elapsed = time.perf_counter() - t0
    client.shutdown()
    return (n / elapsed if done else float("nan")), n / submitted


@contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def throughput(n: int) -> list[tuple[str, str, float, float]]:
    """Rows of (destination, sender, delivered/s, app calls/s)."""
    rows: list[tuple[str, str, float, float]] = []

    def run(destination: str, sender: str, fn: Callable[[], tuple[float, float]]) -> None:
        try:
            delivered, calls = fn()
        except Exception as exc:  # an SDK or server missing: say so, keep going
            print(f"  {destination} / {sender}: skipped ({type(exc).__name__}: {exc})")
            return
        rows.append((destination, sender, delivered, calls))
        print(f"  {destination:10} {sender:28} {delivered:10,.0f} {calls:12,.0f}", flush=True)

    print(f"\n1. throughput, {n:,} LLM spans per run")
    print(f"  {'into':10} {'sender':28} {'spans/s':>10} {'app calls/s':>12}")

    with scratch() as tmp:
        from llmvigil.adapters.local import LocalStore

        db = tmp / "vigil.db"
        LocalStore(db).close()
        reader = LocalStore(db)
        run("local", "llmvigil", lambda: llmvigil_rate(
            {"name": "local"}, lambda: reader.count("spans"), n, tmp))
        reader.close()

    try:
        from fault_servers import FaultyCollector
    except Exception as exc:
        print(f"  otlp: skipped ({exc})")
    else:
        otlp = FaultyCollector()
        with scratch() as tmp:
            run("otlp", "llmvigil", partial(
                llmvigil_rate, {"name": "otlp", "endpoint": otlp.endpoint,
                                "redaction": "full"}, otlp.distinct, n, tmp))
        otlp.stop()
        otlp = FaultyCollector()
        run("otlp", "BatchSpanProcessor", partial(otel_rate, otlp.endpoint, otlp.distinct, n))
        otlp.stop()

    try:
        from langsmith_server import LangSmithServer
    except Exception as exc:
        print(f"  langsmith: skipped ({exc})")
    else:
        with LangSmithServer() as ls, scratch() as tmp:
            run("langsmith", "llmvigil", partial(
                llmvigil_rate, {"name": "langsmith", "api_key": ls.api_key,
                                "endpoint": ls.url, "project": "bench", "redaction": "full"},
                partial(len, ls.runs), n, tmp))
        with LangSmithServer() as ls:
            run("langsmith", "langsmith.traceable", partial(langsmith_rate, ls, n))

    try:
        from langfuse_server import LangfuseServer
    except Exception as exc:
        print(f"  langfuse: skipped ({exc})")
    else:
        lf = LangfuseServer()
        with scratch() as tmp:
            run("langfuse", "llmvigil", partial(
                llmvigil_rate, {"name": "langfuse", "public_key": lf.public_key,
                                "secret_key": lf.secret_key, "host": lf.url,
                                "redaction": "full"},
                lambda: len(lf.span_ids()), n, tmp))
        lf.close()
        lf = LangfuseServer()
        run("langfuse", "langfuse.observe", partial(langfuse_rate, lf, n))
        lf.close()

    try:
        from helicone_server import API_KEY, HeliconeServer
    except Exception as exc:
        print(f"  helicone: skipped ({exc})")
    else:
        hs = HeliconeServer().start()
        with scratch() as tmp:
            run("helicone", "llmvigil", partial(
                llmvigil_rate, {"name": "helicone", "api_key": API_KEY, "base_url": hs.url,
                                "api_url": hs.url, "redaction": "full"},
                partial(len, hs.logs), n, tmp))
        hs.stop()
    print("  (helicone: no vendor SDK sends custom logs in bulk; phoenix needs its own "
          "server virtualenv, see tests/phoenix_server.py; wandb has no local endpoint)")
    by_dest: dict[str, dict[str, float]] = {}
    for dest, sender, delivered, _ in rows:
        by_dest.setdefault(dest, {})[sender] = delivered
    for dest, senders in by_dest.items():
        mine = senders.get("llmvigil")
        for sender, rate in senders.items():
            if sender != "llmvigil" and mine:
                print(f"  {dest}: llmvigil / {sender} = {mine / rate:.2f}x")
    return rows


# -- 2. vigil report over a million spans ------------------------------------------------------


def fill_store(db: Path, n: int) -> float:
    """Write ``n`` spans of a week of traffic (features, models, usage, errors) to ``db``."""
    from llmvigil.adapters.local import LocalStore
    from llmvigil.core.model import Span, StreamStats, Usage, new_span_id, new_trace_id

    rng = random.Random(7)
    features = ["search", "summarise", "extract", "chat", "translate", None]
    models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
    now = time.time_ns()
    t0 = time.perf_counter()
    with LocalStore(db) as store:
        batch: list[Span] = []
        for i in range(n // 2):
            trace = new_trace_id()
            start = now - rng.randrange(7 * 86400 * 10**9)
            feature = features[i % len(features)]
            root = Span(id=trace[:16], trace_id=trace, name=f"handle_{feature}",
                        kind="chain", start_ns=start,
                        end_ns=start + int(rng.lognormvariate(0, 0.6) * 1e9),
                        status="error" if rng.random() < 0.02 else "ok", feature=feature,
                        user_id=f"u{rng.randrange(10_000)}")
            llm = Span(id=new_span_id(), trace_id=trace, parent_id=root.id, name="messages",
                       kind="llm", start_ns=start + 1_000_000, end_ns=root.end_ns - 1_000_000,
                       status="ok", model=models[i % 3], provider="anthropic",
                       feature=feature, usage=Usage(input_tokens=rng.randrange(50, 4000),
                                                    output_tokens=rng.randrange(10, 800)),
                       cost_usd=rng.random() / 100, ttft_s=rng.random(),
                       stream=StreamStats(items=40, n=39, mean_s=0.02, p50_s=0.02,
                                          p95_s=0.05, max_s=0.2))
            batch += (root, llm)
            if len(batch) >= 20_000:
                store.write(batch)
                batch = []
        store.write(batch)
    return time.perf_counter() - t0


def report_time(n: int, repeats: int) -> None:
    try:  # what `vigil report` runs; older trees only have store_queries.report
        from llmvigil.core.report import build_report as query
        name = "report.build_report"
    except ImportError:
        from llmvigil.core.store_queries import report as query
        name = "store_queries.report"

    print(f"\n2. `vigil report` over {n:,} spans in the local store")
    with scratch() as tmp:
        db = tmp / "vigil.db"
        fill_s = fill_store(db, n)
        print(f"  store filled in {fill_s:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            query(db)
            times.append(time.perf_counter() - t0)
        print(f"  {name} in-process: best {min(times):.2f} s, worst {max(times):.2f} s "
              f"over {repeats} runs")
        cli = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", "report",
                                   "--json", "--store", str(db)], capture_output=True,
                                  cwd=tmp, timeout=600)
            cli.append(time.perf_counter() - t0)
            if done.returncode:
                print(f"  vigil report failed: {done.stderr.decode()[-500:]}")
                return
        requests = json.loads(done.stdout).get("totals", {}).get("requests", "?")
        print(f"  `vigil report --json` (fresh process, imports included): best "
              f"{min(cli):.2f} s, worst {max(cli):.2f} s ({requests} requests reported)")


# -- 3. memory after a million spans with the backend down -----------------------------------

DOWN_CHILD = textwrap.dedent("""
    import json, sys, time
    import llmvigil
    from llmvigil.core.runtime import get_runtime
    n, url, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    def rss_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 1e6
    def peak_mb():  # VmHWM, not ru_maxrss: that one keeps the parent's peak across exec
        with open("/proc/self/status") as fh:
            line = next(l for l in fh if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1e3
    llmvigil.init(backends=[{"name": "otlp", "endpoint": url, "timeout_s": 1}],
                  store={"path": tmp + "/vigil.db"},
                  pipeline={"journal_dir": tmp + "/journal", "journal_max_bytes": "2GB"})
    rt = get_runtime()
    before = rss_mb()
    peak_queue = 0
    t0 = time.perf_counter()
    for i in range(n):
        with llmvigil.span("chat", kind="llm", model="claude-sonnet-4-5") as s:
            s.set_input(["What is the ISO form of 03/04/2025?"])
            s.set_usage(input_tokens=120, output_tokens=30)
            s.set_output("2025-04-03")
        if i % 10_000 == 0:
            peak_queue = max(peak_queue, len(rt.pipeline._queue))
    produced_s = time.perf_counter() - t0
    at_end = rss_mb()
    llmvigil.flush(600)
    drained_s = time.perf_counter() - t0
    status = rt.pipeline.status()
    box = status["backends"]["otlp"]
    print(json.dumps({
        "rss_before_mb": before, "rss_after_calls_mb": at_end, "rss_after_flush_mb": rss_mb(),
        "max_rss_mb": peak_mb(),
        "produced_s": produced_s, "drained_s": drained_s, "peak_queue": peak_queue,
        "queue_size": status["queue_size"], "dropped_queue_full": status["dropped_queue_full"],
        "journaled": box["journaled"], "journal_mb": box["journal_bytes"] / 1e6,
        "dropped": box["dropped"], "delivered": box["delivered"]}))
    llmvigil.shutdown(60)
""")


def memory_when_down(n: int) -> None:
    from fault_servers import free_port

    print(f"\n3. memory after {n:,} traced calls with the only backend (otlp) refusing "
          "connections")
    with scratch() as tmp:
        url = f"http://127.0.0.1:{free_port()}/v1/traces"
        done = subprocess.run([sys.executable, "-c", DOWN_CHILD, str(n), url, str(tmp)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode:
            print(f"  failed: {done.stderr[-1500:]}")
            return
        m = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  calls made in {m['produced_s']:.1f} s ({n / m['produced_s']:,.0f}/s); "
          f"queue drained into the journal after {m['drained_s']:.1f} s")
    print(f"  RSS {m['rss_before_mb']:.0f} MB at start, {m['rss_after_calls_mb']:.0f} MB "
          f"after the calls, {m['rss_after_flush_mb']:.0f} MB after the flush, peak "
          f"{m['max_rss_mb']:.0f} MB (queue peak {m['peak_queue']:,} of {m['queue_size']:,})")
    print(f"  journaled {m['journaled']:,} records ({m['journal_mb']:.0f} MB on disk); "
          f"dropped by the queue policy {m['dropped_queue_full']:,} (counted); "
          f"delivered {m['delivered']:,}, dropped by the journal {m['dropped']:,}")


def main() -> None:
    # The SDKs and the refusing backend would log every failed or retried export.
    logging.basicConfig(level=logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (about a minute)")
    parser.add_argument("--spans", type=int, help="spans per throughput run (20,000)")
    parser.add_argument("--report-spans", type=int, help="spans in the report store (1e6)")
    parser.add_argument("--down-spans", type=int, help="calls with the backend down (1e6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="throughput,report,memory")
    args = parser.parse_args()
    spans = args.spans or (2_000 if args.quick else 20_000)
    report_spans = args.report_spans or (100_000 if args.quick else 1_000_000)
    down_spans = args.down_spans or (100_000 if args.quick else 1_000_000)
    only = set(args.only.split(","))
    print(machine())
    t0 = time.perf_counter()
    if "throughput" in only:
        throughput(spans)
    if "report" in only:
        report_time(report_spans, args.repeats)
    if "memory" in only:
        memory_when_down(down_spans)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s (child processes used "
          f"{used.ru_utime + used.ru_stime:.0f} s of CPU)")


if __name__ == "__main__":
    main()
