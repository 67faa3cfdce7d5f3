"""``vigil serve``: run the OTLP/HTTP collector (see :mod:`llmvigil.core.fleet.collector`).

Runnable on its own as ``python -m llmvigil.core.cli_serve serve ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import err
from .errors import VigilError

__all__ = ["app", "serve"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Receive OpenTelemetry traces and run llmvigil's monitors on them.")



@app.callback()
def _main() -> None:
    """Receive OpenTelemetry traces and run llmvigil's monitors on them."""


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        envvar="VIGIL_SERVE_HOST",
        help="Address to listen on. Only loopback unless given here on the command line "
             "(a non-loopback address from VIGIL_SERVE_HOST is refused).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="VIGIL_SERVE_PORT", min=0, max=65535,
                                      help="TCP port (0 picks a free one).")] = 4318,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml).")] = None,
    max_body_mb: Annotated[float, typer.Option(
        min=0.001, help="Largest request body, compressed or not (MiB).")] = 20.0,
    max_connections: Annotated[int, typer.Option(
        min=1, help="Connections served at once; more are answered 503.")] = 256,
    shutdown_timeout: Annotated[float, typer.Option(
        min=0.0, help="Seconds to drain requests and flush backends on SIGTERM.")] = 10.0,
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "WARNING",
) -> None:
    """Accept OTLP/HTTP traces on POST /v1/traces and feed them through llmvigil."""
    from .fleet.collector import is_loopback, run

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Compared by name: typer may hand back its own copy of click's ParameterSource.
    explicit = getattr(ctx.get_parameter_source("host"), "name", "") == "COMMANDLINE"
    if not is_loopback(host):
        if not explicit:
            err.print(f"[bold red]error:[/] refusing to listen on {host!r} from "
                      "VIGIL_SERVE_HOST: pass --host explicitly to listen on a network "
                      "interface", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        err.print(f"[bold yellow]warning:[/] listening on {host!r}, a non-loopback address: "
                  "anyone who can reach it can send traces, and OTLP carries prompts and "
                  "answers; put TLS and authentication in front of it", highlight=False,
                  soft_wrap=True)
    try:
        code = run(config, host, port, allow_remote=explicit,
                   max_body_bytes=int(max_body_mb * (1 << 20)),
                   max_connections=max_connections, shutdown_timeout_s=shutdown_timeout,
                   announce=lambda line: print(line, flush=True))
    except VigilError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
