"""``vigil export``, ``vigil import``, ``vigil migrate`` and ``vigil compare``.

Moving history between backends: export the local store to a file (JSON lines or
OTLP/JSON), import a file into the configured backends, stream one backend's history
into another with checkpoints and a fidelity report, and compare two backends that
ran side by side (shadow mode). Backends and importers are named as in the config's
``backends:`` list, whose entries give their settings; ``--from-opt``/``--to-opt
key=value`` add or override settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .cli_common import config_or_fail, err, fail
from .config import BackendConfig, VigilConfig
from .errors import ConfigError, VigilError
from .migrate.compare import Comparison, compare, summarize
from .migrate.engine import (
    Checkpoint,
    Destination,
    MigrationReport,
    RetryPolicy,
    Selection,
    estimate_total,
    migrate,
)

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Move history between backends: export, import, migrate, compare.")

out = Console()

#: Problems printed as they happen; the rest are counted in the report.
SHOWN_PROBLEMS = 20

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml)."),
]
SinceOpt = Annotated[str | None, typer.Option(
    help="Only records at or after this time: 15m, 2h, 7d (ago) or ISO-8601.")]
UntilOpt = Annotated[str | None, typer.Option(
    help="Only records before this time: 15m, 2h, 7d (ago) or ISO-8601.")]
KindsOpt = Annotated[str | None, typer.Option(
    help="Only these record kinds, comma-separated (spans,scores,session_events,metrics,"
         "alerts,safety_verdicts).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")]


class FileFormat(str, Enum):
    """Export file formats."""

    jsonl = "jsonl"
    otlp_json = "otlp-json"


class ImportFormat(str, Enum):
    """Import file formats (auto: detected from the content)."""

    auto = "auto"
    jsonl = "jsonl"
    otlp_json = "otlp-json"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a person can fix into one message and exit code 2."""
    try:
        yield
    except VigilError as exc:
        raise fail(str(exc)) from None
    except FileNotFoundError as exc:
        raise fail(str(exc), code=1) from None
    except (OSError, ValueError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------
# Resolving names to importers and destinations
# ---------------------------------------------------------------------------


def _plugin_manager() -> Any:
    """The plugin manager, with the built-in ``file``/``local`` importers registered."""
    from ..plugins.manager import new_plugin_manager
    from .migrate import files

    pm = new_plugin_manager()
    if not pm.is_registered(files):
        pm.register(files, name="llmvigil.core.migrate.files")
    return pm


def parse_opts(values: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["key=value", ...]`` as settings; values read as YAML scalars (3, true, x).

    Raises:
        ConfigError: an item has no ``=``.
    """
    found: dict[str, Any] = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        found[key.strip()] = raw if isinstance(value, (dict, list)) else value
    return found


def _entry(cfg: VigilConfig, name: str) -> BackendConfig | None:
    """The config's backend entry labelled ``name`` (``name`` or ``name:instance``)."""
    for bc in cfg.backends:
        if bc.key == name:
            return bc
    return next((bc for bc in cfg.backends if bc.name == name), None)


def _settings(cfg: VigilConfig, name: str, opts: Mapping[str, Any]) -> tuple[
        str, dict[str, Any], BackendConfig | None]:
    """(adapter or importer name, settings, config entry) for a backend label."""
    entry = _entry(cfg, name)
    base = entry.name if entry is not None else name.partition(":")[0]
    settings = dict(entry.settings) if entry is not None else {}
    settings.update(opts)
    if base == "local":
        settings.setdefault("path", cfg.store.path)
    return base, settings, entry


def _importer(pm: Any, cfg: VigilConfig, name: str, opts: Mapping[str, Any]) -> Any:
    """Build the importer called ``name`` with its settings."""
    from ..plugins.manager import importer_infos

    base, settings, _ = _settings(cfg, name, opts)
    infos = importer_infos(pm)
    info = infos.get(base)
    if info is None:
        raise ConfigError(f"no importer {base!r}; known importers: "
                          f"{', '.join(sorted(infos)) or '(none)'} (vendor importers are "
                          "plugins implementing llmvigil_importers)")
    try:
        return info.factory(settings)
    except ModuleNotFoundError as exc:
        from .errors import MissingExtraError

        raise MissingExtraError(base, info.extra or base, exc.name or "?") from exc
    except VigilError:
        raise
    except Exception as exc:
        raise ConfigError(f"importer {name!r}: {exc}") from exc


def _require_importer(pm: Any, cfg: VigilConfig, name: str, flag: str) -> None:
    """Fail early when ``name`` cannot be read back."""
    from ..plugins.manager import importer_infos

    base = _settings(cfg, name, {})[0]
    infos = importer_infos(pm)
    if base not in infos:
        raise ConfigError(f"{flag}: no importer {base!r} to read the destination back; "
                          f"known importers: {', '.join(sorted(infos))}")


def _destination(pm: Any, cfg: VigilConfig, name: str, opts: Mapping[str, Any]) -> Destination:
    """The destination backend labelled ``name``, as the runtime would build it."""
    from ..plugins.manager import get_adapter

    settings_opts = dict(opts)
    redaction = settings_opts.pop("redaction", None)
    timeout_s = settings_opts.pop("timeout_s", None)
    base, settings, entry = _settings(cfg, name, settings_opts)
    info = get_adapter(pm, base, where=f"--to {name}")
    settings.setdefault("timeout_s", float(timeout_s or (entry.timeout_s if entry else 10.0)))
    settings.setdefault("service", cfg.service.name)
    level = str(redaction or (entry.redaction if entry is not None else None)
                or info.redaction)
    return Destination(name, info, settings, level)


def _time(text: str | None, flag: str) -> int | None:
    from .store_queries import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _selection(since: str | None, until: str | None, project: str | None = None,
               limit: int | None = None, kinds: str | None = None) -> Selection:
    from ..plugins.types import RECORD_KINDS

    chosen = None
    if kinds:
        chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
        unknown = [k for k in chosen if k not in RECORD_KINDS]
        if unknown:
            raise ConfigError(f"--kinds: unknown kind(s) {', '.join(unknown)}; known kinds: "
                              f"{', '.join(RECORD_KINDS)}")
    return Selection(since_ns=_time(since, "--since"), until_ns=_time(until, "--until"),
                     project=project, limit=limit, kinds=chosen)


# ---------------------------------------------------------------------------
# Progress and problems
# ---------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    """Records per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- rec/s" if speed is None else f"{speed:,.0f} rec/s", style="cyan")


@contextmanager
def _progress(description: str, total: int | None, quiet: bool = False) -> Iterator[
        tuple[Callable[[int], None], Callable[[str], None]]]:
    """``(advance, problem)`` callbacks drawing a progress bar on a terminal."""
    shown = [0]
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        _RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet or not err.is_terminal, transient=False,
    )

    def problem(message: str) -> None:
        shown[0] += 1
        if shown[0] <= SHOWN_PROBLEMS:
            progress.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False,
                                   soft_wrap=True)
        elif shown[0] == SHOWN_PROBLEMS + 1:
            progress.console.print("[yellow]warning:[/] more problems: counted in the report",
                                   highlight=False)

    with progress:
        task = progress.add_task(description, total=total)
        yield (lambda n: progress.advance(task, n)), problem


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _reasons(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items())) or "-"


def _print_report(report: MigrationReport, title: str) -> None:
    dests = report.destinations
    verb = "would write" if report.dry_run else "written"
    table = Table(title=title)
    table.add_column("records")
    table.add_column("read", justify="right")
    if report.resumed:
        table.add_column("already delivered", justify="right")
    for d in dests:
        table.add_column(f"{verb} ({d.name})" if len(dests) > 1 else verb, justify="right")
        table.add_column(f"skipped ({d.name})" if len(dests) > 1 else "skipped (why)")
    kinds = [k for k in _kinds() if report.read[k] or report.invalid[k]
             or report.already_delivered[k] or any(d.written[k] or d.skipped.get(k)
                                                   for d in dests)]
    for kind in [*kinds, *(["unknown"] if report.invalid["unknown"] else [])]:
        label = "unknown kind" if kind == "unknown" else kind.replace("_", " ")
        row = [label, str(report.read[kind] + report.invalid[kind])]
        if report.resumed:
            row.append(str(report.already_delivered[kind]))
        for d in dests:
            reasons = dict(d.skipped.get(kind, {}))
            if report.invalid[kind]:
                reasons["unreadable at the source"] = report.invalid[kind]
            row += [str(d.written[kind]), _reasons(reasons)]
        table.add_row(*row)
    out.print(table)

    totals = Table(title="totals: read vs " + verb, title_justify="left")
    totals.add_column("")
    totals.add_column("read", justify="right")
    for d in dests:
        totals.add_column(d.name, justify="right")
    src = report.source_totals.as_dict()
    for key in ("spans", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "cost_usd"):
        row = [key.replace("_", " "), _num(src[key])]
        for d in dests:
            value = d.totals.as_dict()[key]
            mark = "" if _close(value, src[key]) else " [red]≠[/]"
            row.append(_num(value) + mark)
        totals.add_row(*row)
    out.print(totals)
    for d in dests:
        if d.cannot_hold:
            out.print(f"{d.name} cannot hold: {', '.join(d.cannot_hold)}", highlight=False,
                      markup=False)
        if report.dry_run:
            for note in d.notes:
                out.print(f"  {d.name}: {note}", highlight=False, soft_wrap=True, markup=False)
    if report.filtered:
        out.print(f"{report.filtered} records outside the selection were ignored")
    if report.problem_count > SHOWN_PROBLEMS:
        out.print(f"{report.problem_count} problems in all (use --json for the first "
                  f"{len(report.problems)})", highlight=False)
    if report.stopped:
        hint = (f"; rerun with --checkpoint {report.checkpoint} to resume" if report.checkpoint
                else "; use --checkpoint FILE to make a migration resumable")
        err.print(f"[bold red]stopped:[/] {escape(report.stopped + hint)}", highlight=False,
                  soft_wrap=True)
    unreadable = sum(report.invalid.values())
    out.print(f"{report.total_read} records read"
              + (f", {unreadable} unreadable" if unreadable else "")
              + (f", {sum(report.already_delivered.values())} already delivered"
                 if report.resumed else "")
              + f" in {report.elapsed_s:.1f}s", highlight=False)


def _kinds() -> tuple[str, ...]:
    from ..plugins.types import RECORD_KINDS

    return RECORD_KINDS


def _num(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else f"{value:,}"


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _exit_code(report: MigrationReport) -> int:
    if report.interrupted:
        return 130
    return 1 if report.lossy else 0


def _run(importer: Any, dests: list[Destination], *, source: str, selection: Selection,
         checkpoint: Path | None, dry_run: bool, batch_size: int, cfg: VigilConfig,
         as_json: bool, title: str) -> MigrationReport:
    ck = None
    if checkpoint is not None:
        ck = Checkpoint.open(checkpoint, source=source, destinations=[d.name for d in dests],
                             selection=selection)
    total = estimate_total(importer, selection, ck.after() if ck else None)
    pipe = cfg.pipeline
    retry = RetryPolicy(pipe.max_retries, pipe.backoff_initial_s, pipe.backoff_max_s)
    with _progress(title, total, quiet=as_json) as (advance, problem):
        report = migrate(importer, dests, source=source, selection=selection, checkpoint=ck,
                         dry_run=dry_run, batch_size=batch_size, retry=retry,
                         on_problem=problem, on_progress=advance)
    if as_json:
        out.print_json(json.dumps(report.as_dict(), default=str))
    else:
        _print_report(report, title)
    return report


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@app.command("export")
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write "
                                                                "('-': standard output).")],
    fmt: Annotated[FileFormat, typer.Option("--format", "-f", help="File format.")]
    = FileFormat.jsonl,
    since: SinceOpt = None,
    until: UntilOpt = None,
    kinds: KindsOpt = None,
    store: Annotated[Path | None, typer.Option(help="Local store to read (default "
                                                    "store.path).")] = None,
    source: Annotated[str, typer.Option("--from", help="Importer to read from.")] = "local",
    from_opt: Annotated[list[str] | None, typer.Option(
        "--from-opt", help="Importer setting key=value (repeatable).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Export history (the local store by default) to JSON lines or OTLP/JSON."""
    from .migrate.files import write_file

    cfg = config_or_fail(config)
    with _errors():
        opts = parse_opts(from_opt, "--from-opt")
        if store is not None:
            opts["path"] = str(store)
        selection = _selection(since, until, kinds=kinds)
        importer = _importer(_plugin_manager(), cfg, source, opts)
        total = estimate_total(importer, selection)
        with _progress(f"export {source}", total) as (advance, problem):
            items = importer.read(selection.options({}))
            summary = write_file(items, output, fmt.value, service=cfg.service.name,
                                 on_record=lambda _item: advance(1))
            for skipped in summary.skipped:
                problem(skipped.message())
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary.written.items())
    err.print(f"wrote {summary.total} records ({counts or 'none'}) to {output} as "
              f"{fmt.value}" + (f"; {len(summary.skipped)} unreadable records skipped"
                                if summary.skipped else ""), highlight=False, soft_wrap=True,
              markup=False)
    if summary.skipped:
        raise typer.Exit(1)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="An export file: JSON lines or OTLP/JSON.")],
    fmt: Annotated[ImportFormat, typer.Option("--format", "-f", help="File format.")]
    = ImportFormat.auto,
    to: Annotated[list[str] | None, typer.Option(
        "--to", help="Backend to write to (repeatable; default: the config's backends).")]
    = None,
    to_opt: Annotated[list[str] | None, typer.Option(
        "--to-opt", help="Destination setting key=value (repeatable).")] = None,
    store: Annotated[Path | None, typer.Option(help="Write into this local store file.")]
    = None,
    dry_run: Annotated[bool, typer.Option(help="Read and count; write nothing.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per delivery.")] = 500,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Import an export file into the configured backends (or --to, or --store)."""
    cfg = config_or_fail(config)
    with _errors():
        pm = _plugin_manager()
        importer = _importer(pm, cfg, "file", {"path": str(file), "format": fmt.value})
        opts = parse_opts(to_opt, "--to-opt")
        if store is not None:
            names = ["local"]
            opts["path"] = str(store)
        else:
            names = list(to or [bc.key for bc in cfg.backends if bc.enabled])
        if not names:
            raise ConfigError("no destination: the config enables no backend; give --to "
                              "or --store")
        dests = [_destination(pm, cfg, name, opts) for name in names]
        report = _run(importer, dests, source="file", selection=Selection(), checkpoint=None,
                      dry_run=dry_run, batch_size=batch_size, cfg=cfg, as_json=as_json,
                      title=f"import {file.name} -> {', '.join(names)}")
    raise typer.Exit(_exit_code(report))


@app.command("migrate")
def migrate_cmd(
    source: Annotated[str, typer.Option("--from", help="Backend to read history from "
                                                        "(its importer).")],
    to: Annotated[str, typer.Option("--to", help="Backend to write it to.")],
    from_opt: Annotated[list[str] | None, typer.Option(
        "--from-opt", help="Source setting key=value (repeatable).")] = None,
    to_opt: Annotated[list[str] | None, typer.Option(
        "--to-opt", help="Destination setting key=value (repeatable).")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    project: Annotated[str | None, typer.Option(help="The source's project to read.")]
    = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many records "
                                                          "this run.")] = None,
    kinds: KindsOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would move and what the "
                                               "destination cannot hold; write nothing.")]
    = False,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Resume from and record progress in this file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per delivery.")] = 500,
    verify: Annotated[bool, typer.Option(help="Afterwards, read the destination back and "
                                              "compare it with the source.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Stream history from one backend into another, resumable, with a fidelity report."""
    cfg = config_or_fail(config)
    with _errors():
        pm = _plugin_manager()
        from_opts = parse_opts(from_opt, "--from-opt")
        to_opts = parse_opts(to_opt, "--to-opt")
        selection = _selection(since, until, project, limit, kinds)
        importer = _importer(pm, cfg, source, from_opts)
        dest = _destination(pm, cfg, to, to_opts)
        if verify:
            _require_importer(pm, cfg, to, "--verify")
        report = _run(importer, [dest], source=source, selection=selection,
                      checkpoint=checkpoint, dry_run=dry_run, batch_size=batch_size,
                      cfg=cfg, as_json=as_json, title=f"migrate {source} -> {to}")
        code = _exit_code(report)
        if verify and not dry_run and not report.stopped:
            back_opts = {k: v for k, v in to_opts.items() if k not in ("redaction", "timeout_s")}
            result = _compare(pm, cfg, source, to, from_opts, back_opts,
                              Selection(selection.since_ns, selection.until_ns, project),
                              tolerance=0.0)
            if not as_json:
                _print_comparison(result)
            code = code or (0 if result.ok else 1)
    raise typer.Exit(code)


def _compare(pm: Any, cfg: VigilConfig, a: str, b: str, a_opts: Mapping[str, Any],
             b_opts: Mapping[str, Any], selection: Selection, *,
             tolerance: float) -> Comparison:
    sel = Selection(selection.since_ns, selection.until_ns, selection.project,
                    kinds=("spans", "scores", "session_events"))
    summaries = []
    for name, opts in ((a, a_opts), (b, b_opts)):
        importer = _importer(pm, cfg, name, opts)
        summaries.append(summarize(name, importer.read(sel.options({})), sel))
    return compare(summaries[0], summaries[1], tolerance=tolerance)


def _print_comparison(result: Comparison) -> None:
    table = Table(title=f"compare {result.a.name} (A) vs {result.b.name} (B)")
    for col in ("", "A", "B", "B - A", "rel.", ""):
        table.add_column(col, justify="left" if not col else "right")
    for r in result.rows:
        rel = "-" if r.relative is None else f"{r.relative:.2%}"
        diff = "-" if r.diff is None else _fmt(r.diff)
        table.add_row(r.metric, _fmt(r.a), _fmt(r.b), diff, rel,
                      "[green]ok[/]" if r.ok else "[red]differs[/]")
    out.print(table)
    for side, n, examples in (("A", result.only_in_a, result.examples_a),
                              ("B", result.only_in_b, result.examples_b)):
        if n:
            out.print(f"{n} traces only in {side} ({getattr(result, side.lower()).name}), "
                      f"e.g. {', '.join(examples)}", highlight=False, soft_wrap=True,
                      markup=False)
    for s in (result.a, result.b):
        if s.unreadable:
            out.print(f"{s.name}: {s.unreadable} unreadable records not compared",
                      highlight=False)
    verdict = ("[green]same within tolerance[/]" if result.ok
               else "[red]differences beyond tolerance[/]")
    out.print(f"{verdict} (tolerance {result.tolerance:.2%})")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.6g}"
    return f"{int(value):,}"


@app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="First backend (read through its importer).")],
    b: Annotated[str, typer.Argument(help="Second backend.")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    project: Annotated[str | None, typer.Option(help="The project to read on both sides.")]
    = None,
    a_opt: Annotated[list[str] | None, typer.Option(
        "--a-opt", help="Setting key=value for A (repeatable).")] = None,
    b_opt: Annotated[list[str] | None, typer.Option(
        "--b-opt", help="Setting key=value for B (repeatable).")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Relative difference allowed "
                                                           "per figure (0.01 = 1%).")]
    = 0.01,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Compare two backends that ran side by side: counts, tokens, cost, latency.

    Exits 1 when a figure differs by more than the tolerance or a trace is on one
    side only.
    """
    cfg = config_or_fail(config)
    with _errors():
        pm = _plugin_manager()
        result = _compare(pm, cfg, a, b, parse_opts(a_opt, "--a-opt"),
                          parse_opts(b_opt, "--b-opt"), _selection(since, until, project),
                          tolerance=tolerance)
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
    else:
        _print_comparison(result)
    raise typer.Exit(0 if result.ok else 1)


if __name__ == "__main__":
    app()
