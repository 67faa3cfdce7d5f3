"""The canonical records every part of llmvigil speaks.

Records are :class:`msgspec.Struct` types: creating one costs about as much as a
tuple, they carry no validation on the hot path, and they encode to JSON or
MessagePack in one C call in the background worker.

Field names are Pythonic; the *encoded* names follow the OpenTelemetry GenAI
semantic conventions (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...)
so an OTLP exporter needs no renaming table. :func:`encode` / :func:`decode`
round-trip any record, tagged by its ``type`` so a mixed stream (journal,
JSON-lines export) decodes back into the right classes.

Every record has a stable ``id`` fixed at creation: re-delivery after a crash or a
re-run of a migration upserts instead of duplicating.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

import msgspec

__all__ = [
    "SPAN_KINDS",
    "Alert",
    "Metric",
    "Record",
    "SafetyVerdict",
    "Score",
    "SessionEvent",
    "Span",
    "StreamStats",
    "Usage",
    "decode",
    "decode_many",
    "encode",
    "new_span_id",
    "new_trace_id",
    "now_ns",
    "to_builtins",
]

SpanKind = Literal["llm", "chain", "tool", "retriever", "embedding", "agent", "span"]
SPAN_KINDS: frozenset[str] = frozenset(
    ("llm", "chain", "tool", "retriever", "embedding", "agent", "span")
)
Status = Literal["unset", "ok", "error"]

# A private generator: seeded from os.urandom once, never touched by user code
# calling random.seed(), and about 10x cheaper than uuid4().
_rng = random.Random()
_getrandbits = _rng.getrandbits
now_ns = time.time_ns


def new_trace_id() -> str:
    """Return a random 128-bit trace id as 32 lowercase hex digits (W3C format)."""
    return "%032x" % _getrandbits(128)  # noqa: UP031 - faster than an f-string here


def new_span_id() -> str:
    """Return a random 64-bit span or record id as 16 lowercase hex digits."""
    return "%016x" % _getrandbits(64)  # noqa: UP031 - faster than an f-string here


class Usage(msgspec.Struct, omit_defaults=True, gc=False):
    """Token counts of one model call."""

    input_tokens: int = msgspec.field(default=0, name="gen_ai.usage.input_tokens")
    output_tokens: int = msgspec.field(default=0, name="gen_ai.usage.output_tokens")
    cache_read_tokens: int = msgspec.field(
        default=0, name="gen_ai.usage.cache_read.input_tokens"
    )
    cache_write_tokens: int = msgspec.field(
        default=0, name="gen_ai.usage.cache_creation.input_tokens"
    )

    @property
    def total_tokens(self) -> int:
        """All tokens billed for the call, cached ones included."""
        return (
            self.input_tokens + self.output_tokens + self.cache_read_tokens
            + self.cache_write_tokens
        )


class StreamStats(msgspec.Struct, omit_defaults=True, gc=False):
    """Timing of a streamed response: time to first item and the gaps between items.

    ``n`` counts gaps (items - 1); ``stalls`` counts gaps longer than the configured
    stall threshold.
    """

    items: int = 0
    n: int = 0
    mean_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    max_s: float = 0.0
    stalls: int = 0


class _Record(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of all records: a stable id and a wall-clock time in nanoseconds."""

    id: str = msgspec.field(default_factory=new_span_id)


class Span(_Record, tag="span"):
    """One unit of work: an LLM call, a chain, a tool call, a retrieval...

    ``start_ns``/``end_ns`` are wall-clock nanoseconds since the epoch; ``id`` is the
    span id. ``input``/``output`` hold what capture recorded, already redacted and
    truncated by the time a backend sees them.
    """

    trace_id: str
    parent_id: str | None = None
    name: str = ""
    kind: str = "span"
    start_ns: int = 0
    end_ns: int = 0
    status: str = "unset"
    error: str | None = None
    error_type: str | None = msgspec.field(default=None, name="error.type")
    input: Any = None
    output: Any = None
    model: str | None = msgspec.field(default=None, name="gen_ai.request.model")
    response_model: str | None = msgspec.field(default=None, name="gen_ai.response.model")
    response_id: str | None = msgspec.field(default=None, name="gen_ai.response.id")
    provider: str | None = msgspec.field(default=None, name="gen_ai.system")
    operation: str | None = msgspec.field(default=None, name="gen_ai.operation.name")
    stop_reason: str | None = msgspec.field(
        default=None, name="gen_ai.response.finish_reasons"
    )
    usage: Usage | None = None
    cost_usd: float | None = msgspec.field(default=None, name="gen_ai.usage.cost")
    price_source: str | None = None
    price_version: str | None = None
    ttft_s: float | None = msgspec.field(default=None, name="gen_ai.server.time_to_first_token")
    stream: StreamStats | None = None
    user_id: str | None = msgspec.field(default=None, name="user.id")
    session_id: str | None = msgspec.field(default=None, name="session.id")
    feature: str | None = None
    environment: str | None = msgspec.field(default=None, name="deployment.environment")
    release: str | None = msgspec.field(default=None, name="service.version")
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def span_id(self) -> str:
        """The span id (the record id)."""
        return self.id

    @property
    def duration_s(self) -> float:
        """Wall time between start and end, in seconds."""
        return max(0, self.end_ns - self.start_ns) / 1e9


class Score(_Record, tag="score"):
    """A judgement about a span or trace: user feedback, an evaluation, a canary result.

    ``kind`` is e.g. ``thumbs_up``, ``thumbs_down``, ``rating``, ``correction``,
    ``report``, ``judge``, ``canary``; ``source`` is who produced it (``user``,
    ``judge``, ``canary``, ``review``...).
    """

    name: str
    time_ns: int = msgspec.field(default_factory=now_ns)
    trace_id: str | None = None
    span_id: str | None = None
    kind: str = "custom"
    value: float | None = None
    label: str | None = None
    category: str | None = None
    correction: str | None = None
    comment: str | None = None
    source: str = "api"
    user_id: str | None = msgspec.field(default=None, name="user.id")
    session_id: str | None = msgspec.field(default=None, name="session.id")
    feature: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionEvent(_Record, tag="session_event"):
    """A milestone of a multi-turn session: start, follow_up, task_complete, abandon."""

    session_id: str = msgspec.field(name="session.id")
    event: str
    time_ns: int = msgspec.field(default_factory=now_ns)
    user_id: str | None = msgspec.field(default=None, name="user.id")
    trace_id: str | None = None
    feature: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Metric(_Record, tag="metric"):
    """A computed aggregate over a window, e.g. ``ttft_p95_s`` or ``cost_usd_per_hour``."""

    name: str
    value: float
    time_ns: int = msgspec.field(default_factory=now_ns)
    window_s: float = 0.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    unit: str | None = None


class Alert(_Record, tag="alert"):
    """A rule that fired: what was observed, against which threshold, and where."""

    rule: str
    severity: str
    message: str
    time_ns: int = msgspec.field(default_factory=now_ns)
    value: float | None = None
    threshold: float | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class SafetyVerdict(_Record, tag="safety_verdict"):
    """The decision of the safety layer for one response: serve, block or review."""

    action: str
    time_ns: int = msgspec.field(default_factory=now_ns)
    reason: str = ""
    category: str | None = None
    decided_by: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


Record = Span | Score | SessionEvent | Metric | Alert | SafetyVerdict
RECORD_TYPES: tuple[type[Any], ...] = (Span, Score, SessionEvent, Metric, Alert, SafetyVerdict)

_json_encoder = msgspec.json.Encoder()
_json_decoder: msgspec.json.Decoder[Record] = msgspec.json.Decoder(Record)
_json_list_decoder: msgspec.json.Decoder[list[Record]] = msgspec.json.Decoder(list[Record])


def encode(record: Record | list[Record]) -> bytes:
    """Encode one record, or a list of records, as JSON bytes tagged by ``type``."""
    return _json_encoder.encode(record)


def decode(data: bytes | str) -> Record:
    """Decode one record encoded by :func:`encode`.

    Raises:
        msgspec.ValidationError: the data is not a valid record; the message names
            the offending field (``$.usage.gen_ai.usage.input_tokens``...).
    """
    return _json_decoder.decode(data)


def decode_many(data: bytes | str) -> list[Record]:
    """Decode a JSON list of records encoded by :func:`encode`."""
    return _json_list_decoder.decode(data)


def to_builtins(record: Record) -> dict[str, Any]:
    """Return the record as plain dicts/lists with its encoded (GenAI) field names."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    return out
