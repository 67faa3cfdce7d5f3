"""``vigil review``: list, show and resolve the safety review queue.

The queue is the ``review_queue`` table of the local store (``store.path``, or
``monitors.safety.review.path``). Content is shown redacted with the categories of
``monitors.safety.review.redact`` (every PII category by default). A decision is
recorded in the queue and published to the configured backends as a Score (kind
``review``, source ``review``, label ``allow``/``block``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import err, fail
from .config import VigilConfig, load_config
from .errors import VigilError
from .redaction import Redactor
from .safety.review import ReviewError, ReviewItem, ReviewQueue, UnknownItem, review_score

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Review responses the safety layer flagged.")

out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $VIGIL_CONFIG, ./vigil.yaml)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store file holding the queue (default: "
                                 "monitors.safety.review.path, then store.path)."),
]


class Decision(str, Enum):
    """What a reviewer decides."""

    allow = "allow"
    block = "block"


class Status(str, Enum):
    """Which items to list."""

    open = "open"
    resolved = "resolved"
    all = "all"


def _setup(config: Path | None, store: Path | None) -> tuple[VigilConfig, Path, Redactor]:
    """The config, the queue's file and the redactor for displayed content."""
    from .monitors.safety import SafetySettings
    from .monitors.windows import parse_settings

    try:
        cfg = load_config(config)
        where = f"{cfg.source or 'config'}: monitors.safety"
        settings = parse_settings(SafetySettings, cfg.monitors.get("safety"), where)
    except VigilError as exc:
        raise fail(str(exc)) from None
    path = store or Path(settings.review.path or cfg.store.path)
    return cfg, path, Redactor(settings.review.redact)


def _open(path: Path) -> ReviewQueue:
    if ReviewQueue.peek_open_counts(path) is None:
        raise fail(f"no review queue in {path}: nothing was flagged for review yet "
                    "(or --store/store.path points elsewhere)", code=1)
    try:
        return ReviewQueue(path)
    except ReviewError as exc:
        raise fail(str(exc), code=1) from None


def _when(ns: int | None) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _as_dict(item: ReviewItem, redactor: Redactor) -> dict[str, Any]:
    data = {k: getattr(item, k) for k in item.__dataclass_fields__}
    data["prompt"] = redactor.text(item.prompt)
    data["response"] = redactor.text(item.response)
    data["reason"] = redactor.text(item.reason)
    return data


@app.command("list")
def list_items(
    status: Annotated[Status, typer.Option(help="Which items to list.")] = Status.open,
    feature: Annotated[str | None, typer.Option(help="Only items of this feature.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many items.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """List review items, oldest first (open ones by default)."""
    _cfg, path, redactor = _setup(config, store)
    if ReviewQueue.peek_open_counts(path) is None:
        if as_json:
            out.print_json("[]")
        else:
            out.print(f"no review queue in {path} yet: nothing was flagged for review",
                      soft_wrap=True, highlight=False)
        return
    with _open(path) as queue:
        items = queue.items(None if status is Status.all else status.value, feature=feature,
                            limit=limit)
    if as_json:
        out.print_json(json.dumps([_as_dict(i, redactor) for i in items]))
        return
    if not items:
        out.print(f"no {'' if status is Status.all else status.value + ' '}review items "
                  f"in {path}", soft_wrap=True, highlight=False)
        return
    table = Table(title=f"review queue ({status.value})")
    for col in ("id", "created", "status", "by", "action", "category", "feature", "reason",
                "decision"):
        table.add_column(col, overflow="fold", min_width=16 if col == "reason" else None)
    for i in items:
        table.add_row(str(i.id), _when(i.created_ns)[5:16], i.status, i.source, i.action,
                      i.category or "-", i.feature or "-",
                      _short(redactor.text(i.reason), 60), i.decision or "-")
    out.print(table)


@app.command()
def show(
    item_id: Annotated[int, typer.Argument(help="The item's id (see list).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Show one item: why it was flagged, its links and its (redacted) content."""
    _cfg, path, redactor = _setup(config, store)
    with _open(path) as queue:
        try:
            item = queue.get(item_id)
        except UnknownItem as exc:
            raise fail(str(exc)) from None
    data = _as_dict(item, redactor)
    if as_json:
        out.print_json(json.dumps(data))
        return
    rows = [
        ("id", item.id), ("status", item.status), ("created", _when(item.created_ns)),
        ("flagged by", f"{item.source} ({item.decided_by or '-'})"), ("action", item.action),
        ("category", item.category or "-"), ("reason", data["reason"]),
        ("feature", item.feature or "-"), ("user", item.user_id or "-"),
        ("trace", item.trace_id or "-"), ("span", item.span_id or "-"),
        ("verdict", item.verdict_id or "-"),
    ]
    if item.status == "resolved":
        rows += [("decision", item.decision), ("note", item.note or "-"),
                 ("reviewer", item.reviewer or "-"), ("resolved", _when(item.resolved_ns)),
                 ("score", item.score_id or "-")]
    for key, value in rows:
        out.print(f"{key:>11}: {value}", markup=False, highlight=False)
    for label in ("prompt", "response"):
        out.print(f"\n--- {label} ---", markup=False, highlight=False)
        out.print(data[label] or "(empty)", markup=False, highlight=False, soft_wrap=True)


@app.command()
def resolve(
    item_id: Annotated[int, typer.Argument(help="The item's id (see list).")],
    decision: Annotated[Decision, typer.Option(help="allow: the response was fine; "
                                                    "block: it was not.")],
    note: Annotated[str, typer.Option(help="Why; kept with the decision.")] = "",
    reviewer: Annotated[str | None, typer.Option(help="Who decides (default: the OS user).")]
    = None,
    force: Annotated[bool, typer.Option(help="Change the decision of a resolved item.")]
    = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Record a decision and publish it to the backends as a review Score."""
    from . import capture, runtime

    _cfg, path, _redactor = _setup(config, store)
    who = reviewer or _os_user()
    with _open(path) as queue:
        try:
            item = queue.get(item_id)
        except UnknownItem as exc:
            raise fail(str(exc)) from None
        if item.status == "resolved" and not force:
            raise fail(f"review item {item_id} was already resolved as {item.decision!r}; "
                        "pass --force to change the decision", code=1)
        try:
            rt = runtime.init(config)
        except VigilError as exc:
            raise fail(str(exc)) from None
        try:
            score = review_score(item, decision.value, note, who)
            item = queue.resolve(item_id, decision.value, note, reviewer=who,
                                 score_id=score.id, force=force)
            score.metadata["review_id"] = item.id
            capture.emit(score)
            delivered = rt.pipeline.flush(10.0)
            backends = ", ".join(box.name for box in rt.pipeline.outboxes) or "(none)"
        except ReviewError as exc:
            raise fail(str(exc), code=1) from None
        finally:
            runtime.shutdown()
    out.print(f"item {item.id}: {decision.value} (reviewer {who or '-'}); "
              f"score {score.id} published to {backends}", highlight=False, soft_wrap=True)
    if not delivered:
        err.print("warning: not every backend confirmed delivery in time; the score is "
                  "journaled and re-sent by the next llmvigil process", highlight=False,
                  soft_wrap=True)


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER")
