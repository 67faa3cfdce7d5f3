"""Which layer catches the silent model update, how often, and how fast: the demo, N times.

Runs ``vigil demo`` (as ``python -m llmvigil.core.cli_demo demo --json``) with seeds
``--first-seed`` .. ``--first-seed + --runs - 1``, ``--jobs`` at a time, each in its own
directory, and reports per layer:

* **detection rate**: the share of runs in which the layer alerted after the failure
  it answers (the update; for cost, the start of the cost spike; for safety, the
  unsafe outputs, all stopped);
* **median / p90 delay**: requests issued between the failure and the layer's first
  alert, over the runs where it fired (the request index when the alert was
  published, so it includes the worker's tick, about a second of traffic);
* **runs with false alarms**: runs in which the layer alerted before that failure
  (any cost alert about another user counts too).

Each run draws its own update point, cost-spike user and model randomness from its
seed; nothing is aggregated across runs except these counts. ``--speed`` should leave
the machine room (``max lag`` is how late the most delayed request was issued in the
worst run; above ~0.5 s the delays in requests are inflated).

    python benchmarks/detection.py [--runs 20] [--jobs 2] [--speed 0.05]
                                   [--requests 4000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _bench import machine

LAYERS = ("cost", "canary", "date_valid", "grounding", "drift", "feedback", "fingerprint",
          "latency", "safety")


def run_one(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One demo run; its ``--json`` output plus the wall time."""
    directory = root / f"seed{seed}"
    cmd = [sys.executable, "-m", "llmvigil.core.cli_demo", "demo", "--json",
           "--requests", str(args.requests), "--seed", str(seed), "--speed", str(args.speed),
           "--dir", str(directory / "store"), "--html", str(directory / "report.html"),
           "--transpose-rate", str(args.transpose_rate)]
    if args.fingerprint_leak:
        cmd.append("--fingerprint-leak")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(proc.stdout)
    data["wall_s"] = time.perf_counter() - started
    return data


def _row(data: dict[str, Any], layer: str) -> dict[str, Any]:
    return next(r for r in data["detection"] if r["layer"] == layer)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer: detection rate, delays (median, p90, max) and runs with false alarms."""
    out = []
    combined = {
        "date checks (either)": ("date_valid", "grounding"),
        "date checks or canary": ("date_valid", "grounding", "canary"),
    }
    names = {r["layer"]: r["name"] for r in runs[0]["detection"]}
    for layer in (*LAYERS, *combined):
        members = combined.get(layer, (layer,))
        delays: list[float] = []
        fired = false = 0
        for data in runs:
            rows = [_row(data, m) for m in members]
            hit = [r["delay_requests"] for r in rows if r["fired"]]
            if layer == "safety":
                hit = hit if rows[0]["alerts"] == len(data["scenario"]["unsafe_at"]) else []
            if hit:
                fired += 1
                delays.append(min(hit))
            false += any(r["false_alarms"] for r in rows)
        out.append({
            "layer": layer, "name": names.get(layer, layer), "runs": len(runs),
            "detected": fired, "rate": fired / len(runs),
            "median_delay": statistics.median(delays) if delays else None,
            "p90_delay": _quantile(delays, 0.9) if delays else None,
            "max_delay": max(delays) if delays else None,
            "false_alarm_runs": false,
        })
    return out


def markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]],
             args: argparse.Namespace) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    lines = [
        f"{len(runs)} runs (seeds {args.first_seed}-{args.first_seed + len(runs) - 1}), "
        f"{args.requests:,} requests each, speed {args.speed:g}, transpose rate "
        f"{args.transpose_rate:.0%}{', fingerprint leak' if args.fingerprint_leak else ''}; "
        f"update at request {min(r['scenario']['update_at'] for r in runs):,}-"
        f"{max(r['scenario']['update_at'] for r in runs):,}; worst max lag "
        f"{max(r['scenario']['max_lag_s'] for r in runs):.2f} s",
        "",
        "| layer | detection rate | median delay (requests) | p90 delay | max delay "
        "| runs with false alarms |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['name']} | {s['detected']}/{s['runs']} ({s['rate']:.0%}) | "
                     f"{num(s['median_delay'])} | {num(s['p90_delay'])} | "
                     f"{num(s['max_delay'])} | {s['false_alarm_runs']}/{s['runs']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--speed", type=float, default=0.05)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--transpose-rate", type=float, default=0.05)
    parser.add_argument("--fingerprint-leak", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.runs)
    print(f"# {machine()}; {args.runs} runs, {args.jobs} at a time", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vigil-detection-") as tmp, \
            ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: run_one(s, args, Path(tmp)), seeds))
    summary = summarise(runs)
    print(markdown(summary, runs, args))
    print(f"\n({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": summary,
            "runs": [{"seed": r["scenario"]["seed"], "scenario": r["scenario"],
                      "ground_truth": r["ground_truth"], "detection": r["detection"],
                      "wall_s": r["wall_s"]} for r in runs],
        }, indent=1))


if __name__ == "__main__":
    main()
