"""Alembic migrations of the PostgreSQL store (see :mod:`llmvigil.adapters.postgres`)."""
