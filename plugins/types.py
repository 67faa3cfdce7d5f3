"""The small value types that plugins return from the discovery hooks."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..core.migrate import Skipped
    from ..core.model import Alert, Record

__all__ = [
    "RECORD_KINDS",
    "AdapterInfo",
    "AlertSinkInfo",
    "Capabilities",
    "EmbedderInfo",
    "ExportResult",
    "Importer",
    "ImporterInfo",
    "Price",
    "SafetyJudgeInfo",
]

#: The record types a backend may hold, as named in capability tables.
RECORD_KINDS: tuple[str, ...] = (
    "spans", "scores", "session_events", "metrics", "alerts", "safety_verdicts",
)


class ExportResult(enum.Enum):
    """What an export hook tells its outbox about a batch."""

    #: Delivered; the outbox forgets the batch.
    SUCCESS = "success"
    #: Transient failure (timeout, 5xx, 429, connection refused): retry, then journal.
    RETRY = "retry"
    #: Permanent failure (400, schema rejected): counted as dropped and logged.
    FAILURE = "failure"


@dataclass(frozen=True)
class Capabilities:
    """Which record types a backend holds, and how.

    ``holds`` maps a record kind from :data:`RECORD_KINDS` to a one-line description
    of where it lands at the vendor; a kind missing from ``holds`` is not delivered
    to that backend and is listed (never silently dropped) in ``vigil backends`` and
    in the ``cannot_hold`` counter of ``vigil status``. ``notes`` lists fields the
    vendor cannot represent.
    """

    holds: Mapping[str, str]
    notes: Sequence[str] = ()

    def can_hold(self, kind: str) -> bool:
        """Whether records of ``kind`` are delivered to this backend."""
        return kind in self.holds


@dataclass(frozen=True)
class AdapterInfo:
    """A backend adapter offered by a plugin.

    ``factory(settings)`` builds one backend instance from the backend's YAML
    settings (a plain mapping, secrets already interpolated); the instance is
    registered as a plugin and implements the export hooks. ``extra`` names the pip
    extra holding the vendor SDK, for the "install llmvigil[extra]" message.
    ``redaction`` is the content level the backend gets when its YAML entry sets
    none: ``masked`` for services run by someone else, ``full`` for stores on the
    operator's own machines. ``merge_records`` lets the outbox merge queued batches
    of one kind into one export of up to that many records (1: never), for backends
    whose cost is per export rather than per record.
    """

    name: str
    factory: Callable[[Mapping[str, Any]], object]
    capabilities: Capabilities
    description: str = ""
    extra: str | None = None
    redaction: Literal["full", "masked", "none"] = "masked"
    merge_records: int = 1


class Importer(Protocol):
    """Reads a vendor's history back as canonical records.

    The contract (details in docs/migration.md, "Writing an importer"): ``options``
    holds ``since_ns``, ``until_ns``, ``project``, ``limit``, ``kinds`` and ``after``;
    each record kind is yielded in (time, id) order; a record that cannot be mapped is
    yielded as :class:`llmvigil.core.migrate.Skipped` (with the reason and record id)
    instead of raising. An importer may also offer ``estimate(options) -> int | None``
    for progress bars.
    """

    def read(self, options: Mapping[str, Any]) -> Iterator[Record | Skipped]:
        """Yield records (and skipped-record notices) matching ``options``."""
        ...


@dataclass(frozen=True)
class ImporterInfo:
    """An importer offered by a plugin, built by ``factory(settings)``."""

    name: str
    factory: Callable[[Mapping[str, Any]], Importer]
    description: str = ""
    extra: str | None = None


@dataclass(frozen=True)
class EmbedderInfo:
    """A text embedder for drift detection: ``factory(settings)`` returns
    ``embed(texts) -> numpy array (n, dim)``."""

    name: str
    factory: Callable[[Mapping[str, Any]], Callable[[Sequence[str]], Any]]
    description: str = ""


@dataclass(frozen=True)
class SafetyJudgeInfo:
    """A slow-path safety judge: ``factory(settings)`` returns
    ``judge(prompt, response) -> (action, reason, category)``."""

    name: str
    factory: Callable[[Mapping[str, Any]], Callable[[str, str], tuple[str, str, str | None]]]
    description: str = ""


@dataclass(frozen=True)
class AlertSinkInfo:
    """An alert destination: ``factory(settings)`` returns ``send(alert) -> None``."""

    name: str
    factory: Callable[[Mapping[str, Any]], Callable[[Alert], None]]
    description: str = ""


@dataclass(frozen=True)
class Price:
    """USD per million tokens for one model, with where the figures came from."""

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    source: str = "unknown"
    version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
