"""``vigil canary run`` and ``vigil eval``: canaries and golden-set evaluation.

Both commands initialise llmvigil from ``--config`` (so Scores, Metrics and Alerts
reach the configured backends), keep their history in the local store file
(``--store``, default the ``local`` backend's ``path`` or ``store.path``) and shut
llmvigil down (flushing) before they exit.

Exit codes: 0 when everything passed and nothing changed, 1 when a canary failed or
changed (or an evaluation regressed or had failing items), 2 for bad input (the
file, an option, the config), 130 when interrupted during a run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .canary.history import History, HistoryError
from .canary.runner import CaseResult, RunReport, run_once
from .canary.spec import CanarySuite, load_suite
from .cli_common import err, fail
from .config import VigilConfig
from .errors import VigilError
from .eval import EvalOptions, EvalReport, load_golden, run_eval

__all__ = ["app", "canary_app", "eval_command", "parse_duration", "register"]

canary_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Run canary prompts and catch changes in their outputs.")

out = Console()

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="SQLite file for the run history (default: the local "
                                 "backend's path, then store.path)."),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", "-j", min=1, help="Cases run at once (default: the file's, 4)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON (one line per run).")]


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``15m``, ``1h``, ``1.5h``, ``2d``, ``500ms``.

    Raises:
        ValueError: not such a duration, or zero.
    """
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"expected a positive duration such as 30s, 15m, 1h or 1d, "
                         f"got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2).lower()]


def _store_path(cfg: VigilConfig, store: Path | None) -> Path:
    if store is not None:
        return store
    for backend in cfg.backends:
        if backend.name == "local" and backend.enabled and backend.settings.get("path"):
            return Path(str(backend.settings["path"]))
    return Path(cfg.store.path)


@contextmanager
def _session(config: Path | None, store: Path | None) -> Iterator[History]:
    """llmvigil initialised from ``config`` and the history open; both closed after."""
    import llmvigil

    try:
        runtime = llmvigil.init(config)
    except VigilError as exc:
        raise fail(str(exc)) from None
    try:
        try:
            history = History(_store_path(runtime.config, store))
        except HistoryError as exc:
            raise fail(str(exc)) from None
        try:
            yield history
        finally:
            history.close()
    finally:
        llmvigil.shutdown()


def _progress(total: int, what: str) -> Progress:
    progress = Progress(TextColumn(f"[bold]{escape(what)}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    progress.add_task(what, total=total)
    return progress


def _advancer(progress: Progress) -> Callable[[Any], None]:
    """A callback that advances the progress bar's task by one."""
    task = progress.task_ids[0]

    def advance(_: Any) -> None:
        progress.advance(task)

    return advance


def _when(ns: int | None) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S") \
        if ns else "-"


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- canary run --------------------------------------------------------------------------


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}"
                     for k, v in values.items())


def _print_run(report: RunReport, suite: CanarySuite) -> None:
    table = Table(title=f"canaries: {suite.name} ({_when(report.time_ns)})", box=box.SIMPLE)
    for column in ("case", "result", "time", "details"):
        table.add_column(column, overflow="fold")
    changed = {c.case for c in report.changes}
    styles = {"pass": "green", "fail": "bold red", "error": "bold red"}
    for r in report.results:
        label = f"[{styles[r.label]}]{r.label}[/]" + (" [yellow](changed)[/]"
                                                       if r.case in changed else "")
        if r.failures:
            details = "\n".join(_short(f"{f.expectation}: {f.message}", 160)
                                for f in r.failures)
        else:
            details = _short(_values_text(r.values) or f"output: {r.output}", 160)
        table.add_row(escape(r.case), label, f"{r.duration_s:.2f}s", escape(details))
    out.print(table)
    if report.previous_time_ns is None:
        out.print(f"first run of {suite.name}: its outcomes are stored for comparison "
                  "with the next run")
    elif report.changes:
        changes = Table(title=f"changes since the last run ({_when(report.previous_time_ns)})",
                        box=box.SIMPLE)
        for column in ("case", "what", "before", "after"):
            changes.add_column(column, overflow="fold")
        for c in report.changes:
            changes.add_row(escape(c.case), escape(c.key or "status"), escape(c.before_text),
                            escape(c.after_text))
        out.print(changes)
    else:
        out.print(f"no changes since the last run ({_when(report.previous_time_ns)})")
    passed = len(report.results) - len(report.failed)
    out.print(f"{passed}/{len(report.results)} passed, {len(report.failed)} failed, "
              f"{len({c.case for c in report.changes})} changed, "
              f"{len(report.alerts)} alert(s) sent", highlight=False)


def _result_json(r: CaseResult) -> dict[str, Any]:
    return {"case": r.case, "result": r.label, "passed": r.passed, "values": r.values,
            "failures": [f.as_dict() for f in r.failures], "error": r.error,
            "duration_s": round(r.duration_s, 6), "trace_id": r.trace_id}


def _run_json(report: RunReport) -> str:
    return json.dumps({
        "suite": report.suite, "run_id": report.run_id, "time_ns": report.time_ns,
        "passed": len(report.results) - len(report.failed), "failed": len(report.failed),
        "previous_time_ns": report.previous_time_ns,
        "results": [_result_json(r) for r in report.results],
        "changes": [c.as_dict() for c in report.changes],
        "exit_code": report.exit_code,
    }, default=str)


@canary_app.command("run")
def canary_run(
    file: Annotated[Path, typer.Argument(help="The canary YAML file.")],
    every: Annotated[str | None, typer.Option(
        help="Run again at this interval (30s, 15m, 1h...) until interrupted.")] = None,
    max_runs: Annotated[int | None, typer.Option(
        min=1, help="With --every: stop after this many runs.")] = None,
    concurrency: ConcurrencyOpt = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the canaries of FILE, record each result, and alert on any change since the
    last run. Exit code: 0 all passed and unchanged, 1 a failure or a change, 2 bad input."""
    try:
        interval = parse_duration(every) if every is not None else None
    except ValueError as exc:
        raise fail(f"--every: {exc}") from None
    try:
        suite = load_suite(file)
    except VigilError as exc:
        raise fail(str(exc)) from None
    worst, runs, running = 0, 0, False
    with _session(config, store) as history:
        import llmvigil

        try:
            next_start = time.monotonic()
            while True:
                running = True
                with _progress(len(suite.cases), f"canary {suite.name}") as progress:
                    report = run_once(suite, history, concurrency=concurrency,
                                      on_result=_advancer(progress))
                running = False
                runs += 1
                worst = max(worst, report.exit_code)
                if as_json:
                    print(_run_json(report), flush=True)
                else:
                    _print_run(report, suite)
                llmvigil.flush()
                if interval is None or (max_runs is not None and runs >= max_runs):
                    break
                next_start = max(next_start + interval, time.monotonic())
                if not as_json:
                    wake = datetime.fromtimestamp(time.time() + next_start - time.monotonic())
                    out.print(f"next run at {wake:%H:%M:%S} (Ctrl-C to stop)", highlight=False)
                time.sleep(max(0.0, next_start - time.monotonic()))
        except KeyboardInterrupt:
            if running:
                err.print(f"interrupted during run {runs + 1}; it was not recorded")
                worst = 130
            else:
                err.print(f"stopped after {runs} run(s)")
    raise typer.Exit(worst)


# -- eval ----------------------------------------------------------------------------------


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _print_eval(report: EvalReport, shown: int = 20) -> None:
    worst = sorted(report.results, key=lambda r: (r.error is None, r.score))[:shown]
    title = (f"eval {report.name}: {len(report.results)} items, scorer {report.scorer}"
             + (f" (the {len(worst)} lowest shown)" if len(worst) < len(report.results) else ""))
    table = Table(title=title, box=box.SIMPLE)
    for column in ("item", "score", "output / error"):
        table.add_column(column, overflow="fold")
    for r in worst:
        detail = f"[red]{escape(r.error)}[/]" if r.error else escape(_short(r.output))
        table.add_row(escape(r.id), f"{r.score:.3f}", detail)
    out.print(table)
    line = f"mean score {report.mean:.4f}"
    if report.baseline_set:
        line += " (stored as the baseline)"
    elif report.baseline is not None and report.drop is not None:
        line += (f"; baseline {report.baseline.mean:.4f} from {_when(report.baseline.time_ns)}"
                 f"; change {-report.drop:+.4f} (margin {report.margin:g})")
    else:
        line += " (no baseline stored: the run had errors; fix them or pass --set-baseline)"
    out.print(line, highlight=False)
    regressed = report.regressed()
    if report.alert is not None:
        out.print(f"[bold red]ALERT[/] {escape(report.alert.message)}")
        if regressed:
            items = Table(title="regressed items", box=box.SIMPLE)
            for column in ("item", "baseline", "now"):
                items.add_column(column)
            for item, before, after in regressed[:shown]:
                items.add_row(escape(item), f"{before:.3f}", f"{after:.3f}")
            out.print(items)
    if report.errors:
        out.print(f"[red]{len(report.errors)} item(s) failed to run[/] (scored 0)")


def _eval_json(report: EvalReport) -> str:
    return json.dumps({
        "name": report.name, "run_id": report.run_id, "scorer": report.scorer,
        "mean": report.mean, "n": len(report.results), "margin": report.margin,
        "baseline": None if report.baseline is None else report.baseline.mean,
        "baseline_set": report.baseline_set, "drop": report.drop,
        "alert": None if report.alert is None else report.alert.message,
        "items": [{"id": r.id, "score": r.score, "error": r.error} for r in report.results],
        "exit_code": report.exit_code,
    })


def eval_command(
    file: Annotated[Path, typer.Argument(help="Golden set: JSONL of {input, reference}, "
                                              "or YAML with settings and items.")],
    target: Annotated[str | None, typer.Option(
        "--target", help="The callable to evaluate, module:function.")] = None,
    model: Annotated[str | None, typer.Option(help="An Anthropic model to evaluate.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Anthropic API base URL.")] = None,
    scorer: Annotated[str | None, typer.Option(
        help="exact, contains, json_fields, numeric_tolerance, token_f1, or "
             "module:function.")] = None,
    scorer_param: Annotated[list[str] | None, typer.Option(
        "--scorer-param", help="A scorer parameter KEY=VALUE (repeatable).")] = None,
    margin: Annotated[float | None, typer.Option(
        min=0, help="Alert when the mean falls more than this below the baseline "
                    "(default: the file's, 0.05).")] = None,
    name: Annotated[str | None, typer.Option(help="The dataset name (default: the file's "
                                                  "name: or its stem).")] = None,
    set_baseline: Annotated[bool, typer.Option(
        "--set-baseline", help="Store this run's mean as the new baseline.")] = False,
    concurrency: ConcurrencyOpt = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a target against a golden set; alert when the mean score drops by more than
    the margin from its baseline. Exit code: 0 ok, 1 regression or failed items, 2 bad input."""
    try:
        params = dict(_param(p) for p in scorer_param or [])
    except ValueError as exc:
        raise fail(f"--scorer-param: {exc}") from None
    options = EvalOptions(target=target, model=model, base_url=base_url, scorer=scorer,
                          scorer_params=params, margin=margin, name=name,
                          concurrency=concurrency)
    try:
        golden = load_golden(file, options)
    except VigilError as exc:
        raise fail(str(exc)) from None
    try:
        with _session(config, store) as history:
            with _progress(len(golden.items), f"eval {golden.name}") as progress:
                report = run_eval(golden, history, set_baseline=set_baseline,
                                  concurrency=concurrency, on_result=_advancer(progress))
            if as_json:
                print(_eval_json(report), flush=True)
            else:
                _print_eval(report)
    except KeyboardInterrupt:
        err.print("interrupted; the run was not recorded")
        raise typer.Exit(130) from None
    raise typer.Exit(report.exit_code)


def register(parent: typer.Typer) -> None:
    """Mount ``canary run`` and ``eval`` on the ``vigil`` command."""
    parent.add_typer(canary_app, name="canary")
    parent.command("eval")(eval_command)


#: A stand-alone command with both (``python -m llmvigil.core.cli_canary``).
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="llmvigil canaries and golden-set evaluation.")
register(app)


if __name__ == "__main__":
    app()
