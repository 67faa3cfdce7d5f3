"""The pipeline end to end: throughput per destination, report time, memory when down.

Three figures, each in its own section of the output:

1. Throughput, spans per second from the first submit until the destination holds
   every span, into the local SQLite store and into the otlp, langsmith, langfuse
   and helicone adapters' local endpoints (the stand-in servers of ``tests/``,
   which decode the real wire formats). Beside each adapter, the vendor SDK's own
   throughput to the same endpoint where it has one: OpenTelemetry's
   ``BatchSpanProcessor`` + OTLP/HTTP exporter, ``langsmith.traceable`` with its
   batching client, ``langfuse.observe``. Every variant sends the same LLM span
   (model, usage, a two-message input, a short output). The stand-in servers run
   in this process, so they share its GIL with the sender: the figures compare
   variants on equal terms, they are not a server's capacity. Every sender's queue
   holds the whole run (the SDKs' defaults, 10,000 for langsmith and OTel's 2,048 for
   langfuse, drop part of it); a sender that delivers less gets no rate, and the
   count that arrived is printed.

   Two more destinations are real vendor software:

   * **phoenix**: a real Phoenix server (``phoenix serve`` from ``.venv-phoenix``,
     made by ``scripts/phoenix-venv.sh``, started as ``tests/phoenix_server.py``
     does; skipped with the reason when it is absent), in its own process. Beside
     the ``phoenix`` adapter, Phoenix's own path: ``phoenix.otel.register(...,
     batch=True)`` and an OpenInference LLM span (``openinference_span_kind="llm"``,
     ``set_input``/``set_output`` and ``get_llm_attributes``), its
     ``BatchSpanProcessor`` given the same queue, batch size and delay as the OTel
     variant above (through the ``OTEL_BSP_*`` variables it reads). Each variant
     writes to its own Phoenix project; the spans held are counted by paging the
     project's spans through Phoenix's REST API (``GET /v1/projects/{p}/spans``,
     insertion order, each poll reading only what is new, once a second so the
     reads do not slow the server down), with a deadline. Phoenix answers an OTLP
     export once the spans are queued and stores them 100 per SQLite transaction,
     so its rate is the server's: a note line after the rows gives, per sender,
     when Phoenix had accepted every span and when it held them all. 200 spans
     into another project warm the fresh server up before either variant runs.
   * **wandb**: the ``wandb`` adapter in offline mode, beside a plain
     ``wandb.init(mode="offline")`` that logs the same per-span data either as one
     ``run.log`` history row per span or as a ``wandb.Table`` of the adapter's
     columns per 512 spans (the adapter's batch size). All wandb directories are
     in a temp dir and every run has the adapter's settings (console capture and
     system metrics off). The clock runs from before the run starts (the adapter
     starts it at its first export) until the run is finished and its files are
     written (``run.finish()``; ``llmvigil.flush`` then ``llmvigil.shutdown`` for
     the adapter); the rows are then read back from the run's ``.wandb`` log
     (``wandb leet inspect --json``, wandb's own reader) and table files, and a
     run short of rows, or without its exit record, reports no rate. The wandb
     service process is started before either run, so neither pays for it.
2. ``vigil report`` over 1,000,000 spans in the local store: the query in-process
   (``store_queries.report``) and the CLI as a user runs it (``vigil report --json``,
   a fresh process, imports included). ``benchmarks/report.py`` goes deeper.
3. Memory after 1,000,000 traced calls while the only backend (otlp) refuses every
   connection, made as fast as the application can: peak and final RSS of that
   process, what was journaled and what the queue policy dropped (both counted).

    python benchmarks/pipeline.py [--quick] [--spans 20000] [--report-spans 1000000]
                                  [--down-spans 1000000] [--only throughput,report,memory]
                                  [--to local,otlp,langsmith,langfuse,helicone,phoenix,wandb]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
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
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from _bench import machine

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fault")]

MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the ISO form of the date 03/04/2025?"}]
OUTPUT = "2025-04-03 (3 April 2025, read as DD/MM/YYYY)."


def wait_for(count: Callable[[], int], n: int, timeout_s: float, sender: str) -> bool:
    """Whether the destination holds ``n`` spans within ``timeout_s``; when it does not,
    says how many arrived (a sender that drops spans gets no rate, and the reader sees
    why)."""
    deadline = time.monotonic() + timeout_s
    while (held := count()) < n:
        if time.monotonic() > deadline:
            print(f"  ({sender}: {held:,} of {n:,} spans arrived within {timeout_s:.0f} s)")
            return False
        time.sleep(0.005)
    return True


# -- 1. throughput ---------------------------------------------------------------------------


def llmvigil_init(backend: dict[str, Any], n: int, tmp: Path) -> None:
    """Start llmvigil with one backend and a queue that holds every span of the run."""
    import llmvigil

    llmvigil.init(backends=[backend], store={"path": str(tmp / "vigil.db")},
                  service={"name": "bench"},
                  pipeline={"journal_dir": str(tmp / "journal"), "queue_size": 2 * n + 1000,
                            "flush_interval_s": 0.05})


def llmvigil_calls(n: int) -> None:
    """The application side: ``n`` traced LLM calls, as fast as they can be made."""
    import llmvigil

    for i in range(n):
        with llmvigil.span("chat", kind="llm", model="claude-sonnet-4-5",
                           provider="anthropic", user_id=f"u{i % 50}") as s:
            s.set_input(MESSAGES)
            s.set_usage(input_tokens=120, output_tokens=30)
            s.set_output(OUTPUT)


def llmvigil_rate(backend: dict[str, Any], count: Callable[[], int], n: int,
                  tmp: Path, timeout_s: float | None = None) -> tuple[float, float]:
    """(delivered spans/s, app-side calls/s) through llmvigil into one backend."""
    import llmvigil

    llmvigil_init(backend, n, tmp)
    try:
        t0 = time.perf_counter()
        llmvigil_calls(n)
        submitted = time.perf_counter() - t0
        done = wait_for(count, n, timeout_s or max(120, n / 200), "llmvigil")
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
    done = wait_for(count, n, max(120, n / 200), "BatchSpanProcessor")
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
    # A tracing queue that holds every span of the run, as llmvigil's and the OTel
    # variant's do (the SDK's default of 10,000 drops the rest of a burst).
    with environ({"LANGSMITH_TRACING_QUEUE_MAX_SIZE": str(2 * n + 1000)}):
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
    done = wait_for(lambda: len(server.runs), n, max(120, n / 200), "langsmith.traceable")
    elapsed = time.perf_counter() - t0
    client.cleanup()
    return (n / elapsed if done else float("nan")), n / submitted


def langfuse_rate(server: Any, n: int) -> tuple[float, float]:
    from langfuse import Langfuse, observe

    # A span queue that holds every span of the run, as llmvigil's does (the OTel
    # default of 2,048 drops the rest of a burst without an error).
    with environ({"OTEL_BSP_MAX_QUEUE_SIZE": str(2 * n + 1000)}):
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
    done = wait_for(lambda: len(server.span_ids()), n, max(120, n / 200), "langfuse.observe")
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


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: ``run(destination, sender, fn)``: measures one variant and prints its row.
Runner = Callable[[str, str, Callable[[], tuple[float, float]]], None]


# -- phoenix: a real server, in its own virtualenv and process ------------------------------


class PhoenixSpans:
    """Counts the spans a Phoenix project holds, through Phoenix's REST API.

    Pages ``GET /v1/projects/{project}/spans`` in insertion order and keeps its place,
    so each poll reads only the spans stored since the last one; polls at most every
    ``interval_s`` (a poll in between returns the last count).
    """

    def __init__(self, url: str, project: str, interval_s: float = 1.0) -> None:
        import httpx

        self._http = httpx.Client(base_url=url, timeout=60)
        self._path = f"v1/projects/{project}/spans"
        self._cursor: str | None = None
        self._ids: set[str] = set()
        self._interval_s = interval_s
        self._next_poll = 0.0

    def __call__(self) -> int:
        now = time.monotonic()
        if now < self._next_poll:
            return len(self._ids)
        self._next_poll = now + self._interval_s
        while True:
            params = {"limit": 1000, "sort": "id", "order": "asc"}
            if self._cursor:
                params["cursor"] = self._cursor
            response = self._http.get(self._path, params=params)
            if response.status_code == 404:  # no span yet: Phoenix makes the project then
                return 0
            response.raise_for_status()
            body = response.json()
            self._ids.update(s["context"]["span_id"] for s in body["data"])
            if body.get("next_cursor"):
                self._cursor = body["next_cursor"]
                continue
            if body["data"]:  # the cursor is inclusive: the next poll starts at the last
                self._cursor = body["data"][-1]["id"]
            return len(self._ids)

    def close(self) -> None:
        self._http.close()


def llmvigil_phoenix_rate(url: str, project: str, n: int, tmp: Path, timeout_s: float,
                          notes: list[str]) -> tuple[float, float]:
    """The ``phoenix`` adapter: rate until Phoenix holds every span; notes when it took them."""
    import llmvigil

    count = PhoenixSpans(url, project)
    llmvigil_init({"name": "phoenix", "endpoint": url, "project": project,
                   "redaction": "full"}, n, tmp)
    try:
        t0 = time.perf_counter()
        llmvigil_calls(n)
        submitted = time.perf_counter() - t0
        accepted = llmvigil.flush(timeout_s)  # every export answered 2xx by Phoenix
        accepted_s = time.perf_counter() - t0
        done = wait_for(count, n, timeout_s, "phoenix, llmvigil")
        elapsed = time.perf_counter() - t0
    finally:
        llmvigil.shutdown(timeout=30)
        count.close()
    if accepted:
        notes.append(f"llmvigil: Phoenix accepted every span after {accepted_s:.1f} s "
                     f"({n / accepted_s:,.0f}/s), held them all after {elapsed:.1f} s")
    return (n / elapsed if done else float("nan")), n / submitted


def phoenix_otel_rate(url: str, project: str, n: int, timeout_s: float,
                      notes: list[str]) -> tuple[float, float]:
    """Phoenix's own path: ``phoenix.otel.register(batch=True)`` and OpenInference spans."""
    from openinference.instrumentation import get_llm_attributes, get_user_id_attributes
    from phoenix.otel import register

    # The same queue, batch and delay as the plain OTel variant (the SDK reads these).
    bsp = {"OTEL_BSP_MAX_QUEUE_SIZE": str(2 * n + 1000), "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512"}
    with environ(bsp):
        provider = register(endpoint=f"{url}/v1/traces", project_name=project, batch=True,
                            protocol="http/protobuf", set_global_tracer_provider=False,
                            verbose=False)
    tracer = provider.get_tracer("bench")
    reply = [{"role": "assistant", "content": OUTPUT}]
    count = PhoenixSpans(url, project)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            with tracer.start_as_current_span("chat", openinference_span_kind="llm") as s:
                s.set_input(MESSAGES)
                s.set_attributes(get_llm_attributes(
                    provider="anthropic", system="anthropic", model_name="claude-sonnet-4-5",
                    input_messages=MESSAGES, output_messages=reply,
                    token_count={"prompt": 120, "completion": 30, "total": 150}))
                s.set_attributes(get_user_id_attributes(user_id=f"u{i % 50}"))
                s.set_output(OUTPUT)
        submitted = time.perf_counter() - t0
        accepted = provider.force_flush(int(timeout_s * 1000))
        accepted_s = time.perf_counter() - t0
        done = wait_for(count, n, timeout_s, "phoenix, phoenix.otel")
        elapsed = time.perf_counter() - t0
    finally:
        provider.shutdown()
        count.close()
    if accepted:
        notes.append(f"phoenix.otel: Phoenix accepted every span after {accepted_s:.1f} s "
                     f"({n / accepted_s:,.0f}/s), held them all after {elapsed:.1f} s")
    return (n / elapsed if done else float("nan")), n / submitted


def phoenix_throughput(run: Runner, n: int) -> None:
    """The phoenix rows: the adapter and ``phoenix.otel`` into one real Phoenix server."""
    try:
        from phoenix_server import PHOENIX_PYTHON, start_phoenix, stop_phoenix
    except Exception as exc:
        print(f"  phoenix: skipped ({type(exc).__name__}: {exc})")
        return
    if not PHOENIX_PYTHON.exists():
        print(f"  phoenix: skipped (no Phoenix server: {PHOENIX_PYTHON} is missing; "
              "run scripts/phoenix-venv.sh)")
        return
    timeout_s = max(180, n / 25)
    with scratch() as tmp:
        try:
            server = start_phoenix(tmp / "phoenix")
        except RuntimeError as exc:
            print(f"  phoenix: skipped (the server did not start: {str(exc)[-300:]})")
            return
        try:
            url, tag = server.url, os.urandom(3).hex()
            notes: list[str] = []
            for sub in ("warm-up", "llmvigil"):
                (tmp / sub).mkdir()
            # A fresh server is slower on its first spans: neither variant should pay it.
            llmvigil_phoenix_rate(url, f"bench-warm-up-{tag}", 200, tmp / "warm-up", 120, [])
            run("phoenix", "llmvigil", partial(
                llmvigil_phoenix_rate, url, f"bench-llmvigil-{tag}", n, tmp / "llmvigil",
                timeout_s, notes))
            run("phoenix", "phoenix.otel batch", partial(
                phoenix_otel_rate, url, f"bench-phoenix-otel-{tag}", n, timeout_s, notes))
            for note in notes:
                print(f"  (phoenix, {note})")
        finally:
            stop_phoenix(server)


# -- wandb: offline runs, read back from their files ------------------------------------------


def wandb_rows(root: Path, key: str) -> tuple[int, bool]:
    """(rows logged under ``key``, whether the run finished) of the one run under ``root``.

    Reads the run's ``.wandb`` transaction log with wandb's own reader and counts a
    history row holding ``key`` as one row, a table logged under ``key`` as its rows
    (from the table file in the run's ``files/``).
    """
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    log = next(run_dir.glob("run-*.wandb"))
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                          str(log)], capture_output=True, text=True, timeout=600, check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    rows = 0
    for record in records:
        if record["type"] != "history":
            continue
        item = record["history"]["item"]
        if item.get(f"{key}._type") == "table-file":
            table = json.loads((run_dir / "files" / item[f"{key}.path"]).read_text())
            rows += len(table["data"])
        elif key in item:
            rows += 1
    return rows, bool(records) and records[-1]["type"] == "exit"


def wandb_settings() -> Any:
    """The settings the adapter gives its run (console capture, system metrics off)."""
    import wandb

    return wandb.Settings(silent=True, console="off", x_disable_stats=True,
                          save_code=False, disable_git=True, x_save_requirements=False)


def llmvigil_wandb_rate(root: Path, n: int, tmp: Path) -> tuple[float, float]:
    """The ``wandb`` adapter, offline: rate until the run is finished on disk."""
    import llmvigil

    llmvigil_init({"name": "wandb", "mode": "offline", "project": "bench",
                   "dir": str(root), "timeout_s": 60}, n, tmp)
    try:
        t0 = time.perf_counter()
        llmvigil_calls(n)
        submitted = time.perf_counter() - t0
        flushed = llmvigil.flush(max(120, n / 200))
    finally:
        llmvigil.shutdown(timeout=max(120, n / 200))
    elapsed = time.perf_counter() - t0
    rows, finished = wandb_rows(root, "llmvigil/spans")
    if not (flushed and finished and rows == n):
        print(f"  wandb / llmvigil: {rows:,} of {n:,} rows read back "
              f"(flushed: {flushed}, run finished: {finished})")
        return float("nan"), n / submitted
    return n / elapsed, n / submitted


def wandb_plain_rate(root: Path, n: int, table_rows: int) -> tuple[float, float]:
    """A plain offline run: one ``run.log`` per span, or a ``wandb.Table`` per batch."""
    import wandb
    from llmvigil.adapters.wandb import SPAN_COLUMNS

    messages = json.dumps(MESSAGES, ensure_ascii=False, sort_keys=True)
    key = "spans" if table_rows else "span/span_id"
    t0 = time.perf_counter()
    run = wandb.init(mode="offline", project="bench", dir=str(root), reinit="create_new",
                     settings=wandb_settings())
    batch: list[list[Any]] = []
    for i in range(n):
        start = time.time_ns()
        end = time.time_ns()
        row = [os.urandom(16).hex(), os.urandom(8).hex(), None, "chat", "llm",
               "claude-sonnet-4-5", "anthropic",
               datetime.fromtimestamp(start / 1e9, tz=timezone.utc).isoformat(
                   timespec="milliseconds"),
               (end - start) / 1e9, None, 120, 30, 0, 0, None, f"u{i % 50}", None, None,
               None, None, "ok", None, "", None, messages, OUTPUT]
        if not table_rows:
            run.log({f"span/{c}": v for c, v in zip(SPAN_COLUMNS, row, strict=True)})
            continue
        batch.append(row)
        if len(batch) == table_rows or i == n - 1:
            run.log({"spans": wandb.Table(columns=list(SPAN_COLUMNS), data=batch,
                                          allow_mixed_types=True)})
            batch = []
    submitted = time.perf_counter() - t0
    run.finish()
    elapsed = time.perf_counter() - t0
    rows, finished = wandb_rows(root, key)
    if not (finished and rows == n):
        print(f"  wandb / plain: {rows:,} of {n:,} rows read back (run finished: {finished})")
        return float("nan"), n / submitted
    return n / elapsed, n / submitted


def wandb_throughput(run: Runner, n: int) -> None:
    """The wandb rows: the adapter and plain wandb runs, all offline, in a temp dir."""
    try:
        import wandb
    except ImportError as exc:
        print(f"  wandb: skipped ({exc})")
        return
    with scratch() as tmp:
        dirs = {v: tmp / "env" / v.lower() for v in ("WANDB_DIR", "WANDB_CACHE_DIR",
                                                      "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")}
        for path in dirs.values():
            path.mkdir(parents=True)
        env = {**{k: str(v) for k, v in dirs.items()}, "WANDB_MODE": "offline",
               "WANDB_SILENT": "true"}
        with environ(env):
            wandb.setup()  # the wandb-core service: started once, before every run
            try:
                run("wandb", "llmvigil", partial(llmvigil_wandb_rate, tmp / "llmvigil", n,
                                                 tmp))
                run("wandb", "wandb run.log per span", partial(
                    wandb_plain_rate, tmp / "plain-log", n, 0))
                run("wandb", "wandb.Table per 512", partial(
                    wandb_plain_rate, tmp / "plain-table", n, 512))
            finally:
                wandb.teardown()


def otlp_throughput(run: Runner, n: int) -> None:
    """The otlp rows: the adapter and OpenTelemetry's BatchSpanProcessor."""
    try:
        from fault_servers import FaultyCollector
    except Exception as exc:
        print(f"  otlp: skipped ({exc})")
        return
    otlp = FaultyCollector()
    with scratch() as tmp:
        run("otlp", "llmvigil", partial(
            llmvigil_rate, {"name": "otlp", "endpoint": otlp.endpoint,
                            "redaction": "full"}, otlp.distinct, n, tmp))
    otlp.stop()
    otlp = FaultyCollector()
    run("otlp", "BatchSpanProcessor", partial(otel_rate, otlp.endpoint, otlp.distinct, n))
    otlp.stop()


def langsmith_throughput(run: Runner, n: int) -> None:
    """The langsmith rows: the adapter and ``langsmith.traceable``."""
    try:
        from langsmith_server import LangSmithServer
    except Exception as exc:
        print(f"  langsmith: skipped ({exc})")
        return
    with LangSmithServer() as ls, scratch() as tmp:
        run("langsmith", "llmvigil", partial(
            llmvigil_rate, {"name": "langsmith", "api_key": ls.api_key,
                            "endpoint": ls.url, "project": "bench", "redaction": "full"},
            partial(len, ls.runs), n, tmp))
    with LangSmithServer() as ls:
        run("langsmith", "langsmith.traceable", partial(langsmith_rate, ls, n))


def langfuse_throughput(run: Runner, n: int) -> None:
    """The langfuse rows: the adapter and ``langfuse.observe``."""
    try:
        from langfuse_server import LangfuseServer
    except Exception as exc:
        print(f"  langfuse: skipped ({exc})")
        return
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


def helicone_throughput(run: Runner, n: int) -> None:
    """The helicone row: the adapter only."""
    try:
        from helicone_server import API_KEY, HeliconeServer
    except Exception as exc:
        print(f"  helicone: skipped ({exc})")
        return
    hs = HeliconeServer().start()
    with scratch() as tmp:
        run("helicone", "llmvigil", partial(
            llmvigil_rate, {"name": "helicone", "api_key": API_KEY, "base_url": hs.url,
                            "api_url": hs.url, "redaction": "full"},
            partial(len, hs.logs), n, tmp))
    hs.stop()


DESTINATIONS = ("local", "otlp", "langsmith", "langfuse", "helicone", "phoenix", "wandb")


def throughput(n: int, to: set[str]) -> list[tuple[str, str, float, float]]:
    """Rows of (destination, sender, delivered/s, app calls/s) for the destinations ``to``."""
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

    if "local" in to:
        with scratch() as tmp:
            from llmvigil.adapters.local import LocalStore

            db = tmp / "vigil.db"
            LocalStore(db).close()
            reader = LocalStore(db)
            run("local", "llmvigil", lambda: llmvigil_rate(
                {"name": "local"}, lambda: reader.count("spans"), n, tmp))
            reader.close()
    if "otlp" in to:
        otlp_throughput(run, n)
    if "langsmith" in to:
        langsmith_throughput(run, n)
    if "langfuse" in to:
        langfuse_throughput(run, n)
    if "helicone" in to:
        helicone_throughput(run, n)
        print("  (helicone: no vendor SDK sends custom logs in bulk)")
    if "phoenix" in to:
        phoenix_throughput(run, n)
    if "wandb" in to:
        wandb_throughput(run, n)
    by_dest: dict[str, dict[str, float]] = {}
    for dest, sender, delivered, _ in rows:
        by_dest.setdefault(dest, {})[sender] = delivered
    for dest, senders in by_dest.items():
        mine = senders.get("llmvigil")
        for sender, rate in senders.items():
            if sender == "llmvigil" or not mine:
                continue
            ratio = "n/a (not every span arrived)" if math.isnan(rate) else f"{mine / rate:.2f}x"
            print(f"  {dest}: llmvigil / {sender} = {ratio}")
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
    parser.add_argument("--to", default=",".join(DESTINATIONS),
                        help="throughput destinations (default: all)")
    args = parser.parse_args()
    spans = args.spans or (2_000 if args.quick else 20_000)
    report_spans = args.report_spans or (100_000 if args.quick else 1_000_000)
    down_spans = args.down_spans or (100_000 if args.quick else 1_000_000)
    only = set(args.only.split(","))
    print(machine())
    t0 = time.perf_counter()
    if "throughput" in only:
        throughput(spans, set(args.to.split(",")))
    if "report" in only:
        report_time(report_spans, args.repeats)
    if "memory" in only:
        memory_when_down(down_spans)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s (child processes used "
          f"{used.ru_utime + used.ru_stime:.0f} s of CPU)")


if __name__ == "__main__":
    main()
