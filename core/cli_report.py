"""``vigil report``: latency, cost, feedback, sessions, alerts and safety from the local store.

Mounted by :mod:`llmvigil.core.cli` as the ``report`` command. ``--json`` prints the
dict :func:`llmvigil.report` returns; ``--html FILE`` writes a self-contained page
with plots; otherwise the report is printed as tables.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .cli_common import config_or_fail, fail
from .errors import VigilError

__all__ = ["report"]

out = Console()


def _time(option: str, text: str | None) -> int | None:
    from .store_queries import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from None


def report(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    since: Annotated[str | None, typer.Option(help="Start of the range: 15m, 24h, 7d back "
                                                   "from now, or an ISO-8601 time.")] = None,
    until: Annotated[str | None, typer.Option(help="End of the range (exclusive), same "
                                                   "forms; default: the last record.")] = None,
    store: Annotated[str | None, typer.Option(help="Local store file (default: store.path "
                                                   "of the config), or a postgresql:// DSN "
                                                   "for the fleet's store.")] = None,
    html: Annotated[Path | None, typer.Option("--html", metavar="FILE",
                                              help="Write a self-contained HTML page with "
                                                   "plots to FILE.")] = None,
) -> None:
    """Latency, cost, feedback, sessions, alerts and safety per feature, from the local store."""
    from .report import build_report

    cfg = config_or_fail(config)
    since_ns, until_ns = _time("--since", since), _time("--until", until)
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        raise fail(f"--until ({until}) must be after --since ({since})")
    if store is not None:
        from .store_postgres import is_postgres_dsn

        if is_postgres_dsn(store):
            _postgres_report(store, since_ns, until_ns, as_json, html)
            return
    path = Path(store) if store else Path(cfg.store.path)
    try:
        data = build_report(path, since_ns=since_ns, until_ns=until_ns,
                            feedback=cfg.monitors.get("feedback"),
                            sessions=cfg.monitors.get("sessions"))
    except FileNotFoundError as exc:
        raise fail(str(exc), code=1) from None
    except (VigilError, sqlite3.DatabaseError) as exc:
        raise fail(str(exc)) from None
    if html is not None:
        from .report.html import render_html

        try:
            html.write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            raise fail(f"--html {html}: cannot write the page: {exc.strerror or exc}") from None
        if not as_json:
            out.print(f"wrote {escape(str(html))}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif html is None:
        from .report.tables import render

        render(data, out)


def _postgres_report(dsn: str, since_ns: int | None, until_ns: int | None, as_json: bool,
                     html: Path | None) -> None:
    """The fleet store's summary: per-feature requests, errors, latency, tokens, cost."""
    from . import store_postgres

    if until_ns is not None or html is not None:
        raise fail("--until and --html read the local store; with a postgresql:// store "
                    "use --since, --json or the table")
    try:
        data = store_postgres.report(dsn, since_ns=since_ns)
    except VigilError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"llmvigil report: {data['path']}")
    for col in ("feature", "requests", "errors", "p50 s", "p95 s", "tokens in", "out", "USD"):
        table.add_column(col, justify="left" if col == "feature" else "right", no_wrap=True)
    rows = [*data.get("features", {}).items(), ("all", data.get("totals", {}))]
    for name, f in rows:
        table.add_row(name, str(f.get("requests", 0)), str(f.get("errors", 0)),
                      _num(f.get("latency_p50_s")), _num(f.get("latency_p95_s")),
                      str(f.get("input_tokens", 0)), str(f.get("output_tokens", 0)),
                      _num(f.get("cost_usd"), ".4f"))
    out.print(table)


def _num(value: object, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)
