"""The ``vigil`` command line: backends, config check, status and report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import config_or_fail, err, fail
from .config import VigilConfig
from .errors import VigilError

__all__ = ["app", "main"]

app = typer.Typer(
    name="vigil", no_args_is_help=True, add_completion=False,
    help="llmvigil: production monitoring for LLM applications.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate configuration.")
app.add_typer(config_app, name="config")

out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml)."),
]


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("vigil.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config (config.example.yaml) to PATH."""
    if path.exists() and not force:
        raise fail(f"{path} exists; pass --force to overwrite it")
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    shutil.copyfile(example, path)
    out.print(f"wrote {path}; edit its backends: list, then run [bold]vigil config check[/]")


@config_app.command("check")
def config_check(
    file: Annotated[Path | None, typer.Argument(help="Config file to check.")] = None,
    show: Annotated[bool, typer.Option(help="Print the effective config.")] = False,
) -> None:
    """Validate a config file (and environment overrides) without starting anything."""
    from ..plugins.manager import adapter_infos, new_plugin_manager

    cfg = config_or_fail(file)
    known = adapter_infos(new_plugin_manager())
    unknown = [b.name for b in cfg.backends if b.name not in known]
    if unknown:
        raise fail(
            f"{cfg.source or 'config'}: backends: unknown backend(s) {', '.join(unknown)}; "
            f"known backends: {', '.join(sorted(known))}"
        )
    if show:
        out.print_json(json.dumps(cfg.redacted_dict(), default=str))
    names = ", ".join(b.name for b in cfg.backends if b.enabled) or "(none)"
    out.print(f"[green]ok[/] {cfg.source or '(defaults)'}: backends {names}")


@app.command()
def backends(
    check: Annotated[bool, typer.Option(help="Test connectivity of configured backends.")] = False,
    markdown: Annotated[bool, typer.Option(help="Print the capability table as Markdown.")]
    = False,
    config: ConfigOpt = None,
) -> None:
    """List registered backend adapters and what each can hold."""
    from ..plugins.manager import adapter_infos, new_plugin_manager
    from ..plugins.types import RECORD_KINDS

    pm = new_plugin_manager()
    infos = adapter_infos(pm)
    if markdown:
        print(_capability_markdown(infos, RECORD_KINDS))
        return
    table = Table(title="backend adapters")
    table.add_column("name", style="bold")
    table.add_column("extra")
    for kind in RECORD_KINDS:
        table.add_column(kind.replace("_", " "))
    table.add_column("description")
    for name, info in sorted(infos.items()):
        marks = ["yes" if info.capabilities.can_hold(k) else "[red]no[/]" for k in RECORD_KINDS]
        table.add_row(name, info.extra or "-", *marks, info.description)
    out.print(table)
    if check:
        _check_backends(config, infos)


def _capability_markdown(infos: dict[str, Any], kinds: tuple[str, ...]) -> str:
    """The capability table: one row per adapter, one column per record kind."""
    lines = ["| backend | extra | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
             "|---|---|" + "---|" * len(kinds)]
    for name, info in sorted(infos.items()):
        cells = [info.capabilities.holds.get(k, "**not held**").replace("|", "/")
                 for k in kinds]
        lines.append(f"| `{name}` | {info.extra or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_backends(config: Path | None, infos: dict[str, Any]) -> None:
    from ..plugins.manager import backend_hooks

    cfg = config_or_fail(config)
    failed = False
    for bc in cfg.backends:
        if bc.name not in infos:
            err.print(f"[red]✗[/] {bc.name}: unknown backend; known: {', '.join(sorted(infos))}")
            failed = True
            continue
        settings = dict(bc.settings)
        if bc.name == "local":
            settings.setdefault("path", cfg.store.path)
            missing = _store_not_created(Path(str(settings["path"])).expanduser())
            if missing is not None:  # a check sends nothing, and creates nothing either
                ok, detail = missing
                (out if ok else err).print(f"{'[green]✓' if ok else '[red]✗'}[/] local: {detail}")
                failed = failed or not ok
                continue
        hooks = None
        try:
            hooks = backend_hooks(infos[bc.name].factory(settings), bc.key)
            detail = hooks.llmvigil_check(timeout_s=bc.timeout_s)
            out.print(f"[green]✓[/] {bc.name}: {detail or 'ok'}")
        except Exception as exc:
            err.print(f"[red]✗[/] {bc.name}: {exc}")
            failed = True
        finally:
            if hooks is not None:  # a `writer: process` child, connections
                with contextlib.suppress(Exception):
                    hooks.llmvigil_shutdown(timeout_s=bc.timeout_s)
    if failed:
        raise typer.Exit(1)


def _store_not_created(path: Path) -> tuple[bool, str] | None:
    """``None`` when the local store exists; else whether its first write could create
    it (the nearest existing folder is writable), and what to print."""
    if path.exists():
        return None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return True, (f"SQLite store {path}: not created yet (the first record creates it; "
                      f"{folder} is writable)")
    return False, f"SQLite store {path}: cannot be created: {folder} is not writable"


def _status_files(cfg: VigilConfig) -> list[dict[str, Any]]:
    status_dir = Path(cfg.pipeline.journal_dir).parent / "status"
    found = []
    for path in sorted(status_dir.glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Pipeline and per-backend counters: delivered, retried, journaled, dropped."""
    from .journal import Journal

    cfg = config_or_fail(config)
    procs = _status_files(cfg)
    journal_root = Path(cfg.pipeline.journal_dir)
    journals = {}
    if journal_root.is_dir():
        for d in sorted(p for p in journal_root.iterdir() if p.is_dir()):
            j = Journal(d, cfg.pipeline.journal_max_bytes)
            journals[d.name] = {"batches": j.pending_count(), "bytes": j.size_bytes()}
    if as_json:
        out.print_json(json.dumps({"processes": procs, "journals": journals}))
        return
    if not procs and not journals:
        out.print(f"no llmvigil activity recorded under {journal_root.parent}")
        return
    for st in procs:
        age = (time.time_ns() - st.get("updated_ns", 0)) / 1e9
        alive = _pid_alive(int(st.get("pid", 0)))
        out.print(
            f"[bold]pid {st.get('pid')}[/] ({'running' if alive else 'exited'}, "
            f"updated {age:.0f}s ago): processed {st.get('processed', 0)}, queued "
            f"{st.get('queued', 0)}, dropped (queue full) {st.get('dropped_queue_full', 0)}, "
            f"spilled {st.get('spilled', 0)}, sampled out {st.get('sampled_out', 0)}"
        )
        table = Table()
        for col in ("backend", "delivered", "retried", "journaled", "replayed", "dropped",
                    "cannot hold", "backlog", "journal", "last error"):
            table.add_column(col)
        for name, c in st.get("backends", {}).items():
            table.add_row(
                name, *(str(c.get(k, 0)) for k in ("delivered", "retried", "journaled",
                                                    "replayed", "dropped", "cannot_hold",
                                                    "backlog")),
                f"{c.get('journal_batches', 0)} batches",
                str(c.get("journal_error") or c.get("last_error") or ""),
            )
        out.print(table)
    if journals:
        pending = ", ".join(f"{k}: {v['batches']} batches ({v['bytes']} B)"
                            for k, v in journals.items())
        out.print(f"journal on disk: {pending}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mount_subcommands() -> None:
    from .cli_canary import register as register_canary
    from .cli_demo import register as register_demo
    from .cli_migrate import app as migrate_app
    from .cli_report import report as report_command
    from .cli_review import app as review_app
    from .cli_serve import serve

    app.command("report")(report_command)
    register_canary(app)
    register_demo(app)
    app.add_typer(review_app, name="review")
    app.add_typer(migrate_app)  # export, import, migrate, compare
    app.command("serve")(serve)


_mount_subcommands()


def main() -> None:
    """Entry point of the ``vigil`` console script."""
    try:
        app()
    except VigilError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
