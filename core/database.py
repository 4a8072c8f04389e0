"""Relational state: the schema, the engine, and migrations at start-up.

SQLAlchemy Core tables (no ORM). SQLite by default, in WAL mode with
``synchronous=FULL`` so a committed row survives a power cut; PostgreSQL through
``KIBITZ_DATABASE_URL``. The schema is created and upgraded by the Alembic migrations
shipped in ``kibitz.migrations``, run at every start.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(32), nullable=False, unique=True),
    sa.Column("display_name", sa.String(64), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("disabled_ms", sa.BigInteger, nullable=True),  # set: cannot log in, has no devices
    # Deleted users stay as a row (their messages name them) with no name, devices or memberships.
    sa.Column("deleted_ms", sa.BigInteger, nullable=True),
    # A bot: no password (nobody logs in as it); plugins post as it (``kibitz.App.bot``).
    sa.Column("bot", sa.Boolean, nullable=False, server_default=sa.false()),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Index("ix_devices_user_id", "user_id"),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    # A device id is never given again (SQLite would reuse the largest after a logout): a
    # revocation, remembered by device id, must not reach the next login's connections.
    sqlite_autoincrement=True,
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(8), nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("creator_id", Id, sa.ForeignKey("users.id"), nullable=False),
    # "<smaller user id>:<larger user id>" for direct conversations: one per pair.
    sa.Column("direct_key", sa.String(48), nullable=True, unique=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    # Changes of the members (and creator) so far: instances compare it with their cached copy.
    sa.Column("members_version", sa.Integer, nullable=False, server_default="0"),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("read_marker", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("joined_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_members_user", "user_id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    # The highest value the holder may have handed out (a clock, for id generators).
    sa.Column("high_water", sa.BigInteger, nullable=False, server_default="0"),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)

push_subscriptions = sa.Table(
    "push_subscriptions",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("device_id", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Index("ix_push_subscriptions_device_id", "device_id"),
    sa.Column("endpoint", sa.String(2048), nullable=False, unique=True),
    sa.Column("p256dh", sa.String(100), nullable=False),
    sa.Column("auth", sa.String(32), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

# Sign-up codes for ``registration = "invite"``; only the code's SHA-256 is kept.
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("uses_allowed", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_ms", sa.BigInteger, nullable=True),
    sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)


# The live instances (service discovery, ``kibitz.registry``): each rewrites its row every
# few seconds and deletes it when it stops. Not backed up: it describes processes, not data.
instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("connections", sa.Integer, nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("seen_ms", sa.BigInteger, nullable=False),
)


def inserted_id(result: sa.CursorResult[Any]) -> int:
    """The id of the row a one-row ``INSERT`` just made (its table's one primary key column)."""
    key = result.inserted_primary_key
    if key is None:  # SQLAlchemy's answer for a statement that inserted nothing: a bug here
        raise RuntimeError("the statement inserted no row")
    row_id: int = key[0]
    return row_id


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL and fsync on every commit."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("kibitz.migrations")))
    return config


async def shared_secret(engine: AsyncEngine, name: str, make: Callable[[], str]) -> str:
    """The secret ``name`` every instance shares, made with ``make()`` by whichever asks first."""
    select = sa.select(secrets.c.value).where(secrets.c.name == name)
    async with engine.connect() as db:
        value: str | None = (await db.execute(select)).scalar()
    if value is not None:
        return value
    try:
        async with engine.begin() as db:
            await db.execute(secrets.insert().values(name=name, value=make()))
    except IntegrityError:
        pass  # another instance made it first
    async with engine.connect() as db:
        made: str = (await db.execute(select)).scalar_one()
        return made


class SchemaTooNew(Exception):
    """The database was migrated by a newer Kibitz than this one; nothing was changed."""


def known_revisions() -> set[str]:
    """The schema revisions this Kibitz's migrations know."""
    return {r.revision for r in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def schema_revision(connection: sa.Connection) -> str | None:
    """The schema revision of the database (None before the first migration)."""
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine, to: str = "head") -> tuple[str | None, str]:
    """Bring the schema to revision ``to``, the newest by default (run at every start; a
    no-op when current).

    Returns the schema revision before and after. A database whose revision this Kibitz
    does not know (a newer Kibitz migrated it) raises ``SchemaTooNew`` and is left alone.
    """

    def upgrade(connection: sa.Connection) -> tuple[str | None, str]:
        config = _alembic_config()
        config.attributes["connection"] = connection
        script = ScriptDirectory.from_config(config)
        before = schema_revision(connection)
        if before is not None and before not in {r.revision for r in script.walk_revisions()}:
            raise SchemaTooNew(
                f"the database's schema is {before}, made by a newer Kibitz; this one knows schemas up "
                f"to {script.get_current_head()}: run the newer Kibitz, or restore a backup made before "
                "the upgrade"
            )
        command.upgrade(config, to)
        return before, str(script.get_current_head() if to == "head" else to)

    async with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a table rebuilt by a migration must not cascade deletes to its children
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()  # (pysqlite began nothing: it is SQLAlchemy's bookkeeping)
        try:
            async with connection.begin():  # instances starting together migrate one at a time:
                if sqlite:  # the first takes the write lock before it reads the revision
                    await connection.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    await connection.execute(sa.text("SELECT pg_advisory_xact_lock(7160425)"))
                return await connection.run_sync(upgrade)
        finally:
            if sqlite:
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
