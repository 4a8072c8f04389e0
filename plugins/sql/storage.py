"""The ``sql`` storage: conversation history in the relational database, through SQLAlchemy.

One row per message in ``sql_messages``: its id, conversation, sender, ``client_msg_id``
and wire JSON exactly as given. The indexes do the work:

- ``(conversation_id, id)``: a page is one range scan of ``limit + 1`` rows from either
  end, the newest message a one-row scan, whatever the conversation's length;
- ``(conversation_id, sender_id, id)``: unread = the rows after the marker in the first
  index minus the caller's own after it in this one (two range counts);
- ``(sender_id, client_msg_id)``: the message already sent with a key (idempotent resends).

``sql_stored`` holds the transport position through which every message is stored, set
in the same transaction as the messages it covers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz import App, BackupRecords, Finding, Page, StoredMessage

from .tables import answers, create_tables, insert_missing, messages, stored

MAX_ID = 2**53
ROWS_PER_INSERT = 1000
_COLUMNS = ("id", "conversation_id", "sender_id", "client_msg_id")


class SqlStorage:
    """The Storage slot on the relational database (see the module docstring)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the sql storage is not started")
        return self._engine

    async def start(self, app: App) -> None:
        self._engine = app.engine
        await create_tables(self.engine, messages, stored)
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
        query = sa.select(messages.c.json).where(messages.c.conversation_id == conversation_id)
        if before is not None:
            query = query.where(messages.c.id < before)
        if after is None:
            query = query.order_by(messages.c.id.desc())  # newest first; the extra one is older
        else:
            query = query.where(messages.c.id > after).order_by(messages.c.id)
        async with self.engine.connect() as db:
            rows = [bytes(json) for json in (await db.execute(query.limit(limit + 1))).scalars()]
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
        """The newest of each conversation: one ``ORDER BY id DESC LIMIT 1`` per conversation
        (an index scan from the end), in one statement."""
        if not conversation_ids:
            return []
        newest = [
            sa.select(messages.c.conversation_id, messages.c.json)
            .where(messages.c.conversation_id == cid)
            .order_by(messages.c.id.desc())
            .limit(1)
            .subquery()
            .select()
            for cid in dict.fromkeys(conversation_ids)
        ]
        async with self.engine.connect() as db:
            found = {int(cid): bytes(json) for cid, json in await db.execute(sa.union_all(*newest))}
        return [found.get(cid) for cid in conversation_ids]

    @answers
    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        if not queries:
            return []
        counts: list[Any] = []
        for cid, user_id, marker in queries:
            after = (messages.c.conversation_id == cid) & (messages.c.id > marker)
            everyone = sa.select(sa.func.count()).where(after).scalar_subquery()
            own = (
                sa.select(sa.func.count()).where(after & (messages.c.sender_id == user_id)).scalar_subquery()
            )
            counts.append(everyone - own)
        async with self.engine.connect() as db:
            return [int(n) for n in (await db.execute(sa.select(*counts))).one()]

    @answers
    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """The first message stored with each key (a later one with the same key is a bug of
        its client, and does not change the answer)."""
        if not keys:
            return []
        key = sa.tuple_(messages.c.sender_id, messages.c.client_msg_id)
        query = (
            sa.select(messages.c.sender_id, messages.c.client_msg_id, messages.c.json)
            .where(key.in_(list(dict.fromkeys(keys))))
            .order_by(messages.c.id.desc())
        )
        async with self.engine.connect() as db:
            found = {(int(s), c): bytes(json) for s, c, json in await db.execute(query)}  # the oldest last
        return [found.get(k) for k in keys]

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
