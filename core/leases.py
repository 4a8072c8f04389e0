"""Leases: numbered slots that instances sharing one database take turns to hold.

A lease is a row of the ``leases`` table, ``(kind, number)``, held by one ``holder``
until ``expires_ms``. Instances take the lowest free number of a kind, renew it well
before it expires, and release it when they stop; a number whose holder died frees
itself when its lease runs out. The snowflake id generator uses them as worker ids.

Every change is one conditional statement (``UPDATE ... WHERE expires_ms < now`` or
``WHERE holder = me``, or an ``INSERT`` that loses on the primary key), so two
instances never hold the same number, on SQLite and on PostgreSQL alike.

Each row also keeps a ``high_water``: the largest value (for an id generator, a clock
reading in ms) its holders may have used. The next holder starts above it, so it needs
no trust in anybody's clock. Expiry itself is judged by the local clock, so clocks of
instances should agree to well within a lease's ttl.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import leases as table

# Rounds of "read the free numbers, try to take one" before acquire gives up while others
# keep taking the numbers it saw free.
_ROUNDS = 10


class LeaseUnavailable(Exception):
    """Every number of a kind is held by a live holder."""


@dataclass(slots=True)
class Lease:
    """A number of a kind, held by this ``Leases``'s holder.

    ``high_water`` is the value recorded by the previous holders when it was acquired
    (0 for a new row); ``expires_ms`` moves on with every successful ``renew``.
    """

    kind: str
    number: int
    high_water: int
    expires_ms: int
    ttl: float


class Leases:
    """Take, renew and release numbered leases in the ``leases`` table for ``holder``.

    ``holder`` names this process (``app.instance_id``), at most 64 characters.
    ``clock`` returns seconds since the Unix epoch (tests pass a fake one).
    """

    def __init__(self, engine: AsyncEngine, holder: str, *, clock: Callable[[], float] = time.time) -> None:
        if not 0 < len(holder) <= 64:
            raise ValueError(f"lease holder {holder!r}: must be 1 to 64 characters")
        self.engine = engine
        self.holder = holder
        self.clock = clock
        # Numbers handed out by this object and not yet released or lost: never handed out
        # twice, although their rows name this holder.
        self._held: set[tuple[str, int]] = set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def acquire(self, kind: str, count: int, ttl: float) -> Lease:
        """Hold the lowest free number in ``[0, count)`` of ``kind`` for ``ttl`` seconds.

        Free means no row, an expired row, or a row this holder left behind (a restart
        under the same name; such a row is preferred). Raises ``LeaseUnavailable`` when
        every number is held.
        """
        if count < 1 or ttl <= 0:
            raise ValueError(f"lease {kind!r}: count must be at least 1 and ttl positive")
        key = (table.c.kind == kind) & (table.c.number < count)
        for _ in range(_ROUNDS):
            now = self._now_ms()
            async with self.engine.connect() as connection:
                result = await connection.execute(
                    sa.select(table.c.number, table.c.holder, table.c.expires_ms).where(key)
                )
                rows = result.all()
            taken = {r.number: r for r in rows}
            mine = [r.number for r in rows if r.holder == self.holder and (kind, r.number) not in self._held]
            free = [n for n in range(count) if n not in taken or taken[n].expires_ms < now]
            candidates = sorted(mine) + [n for n in free if n not in mine and (kind, n) not in self._held]
            if not candidates:
                break
            for number in candidates:
                if (kind, number) in self._held:
                    continue  # a concurrent acquire of this holder is trying it
                self._held.add((kind, number))
                lease = None
                try:
                    lease = await self._take(kind, number, ttl, exists=number in taken)
                finally:
                    if lease is None:
                        self._held.discard((kind, number))
                if lease is not None:
                    return lease
        raise LeaseUnavailable(
            f"all {count} {kind!r} leases are held by running instances (at most {count} may share "
            f"one database); stop one, or wait up to {ttl:g}s for a stopped one's lease to expire"
        )

    async def _take(self, kind: str, number: int, ttl: float, exists: bool) -> Lease | None:
        """Take one number if it is still free; None when another holder got there first."""
        now = self._now_ms()
        expires = now + int(ttl * 1000)
        if exists:
            async with self.engine.begin() as connection:
                result = await connection.execute(
                    table.update()
                    .where(table.c.kind == kind, table.c.number == number)
                    .where((table.c.expires_ms < now) | (table.c.holder == self.holder))
                    .values(holder=self.holder, expires_ms=expires)
                    .returning(table.c.high_water)
                )
                row = result.first()
            return None if row is None else Lease(kind, number, row.high_water, expires, ttl)
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    table.insert().values(
                        kind=kind, number=number, holder=self.holder, expires_ms=expires, high_water=0
                    )
                )
        except IntegrityError:
            return None
        return Lease(kind, number, 0, expires, ttl)

    async def renew(self, lease: Lease, high_water: int) -> bool:
        """Extend the lease by its ttl and record ``high_water`` (never lowering the stored one).

        False, and nothing changes, when another holder has taken the number meanwhile.
        """
        expires = self._now_ms() + int(lease.ttl * 1000)
        kept = sa.case((table.c.high_water > high_water, table.c.high_water), else_=high_water)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                table.update()
                .where(table.c.kind == lease.kind, table.c.number == lease.number)
                .where(table.c.holder == self.holder)
                .values(expires_ms=expires, high_water=kept)
            )
        if result.rowcount != 1:
            self._held.discard((lease.kind, lease.number))
            return False
        lease.expires_ms = expires
        return True

    async def release(self, lease: Lease, high_water: int | None = None) -> bool:
        """Let the number go now; its row keeps the recorded high_water for the next holder.

        ``high_water``, when given, replaces the recorded one: pass the largest value
        actually used, which may be below what ``renew`` recorded since nothing more will
        be used. False when the lease was already lost.
        """
        now = self._now_ms()
        values: dict[str, int] = {"expires_ms": now - 1}
        if high_water is not None:
            values["high_water"] = high_water
        async with self.engine.begin() as connection:
            result = await connection.execute(
                table.update()
                .where(table.c.kind == lease.kind, table.c.number == lease.number)
                .where(table.c.holder == self.holder)
                .values(**values)
            )
        self._held.discard((lease.kind, lease.number))
        lease.expires_ms = now - 1
        return result.rowcount == 1
