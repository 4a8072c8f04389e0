"""The schema is written twice, as ``kibitz.database.metadata`` (what the code queries) and as
the Alembic migrations (what start-up runs): the migrated database must match the metadata."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.database import metadata

pytestmark = pytest.mark.relational


def _differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def test_migrations_build_the_schema_the_code_queries(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == [], "the migrations and kibitz.database.metadata disagree; add a migration"


async def test_the_comparison_sees_a_missing_column(engine: AsyncEngine) -> None:
    """The check above can fail: a column the code has and the database lacks is a difference.

    The column is dropped in a transaction that is rolled back (the PostgreSQL database is shared).
    """
    async with engine.connect() as connection:
        await connection.execute(sa.text("ALTER TABLE secrets DROP COLUMN value"))
        differences = await connection.run_sync(_differences)
        await connection.rollback()
    assert any(d[0] == "add_column" and d[3].name == "value" for d in differences), differences
