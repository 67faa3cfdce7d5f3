"""Alembic environment of the llmvigil PostgreSQL store.

llmvigil runs it programmatically (:func:`llmvigil.adapters.postgres.migrate`),
handing over a SQLAlchemy connection in ``config.attributes["connection"]``
that already holds the migration advisory lock inside an open transaction; the
migrations then run in that transaction. Offline (``sql=True``) it prints the
SQL instead, for a DBA who applies schema changes by hand.

It never configures logging: it runs inside applications that own theirs.
"""

from __future__ import annotations

from alembic import context
from llmvigil.core.store_postgres import VERSION_TABLE

config = context.config


def run_offline() -> None:
    """Emit the migration SQL to Alembic's output buffer."""
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Apply the migrations on the connection llmvigil passed in."""
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the llmvigil migrations run through llmvigil.adapters.postgres.migrate(dsn), "
            "which takes the advisory lock first; there is no alembic.ini"
        )
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
