"""``vigil report`` over 1,000,000 stored spans: how long it takes (target: under 2 s).

1. Generates a week of traffic straight into a local store with
   :meth:`LocalStore.write` in big batches: 1,000,000 spans (400,000 requests, each a
   root span and an LLM call, half of them with a retrieval span too) over six
   features (one unset), 10,000 users, streamed calls with TTFT, chat sessions with
   session events, feedback on 5% of the requests, alerts and safety verdicts.
2. Times, each the minimum (and median) of ``--repeats`` runs:

   * :func:`llmvigil.core.report.build_report` in this process (the queries and
     the numpy work), with the share of each step;
   * ``vigil report`` (rich tables), ``vigil report --json`` and
     ``vigil report --html`` as a user runs them: a fresh Python process, imports
     included. Until ``core/cli.py`` mounts :mod:`llmvigil.core.cli_report`, the
     command is run through a two-line typer app around it;
   * and, for scale, starting Python and importing the CLI alone.

The store is kept under ``--dir`` and reused by later runs (generation takes about
a minute); ``--fresh`` rebuilds it. Other processes on the machine slow every
figure down: the load average is printed with the results.

    python benchmarks/report.py [--spans 1000000] [--repeats 5] [--dir /tmp/vigil-report-bench]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bench import machine
from llmvigil.adapters.local import LocalStore
from llmvigil.core import store_queries
from llmvigil.core.model import (
    Alert,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    Usage,
)

T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
WEEK_NS = 7 * 86_400 * 10**9
FEATURES = ("extract_dates", "summarise", "classify", "chat", "search", None)
STREAMING = {"chat", "summarise"}


def generate(path: Path, spans: int, seed: int = 0, batch: int = 20_000) -> dict[str, int]:
    """Write a week of synthetic traffic holding ``spans`` spans into the store at ``path``."""
    rng = np.random.default_rng(seed)
    requests = spans * 2 // 5  # 2 spans per request, plus a third for every other one
    starts = np.sort(rng.integers(0, WEEK_NS, requests)) + T0
    durations = rng.lognormal(20.5, 0.6, requests).astype(np.int64)
    features = rng.integers(0, len(FEATURES), requests)
    users = rng.integers(0, 10_000, requests)
    errors = rng.random(requests) < 0.02
    third = np.zeros(requests, dtype=bool)
    third[: spans - 2 * requests] = True
    rng.shuffle(third)
    priced = rng.random(requests) < 0.95
    ttfts = rng.lognormal(-1.2, 0.5, requests)
    tokens_in = rng.integers(50, 4000, requests)
    tokens_out = rng.integers(10, 1200, requests)
    feedback = rng.random(requests) < 0.05
    kinds = ("thumbs_up", "thumbs_up", "thumbs_up", "thumbs_down", "rating", "correction",
             "report")
    counts = dict.fromkeys(("spans", "scores", "session_events", "alerts",
                            "safety_verdicts"), 0)
    store = LocalStore(path)
    buffer: list[Record] = []
    current: list[Any] | None = None
    planned_turns = rng.integers(1, 8, 4096)
    n_sessions = 0

    def flush() -> None:
        store.write(buffer)
        for record in buffer:
            key = {Span: "spans", Score: "scores", SessionEvent: "session_events",
                   Alert: "alerts", SafetyVerdict: "safety_verdicts"}[type(record)]
            counts[key] += 1
        buffer.clear()

    for i in range(requests):
        feature = FEATURES[features[i]]
        start, duration = int(starts[i]), int(durations[i])
        user = f"user{users[i]:05d}"
        trace = f"{i:032x}"
        root_id = f"r{i:015x}"
        session = None
        if feature == "chat":  # sessions: runs of consecutive chat requests, 1 to 7 turns
            if current is None or current[1] >= current[2]:
                n_sessions += 1
                current = [f"sess{n_sessions:07d}", 0, int(planned_turns[n_sessions % 4096]),
                           user]
                buffer.append(SessionEvent(session_id=current[0], event="start", time_ns=start,
                                           user_id=user, feature=feature))
            current[1] += 1
            session, user = current[0], current[3]
            if current[1] == current[2]:  # 3 in 5 complete, 1 abandons, 1 times out
                event = ("task_complete", "task_complete", "task_complete", "abandon",
                         None)[n_sessions % 5]
                if event is not None:
                    buffer.append(SessionEvent(session_id=session, event=event,
                                               time_ns=start + duration + 10**9))
        buffer.append(Span(
            id=root_id, trace_id=trace, name="handle", kind="chain", start_ns=start,
            end_ns=start + duration, status="error" if errors[i] else "ok", feature=feature,
            user_id=user, session_id=session, input={"q": "x" * 40}, output="y" * 40,
        ))
        stream = feature in STREAMING
        buffer.append(Span(
            id=f"c{i:015x}", trace_id=trace, parent_id=root_id, name="messages.create",
            kind="llm", start_ns=start + 1_000_000, end_ns=start + duration - 1_000_000,
            status="ok", feature=feature, user_id=user, session_id=session,
            model="claude-sonnet-4" if priced[i] else "private-ft-model", provider="anthropic",
            usage=Usage(input_tokens=int(tokens_in[i]), output_tokens=int(tokens_out[i]),
                        cache_read_tokens=int(tokens_in[i]) // 4),
            cost_usd=float(tokens_in[i] * 3e-6 + tokens_out[i] * 15e-6) if priced[i] else None,
            ttft_s=float(ttfts[i]) if stream else None,
            input=[{"role": "user", "content": "x" * 40}], output="y" * 40,
        ))
        if third[i]:
            buffer.append(Span(id=f"t{i:015x}", trace_id=trace, parent_id=root_id,
                               name="retrieve", kind="retriever", start_ns=start + 100,
                               end_ns=start + 1_000_000, status="ok", feature=feature,
                               user_id=user))
        if feedback[i]:
            kind = kinds[i % len(kinds)]
            buffer.append(Score(
                name="user_feedback", kind=kind, trace_id=trace,
                value=float(rng.integers(1, 6)) if kind == "rating" else None,
                category=("wrong_date", "tone", "missing")[i % 3] if kind != "thumbs_up"
                else None,
                time_ns=start + duration + 5 * 10**9,
                feature=feature if i % 2 else None, user_id=user,
            ))
        if i % 2000 == 0:
            buffer.append(Alert(rule="latency.ttft_p95", severity=("warning", "critical")[i % 2],
                                message=f"ttft p95 {ttfts[i]:.2f}s above 1.5s", time_ns=start,
                                labels={"feature": str(feature)}))
        if i % 80 == 0:
            action = ("serve", "serve", "review", "block")[i // 80 % 4]
            buffer.append(SafetyVerdict(action=action,
                                        category="pii" if action != "serve" else None,
                                        time_ns=start, trace_id=trace))
        if len(buffer) >= batch:
            flush()
    if buffer:
        flush()
    store.close()
    _roll_up(path)
    return counts


def _roll_up(path: Path) -> None:
    """Roll up the spans if the store's writer did not (LocalStore not yet wired)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        store_queries.roll_up_spans(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


def timed(fn: Any, repeats: int) -> tuple[float, float, float, Any]:
    """(min wall, median wall, min CPU) seconds over ``repeats`` calls, and the last result."""
    times, cpus, result = [], [], None
    for _ in range(repeats):
        cpu, t = time.process_time(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - cpu)
    return min(times), statistics.median(times), min(cpus), result


def child_cpu() -> float:
    """CPU seconds (user + system) used by the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(cmd: list[str], env: dict[str, str], repeats: int) -> tuple[float, float, float]:
    """(min wall, median wall, min CPU) seconds of running ``cmd`` ``repeats`` times.

    The CPU time is what the run costs whatever else the machine is doing: on an
    idle machine the wall time comes close to it.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, t = child_cpu(), time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        walls.append(time.perf_counter() - t)
        cpus.append(child_cpu() - cpu)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return min(walls), statistics.median(walls), min(cpus)


def _mounted() -> bool:
    """Whether ``vigil report`` is :mod:`llmvigil.core.cli_report`'s command yet."""
    from llmvigil.core import cli, cli_report

    return any(getattr(c.callback, "__module__", "") == cli_report.__name__
               for c in cli.app.registered_commands)


def _command(args: list[str]) -> list[str]:
    """The ``vigil report`` command line: the real CLI once it mounts cli_report."""
    if _mounted():
        return [sys.executable, "-m", "llmvigil.core.cli", "report", *args]
    wrapper = ("import typer; from llmvigil.core.cli_report import report; "
               "app = typer.Typer(); app.command()(report); app()")
    return [sys.executable, "-c", wrapper, *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vigil-report-bench"))
    parser.add_argument("--fresh", action="store_true", help="Regenerate the store.")
    args = parser.parse_args()

    from llmvigil.core.report import build_report

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"vigil-{args.spans}.db"
    if args.fresh or not path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        t = time.perf_counter()
        counts = generate(path, args.spans)
        took = time.perf_counter() - t
        print(f"generated {counts} in {took:.1f} s "
              f"({counts['spans'] / took:,.0f} spans/s through LocalStore.write)")
    counts = store_queries.record_counts(path)
    size_mb = path.stat().st_size / 1e6
    print(f"store {path}: {counts['spans']:,} spans, {size_mb:,.0f} MB")
    print(f"{machine()}, sqlite {sqlite3.sqlite_version}")

    best, median, cpu, data = timed(lambda: build_report(path), args.repeats)
    print(f"build_report (in process): {best:.3f} s min, {median:.3f} s median, "
          f"{cpu:.3f} s CPU; "
          f"{data['totals']['requests']:,} requests, {data['totals']['spans']:,} spans, "
          f"{len(data['series']['start_ns'])} buckets of {data['bucket_s']} s")
    since = "2024-05-07T12:00:00Z"
    best, median, cpu, _ = timed(
        lambda: build_report(path, since_ns=store_queries.parse_since(since)), args.repeats)
    print(f"build_report --since {since} (last day): {best:.3f} s min, {median:.3f} s median, "
          f"{cpu:.3f} s CPU")

    env = {**os.environ, "COLUMNS": "100"}
    html = args.dir / "report.html"
    for label, extra in (("vigil report", []), ("vigil report --json", ["--json"]),
                         ("vigil report --html", ["--html", str(html)])):
        best, median, cpu = timed_process(_command(["--store", str(path), *extra]), env,
                                          args.repeats)
        verdict = "OK" if best < 2.0 else "OVER the 2 s target"
        print(f"{label}: {best:.3f} s min, {median:.3f} s median, {cpu:.3f} s CPU  [{verdict}]")
    imports = ("import llmvigil.core.cli" if _mounted()
               else "import typer, llmvigil.core.cli_report")
    best, median, cpu = timed_process([sys.executable, "-c", imports], env, args.repeats)
    print(f"of which starting Python and `{imports}`: {best:.3f} s min, {median:.3f} s "
          f"median, {cpu:.3f} s CPU")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
