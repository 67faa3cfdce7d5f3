"""The W&B importer: llmvigil's W&B runs, read back as llmvigil records.

Where the records come from (see :mod:`llmvigil.adapters.wandb` for where they went):

* **metrics**: the run history. Each ``monitor/<name>{label=value,...}`` key of a row
  is one :class:`Metric` (name and labels parsed back from the key), at the row's
  ``llmvigil/time`` (epoch seconds; the row's ``_timestamp`` when it has none).
* **spans, scores, session events, safety verdicts and alerts**: the rows of every
  ``llmvigil/spans``, ``llmvigil/scores``, ``llmvigil/session_events``,
  ``llmvigil/safety_verdicts`` and ``llmvigil/alerts`` table logged in the history.

Two ways to read a run:

* **offline** (``mode: offline``, or a ``path``): the runs' own files. The ``.wandb``
  transaction log is read with wandb's reader, ``wandb leet inspect --json`` (streamed,
  one record a line), and the tables from the run's ``files/`` directory. ``path`` is
  a ``.wandb`` file, a run directory or a wandb directory (default ``<dir>/wandb`` with
  ``dir`` from the setting or ``WANDB_DIR``, else ``.``), in which every ``run-*`` and
  ``offline-run-*`` run of the project is read.
* **online** (``mode: online``, the default, as for the backend): the W&B public API,
  ``wandb.Api().runs(entity/project)`` (or ``.run(entity/project/run_id)``), each run's
  ``scan_history()`` and its table files through ``run.file(path).download()``.

What W&B keeps, and so what comes back (the backend's capability notes): ids, trace
ids and parent ids exactly; span start to W&B's table precision (the millisecond, as
ISO text) and the end as start + the exact duration; scores and other records at the
millisecond; metric times to the microsecond, and a metric logged in the same second
as another one shares that one's row and time; no stream statistics, price source,
error type, response model or id, operation, stop reason or free attributes; metric
window and unit are not kept (``0.0``/``None``); metric ids are derived from the name,
labels, time and value; a span input or output that was text looking like a JSON
object or array comes back decoded; tags containing a comma come back split.

W&B tables append: a batch delivered twice (a journal replay, possibly into another
run) is there twice. Records are deduplicated on their ids (metrics on name, labels,
time and value), counted in :attr:`WandbImporter.duplicates`. To yield each kind in
``(time, id)`` order, the importer collects the selected records of the selected runs
before yielding them: its memory grows with the size of the selection.

Bad data is never fatal: a table row or history value that cannot be mapped, a table
file that is missing or unreadable, or corrupt data that wandb's reader skipped comes
as a :class:`~llmvigil.core.migrate.Skipped` naming it, counted in
:attr:`WandbImporter.skipped`. A run that cannot be read at all (the reader fails, the
API errors) raises :class:`WandbReadError` naming the run and the last step read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, MissingExtraError
from ..core.migrate import Skipped, record_key
from ..core.model import (
    SPAN_KINDS,
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    Usage,
)
from ..plugins.hookspecs import hookimpl
from ..plugins.types import RECORD_KINDS, ImporterInfo
from ._common import (
    BadRecord,
    ImporterReadError,
    Problems,
    checked_str,
    iso_time_us_ns,
    json_object,
    past_resume_point,
    setting,
    wanted_kinds,
)

__all__ = ["WandbImporter", "WandbReadError", "parse_metric_key", "table_row_to_record"]

_log = logging.getLogger("llmvigil.importers.wandb")

TIME_KEY = "llmvigil/time"
METRIC_PREFIX = "monitor/"
#: History key of each table -> the record kind its rows are.
TABLES: dict[str, str] = {
    "llmvigil/spans": "spans", "llmvigil/scores": "scores",
    "llmvigil/session_events": "session_events",
    "llmvigil/safety_verdicts": "safety_verdicts", "llmvigil/alerts": "alerts",
}
_KIND_OF = {Span: "spans", Score: "scores", SessionEvent: "session_events",
            SafetyVerdict: "safety_verdicts", Alert: "alerts", Metric: "metrics"}

Item = Record | Skipped


class WandbReadError(ImporterReadError):
    """A run could not be read (wandb's reader failed, or the W&B API errored).

    The message names the run and the last history step read from it.
    """

    def __init__(self, message: str, *, run: str, step: int | None) -> None:
        super().__init__(message)
        self.run = run
        self.step = step


# -- small parsers ----------------------------------------------------------------------


def _seconds_ns(value: Any, what: str) -> int:
    """Epoch seconds (a float) as ns, to the microsecond a float of today can hold."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise BadRecord(f"{what} is not a time in epoch seconds ({value!r})")
    return round(value * 1e6) * 1000


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise BadRecord(f"{what} is not a number ({value!r})")
    return float(value)


def _count(value: Any, what: str) -> int:
    number = _number(value, what)
    if number is None:
        return 0
    if number < 0 or number != int(number):
        raise BadRecord(f"{what} is not a token count ({value!r})")
    return int(number)


def _json_object(value: Any, what: str) -> dict[str, Any]:
    # W&B tables hold an empty cell as "".
    return json_object(None if value == "" else value, what)


def _content(value: Any) -> Any:
    """A table's content text: JSON objects and arrays decoded, other text as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_metric_key(key: str) -> tuple[str, dict[str, str]]:
    """``monitor/name{a=1,b=2}`` -> ``("name", {"a": "1", "b": "2"})``.

    The backend writes the labels sorted by name, so a piece after a comma starts a new
    label only when it is ``name=...`` with a name after the previous one; otherwise the
    comma was inside a value.

    Raises:
        BadRecord: ``key`` is not a ``monitor/`` key.
    """
    if not key.startswith(METRIC_PREFIX):
        raise BadRecord(f"{key!r} is not a {METRIC_PREFIX} key")
    body = key[len(METRIC_PREFIX):]
    brace = body.find("{")
    if brace < 0 or not body.endswith("}"):
        return body, {}
    name, inner = body[:brace], body[brace + 1:-1]
    labels: dict[str, str] = {}
    last: str | None = None
    for piece in inner.split(","):
        k, sep, v = piece.partition("=")
        if sep and k and (last is None or k > last):
            labels[k] = v
            last = k
        elif last is not None:
            labels[last] += "," + piece
        else:
            raise BadRecord(f"metric key {key!r}: labels are not name=value")
    return name, labels


def _derived_id(*parts: str) -> str:
    return hashlib.blake2b(":".join(parts).encode(), digest_size=8).hexdigest()


def metric_id(name: str, labels: Mapping[str, str], time_ns: int, value: float) -> str:
    """The id of a metric read back (W&B keeps none): stable for its name, labels, time
    and value, so a re-delivered one has the id of the first."""
    return _derived_id("wandb-metric", name, json.dumps(sorted(labels.items())),
                       str(time_ns), repr(value))


# -- table rows -> records ------------------------------------------------------------------


def _span(row: Mapping[str, Any]) -> Span:
    span_id, trace_id = row.get("span_id"), row.get("trace_id")
    if not isinstance(span_id, str) or not span_id:
        raise BadRecord("span_id is missing")
    if not isinstance(trace_id, str) or not trace_id:
        raise BadRecord("trace_id is missing")
    start_ns = iso_time_us_ns(row.get("start"), "start")
    duration = _number(row.get("duration_s"), "duration_s") or 0.0
    tokens = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    usage = None
    if any(row.get(t) is not None for t in tokens):
        usage = Usage(*(_count(row.get(t), t) for t in tokens))
    tags = checked_str(row.get("tags"), "tags")
    kind = checked_str(row.get("kind"), "kind") or "span"
    status = checked_str(row.get("status"), "status") or "unset"
    return Span(
        id=span_id, trace_id=trace_id, parent_id=checked_str(row.get("parent_id"), "parent_id"),
        name=checked_str(row.get("name"), "name") or "",
        kind=sys.intern(kind) if kind in SPAN_KINDS else "span",
        start_ns=start_ns, end_ns=start_ns + round(duration * 1e9),
        status=sys.intern(status), error=checked_str(row.get("error"), "error"),
        input=_content(row.get("input")), output=_content(row.get("output")),
        model=checked_str(row.get("model"), "model"),
        provider=checked_str(row.get("provider"), "provider"),
        usage=usage, cost_usd=_number(row.get("cost_usd"), "cost_usd"),
        ttft_s=_number(row.get("ttft_s"), "ttft_s"),
        user_id=checked_str(row.get("user_id"), "user_id"),
        session_id=checked_str(row.get("session_id"), "session_id"),
        feature=checked_str(row.get("feature"), "feature"),
        environment=checked_str(row.get("environment"), "environment"),
        release=checked_str(row.get("release"), "release"),
        tags=tags.split(",") if tags else [], metadata=_json_object(row.get("metadata"),
                                                                    "metadata"))


def _id(row: Mapping[str, Any]) -> str:
    rid = row.get("id")
    if not isinstance(rid, str) or not rid:
        raise BadRecord("id is missing")
    return rid


def _score(row: Mapping[str, Any]) -> Score:
    name = checked_str(row.get("name"), "name")
    if name is None:
        raise BadRecord("name is missing")
    return Score(
        id=_id(row), name=name, time_ns=iso_time_us_ns(row.get("time"), "time"),
        trace_id=checked_str(row.get("trace_id"), "trace_id"),
        span_id=checked_str(row.get("span_id"), "span_id"),
        kind=sys.intern(checked_str(row.get("kind"), "kind") or "custom"),
        value=_number(row.get("value"), "value"), label=checked_str(row.get("label"), "label"),
        category=checked_str(row.get("category"), "category"),
        correction=checked_str(row.get("correction"), "correction"),
        comment=checked_str(row.get("comment"), "comment"),
        source=sys.intern(checked_str(row.get("source"), "source") or "api"),
        user_id=checked_str(row.get("user_id"), "user_id"),
        session_id=checked_str(row.get("session_id"), "session_id"),
        feature=checked_str(row.get("feature"), "feature"),
        metadata=_json_object(row.get("metadata"), "metadata"))


def _session_event(row: Mapping[str, Any]) -> SessionEvent:
    session, event = checked_str(row.get("session_id"), "session_id"), checked_str(row.get("event"),
                                                                       "event")
    if session is None or event is None:
        raise BadRecord("session_id or event is missing")
    return SessionEvent(
        id=_id(row), session_id=session, event=event, time_ns=iso_time_us_ns(row.get("time"),
                                                                          "time"),
        user_id=checked_str(row.get("user_id"), "user_id"),
        trace_id=checked_str(row.get("trace_id"), "trace_id"),
        feature=checked_str(row.get("feature"), "feature"),
        metadata=_json_object(row.get("metadata"), "metadata"))


def _safety_verdict(row: Mapping[str, Any]) -> SafetyVerdict:
    action = checked_str(row.get("action"), "action")
    if action is None:
        raise BadRecord("action is missing")
    return SafetyVerdict(
        id=_id(row), action=action, time_ns=iso_time_us_ns(row.get("time"), "time"),
        reason=checked_str(row.get("reason"), "reason") or "",
        category=checked_str(row.get("category"), "category"),
        decided_by=checked_str(row.get("decided_by"), "decided_by"),
        trace_id=checked_str(row.get("trace_id"), "trace_id"),
        span_id=checked_str(row.get("span_id"), "span_id"),
        metadata=_json_object(row.get("metadata"), "metadata"))


def _alert(row: Mapping[str, Any]) -> Alert:
    rule = checked_str(row.get("rule"), "rule")
    severity = checked_str(row.get("severity"), "severity")
    if rule is None or severity is None:
        raise BadRecord("rule or severity is missing")
    labels = _json_object(row.get("labels"), "labels")
    return Alert(
        id=_id(row), rule=rule, severity=severity,
        message=checked_str(row.get("message"), "message") or "",
        time_ns=iso_time_us_ns(row.get("time"), "time"), value=_number(row.get("value"), "value"),
        threshold=_number(row.get("threshold"), "threshold"),
        labels={str(k): str(v) for k, v in labels.items()})


_ROW_MAPPERS: dict[str, Callable[[Mapping[str, Any]], Record]] = {
    "spans": _span, "scores": _score, "session_events": _session_event,
    "safety_verdicts": _safety_verdict, "alerts": _alert,
}


def table_row_to_record(kind: str, row: Mapping[str, Any]) -> Record:
    """One row (column name -> value) of the ``kind`` table as its record.

    Raises:
        BadRecord: the row cannot be mapped; the message says why.
    """
    return _ROW_MAPPERS[kind](row)


# -- sources: where the history rows and table files come from -------------------------------


@dataclass
class _Run:
    """One run to read: a label, its history rows, how to load a table file, and the
    problems its reader reported once the history is exhausted."""

    label: str
    history: Callable[[], Iterator[dict[str, Any]]]
    load_table: Callable[[str], Any]
    problems: Callable[[], list[str]]


def _table_refs(item: Mapping[str, Any]) -> Iterator[tuple[str, str | None]]:
    """``(table key, file path)`` of the llmvigil tables a history row refers to, in the
    nested form of the API and the dotted form of ``wandb leet``."""
    for key in TABLES:
        value = item.get(key)
        if isinstance(value, dict) and value.get("_type") == "table-file":
            yield key, checked_str(value.get("path"), f"{key}.path")
        elif item.get(f"{key}._type") == "table-file":
            yield key, checked_str(item.get(f"{key}.path"), f"{key}.path")


def _wandb_files(root: Path) -> list[Path]:
    """The transaction logs under ``root`` (a file, a run dir or a wandb dir), by name."""
    if root.is_file():
        return [root]
    if not root.exists():
        raise ConfigError(f"importer wandb: {root} does not exist (give path=<a .wandb file, "
                          "a run directory or a wandb directory>)")
    here = sorted(root.glob("run-*.wandb"))
    if here:
        return here
    base = root / "wandb" if (root / "wandb").is_dir() else root
    return sorted(p for pattern in ("run-*/run-*.wandb", "offline-run-*/run-*.wandb")
                  for p in base.glob(pattern))


class _LeetReader:
    """Streams the records of a ``.wandb`` file through ``wandb leet inspect --json``."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.stderr = ""
        self.last_num: int | None = None
        #: Problems met while decoding the reader's output.
        self.notes: list[str] = []

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield each decoded record; a line that is not JSON is skipped (and noted).

        Raises:
            WandbReadError: the reader failed.
        """
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(self.path)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                env={**os.environ, "WANDB_SILENT": "true"})
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        self.notes.append(f"a line of wandb leet inspect that is not JSON, "
                                          f"after record {self.last_num}")
                        continue
                    if isinstance(record, dict):
                        num = record.get("num")
                        self.last_num = num if isinstance(num, int) else self.last_num
                        yield record
                returncode = proc.wait(self.timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            err.seek(0)
            self.stderr = err.read()
        if "incomplete .wandb file" in self.stderr:
            _log.info("wandb importer: %s ends mid-record (the run may still be active)",
                      self.path)
        if returncode != 0:
            raise WandbReadError(
                f"W&B run file {self.path}: wandb leet inspect failed (exit {returncode}) "
                f"after record {self.last_num}: {self.stderr.strip()[-500:]}",
                run=str(self.path), step=None)


# -- the importer ---------------------------------------------------------------------------


class WandbImporter:
    """Reads llmvigil's W&B runs back (see the module docstring).

    Settings (the ``wandb`` backend's, see :class:`~llmvigil.adapters.wandb.
    WandbBackend`): ``mode`` (``online`` default, or ``offline``; env ``WANDB_MODE``),
    ``project`` (env ``WANDB_PROJECT``, default ``llmvigil``), ``entity`` (env
    ``WANDB_ENTITY``), ``dir`` (env ``WANDB_DIR``), ``run_id`` (read only that run),
    ``group`` (online: only the runs of that group), ``api_key`` (env
    ``WANDB_API_KEY``), ``base_url`` (env ``WANDB_BASE_URL``), plus ``path`` (offline:
    a ``.wandb`` file, a run directory or a wandb directory; implies offline) and
    ``timeout_s`` (per API call or reader run, default 120).

    After :meth:`read`, ``skipped`` counts the records skipped per reason and
    ``duplicates`` the rows met again (re-delivered batches).

    Raises:
        MissingExtraError: the ``wandb`` package is not installed.
        ConfigError: a setting is invalid.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            import wandb  # noqa: F401  (the reader and the API are wandb's)
        except ImportError as exc:
            raise MissingExtraError("wandb", "wandb", exc.name or "wandb") from exc
        path = setting(settings, "path")
        self.path = Path(path).expanduser() if path else None
        mode = (setting(settings, "mode", "WANDB_MODE") or "online").lower()
        mode = "offline" if self.path is not None or mode == "dryrun" else mode
        if mode not in ("online", "offline"):
            raise ConfigError(f"importer wandb: mode must be online or offline, got {mode!r}")
        self.mode = mode
        self.project = setting(settings, "project", "WANDB_PROJECT")
        self.entity = setting(settings, "entity", "WANDB_ENTITY")
        self.dir = setting(settings, "dir", "WANDB_DIR")
        self.run_id = setting(settings, "run_id")
        self.group = setting(settings, "group")
        self._api_key = setting(settings, "api_key", "WANDB_API_KEY")
        self.base_url = setting(settings, "base_url", "WANDB_BASE_URL")
        try:
            self.timeout_s = float(settings.get("timeout_s", 120.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"importer wandb: timeout_s: {exc}") from None
        #: Records not imported, by reason (filled by :meth:`read`).
        self.skipped: Counter[str] = Counter()
        #: Rows met again (a batch delivered twice), by record kind.
        self.duplicates: Counter[str] = Counter()
        #: Runs read by the last :meth:`read`.
        self.runs_read: list[str] = []

    def __repr__(self) -> str:
        where = self.path or (f"{self.entity}/{self.project}" if self.entity else self.project)
        return f"<WandbImporter {self.mode} {where}>"

    # -- runs ------------------------------------------------------------------------------

    def _offline_runs(self, project: str | None) -> Iterator[_Run]:
        root = self.path or Path(self.dir or ".").expanduser() / "wandb"
        explicit = self.path is not None and (root.is_file() or
                                              any(root.glob("run-*.wandb")))
        if project is None and not explicit:
            project = "llmvigil"  # the backend's default project
        for file in _wandb_files(root):
            reader = _LeetReader(file, self.timeout_s)
            run_dir = file.parent
            yield self._offline_run(file, run_dir, reader, project)

    def _offline_run(self, file: Path, run_dir: Path, reader: _LeetReader,
                     project: str | None) -> _Run:
        def history() -> Iterator[dict[str, Any]]:
            for record in reader.records():
                kind = record.get("type")
                if kind == "run":
                    run = record.get("run") or {}
                    if (project is not None and run.get("project") != project) or \
                            (self.run_id is not None and run.get("run_id") != self.run_id):
                        return  # another project's run: stop its reader
                elif kind == "history":
                    item = (record.get("history") or {}).get("item")
                    if isinstance(item, dict):
                        yield item

        def load_table(path: str) -> Any:
            target = (run_dir / "files" / path).resolve()
            if run_dir.resolve() not in target.parents:
                raise BadRecord(f"table path {path!r} leaves the run directory")
            try:
                return json.loads(target.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise BadRecord(f"table file {path} is missing from {run_dir / 'files'}") from None
            except (OSError, ValueError) as exc:
                raise BadRecord(f"table file {path} is unreadable ({exc})") from None

        def problems() -> list[str]:
            return [*(line.strip() for line in reader.stderr.splitlines()
                      if "skipped corrupt data" in line), *reader.notes]

        return _Run(label=f"W&B run file {file}", history=history, load_table=load_table,
                    problems=problems)

    def _online_runs(self, project: str | None) -> Iterator[_Run]:
        import wandb

        project = project or "llmvigil"
        overrides = {"base_url": self.base_url} if self.base_url else None
        try:
            api = wandb.Api(overrides=overrides, timeout=max(1, round(self.timeout_s)),
                            api_key=self._api_key)
            where = f"{self.entity}/{project}" if self.entity else project
            if self.run_id:
                runs: Iterable[Any] = [api.run(f"{where}/{self.run_id}")]
            else:
                runs = api.runs(where, filters={"group": self.group} if self.group else None)
            for run in runs:
                yield self._online_run(run, where)
        except WandbReadError:
            raise
        except Exception as exc:
            raise WandbReadError(f"W&B {self.base_url or 'default server'}: listing the runs "
                                 f"of {project!r} failed: {type(exc).__name__}: {exc}",
                                 run=project, step=None) from exc

    def _online_run(self, run: Any, where: str) -> _Run:
        label = f"W&B run {where}/{run.id}"
        tmp = tempfile.mkdtemp(prefix="llmvigil-wandb-")
        last_step: list[int | None] = [None]

        def history() -> Iterator[dict[str, Any]]:
            try:
                for row in run.scan_history(page_size=1000):
                    step = row.get("_step")
                    last_step[0] = step if isinstance(step, int) else last_step[0]
                    yield row
            except Exception as exc:
                raise WandbReadError(
                    f"{label}: reading the history failed after step {last_step[0]}: "
                    f"{type(exc).__name__}: {exc}", run=label, step=last_step[0]) from exc

        def load_table(path: str) -> Any:
            try:
                with run.file(path).download(root=tmp, replace=True) as f:
                    return json.load(f)
            except ValueError as exc:
                raise BadRecord(f"table file {path} is unreadable ({exc})") from None
            except Exception as exc:
                raise BadRecord(f"table file {path} could not be downloaded "
                           f"({type(exc).__name__}: {exc})") from None

        return _Run(label=label, history=history, load_table=load_table,
                    problems=lambda: [])

    # -- reading ---------------------------------------------------------------------------

    def estimate(self, options: Mapping[str, Any]) -> int | None:
        """``None``: counting the rows of W&B tables means reading them."""
        return None

    #: The brief's name for :meth:`estimate`.
    total = estimate

    def read(self, options: Mapping[str, Any]) -> Iterator[Item]:
        """Yield the selected records: spans first, then every other kind, each in
        ``(time, id)`` order, honouring ``since_ns``/``until_ns`` (spans by start, other
        records by their time), ``project``, ``kinds``, ``after`` and ``limit``. Bad
        records come as :class:`Skipped` (before the records).

        Raises (from the generator):
            WandbReadError: a run could not be read; ConfigError: no such path.
        """
        kinds = wanted_kinds(options)
        project = setting(options, "project") or self.project
        self.skipped.clear()
        self.duplicates.clear()
        self.runs_read = []
        runs = self._offline_runs(project) if self.mode == "offline" \
            else self._online_runs(project)
        return self._read(runs, options, kinds)

    def _read(self, runs: Iterator[_Run], options: Mapping[str, Any],
              kinds: set[str]) -> Iterator[Item]:
        found: dict[str, dict[str, Record]] = {k: {} for k in RECORD_KINDS}
        problems = Problems(_log, "wandb importer", "skipped", self.skipped)
        for run in runs:
            yield from self._collect(run, options, kinds, found, problems)
        after = options.get("after") or {}
        limit = options.get("limit")
        n = 0
        ordered = ["spans", *(k for k in RECORD_KINDS if k != "spans")]
        for kind in ordered:
            mark = after.get(kind)
            for record in sorted(found[kind].values(), key=record_key):
                if not past_resume_point(record, mark):
                    continue
                yield record
                n += 1
                if limit is not None and n >= limit:
                    return

    def _collect(self, run: _Run, options: Mapping[str, Any], kinds: set[str],
                 found: dict[str, dict[str, Record]], problems: Problems) -> Iterator[Skipped]:
        since, until = options.get("since_ns"), options.get("until_ns")

        def keep(record: Record) -> None:
            kind = _KIND_OF[type(record)]
            t = record.start_ns if isinstance(record, Span) else record.time_ns
            if (since is not None and t < since) or (until is not None and t >= until):
                return
            if record.id in found[kind]:
                self.duplicates[kind] += 1
                return
            found[kind][record.id] = record

        def skip(reason: str, where: str, rid: str | None, kind: str | None) -> Skipped:
            problems.add(reason, f"{where}" + (f", record {rid}" if rid else ""))
            return Skipped(reason, where, rid, kind)

        read_any = False
        loaded: set[str] = set()
        for step, item in enumerate(run.history()):
            read_any = True
            where = f"{run.label}, step {item.get('_step', step)}"
            if "metrics" in kinds:
                yield from self._metrics(item, where, keep, skip)
            for key, path in _table_refs(item):
                kind = TABLES[key]
                if kind not in kinds:
                    continue
                if path is None:
                    yield skip(f"{key}: a table reference without a file path", where, None,
                               kind)
                    continue
                if path in loaded:
                    continue
                loaded.add(path)
                yield from self._table(run, kind, path, where, keep, skip)
        for problem in run.problems():
            yield skip(f"corrupt data skipped by wandb's reader: {problem}", run.label, None,
                       None)
        if read_any:
            self.runs_read.append(run.label)

    def _metrics(self, item: Mapping[str, Any], where: str, keep: Callable[[Record], None],
                 skip: Callable[[str, str, str | None, str | None], Skipped]
                 ) -> Iterator[Skipped]:
        keys = [k for k in item if k.startswith(METRIC_PREFIX)]
        if not keys:
            return
        try:
            stamp = item.get(TIME_KEY, item.get("_timestamp"))
            time_ns = _seconds_ns(stamp, TIME_KEY)
        except BadRecord as exc:
            yield skip(f"metrics row: {exc}", where, None, "metrics")
            return
        for key in keys:
            try:
                name, labels = parse_metric_key(key)
                value = _number(item[key], key)
                if value is None:
                    raise BadRecord(f"{key} has no value")
            except BadRecord as exc:
                yield skip(f"metric: {exc}", where, None, "metrics")
                continue
            keep(Metric(id=metric_id(name, labels, time_ns, value), name=name, value=value,
                        time_ns=time_ns, labels=labels))

    def _table(self, run: _Run, kind: str, path: str, where: str,
               keep: Callable[[Record], None],
               skip: Callable[[str, str, str | None, str | None], Skipped]
               ) -> Iterator[Skipped]:
        where = f"{where}, {path}"
        try:
            data = run.load_table(path)
            columns, rows = data.get("columns"), data.get("data")
            if not isinstance(columns, list) or not isinstance(rows, list):
                raise BadRecord(f"table file {path} has no columns/data")
        except (BadRecord, AttributeError) as exc:
            yield skip(str(exc) if isinstance(exc, BadRecord) else
                       f"table file {path} is not a table", where, None, kind)
            return
        id_column = "span_id" if kind == "spans" else "id"
        for i, values in enumerate(rows):
            whole = isinstance(values, list) and len(values) == len(columns)
            row = dict(zip(columns, values, strict=True)) if whole else {}
            rid = row.get(id_column)
            rid = str(rid) if rid else None
            try:
                if not whole:
                    raise BadRecord(f"the row does not match the {len(columns)} columns")
                record = table_row_to_record(kind, row)
            except BadRecord as exc:
                yield skip(f"malformed {kind} row: {exc}", f"{where}, row {i}", rid, kind)
                continue
            keep(record)


@hookimpl
def llmvigil_importers() -> list[ImporterInfo]:
    return [ImporterInfo(name="wandb", factory=WandbImporter,
                         description="Weights & Biases: monitor/* history as metrics, "
                                     "llmvigil/* tables as spans, scores and more",
                         extra="wandb")]
