"""Service discovery: the live instances, in the ``instances`` table every instance shares.

Each instance writes its row when it starts (id, public URL, start time), rewrites it
every ``HEARTBEAT`` seconds with its count of live connections, and deletes it when it
stops. A row not rewritten for ``EXPIRY`` seconds is an instance that died: it is no
longer listed, and the next heartbeat of any instance deletes it. ``GET /discovery``
lists the live rows and recommends the one with the fewest connections.

The database is the registry because every deployment has one that all its instances
share, whatever its transport. Liveness is judged by the reader's clock, as leases are
(``kibitz.leases``): instances' clocks should agree to well within ``EXPIRY``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import instances as table
from .models import rfc3339

HEARTBEAT = 10.0  # seconds between two writes of an instance's row
EXPIRY = 30.0  # seconds after its last write that an instance counts as dead
FRESH = 1.0  # seconds a listing is reused, so that a storm of new clients asks once

log = logging.getLogger("kibitz.registry")


@dataclass(frozen=True, slots=True)
class Instance:
    """One live instance, as ``GET /discovery`` lists it."""

    id: str
    url: str
    connections: int
    started_ms: int

    def to_dict(self) -> dict[str, str | int]:
        return {
            "id": self.id,
            "url": self.url,
            "connections": self.connections,
            "started_at": rfc3339(self.started_ms),
        }


class Registry:
    """This instance's row in the registry, and the listing of every live one."""

    def __init__(
        self,
        engine: AsyncEngine,
        me: str,
        url: str,
        connections: Callable[[], int],
        *,
        clock: Callable[[], float] = time.time,
        heartbeat: float = HEARTBEAT,
        expiry: float = EXPIRY,
    ) -> None:
        self.engine = engine
        self.me = me
        self.url = url
        self.connections = connections
        self.clock = clock
        self.heartbeat = heartbeat
        self.expiry = expiry
        self.started_ms = self._now_ms()
        self._listed: tuple[float, list[Instance]] = (-FRESH, [])
        self._task: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def start(self) -> None:
        """Write this instance's row at once and every ``heartbeat`` seconds, in the
        background, until ``close``. (Called once the server listens, where nothing may
        wait: a stop asked for meanwhile would find the start unfinished.)"""
        self._task = asyncio.create_task(self._beat_forever(), name="registry-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and delete this instance's row: it leaves the list at once."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            async with self.engine.begin() as db:
                await db.execute(table.delete().where(table.c.id == self.me))
        except Exception as e:  # the database is away: the row expires instead
            log.warning("registry_leave_failed", extra={"error": f"{type(e).__name__}: {e}"})

    async def beat(self) -> None:
        """Write this instance's row now, and delete the rows of instances that died."""
        now = self._now_ms()
        values = {"connections": self.connections(), "seen_ms": now}
        async with self.engine.begin() as db:
            updated = await db.execute(table.update().where(table.c.id == self.me).values(values))
            if updated.rowcount == 0:  # the first write, or another instance took it for dead
                await db.execute(
                    table.insert().values(id=self.me, url=self.url, started_ms=self.started_ms, **values)
                )
            await db.execute(table.delete().where(table.c.seen_ms < now - int(self.expiry * 1000)))

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as e:  # the database is away: try again at the next beat
                log.warning("registry_heartbeat_failed", extra={"error": f"{type(e).__name__}: {e}"})
            await asyncio.sleep(self.heartbeat)

    async def live(self) -> list[Instance]:
        """The live instances, this one among them, by id. This one's connections are
        counted now; the others' as of their last heartbeat. While the database does not
        answer, the last listing (or none) stands for the others."""
        at, listed = self._listed
        if time.monotonic() - at >= FRESH:
            try:
                listed = await self._others()
            except Exception as e:
                log.warning("registry_read_failed", extra={"error": f"{type(e).__name__}: {e}"})
            self._listed = (time.monotonic(), listed)
        me = Instance(self.me, self.url, self.connections(), self.started_ms)
        return sorted([me, *listed], key=lambda i: i.id)

    async def _others(self) -> list[Instance]:
        listed = await read_live(self.engine, self._now_ms() - int(self.expiry * 1000))
        return [i for i in listed if i.id != self.me]

    @staticmethod
    def recommend(instances: list[Instance], me: str) -> Instance:
        """The one a new connection should use: the fewest connections, this one on a tie."""
        return min(instances, key=lambda i: (i.connections, i.id != me, i.id))


async def read_live(engine: AsyncEngine, since_ms: int) -> list[Instance]:
    """The instances whose row was written at ``since_ms`` or later, by id."""
    query = sa.select(table.c.id, table.c.url, table.c.connections, table.c.started_ms)
    async with engine.connect() as db:
        rows = (await db.execute(query.where(table.c.seen_ms >= since_ms).order_by(table.c.id))).all()
    return [Instance(*row) for row in rows]
