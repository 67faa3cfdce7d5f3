"""Drop the index of every span's trace id.

Each span row paid a random-order B-tree insert into ``ix_spans_trace_id`` for a
lookup no query of the PostgreSQL store makes (the SQLite store finds a trace's root
by primary key instead: see :func:`llmvigil.core.store_queries.root_by_trace`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_spans_trace_id")


def downgrade() -> None:
    op.execute("CREATE INDEX ix_spans_trace_id ON spans (trace_id)")
