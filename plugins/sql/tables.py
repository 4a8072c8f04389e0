"""The ``sql`` plugin's tables, in the core's relational database, created by the plugin.

``sql_events``: the per-user event logs, one row per event per user (fan-out on write,
as on NATS), read by ``(user_id, position)``. ``sql_records``: the accepted messages in
commit order, for rebuilding storage. ``sql_log_head``: one row, the last position given
and the first still kept; every append locks it, which puts commits in position order.
``sql_log_marks``: the head's position at times, which retention cuts by.
``sql_presence`` and ``sql_instances``: who is live on which running instance.
``sql_messages`` and ``sql_stored``: the storage's history and the position it covers.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = sa.MetaData()

# SQLite's INTEGER PRIMARY KEY is its 64-bit rowid; BIGINT elsewhere.
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "sql_events",
    metadata,
    sa.Column("position", Position, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("committed_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_sql_events_user_position", "user_id", "position"),
)

records = sa.Table(
    "sql_records",
    metadata,
    sa.Column("position", Position, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("committed_ms", sa.BigInteger, nullable=False),
)

log_head = sa.Table(
    "sql_log_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),  # the last position given
    sa.Column("first_position", sa.BigInteger, nullable=False),  # the first still kept
)

log_marks = sa.Table(
    "sql_log_marks",
    metadata,
    sa.Column("at_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),  # the head's position at that time
)

instances = sa.Table(
    "sql_instances",
    metadata,
    sa.Column("instance_id", sa.String(128), primary_key=True),
    sa.Column("seen_ms", sa.BigInteger, nullable=False),
)

presence = sa.Table(
    "sql_presence",
    metadata,
    sa.Column("instance_id", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.BigInteger, primary_key=True),
    sa.Index("ix_sql_presence_user", "user_id"),
)

messages = sa.Table(
    "sql_messages",
    metadata,
    sa.Column("id", Position, primary_key=True, autoincrement=False),
    sa.Column("conversation_id", sa.BigInteger, nullable=False),
    sa.Column("sender_id", sa.BigInteger, nullable=False),
    sa.Column("client_msg_id", sa.String(128), nullable=False),
    sa.Column("json", sa.LargeBinary, nullable=False),
    # Pages and the newest message: a range of this index. Unread counts: two counts of ranges.
    sa.Index("ix_sql_messages_conversation_id", "conversation_id", "id"),
    sa.Index("ix_sql_messages_sender", "conversation_id", "sender_id", "id"),
    sa.Index("ix_sql_messages_client_msg", "sender_id", "client_msg_id"),
)

# Claims on idempotency keys of sends not stored yet (``Storage.claim_sent``): kept until
# they expire, then swept; a claim outliving its message is harmless, the message answers.
claims = sa.Table(
    "sql_claims",
    metadata,
    sa.Column("sender_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("client_msg_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False, index=True),
)

stored = sa.Table(
    "sql_stored",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)


async def create_tables(engine: AsyncEngine, *tables: sa.Table) -> None:
    """Create what is missing of ``tables``. Instances starting at once may both try to
    create one: the loser's error is passed over and the tables looked at again."""
    for attempt in range(2):
        try:
            async with engine.begin() as db:
                await db.run_sync(
                    lambda sync: metadata.create_all(sync, tables=list(tables), checkfirst=True)
                )
            return
        except DBAPIError:
            if attempt:
                raise


def insert_missing(dialect: str, table: sa.Table) -> Any:
    """An INSERT that leaves a row alone whose key is taken (PostgreSQL and SQLite)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


_P = ParamSpec("_P")
_T = TypeVar("_T")


def answers(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Turn a database that does not answer into ``ConnectionError``, which the core answers with 503."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except (OperationalError, InterfaceError) as e:
            raise ConnectionError(f"database: {e.orig or e}") from e
        except DBAPIError as e:
            if e.connection_invalidated:
                raise ConnectionError(f"database: {e.orig or e}") from e
            raise

    return wrapper
