"""The initial schema: the local store's six tables and their indexes.

The DDL is generated from :data:`llmvigil.core.store_queries.TABLES` (the SQLite
store's column definitions, translated by
:func:`llmvigil.core.store_postgres.pg_type`), so both stores have the same
columns. A revision must never change once released: the moment ``TABLES``
changes, replace the generated statements below by the literal DDL printed by
``migrate(dsn, sql=True)`` of the release before, and add revision 0002 that
alters the tables. ``SCHEMA_FINGERPRINT`` makes the test suite fail until then.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alembic import op
from llmvigil.core.store_postgres import table_ddl
from llmvigil.core.store_queries import TABLES

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: sha256 of the statements this revision was released with (see the docstring).
SCHEMA_FINGERPRINT = "f0d8e162b17220e2ee5d79e24a192c0e75d3930d40cde89d7a4fdcb1535ab119"


def statements() -> list[str]:
    """The DDL this revision runs, in order."""
    return [stmt for spec in TABLES.values() for stmt in table_ddl(spec)]


def fingerprint() -> str:
    """sha256 of :func:`statements`, to compare with :data:`SCHEMA_FINGERPRINT`."""
    return hashlib.sha256("\n;\n".join(statements()).encode()).hexdigest()


def upgrade() -> None:
    for statement in statements():
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.execute(f"DROP TABLE {name}")
