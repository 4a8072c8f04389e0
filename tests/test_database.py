"""The schema is written twice, as ``kibitz.database.metadata`` (what the code queries) and as
the Alembic migrations (what start-up runs): the migrated database must match the metadata."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.database import create_engine, metadata, migrate

from .conftest import fresh_postgres_database


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


async def test_device_ids_are_never_given_again(engine: AsyncEngine) -> None:
    """After the newest device is deleted (a logout), the next one gets a new id: a
    revocation remembered by device id must not reach the next login's connections."""
    from kibitz.database import devices, users

    async with engine.begin() as db:
        user = (
            await db.execute(
                users.insert().values(
                    username=f"d{uuid.uuid4().hex[:12]}", display_name="d", password_hash="!", created_ms=0
                )
            )
        ).inserted_primary_key[0]
        row = {"user_id": user, "name": "x", "created_ms": 0}
        first = (
            await db.execute(devices.insert().values(token_hash=f"a{user}", **row))
        ).inserted_primary_key[0]
        await db.execute(devices.delete().where(devices.c.id == first))
        second = (
            await db.execute(devices.insert().values(token_hash=f"b{user}", **row))
        ).inserted_primary_key[0]
    assert second > first


async def test_the_sqlite_rebuild_of_devices_keeps_every_row_and_its_children(tmp_path: Path) -> None:
    """Migration 0004 rebuilds ``devices`` on SQLite: rows, ids and push subscriptions stay."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}")
    try:
        await migrate(engine, "0003")
        rows = [
            "INSERT INTO users (id, username, display_name, password_hash, created_ms)"
            " VALUES (5, 'u', 'u', '', 0)",
            "INSERT INTO devices (id, user_id, name, token_hash, created_ms) VALUES (9, 5, 'x', 'h', 0)",
            "INSERT INTO push_subscriptions (device_id, endpoint, p256dh, auth, created_ms)"
            " VALUES (9, 'https://p/x', 'k', 'a', 0)",
        ]
        async with engine.begin() as db:
            for row in rows:
                await db.execute(sa.text(row))
        await migrate(engine)
        async with engine.connect() as db:
            assert (await db.execute(sa.text("SELECT id FROM devices"))).scalars().all() == [9]
            assert (
                await db.execute(sa.text("SELECT device_id FROM push_subscriptions"))
            ).scalars().all() == [9]
            assert (await db.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    """A database with no schema yet: SQLite in a temp folder, and a new PostgreSQL one."""
    if database_url.startswith("sqlite"):
        yield database_url
        return
    async with fresh_postgres_database(database_url) as url:
        yield url


async def test_migration_0005_keeps_every_user_and_makes_none_a_bot(empty_database: str) -> None:
    engine = create_engine(empty_database)
    try:
        await migrate(engine, "0004")
        async with engine.begin() as db:
            await db.execute(
                sa.text(
                    "INSERT INTO users (id, username, display_name, password_hash, created_ms, admin)"
                    " VALUES (5, 'old', 'Old', 'h', 0, true)"
                )
            )
        assert await migrate(engine, "0005") == ("0004", "0005")
        async with engine.connect() as db:
            rows = (await db.execute(sa.text("SELECT id, username, admin, bot FROM users"))).all()
        assert [(r.id, r.username, bool(r.admin), bool(r.bot)) for r in rows] == [(5, "old", True, False)]
    finally:
        await engine.dispose()


async def test_the_backup_reads_the_database_as_one_snapshot(engine: AsyncEngine) -> None:
    """Rows written while ``kibitz backup`` reads the tables are not in it, whatever the table:
    else a device could be in the dump without its user."""
    from kibitz.backup import database_rows
    from kibitz.database import users

    name = f"late{uuid.uuid4().hex[:12]}"  # the PostgreSQL database is shared by the session's tests
    rows = database_rows(engine)
    await anext(rows)  # the schema: the snapshot is taken
    async with engine.begin() as db:
        await db.execute(
            users.insert().values(username=name, display_name="l", password_hash="!", created_ms=0)
        )
    dumped = [line async for line in rows]
    assert not any(name.encode() in line for line in dumped)


async def test_instances_starting_together_migrate_once(empty_database: str) -> None:
    """Four instances migrating an empty database at once: one builds the schema, the others
    find it built (PostgreSQL takes an advisory lock; SQLite's write lock serialises them)."""
    engines = [create_engine(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(engine) for engine in engines))
        head = results[0][1]
        assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)
        async with engines[0].connect() as db:
            assert (await db.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all() == [
                head
            ]
    finally:
        for engine in engines:
            await engine.dispose()
