"""The ``sequence`` ids plugin: message ids counted out of the database, a block at a time.

Ids have the layout of every Kibitz id (milliseconds since 2026-01-01 above 12 bits,
``kibitz.first_id_of``), taken from one counter that every instance shares: the one row
of the ``sequence_counter`` table, which this plugin creates at start (the core's
migrations know nothing of it). An instance takes a *block* of ``block`` ids in one
statement, with the row locked (``UPDATE ... RETURNING``)::

    next = max(next, first_id_of(the database's clock in ms)) + block  -- the block: [next - block, next)

- **Unique** across instances: each block is handed out once, however many instances
  share the database (there is no limit on their number).
- **Growing** per instance, across restarts too: the counter never goes back, whatever a
  clock says, and an instance's blocks come out in order.
- **Below 2**53**: a block that would reach it is refused (in 2095, at the clock's pace).
- **Roughly time-sortable**: a block starts at the database's clock, so instances with
  skewed clocks agree, unless the counter is ahead of it (more than 4096 ids per ms
  across all instances). A background task keeps a spare block, taking a new one when
  the spare is used or ``refresh / 2`` old; the block in use gives way to the spare when
  used up or ``refresh / 2`` old. While the database answers, ids lag its clock by less
  than ``refresh``, and instances' ids interleave by time to within that.

``next_id`` never waits for the database. When the database stops answering, the blocks
in hand are used up, none once it is ``MAX_AGE`` refreshes old, and then ``next_id``
raises ``IdsUnavailable`` (a 503) until a block is taken again: ids are never reused.

``first_id_at(ms)`` reaches back by that max age and by this instance's clock lead on
the database (measured at every block taken: the local clock when the answer came,
rounded up, minus the database's clock in it, an upper bound). An id any instance gives
at or after ``ms`` comes from a block at most max age old, so taken at a database time
after ``ms - max age - lead``, and the block starts at or above the first id of that
time. History retention thus keeps up to about ``MAX_AGE`` refreshes more, and never
deletes a message newer than its cut-off. Assumed: ``time.monotonic`` runs at the pace
of real time, and this instance's clock does not step between two blocks.

Settings (``[sequence]`` table or ``KIBITZ_SEQUENCE_*``): ``refresh`` (default ``1s``,
``0.25s`` to ``60s``) and ``block``, the ids per block (default 4096, at least 1024 so
that a 20 ms round trip for the next block keeps up with 50,000 ids/s; at most 32 per ms
of ``refresh`` (32,000 at 1s), so that 64 instances taking two blocks a refresh use no
more ids than the clock makes meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz import (
    EPOCH_MS,
    TIME_SHIFT,
    App,
    ConfigError,
    IdsUnavailable,
    PluginSettings,
    first_id_of,
    hookimpl,
)

log = logging.getLogger("kibitz.sequence")

MAX_AGE = 10  # refreshes: a block this old is not used any more
MIN_BLOCK = 1024
_LIMIT = 1 << 53
_CREATE_LOCK = 7160426  # PostgreSQL instances starting together create the table one at a time
# The database's clock in Unix ms (SQLite 3.40 has no unixepoch('subsec')), and max() of two
_NOW_MS = {
    "postgresql": "floor(extract(epoch from clock_timestamp()) * 1000)::bigint",
    "sqlite": "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)",
}
_GREATEST: dict[str, Callable[..., sa.ColumnElement[int]]] = {
    "postgresql": sa.func.greatest,
    "sqlite": sa.func.max,
}

metadata = sa.MetaData()
counter = sa.Table(
    "sequence_counter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # 1, the only row
    sa.Column("next", sa.BigInteger, nullable=False),  # the first id of the next block
)


@dataclass(slots=True)
class _Block:
    next: int
    end: int
    taken: float  # monotonic seconds when it was asked for


@hookimpl
def register_ids(name: str, settings: PluginSettings) -> SequenceIds | None:
    if name == "sequence":
        return SequenceIds(settings)
    return None


class SequenceIds:
    """The id generator. ``monotonic`` (seconds) is replaceable for tests.

    ``next_id`` is synchronous and not thread-safe: call it from the event loop.
    """

    def __init__(self, settings: PluginSettings, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.refresh = settings.duration("refresh", 1.0)
        if not 0.25 <= self.refresh <= 60:
            raise ConfigError(f"{settings.source('refresh')}={settings['refresh']!r}: must be 0.25s to 60s")
        self.block = settings.integer("block", 4096, MIN_BLOCK, int(self.refresh * 1000) * 32)
        self.monotonic = monotonic
        self._turn = self.refresh / 2  # the age at which a block gives way to a newer one
        self._max_age = MAX_AGE * self.refresh
        self._lead_ms = 0  # this clock minus the database's, at most, as last measured
        self._current: _Block | None = None
        self._spare: _Block | None = None
        self._blocked = "the sequence id generator has not started"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._engine: AsyncEngine | None = None
        self._take_block: sa.Update | None = None

    async def start(self, app: App) -> None:
        """Create the counter if it is missing and take a block and a spare; keep a spare from then on."""
        engine, dialect = app.engine, app.engine.dialect.name
        if dialect not in _NOW_MS:
            raise ConfigError(f"the sequence ids plugin needs SQLite or PostgreSQL, not {dialect}")
        self._engine, self._take_block = engine, _take_statement(dialect, self.block)
        async with engine.begin() as db:
            if dialect == "postgresql":
                await db.execute(sa.text(f"SELECT pg_advisory_xact_lock({_CREATE_LOCK})"))
            await db.run_sync(metadata.create_all, checkfirst=True)
            missing = sa.select(
                sa.literal_column("1", sa.Integer()), sa.literal_column("0", sa.BigInteger())
            ).where(~sa.exists().where(counter.c.id == 1))
            await db.execute(counter.insert().from_select(["id", "next"], missing))
        self._current = await self._take()
        self._spare = await self._take()  # a burst right after start has two blocks
        self._blocked = ""
        self._task = asyncio.create_task(self._keep_ready(), name="sequence-blocks")

    async def close(self) -> None:
        """Stop taking blocks; the ids left in hand are never given."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._current = self._spare = None
        self._blocked = "the sequence id generator is closed"

    def next_id(self) -> int:
        """A new id, larger than every id this generator gave before."""
        now = self.monotonic()
        block = self._current
        if (
            block is not None
            and self._spare is not None
            and (block.next == block.end or now - block.taken >= self._turn)
        ):
            block = self._current = self._spare
            self._spare = None
            self._wake.set()
        if block is None or block.next == block.end or now - block.taken >= self._max_age:
            raise IdsUnavailable(
                self._blocked or "no block of sequence ids is ready: the database has not answered in time"
            )
        block.next += 1
        return block.next - 1

    def first_id_at(self, unix_ms: int) -> int:
        """No larger than any id that any instance gives at or after ``unix_ms``: the first id
        of the max age and this clock's lead on the database's before it."""
        return first_id_of(unix_ms - int(self._max_age * 1000) - self._lead_ms)

    async def _take(self) -> _Block:
        """A new block from the counter; raises what the database raises, or ``IdsUnavailable``."""
        assert self._engine is not None and self._take_block is not None, "start() first"
        taken = self.monotonic()
        async with asyncio.timeout(self._max_age), self._engine.begin() as db:
            end, db_ms = (await db.execute(self._take_block)).one()
        self._lead_ms = math.ceil(time.time() * 1000) - db_ms
        if end > _LIMIT:
            raise IdsUnavailable("the sequence id counter has reached 2**53: no more ids can be given")
        return _Block(end - self.block, end, taken)

    async def _keep_ready(self) -> None:
        while True:
            spare = self._spare
            due = 0.0 if spare is None else spare.taken + self._turn - self.monotonic()
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):  # not wait_for: it can swallow a cancel (3.11)
                        await self._wake.wait()
                self._wake.clear()
                continue
            try:
                self._spare = await self._take()
            except Exception:
                log.warning("sequence: taking a block of ids failed; retrying", exc_info=True)
                await asyncio.sleep(self._turn)


def _take_statement(dialect: str, block: int) -> sa.Update:
    """``next = max(next, first id of the database's now) + block``, returning it and that now."""
    now_ms = sa.literal_column(_NOW_MS[dialect], sa.BigInteger())
    start = _GREATEST[dialect](counter.c.next, (now_ms - EPOCH_MS) * (1 << TIME_SHIFT))
    return (
        counter.update().where(counter.c.id == 1).values(next=start + block).returning(counter.c.next, now_ms)
    )
