"""``vigil demo``: a simulated service that silently degrades, and what llmvigil catches.

Runs a document-analysis service on a local fake LLM (no network, no account) for a
few thousand requests; at a random request (from ``--seed``) the model is silently
updated and starts transposing DD/MM dates in a few percent of its outputs. Prints a
timeline of what fired and when, a detection table with each layer's delay in
requests (all measured in the run), and writes an HTML report.

Exit codes: 0 after a complete run (whatever was or was not detected), 2 for bad
options or config, 130 when interrupted.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .demo import (
    DEFAULT_REQUESTS,
    DEFAULT_SPEED,
    MARKER,
    DemoOptions,
    DemoResult,
    run_demo,
)
from .demo.timeline import _alert_detail, _series_key, render_html
from .errors import VigilError
from .model import Alert

__all__ = ["app", "demo_command", "register", "store_report_html", "write_report"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The silent-degradation demo of llmvigil.")


@app.callback()
def _main() -> None:
    """The silent-degradation demo of llmvigil."""


def store_report_html(store: Path, config_path: Path | None = None) -> str | None:
    """The product's HTML report (``vigil report --html``) of the demo's store, or
    ``None`` when :mod:`llmvigil.core.report` is not available or fails.

    ``config_path`` (the demo's config) gives the feedback and session settings the
    report counts with.
    """
    try:
        report = importlib.import_module("llmvigil.core.report")
        html_module = importlib.import_module("llmvigil.core.report.html")
        build, render = report.build_report, html_module.render_html
    except Exception:  # absent, or mid-change: the demo's own page does not need it
        return None
    monitors: dict[str, Any] = {}
    if config_path is not None:
        try:
            monitors = (yaml.safe_load(config_path.read_text()) or {}).get("monitors", {})
        except (OSError, yaml.YAMLError):
            monitors = {}
    try:
        data = build(store, feedback=monitors.get("feedback"),
                     sessions=monitors.get("sessions"))
        return str(render(data))
    except Exception:
        return None


def write_report(result: DemoResult, path: Path) -> Path:
    """Write the run's self-contained HTML report to ``path``."""
    page = render_html(result.timeline,
                       store_report=store_report_html(result.store_path, result.config_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def demo_command(
    requests: Annotated[int, typer.Option(
        "--requests", "-n", min=1,
        help=f"Requests in the run (default {DEFAULT_REQUESTS:,}: about 40 s).")
    ] = DEFAULT_REQUESTS,
    seed: Annotated[int, typer.Option(
        help="Draws users, documents, when the update and the cost spike happen.")] = 7,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", "-b",
        help="Also publish the run to this backend of the config file (repeatable).")
    ] = None,
    html: Annotated[Path | None, typer.Option(
        help="Where to write the HTML report.")] = Path("vigil-demo-report.html"),
    speed: Annotated[float, typer.Option(
        min=0.001, max=10.0,
        help="Time scale: 1.0 is real latencies at about 10 requests/s; 0.1 (the "
             "default) runs ten times faster. Monitor windows scale with it.")
    ] = DEFAULT_SPEED,
    directory: Annotated[Path, typer.Option(
        "--dir", help="Directory of the demo's local store, journals and alerts "
                      "(cleared at each run).")] = Path(MARKER),
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config the --backend names are read from "
                               "(default: $VIGIL_CONFIG, ./vigil.yaml).")] = None,
    fingerprint_leak: Annotated[bool, typer.Option(
        "--fingerprint-leak",
        help="The updated model reports a new model id (off: the id stays the same, "
             "which is the point).")] = False,
    transpose_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of outputs the updated model transposes.")] = 0.05,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the timeline and detection table as JSON.")] = False,
) -> None:
    """Run a simulated service through a silent model update and show what catches it."""
    out = Console(stderr=as_json)
    if not out.is_terminal:
        out = Console(stderr=as_json, width=150)
    options = DemoOptions(requests=requests, seed=seed, speed=speed, directory=directory,
                          backends=tuple(backend or ()), config=config,
                          fingerprint_leak=fingerprint_leak, transpose_rate=transpose_rate)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=out, transient=True,
                        disable=as_json or not out.is_terminal)
    task = progress.add_task("requests", total=requests)

    def on_request(index: int, _log: Any) -> None:
        if index % 25 == 0 or index == requests - 1:
            progress.update(task, completed=index + 1)

    shown: set[tuple[str, ...]] = set()

    def on_alert(alert: Alert, index: int) -> None:
        key = _series_key(alert)
        if key in shown:
            return
        shown.add(key)
        if not as_json:
            progress.console.print(
                f"  [red]alert[/] near request {index:,}: [bold]{escape(alert.rule)}[/] "
                f"{escape(_alert_detail(alert))}", highlight=False)

    if not as_json:
        out.print(f"[bold]vigil demo[/]: {requests:,} requests at speed {speed:g}, seed "
                  f"{seed}; local store in {escape(str(directory))}/", highlight=False)
    try:
        with progress:
            result = run_demo(options, on_request=on_request, on_alert=on_alert)
    except VigilError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}",
                                   highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    report_path = write_report(result, html) if html is not None else None
    if as_json:
        data = result.as_dict()
        data["html"] = str(report_path) if report_path is not None else None
        sys.stdout.write(json.dumps(data) + "\n")
        return
    result.timeline.print(out)
    out.print(f"Local store: {escape(str(result.store_path))} ({result.timeline.counts['spans']:,}"
              f" spans); config used: {escape(str(result.config_path))}", highlight=False)
    if report_path is not None:
        out.print(f"HTML report: {escape(str(report_path))}", highlight=False)
    store = escape(str(result.store_path))
    out.print(f"Look around: [bold]vigil report --store {store}[/], "
              f"[bold]vigil review list --store {store}[/]", highlight=False)


def register(parent: typer.Typer) -> None:
    """Mount ``demo`` on the ``vigil`` command."""
    parent.command("demo")(demo_command)


register(app)


if __name__ == "__main__":
    app()
