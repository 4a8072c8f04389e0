"""The ``sql`` storage: conversation history in the relational database, through SQLAlchemy.

One row per message in ``sql_messages``: its id, conversation, sender, ``client_msg_id``
and wire JSON exactly as given. The indexes do the work:

- ``(conversation_id, id)`` (``ix_sql_messages_conversation_id``): a page is one range
  scan of ``limit + 1`` rows from either end, the newest message a one-row scan, whatever
  the conversation's length (``_ids_between`` says how each database is held to it);
- ``(conversation_id, sender_id, id)``: unread = the rows after the marker in the first
  index minus the caller's own after it in this one (two range counts: O(unread); in
  bench/ 0.2 s on PostgreSQL, 0.14 s on SQLite with the marker a million rows back);
- ``(sender_id, client_msg_id)``: the message already sent with a key (idempotent resends),
  one probe per key; ``sql_claims`` holds the keys of sends not stored yet.

``sql_stored`` holds the transport position through which every message is stored, set
in the same transaction as the messages it covers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz import App, BackupRecords, Finding, Page, StoredMessage

from .tables import answers, claims, create_tables, insert_missing, messages, stored

MAX_ID = 2**53
ROWS_PER_INSERT = 1000
_COLUMNS = ("id", "conversation_id", "sender_id", "client_msg_id")
_PAIR = [sa.BigInteger, sa.BigInteger]


def _ids_between(dialect: str, conversation_id: Any, lower: int, upper: int) -> tuple[Any, list[Any]]:
    """The rows of a conversation with ``lower < id < upper`` (``conversation_id`` a value
    or a column), and the order, oldest first, in which ``ix_sql_messages_conversation_id``
    holds them.

    PostgreSQL: a range of ``(conversation_id, id)`` pairs in the order of both columns,
    which no other index has. Given ``conversation_id = ?`` and ``ORDER BY id`` instead, its
    planner may read the primary key from one end and skip every other conversation's
    newer rows (it counts on them being spread evenly): 0.69 s for the latest page of a
    quiet conversation below 1,000,000 newer messages (docs/performance.md). SQLite: the
    equality and the id range, which it looks up in the index as they are (a range of
    pairs it would only bound by the first column).
    """
    c = messages.c
    if dialect == "postgresql":
        pair = sa.tuple_(c.conversation_id, c.id)
        lowest, highest = (
            sa.tuple_(conversation_id, lower, types=_PAIR),
            sa.tuple_(conversation_id, upper, types=_PAIR),
        )
        return (pair > lowest) & (pair < highest), [c.conversation_id, c.id]
    return (c.conversation_id == conversation_id) & (c.id > lower) & (c.id < upper), [c.id]


def _listed(
    dialect: str, name: str, types: Sequence[Any], rows: Sequence[tuple[Any, ...]]
) -> tuple[Any, list[Any], Any]:
    """``rows`` as a table to join or correlate with: the table, its columns, and what
    orders it as ``rows``. The statement has one shape however many rows (so SQLAlchemy
    compiles it once and the database plans it quickly): PostgreSQL takes an array per
    column through ``unnest``, SQLite one JSON array through ``json_each``. Not
    ``(a, b) IN (...)``: SQLite looks that up by ``a`` alone for one row, and scans the
    whole table for two or more."""
    if dialect == "postgresql":
        arrays = [
            sa.bindparam(f"{name}_{i}", [row[i] for row in rows], type_=postgresql.ARRAY(t))
            for i, t in enumerate(types)
        ]
        columns = [f"c{i}" for i in range(len(types))]
        table = sa.func.unnest(*arrays).table_valued(*columns, with_ordinality="n").render_derived(name=name)
        return table, [table.c[column] for column in columns], table.c.n
    json: sa.BindParameter[str] = sa.bindparam(name, orjson.dumps(list(rows)).decode())
    table = sa.func.json_each(json).table_valued("key", "value", name=name)
    return table, [sa.func.json_extract(table.c.value, f"$[{i}]") for i in range(len(types))], table.c.key


class SqlStorage:
    """The Storage slot on the relational database (see the module docstring)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._swept_ms = 0  # when expired claims were last deleted

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the sql storage is not started")
        return self._engine

    async def start(self, app: App) -> None:
        self._engine = app.engine
        await create_tables(self.engine, messages, stored, claims)
        async with self.engine.begin() as db:
            await db.execute(insert_missing(db.dialect.name, stored).values(id=1, position=0))

    async def close(self) -> None:
        self._engine = None  # the engine is the core's

    @answers
    async def check(self) -> None:
        await self.position()

    async def diagnose(self) -> list[Finding]:
        return [Finding("ok", "storage sql", "history in the database, pages and counts by its indexes")]

    @answers
    async def append(self, batch: Sequence[StoredMessage], through: int | None = None) -> None:
        for m in batch:
            if not 1 <= m.id <= MAX_ID:
                raise ValueError(f"message id {m.id} is outside 1..2**53")
        rows = [
            dict(
                zip(
                    (*_COLUMNS, "json"),
                    (m.id, m.conversation_id, m.sender_id, m.client_msg_id, m.json),
                    strict=True,
                )
            )
            for m in batch
        ]
        async with self.engine.begin() as db:
            insert = insert_missing(db.dialect.name, messages)
            for start in range(0, len(rows), ROWS_PER_INSERT):
                await db.execute(insert, rows[start : start + ROWS_PER_INSERT])
            if through is not None:
                higher = sa.case((stored.c.position < through, through), else_=stored.c.position)
                await db.execute(stored.update().values(position=higher).where(stored.c.id == 1))

    @answers
    async def position(self) -> int:
        async with self.engine.connect() as db:
            return int((await db.execute(sa.select(stored.c.position))).scalar_one())

    @answers
    async def page(self, conversation_id: int, before: int | None, after: int | None, limit: int) -> Page:
        if limit < 1:
            raise ValueError(f"limit {limit} is below 1")
        lower = 0 if after is None else max(0, min(after, MAX_ID))
        upper = MAX_ID + 1 if before is None else max(1, min(before, MAX_ID + 1))
        async with self.engine.connect() as db:
            where, order = _ids_between(db.dialect.name, conversation_id, lower, upper)
            if after is None:  # newest first; the extra one is older
                order = [column.desc() for column in order]
            query = sa.select(messages.c.json).where(where).order_by(*order).limit(limit + 1)
            rows = [bytes(json) for json in (await db.execute(query)).scalars()]
        page = rows[:limit]
        return Page(page[::-1] if after is None else page, len(rows) > limit)

    @answers
    async def contains(self, conversation_id: int, message_id: int) -> bool:
        query = sa.select(messages.c.id).where(
            messages.c.id == message_id, messages.c.conversation_id == conversation_id
        )
        async with self.engine.connect() as db:
            return (await db.execute(query)).first() is not None

    @answers
    async def latest(self, conversation_ids: Sequence[int]) -> list[bytes | None]:
        """The newest of each conversation: a one-row scan of the index each, in one statement."""
        if not conversation_ids:
            return []
        rows = [(cid,) for cid in dict.fromkeys(conversation_ids)]
        async with self.engine.connect() as db:
            listed, (cid,), _ = _listed(db.dialect.name, "listed", [sa.BigInteger], rows)
            where, order = _ids_between(db.dialect.name, cid, 0, MAX_ID + 1)
            newest = sa.select(messages.c.json).where(where).order_by(*(c.desc() for c in order)).limit(1)
            query = sa.select(cid, newest.scalar_subquery()).select_from(listed)
            found = {int(cid): bytes(json) for cid, json in await db.execute(query) if json is not None}
        return [found.get(cid) for cid in conversation_ids]

    @answers
    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        """Two range counts each (see the module docstring), in one statement."""
        if not queries:
            return []
        async with self.engine.connect() as db:
            asked, (cid, user_id, marker), order = _listed(
                db.dialect.name, "asked", [sa.BigInteger] * 3, queries
            )
            after = (messages.c.conversation_id == cid) & (messages.c.id > marker)
            everyone = sa.select(sa.func.count()).where(after).scalar_subquery()
            own = (
                sa.select(sa.func.count()).where(after & (messages.c.sender_id == user_id)).scalar_subquery()
            )
            query = sa.select(everyone - own).select_from(asked).order_by(order)
            return [int(n) for n in (await db.execute(query)).scalars()]

    @answers
    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """The first message stored with each key (a later one with the same key is a bug of
        its client, and does not change the answer): one probe of the index per key."""
        if not keys:
            return []
        rows = list(dict.fromkeys(keys))
        c = messages.c
        async with self.engine.connect() as db:
            wanted, (sender_id, client_msg_id), _ = _listed(
                db.dialect.name, "wanted", [sa.BigInteger, sa.String], rows
            )
            query = (
                sa.select(c.sender_id, c.client_msg_id, c.json)
                .select_from(wanted)
                .join(messages, (c.sender_id == sender_id) & (c.client_msg_id == client_msg_id))
                .order_by(c.id.desc())
            )
            found = {(int(s), k): bytes(json) for s, k, json in await db.execute(query)}  # the oldest last
        return [found.get(k) for k in keys]

    @answers
    async def claim_sent(self, keys: Sequence[tuple[int, str]], owner: str, ttl: float) -> list[bytes | bool]:
        """The messages already stored; for the other keys, one upsert that takes a free,
        expired or own claim and returns the keys it took. (Claims stay after their message
        is stored, so a look-up that missed the message meets its claim instead.)"""
        sent = await self.find_sent(keys)
        wanted = list(dict.fromkeys(k for k, m in zip(keys, sent, strict=True) if m is None))
        if not wanted:
            return [m if m is not None else False for m in sent]
        now = int(time.time() * 1000)
        c = claims.c
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(claims)
        rows = [
            {"sender_id": s, "client_msg_id": k, "owner": owner, "expires_ms": now + int(ttl * 1000)}
            for s, k in wanted
        ]
        upsert = insert.on_conflict_do_update(
            index_elements=[c.sender_id, c.client_msg_id],
            set_={"owner": insert.excluded.owner, "expires_ms": insert.excluded.expires_ms},
            where=(c.owner == insert.excluded.owner) | (c.expires_ms < now),
        ).returning(c.sender_id, c.client_msg_id)
        async with self.engine.begin() as db:
            if now - self._swept_ms > ttl * 1000:
                await db.execute(claims.delete().where(c.expires_ms < now))
                self._swept_ms = now
            taken = {(int(s), k) for s, k in await db.execute(upsert.values(rows))}
        return [m if m is not None else key in taken for key, m in zip(keys, sent, strict=True)]

    @answers
    async def release_sent(self, keys: Sequence[tuple[int, str]], owner: str) -> None:
        c = claims.c
        async with self.engine.begin() as db:
            for sender_id, client_msg_id in keys:
                mine = (c.sender_id == sender_id) & (c.client_msg_id == client_msg_id) & (c.owner == owner)
                await db.execute(claims.delete().where(mine))

    @answers
    async def forget_before(self, message_id: int) -> int:
        async with self.engine.begin() as db:
            return int((await db.execute(messages.delete().where(messages.c.id < message_id))).rowcount)

    # -- backup and restore --------------------------------------------------------------

    @answers
    async def backup(self) -> BackupRecords:
        async with self.engine.connect() as db:
            count = (await db.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one()
        return int(count) + 1, self._dump()

    async def _dump(self) -> AsyncIterator[bytes]:
        """The position read first, then every message: what is stored through the position
        is among them, as ``Restorable`` asks (the storage follower replays the rest)."""
        yield orjson.dumps({"position": await self.position()})
        async with self.engine.connect() as db:
            query = sa.select(*(messages.c[c] for c in _COLUMNS), messages.c.json).order_by(messages.c.id)
            async for *keys, json in await db.stream(query):
                yield orjson.dumps(keys) + b"\n" + bytes(json)

    @answers
    async def is_empty(self) -> bool:
        async with self.engine.connect() as db:
            return (
                await db.execute(sa.select(messages.c.id).limit(1))
            ).first() is None and not await self.position()

    @answers
    async def restore(self, records: AsyncIterator[bytes]) -> None:
        position = orjson.loads(await anext(records))["position"]
        batch: list[StoredMessage] = []
        async for record in records:
            keys, _, json = record.partition(b"\n")
            message_id, conversation_id, sender_id, client_msg_id = orjson.loads(keys)
            batch.append(StoredMessage(message_id, conversation_id, sender_id, client_msg_id, json))
            if len(batch) == ROWS_PER_INSERT:
                await self.append(batch)
                batch = []
        await self.append(batch, through=position)
