"""The initial schema: the local store's six tables and their indexes.

Released DDL, frozen: a revision never changes once released. The tables were
generated from :data:`llmvigil.core.store_queries.TABLES` at the time (the SQLite
store's column definitions, translated by :func:`llmvigil.core.store_postgres.pg_type`).
When ``TABLES`` changes, add a revision that alters the tables; the test suite
compares the result of all revisions with ``TABLES``.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: sha256 of the statements this revision was released with.
SCHEMA_FINGERPRINT = "f0d8e162b17220e2ee5d79e24a192c0e75d3930d40cde89d7a4fdcb1535ab119"

TABLE_NAMES = ("spans", "scores", "session_events", "metrics", "alerts", "safety_verdicts")

STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE spans (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ns BIGINT NOT NULL,
    end_ns BIGINT NOT NULL,
    status TEXT NOT NULL,
    error_type TEXT,
    model TEXT,
    provider TEXT,
    feature TEXT,
    user_id TEXT,
    session_id TEXT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cache_read_tokens BIGINT,
    cache_write_tokens BIGINT,
    cost_usd DOUBLE PRECISION,
    ttft_s DOUBLE PRECISION,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_spans_start_ns ON spans (start_ns)",
    "CREATE INDEX ix_spans_feature_start_ns ON spans (feature, start_ns)",
    "CREATE INDEX ix_spans_trace_id ON spans (trace_id)",
    """CREATE TABLE scores (
    id TEXT PRIMARY KEY,
    trace_id TEXT,
    span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    value DOUBLE PRECISION,
    time_ns BIGINT NOT NULL,
    user_id TEXT,
    session_id TEXT,
    feature TEXT,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_scores_time_ns ON scores (time_ns)",
    "CREATE INDEX ix_scores_feature_time_ns ON scores (feature, time_ns)",
    "CREATE INDEX ix_scores_trace_id ON scores (trace_id)",
    """CREATE TABLE session_events (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    event TEXT NOT NULL,
    time_ns BIGINT NOT NULL,
    user_id TEXT,
    feature TEXT,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_session_events_time_ns ON session_events (time_ns)",
    "CREATE INDEX ix_session_events_feature_time_ns ON session_events (feature, time_ns)",
    "CREATE INDEX ix_session_events_session_id ON session_events (session_id)",
    """CREATE TABLE metrics (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    value DOUBLE PRECISION,
    time_ns BIGINT NOT NULL,
    labels JSONB NOT NULL,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_metrics_time_ns ON metrics (time_ns)",
    "CREATE INDEX ix_metrics_name_time_ns ON metrics (name, time_ns)",
    """CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    time_ns BIGINT NOT NULL,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_alerts_time_ns ON alerts (time_ns)",
    """CREATE TABLE safety_verdicts (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    category TEXT,
    time_ns BIGINT NOT NULL,
    trace_id TEXT,
    data BYTEA NOT NULL
)""",
    "CREATE INDEX ix_safety_verdicts_time_ns ON safety_verdicts (time_ns)",
)


def statements() -> list[str]:
    """The DDL this revision runs, in order."""
    return list(STATEMENTS)


def fingerprint() -> str:
    """sha256 of :func:`statements`, to compare with :data:`SCHEMA_FINGERPRINT`."""
    return hashlib.sha256("\n;\n".join(statements()).encode()).hexdigest()


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(TABLE_NAMES):
        op.execute(f"DROP TABLE {name}")
