"""The ``sql`` transport: the per-user event logs in the relational database.

With ``KIBITZ_STORAGE=sql`` too, a Kibitz deployment is PostgreSQL alone: no NATS, no
Redis. Acknowledged still means committed, and so fsynced (PostgreSQL's default
``synchronous_commit = on``; SQLite with ``synchronous=FULL``).

- **Append** (group commit): concurrent ``append`` calls are queued and committed
  together in one transaction, one transaction at a time per instance. The transaction
  first raises ``sql_log_head.position`` by the number of rows it adds; that row lock is
  held to its commit, so the transactions of every instance commit in position order and
  a reader that sees a position sees every one before it.
- **Live feed**: each instance reads ``sql_events`` after the last position it handed
  over whenever it is woken: by its own commits, by PostgreSQL's ``NOTIFY`` of another
  instance's commit (``LISTEN kibitz_log`` on a connection of its own), and at least every
  ``POLL_INTERVAL`` in case a notification was missed while that connection reconnected.
- **Signals** (typing, device revoked) are ``NOTIFY kibitz_signal`` and never stored; on
  SQLite, which serves one instance, they are handed over in this process.
- **Presence**: a row per live user per instance in ``sql_presence``; an instance's rows
  count while its ``sql_instances`` heartbeat is under ``PRESENCE_TTL`` old.
- **Retention** (``retention_age``, default 30 days): every ``SWEEP_INTERVAL`` an instance
  notes the head position with the time (``sql_log_marks``) and deletes what was logged
  before the newest mark older than the retention age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kibitz import (
    App,
    BackupRecords,
    CursorExpired,
    Finding,
    LiveEvent,
    LiveSignal,
    LogEntry,
    PluginSettings,
    Tasks,
)

from .tables import (
    answers,
    create_tables,
    events,
    insert_missing,
    instances,
    log_head,
    log_marks,
    presence,
    records,
)

log = logging.getLogger("kibitz.sql")

LOG_CHANNEL = "kibitz_log"
SIGNAL_CHANNEL = "kibitz_signal"
MAX_ROWS = 5000  # rows per commit at most (one append's may exceed it: it is never split)
FEED_BATCH = 5000
POLL_INTERVAL = 1.0
CONNECT_TIMEOUT = 30.0
HEARTBEAT = 10.0
PRESENCE_TTL = 30.0  # seconds an instance's presence rows count after its last heartbeat
FORGET_INSTANCES = 300.0  # seconds after which a silent instance's rows are deleted
SWEEP_INTERVAL = 60.0
MAX_SIGNAL_BYTES = 7000  # NOTIFY carries at most 8,000 bytes
_ROW = struct.Struct(">qqq")  # position, user id (-1: a record), committed_ms; then the data


class SqlTransport:
    """The Transport slot on the relational database (see the module docstring)."""

    max_fanout = 998  # as the nats transport's, so a deployment can move between them

    def __init__(self, settings: PluginSettings) -> None:
        self.retention_age = settings.duration("retention_age", "30d")
        self._engine: AsyncEngine | None = None
        self._postgres = False
        self._instance = ""
        self._pending: deque[Append] = deque()
        self._commit_wake = asyncio.Event()
        self._feed_wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._seen = 0  # the last position the feed handed over
        self._on_event: LiveEvent | None = None
        self._on_signal: LiveSignal | None = None
        self._tasks = Tasks()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the sql transport is not started")
        return self._engine

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, app: App) -> None:
        self._engine = app.engine
        self._postgres = app.engine.dialect.name == "postgresql"
        self._instance = app.instance_id
        await create_tables(self.engine, events, records, log_head, log_marks, instances, presence)
        async with self.engine.begin() as db:
            await db.execute(
                insert_missing(db.dialect.name, log_head).values(id=1, position=0, first_position=1)
            )
        self._seen = await self.now()
        await self._heartbeat()
        loops = [self._commit_loop, self._feed_loop, self._heartbeat_loop, self._sweep_loop]
        if self._postgres:
            loops.append(self._listen_loop)
        for loop in loops:
            self._tasks.spawn(loop(), name=f"sql-{loop.__name__}")
        if self._postgres:  # signals sent from now on must reach this instance
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._listening.wait()

    async def close(self) -> None:
        await self._tasks.cancel()
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(ConnectionError("transport closed"))
        if self._engine is not None:
            with contextlib.suppress(Exception):
                async with self.engine.begin() as db:
                    await db.execute(presence.delete().where(presence.c.instance_id == self._instance))
                    await db.execute(instances.delete().where(instances.c.instance_id == self._instance))

    @answers
    async def check(self) -> None:
        await self.now()

    async def diagnose(self) -> list[Finding]:
        detail = "event logs in the database: several instances on PostgreSQL, one on SQLite"
        return [Finding("ok", "transport sql", detail)]

    # -- appending (group commit) --------------------------------------------------------

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if any(len(e.user_ids) > self.max_fanout for e in entries):
            raise ValueError(f"an entry fans out to more than {self.max_fanout} users")
        pending = Append(entries)
        self._pending.append(pending)
        self._commit_wake.set()
        return await pending.future

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            while self._pending:
                batch = [self._pending.popleft()]
                rows = batch[0].rows
                while self._pending and rows + self._pending[0].rows <= MAX_ROWS:
                    rows += self._pending[0].rows
                    batch.append(self._pending.popleft())
                try:
                    positions = await self._commit(batch, rows)
                except Exception as e:
                    failure = e if isinstance(e, ConnectionError) else ConnectionError(f"database: {e}")
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(failure)
                    continue
                for pending, returned in zip(batch, positions, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(returned)
                self._feed_wake.set()

    async def _commit(self, batch: list[Append], rows: int) -> list[list[int]]:
        """One transaction: take ``rows`` positions under the head's lock, insert, notify."""
        committed_ms = int(time.time() * 1000)
        async with self.engine.begin() as db:
            take = log_head.update().values(position=log_head.c.position + rows).where(log_head.c.id == 1)
            last = (await db.execute(take.returning(log_head.c.position))).scalar_one()
            position = last - rows
            event_rows: list[dict[str, Any]] = []
            record_rows: list[dict[str, Any]] = []
            returned = []
            for pending in batch:
                marks = []
                for entry in pending.entries:
                    for user_id in entry.user_ids:
                        position += 1
                        event_rows.append(
                            {
                                "position": position,
                                "user_id": user_id,
                                "data": entry.event,
                                "committed_ms": committed_ms,
                            }
                        )
                    if entry.message is not None:
                        position += 1
                        record_rows.append(
                            {"position": position, "data": entry.message, "committed_ms": committed_ms}
                        )
                    marks.append(position)
                returned.append(marks)
            if event_rows:
                await db.execute(events.insert(), event_rows)
            if record_rows:
                await db.execute(records.insert(), record_rows)
            if self._postgres:
                await db.execute(sa.select(sa.func.pg_notify(LOG_CHANNEL, str(last))))
        return returned

    # -- reading -------------------------------------------------------------------------

    @answers
    async def now(self) -> int:
        async with self.engine.connect() as db:
            return int((await db.execute(sa.select(log_head.c.position))).scalar_one())

    @answers
    async def read(self, user_id: int, after: int, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        query = (
            sa.select(events.c.position, events.c.data)
            .where(events.c.user_id == user_id, events.c.position > after)
            .order_by(events.c.position)
            .limit(limit + 1)
        )
        async with self.engine.connect() as db:
            found = [(int(p), bytes(d)) for p, d in await db.execute(query)]
            head = (await db.execute(sa.select(log_head.c.position, log_head.c.first_position))).one()
        if after + 1 < head.first_position:
            raise CursorExpired(f"position {after} is older than the retained events")
        if after > head.position:
            raise CursorExpired(f"position {after} is beyond the log (restored from an older backup)")
        return found[:limit], len(found) > limit

    @answers
    async def messages(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        query = sa.select(records.c.position, records.c.data).where(records.c.position > after)
        async with self.engine.connect() as db:
            rows = await db.execute(query.order_by(records.c.position).limit(limit))
            return [(int(p), bytes(d)) for p, d in rows]

    # -- live delivery -------------------------------------------------------------------

    def listen(self, on_event: LiveEvent, on_signal: LiveSignal) -> None:
        self._on_event, self._on_signal = on_event, on_signal

    async def _feed_loop(self) -> None:
        """Hand over what was committed after ``_seen``, whenever woken or every POLL_INTERVAL."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._feed_wake.wait()
            self._feed_wake.clear()
            try:
                await self._hand_over()
            except Exception as e:
                log.warning("live_feed_read_failed", extra={"error": f"{type(e).__name__}: {e}"})

    async def _hand_over(self) -> None:
        while True:
            query = (
                sa.select(events.c.position, events.c.user_id, events.c.data, events.c.committed_ms)
                .where(events.c.position > self._seen)
                .order_by(events.c.position)
                .limit(FEED_BATCH)
            )
            async with self.engine.connect() as db:
                rows = (await db.execute(query)).all()
            for position, user_id, data, committed_ms in rows:
                self._seen = int(position)
                if self._on_event is not None:
                    self._on_event(int(user_id), int(position), bytes(data), committed_ms / 1000)
            if len(rows) < FEED_BATCH:
                return

    async def _listen_loop(self) -> None:
        """LISTEN on a connection of its own; reconnect when it is lost (PostgreSQL only)."""
        while True:
            try:
                async with self.engine.connect() as db:
                    await self._listen(db)
            except Exception as e:
                log.warning("listen_failed", extra={"error": f"{type(e).__name__}: {e}"})
            self._feed_wake.set()  # what was committed meanwhile is read at once
            await asyncio.sleep(POLL_INTERVAL)  # before connecting again

    async def _listen(self, db: AsyncConnection) -> None:
        connection = (await db.get_raw_connection()).driver_connection
        if connection is None:  # SQLAlchemy's answer for a connection already given up
            raise ConnectionError("the database connection is closed")
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(LOG_CHANNEL, lambda *_: self._feed_wake.set())
        await connection.add_listener(SIGNAL_CHANNEL, lambda _c, _p, _ch, payload: self._signalled(payload))
        self._listening.set()
        self._feed_wake.set()
        await lost.wait()

    def _signalled(self, payload: str) -> None:
        head, _, body = payload.partition("\n")
        if self._on_signal is not None:
            self._on_signal(tuple(int(u) for u in head.split(",") if u), body.encode())

    @answers
    async def signal(self, user_ids: Sequence[int], payload: bytes) -> None:
        text = ",".join(map(str, user_ids)) + "\n" + payload.decode()
        if len(text.encode()) > MAX_SIGNAL_BYTES:
            raise ValueError(f"a signal carries at most {MAX_SIGNAL_BYTES} bytes")
        if not self._postgres:
            asyncio.get_running_loop().call_soon(self._signalled, text)
            return
        async with self.engine.begin() as db:
            await db.execute(sa.select(sa.func.pg_notify(SIGNAL_CHANNEL, text)))

    # -- presence ------------------------------------------------------------------------

    @answers
    async def mark_live(self, user_id: int, live: bool) -> None:
        async with self.engine.begin() as db:
            if live:
                row = {"instance_id": self._instance, "user_id": user_id}
                await db.execute(insert_missing(db.dialect.name, presence).values(**row))
            else:
                mine = (presence.c.instance_id == self._instance) & (presence.c.user_id == user_id)
                await db.execute(presence.delete().where(mine))

    @answers
    async def live_users(self, user_ids: Sequence[int]) -> set[int]:
        if not user_ids:
            return set()
        fresh = int((time.time() - PRESENCE_TTL) * 1000)
        query = (
            sa.select(presence.c.user_id)
            .distinct()
            .join(instances, instances.c.instance_id == presence.c.instance_id)
            .where(presence.c.user_id.in_(list(user_ids)), instances.c.seen_ms >= fresh)
        )
        async with self.engine.connect() as db:
            return {int(u) for u in (await db.execute(query)).scalars()}

    async def _heartbeat(self) -> None:
        now_ms = int(time.time() * 1000)
        gone = sa.select(instances.c.instance_id).where(
            instances.c.seen_ms < now_ms - FORGET_INSTANCES * 1000
        )
        async with self.engine.begin() as db:
            await db.execute(presence.delete().where(presence.c.instance_id.in_(gone)))
            await db.execute(instances.delete().where(instances.c.seen_ms < now_ms - FORGET_INSTANCES * 1000))
            seen = instances.update().values(seen_ms=now_ms).where(instances.c.instance_id == self._instance)
            if (await db.execute(seen)).rowcount == 0:
                await db.execute(instances.insert().values(instance_id=self._instance, seen_ms=now_ms))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)  # the pause between two heartbeats
            try:
                await self._heartbeat()
            except Exception as e:
                log.warning("presence_heartbeat_failed", extra={"error": f"{type(e).__name__}: {e}"})

    # -- retention -----------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:
                log.warning("log_sweep_failed", extra={"error": f"{type(e).__name__}: {e}"})
            await asyncio.sleep(SWEEP_INTERVAL)  # the pause between two sweeps

    async def sweep(self, now_ms: int | None = None) -> int:
        """Note the head's position now; drop what was logged before the newest note older
        than ``retention_age``. Returns the first position kept."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - int(self.retention_age * 1000)
        async with self.engine.begin() as db:
            head = (await db.execute(sa.select(log_head.c.position, log_head.c.first_position))).one()
            await db.execute(
                insert_missing(db.dialect.name, log_marks).values(at_ms=now_ms, position=head.position)
            )
            old = sa.select(sa.func.max(log_marks.c.position)).where(log_marks.c.at_ms <= cutoff)
            through = (await db.execute(old)).scalar()
            if not self.retention_age or through is None or through < head.first_position:
                return int(head.first_position)
            await db.execute(events.delete().where(events.c.position <= through))
            await db.execute(records.delete().where(records.c.position <= through))
            await db.execute(log_marks.delete().where(log_marks.c.at_ms < cutoff))
            await db.execute(log_head.update().values(first_position=through + 1).where(log_head.c.id == 1))
        return int(through) + 1

    # -- backup and restore --------------------------------------------------------------

    @answers
    async def backup(self) -> BackupRecords:
        async with self.engine.connect() as db:
            count = (await db.execute(sa.select(sa.func.count()).select_from(events))).scalar_one()
        return int(count), self._dump()

    async def _dump(self) -> AsyncIterator[bytes]:
        async with self.engine.connect() as db:
            if self._postgres:
                await db.execution_options(isolation_level="REPEATABLE READ")
            else:
                await db.exec_driver_sql("BEGIN")  # one snapshot for every read below
            head = (await db.execute(sa.select(log_head.c.position, log_head.c.first_position))).one()
            yield orjson.dumps({"position": head.position, "first_position": head.first_position})
            for table in (events, records):
                user = table.c.user_id if table is events else sa.literal(-1)
                query = sa.select(table.c.position, user, table.c.committed_ms, table.c.data)
                async for position, user_id, committed_ms, data in await db.stream(
                    query.order_by(table.c.position)
                ):
                    yield _ROW.pack(position, user_id, committed_ms) + bytes(data)
            await db.rollback()

    @answers
    async def is_empty(self) -> bool:
        return await self.now() == 0

    @answers
    async def restore(self, records_in: AsyncIterator[bytes]) -> None:
        head = orjson.loads(await anext(records_in))
        batch: list[tuple[int, int, int, bytes]] = []
        async for record in records_in:
            batch.append((*_ROW.unpack_from(record), record[_ROW.size :]))
            if len(batch) == MAX_ROWS:
                await self._insert_rows(batch)
                batch = []
        await self._insert_rows(batch)
        values = {"position": head["position"], "first_position": head["first_position"]}
        async with self.engine.begin() as db:
            await db.execute(log_head.update().values(**values).where(log_head.c.id == 1))

    async def _insert_rows(self, rows: list[tuple[int, int, int, bytes]]) -> None:
        event_rows = [
            {"position": p, "user_id": u, "committed_ms": c, "data": d} for p, u, c, d in rows if u != -1
        ]
        record_rows = [{"position": p, "committed_ms": c, "data": d} for p, u, c, d in rows if u == -1]
        async with self.engine.begin() as db:
            if event_rows:
                await db.execute(events.insert(), event_rows)
            if record_rows:
                await db.execute(records.insert(), record_rows)


class Append:
    """One ``append`` call waiting to be committed."""

    __slots__ = ("entries", "future", "rows")

    def __init__(self, entries: Sequence[LogEntry]) -> None:
        self.entries = entries
        self.rows = sum(len(e.user_ids) + (e.message is not None) for e in entries)
        self.future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
