"""Spans per second through ``vigil serve``, with one collector process and with two.

Each run starts the collector(s) as separate processes (what ``vigil serve`` runs),
pre-builds OTLP protobuf export requests of realistic GenAI spans (model, usage,
user, session, ~400 bytes of messages each; ``--batch`` spans per request, like the
SDK's BatchSpanProcessor), and has one sender process per collector POST them over
a keep-alive connection, honouring ``503 Retry-After``. Two figures per run:

* accepted/s: spans answered ``200`` per second (decode + map + enqueue);
* stored/s: spans per second until the store holds every one of them (the whole
  pipeline: redaction, the monitors, batched upserts).

Stores: the local SQLite file (shared by the collectors) always; PostgreSQL too when
``VIGIL_PG_DSN`` is set and the ``postgres`` backend (``adapters/postgres.py``) is
importable, each run in a fresh schema dropped afterwards. The last line per store
prints the two-collector / one-collector ratio.

    python benchmarks/collector.py [--spans 40000] [--batch 500]

Senders and collectors share the machine's cores, so the ratio is bounded by what
the machine has left, not only by the collectors. The last column, the collectors'
CPU time (user + system) per stored span, does not depend on that: one core
sustains about 1e6 / that many spans per second, and collectors share nothing but
the store, so they scale with the cores given to them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _bench import machine

_LAUNCH = r"""
import sys
from llmvigil.core.fleet.collector import run
from llmvigil.plugins.manager import get_adapter, new_plugin_manager

pm = new_plugin_manager()
if sys.argv[3] == "postgres":
    try:
        get_adapter(pm, "postgres")
    except Exception:  # not wired into the built-in plugins yet
        import llmvigil.adapters.postgres as module
        pm.register(module)
sys.exit(run(sys.argv[1], "127.0.0.1", int(sys.argv[2]), plugin_manager=pm,
             announce=lambda line: print(line, flush=True)))
"""

_SEND = r"""
import http.client, sys, time
port, paths = int(sys.argv[1]), sys.argv[2:]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
headers = {"Content-Type": "application/x-protobuf"}
retries = 0
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
for path in paths:
    body = open(path, "rb").read()
    while True:
        conn.request("POST", "/v1/traces", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            break
        if resp.status != 503:
            raise SystemExit(f"HTTP {resp.status}")
        retries += 1
        time.sleep(float(resp.getheader("Retry-After") or 1) / 10)
print(time.perf_counter() - start, retries, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_payloads(directory: Path, spans: int, batch: int) -> list[Path]:
    """Protobuf export requests of ``batch`` GenAI spans each, written to files."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def kv(key: str, value: Any) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    rng = random.Random(1)
    question = "Extract the due date from this invoice: 'Payment due 03/04/2025, ref 88-1'. "
    messages = json.dumps([{"role": "user", "parts": [{"type": "text",
                                                       "content": question * 3}]}])
    answer = json.dumps([{"role": "assistant", "parts": [
        {"type": "text", "content": "The payment is due on 3 April 2025."}]}])
    resource = Resource(attributes=[kv("service.name", "bench-app")])
    now = time.time_ns()
    paths = []
    for b in range(0, spans, batch):
        out = []
        for i in range(min(batch, spans - b)):
            start = now - rng.randrange(3_600_000_000_000)
            attrs = {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": rng.randrange(200, 2000),
                "gen_ai.usage.output_tokens": rng.randrange(10, 400),
                "user.id": f"user-{rng.randrange(500)}",
                "session.id": f"session-{rng.randrange(2000)}",
                "gen_ai.input.messages": messages, "gen_ai.output.messages": answer,
                "llmvigil.feature": rng.choice(["extract", "chat", "search"]),
            }
            out.append(Span(
                trace_id=rng.getrandbits(128).to_bytes(16, "big"),
                span_id=(rng.getrandbits(63) | 1).to_bytes(8, "big"),
                name=f"chat gpt-4o-mini {b + i}", kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=start + rng.randrange(200_000_000, 5_000_000_000),
                attributes=[kv(k, v) for k, v in attrs.items()]))
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=resource, scope_spans=[ScopeSpans(spans=out)])])
        path = directory / f"batch{b // batch:05d}.pb"
        path.write_bytes(request.SerializeToString())
        paths.append(path)
    return paths


class Store:
    """Where a run's collectors write, and how to count what arrived."""

    def __init__(self, kind: str, directory: Path, dsn: str | None = None) -> None:
        self.kind = kind
        self.directory = directory
        self.dsn = dsn
        self.schema = f"vigil_bench_{uuid.uuid4().hex[:10]}"
        self.sqlite_path = directory / "bench.db"

    def backend_yaml(self) -> str:
        if self.kind == "local":
            return f"backends: [local]\nstore: {{path: '{self.sqlite_path}'}}\n"
        return (f"backends:\n  - name: postgres\n    dsn: '{self.dsn}'\n"
                f"    schema: {self.schema}\n")

    def count(self) -> int:
        if self.kind == "local":
            if not self.sqlite_path.exists():
                return 0
            with sqlite3.connect(self.sqlite_path, timeout=30) as conn:
                try:
                    return int(conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0
        import psycopg

        with psycopg.connect(self.dsn or "", autocommit=True) as conn:
            try:
                row = conn.execute(f"SELECT COUNT(*) FROM {self.schema}.spans").fetchone()
            except psycopg.Error:
                return 0
            return int(row[0]) if row else 0

    def drop(self) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.dsn or "", autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux ``/proc``), else ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(store: Store, payloads: list[Path], collectors: int,
             total_spans: int) -> dict[str, float]:
    """One measurement: ``collectors`` collector processes, one sender each."""
    config = store.directory / "collector.yaml"
    config.write_text(
        "service: {name: bench-collector}\n" + store.backend_yaml()
        + f"pipeline: {{flush_interval_s: 0.2, queue_size: 200000, "
          f"journal_dir: '{store.directory / 'journal'}'}}\n")
    procs, ports = [], []
    try:
        for _ in range(collectors):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, str(config), str(port), store.kind],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                cwd=store.directory)
            procs.append(proc)
            ports.append(port)
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if "listening" not in line:
                raise SystemExit(f"collector did not start: {line}{proc.communicate()}")
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        senders = []
        for n, port in enumerate(ports):
            share = [str(p) for p in payloads[n::collectors]]
            senders.append(subprocess.Popen(
                [sys.executable, "-c", _SEND, str(port), *share], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True))
        for s in senders:
            assert s.stdout is not None and s.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        for s in senders:
            assert s.stdin is not None
            s.stdin.write("go\n")
            s.stdin.flush()
        accepted_s, retries = 0.0, 0
        for s in senders:
            out, _ = s.communicate(timeout=600)
            seconds, tried = out.split()
            accepted_s = max(accepted_s, float(seconds))
            retries += int(tried)
        while store.count() < total_spans:
            if time.perf_counter() - start > 900:
                raise SystemExit(f"only {store.count()} of {total_spans} spans stored")
            time.sleep(0.05)
        stored_s = time.perf_counter() - start
        cpu_after = [cpu_seconds(p.pid) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=60)
    used = [a - b for a, b in zip(cpu_after, cpu_before, strict=True)
            if a is not None and b is not None]
    cpu_us = 1e6 * sum(used) / total_spans if len(used) == collectors else float("nan")
    return {"collectors": collectors, "spans": total_spans,
            "accepted_per_s": total_spans / accepted_s,
            "stored_per_s": total_spans / stored_s, "retries_503": retries,
            "collector_cpu_us_per_span": cpu_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    stores = ["local"]
    dsn = os.environ.get("VIGIL_PG_DSN")
    if dsn:
        try:
            import llmvigil.adapters.postgres  # noqa: F401
            import psycopg  # noqa: F401

            stores.append("postgres")
        except ImportError as exc:
            print(f"PostgreSQL skipped: {exc} (pip install 'llmvigil[postgres]')")
    else:
        print("PostgreSQL skipped: set VIGIL_PG_DSN to measure it")

    print(machine())
    print(f"{args.spans} spans in batches of {args.batch}")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        root = Path(tmp)
        payload_dir = root / "payloads"
        payload_dir.mkdir()
        payloads = build_payloads(payload_dir, args.spans, args.batch)
        size = sum(p.stat().st_size for p in payloads) / len(payloads) / 1e3
        print(f"{len(payloads)} requests of {size:.0f} kB (protobuf, uncompressed)\n")
        print(f"{'store':10} {'collectors':>10} {'accepted/s':>12} {'stored/s':>10} "
              f"{'503s':>6} {'CPU us/span':>12}")
        for kind in stores:
            results = []
            for collectors in (1, 2):
                directory = root / f"{kind}-{collectors}"
                directory.mkdir()
                store = Store(kind, directory, dsn)
                try:
                    r = run_once(store, payloads, collectors, args.spans)
                finally:
                    store.drop()
                results.append(r)
                print(f"{kind:10} {collectors:>10} {r['accepted_per_s']:>12,.0f} "
                      f"{r['stored_per_s']:>10,.0f} {r['retries_503']:>6} "
                      f"{r['collector_cpu_us_per_span']:>12,.0f}", flush=True)
            one, two = results
            accepted = two["accepted_per_s"] / one["accepted_per_s"]
            stored = two["stored_per_s"] / one["stored_per_s"]
            print(f"{kind:10} {'2 vs 1':>10} {accepted:>11.2f}x {stored:>9.2f}x")


if __name__ == "__main__":
    main()
