"""Export files as a whole: the formats, detecting one, reading and writing a file.

``vigil export`` writes with :func:`write_file`, the ``file`` importer reads with
:func:`read_file`; the formats themselves are :mod:`.jsonl` and OTLP/JSON
(:mod:`.otlp_json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import InputFileError
from ..model import Record, encode
from . import Skipped, record_kind
from .jsonl import read_jsonl
from .otlp_json import OtlpJsonCodec
from .otlp_json_read import read_otlp_json

__all__ = ["FORMATS", "ExportSummary", "detect_format", "read_file", "write_file"]

#: The file formats ``vigil export``/``vigil import`` know.
FORMATS: tuple[str, ...] = ("jsonl", "otlp-json")

#: What reading yields: a record, or a :class:`Skipped` for one that could not be read.
Item = Record | Skipped


def detect_format(path: Path) -> str:
    """``jsonl`` or ``otlp-json``, from the first non-blank line (then the file name).

    Raises:
        InputFileError: the file cannot be read.
    """
    try:
        with path.open("rb") as f:
            first = next((line for line in f if line.strip()), b"")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        obj = json.loads(first) if first else None
    except ValueError:
        obj = None
        if first.strip() == b"{" or path.suffix == ".json":
            return "otlp-json"
    if isinstance(obj, dict):
        if "resourceSpans" in obj or "resourceMetrics" in obj:
            return "otlp-json"
        if "type" in obj:
            return "jsonl"
    return "otlp-json" if path.suffix == ".json" else "jsonl"


def read_file(path: str | os.PathLike[str], fmt: str = "auto", *,
              codec: OtlpJsonCodec | None = None) -> Iterator[Item]:
    """Yield every record of an export file (and a :class:`Skipped` per bad line).

    Raises:
        InputFileError: the file does not exist or cannot be read, or ``fmt`` is unknown.
        MissingExtraError: an OTLP/JSON file without ``llmvigil[otlp]`` installed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "jsonl":
        yield from read_jsonl(p)
    elif fmt == "otlp-json":
        own = codec is None
        codec = codec or OtlpJsonCodec()
        try:
            yield from read_otlp_json(p, codec)
        finally:
            if own:
                codec.close()
    else:
        raise InputFileError(f"{p}: unknown format {fmt!r}; known formats: "
                             f"{', '.join(FORMATS)} (or auto)")


@dataclass
class ExportSummary:
    """What :func:`write_file` wrote: records per kind, and what it could not read."""

    path: str
    format: str
    written: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Records written, all kinds."""
        return sum(self.written.values())


def write_file(items: Iterable[Item], path: str | os.PathLike[str], fmt: str = "jsonl", *,
               service: str = "llmvigil", batch_size: int = 1000,
               on_record: Callable[[Item], None] | None = None) -> ExportSummary:
    """Write records to an export file, atomically (``-`` writes to standard output).

    ``Skipped`` items (what the reading side could not read) are counted in the
    summary, not written. ``on_record`` is called with every item (progress).

    Raises:
        InputFileError: ``fmt`` is unknown, or the file cannot be written.
        MissingExtraError: ``otlp-json`` without ``llmvigil[otlp]`` installed.
    """
    if fmt not in FORMATS:
        raise InputFileError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    codec = OtlpJsonCodec(service=service) if fmt == "otlp-json" else None
    summary = ExportSummary(str(path), fmt)
    try:
        with _atomic_output(path) as out:
            batch: list[Record] = []
            for item in items:
                if on_record is not None:
                    on_record(item)
                if isinstance(item, Skipped):
                    summary.skipped.append(item)
                    continue
                kind = record_kind(item)
                if kind is None:
                    summary.skipped.append(Skipped(f"not a record: {type(item).__name__}"))
                    continue
                summary.written[kind] += 1
                if codec is None:
                    out.write(encode(item))
                    out.write(b"\n")
                    continue
                batch.append(item)
                if len(batch) >= batch_size:
                    _write_lines(out, codec.encode(batch))
                    batch = []
            if batch and codec is not None:
                _write_lines(out, codec.encode(batch))
    finally:
        if codec is not None:
            codec.close()
    return summary


def _write_lines(out: IO[bytes], lines: Iterable[bytes]) -> None:
    for line in lines:
        out.write(line)
        out.write(b"\n")


@contextlib.contextmanager
def _atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` only once it is complete."""
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputFileError(f"{target}: is a directory; give a file name "
                             f"(e.g. {target / 'vigil-export.jsonl'})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise InputFileError(f"{target}: cannot write here: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
