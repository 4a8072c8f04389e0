"""Leases over the SQL ``leases`` table, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.database import leases
from kibitz.leases import Leases, LeaseUnavailable

from .clock import Clock


async def row(engine: AsyncEngine, kind: str, number: int) -> sa.Row[tuple[str, int, str, int, int]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            leases.select().where(leases.c.kind == kind, leases.c.number == number)
        )
        return result.one()


async def test_two_holders_get_different_numbers(engine: AsyncEngine, kind: str) -> None:
    a = await Leases(engine, "a").acquire(kind, 4, 30)
    b = await Leases(engine, "b").acquire(kind, 4, 30)
    assert (a.number, b.number) == (0, 1)
    assert (a.kind, a.high_water, b.high_water) == (kind, 0, 0)
    assert (await row(engine, kind, 1)).holder == "b"


async def test_one_holder_never_gets_a_number_twice(engine: AsyncEngine, kind: str) -> None:
    holder = Leases(engine, "a")
    first = await holder.acquire(kind, 4, 30)
    second = await holder.acquire(kind, 4, 30)
    assert (first.number, second.number) == (0, 1)
    concurrent = await asyncio.gather(holder.acquire(kind, 4, 30), holder.acquire(kind, 4, 30))
    assert sorted(lease.number for lease in concurrent) == [2, 3]


async def test_concurrent_acquirers_get_distinct_numbers(engine: AsyncEngine, kind: str) -> None:
    holders = [Leases(engine, f"h{i}") for i in range(8)]
    got = await asyncio.gather(*(h.acquire(kind, 8, 30) for h in holders))
    assert sorted(lease.number for lease in got) == list(range(8))
    with pytest.raises(LeaseUnavailable):
        await Leases(engine, "late").acquire(kind, 8, 30)


async def test_exhaustion_is_a_clear_error(engine: AsyncEngine, kind: str) -> None:
    await Leases(engine, "a").acquire(kind, 2, 30)
    await Leases(engine, "b").acquire(kind, 2, 30)
    with pytest.raises(LeaseUnavailable, match=f"all 2 '{kind}' leases are held"):
        await Leases(engine, "c").acquire(kind, 2, 30)


async def test_expiry_lets_another_take_it_and_renew_after_loss_fails(engine: AsyncEngine, kind: str) -> None:
    clock = Clock()
    a, b = Leases(engine, "a", clock=clock), Leases(engine, "b", clock=clock)
    lease = await a.acquire(kind, 1, 10)
    with pytest.raises(LeaseUnavailable):
        await b.acquire(kind, 1, 10)

    clock.t += 9
    assert await a.renew(lease, 100)  # still held: extended to now + 10 s
    assert lease.expires_ms == int(clock.t * 1000) + 10_000
    clock.t += 9.9
    with pytest.raises(LeaseUnavailable):
        await b.acquire(kind, 1, 10)

    clock.t += 0.2
    taken = await b.acquire(kind, 1, 10)
    assert (taken.number, taken.high_water) == (0, 100)
    assert not await a.renew(lease, 200)
    assert not await a.release(lease, 300)
    current = await row(engine, kind, 0)
    assert (current.holder, current.high_water) == ("b", 100)


async def test_high_water_is_carried_over_and_never_lowered_by_renew(engine: AsyncEngine, kind: str) -> None:
    clock = Clock()
    a, b = Leases(engine, "a", clock=clock), Leases(engine, "b", clock=clock)
    lease = await a.acquire(kind, 1, 10)
    assert await a.renew(lease, 5000)
    assert await a.renew(lease, 4000)
    assert (await row(engine, kind, 0)).high_water == 5000

    clock.t += 11  # a dies without releasing
    taken = await b.acquire(kind, 1, 10)
    assert taken.high_water == 5000


async def test_release_frees_the_number_now_and_keeps_high_water(engine: AsyncEngine, kind: str) -> None:
    a, b = Leases(engine, "a"), Leases(engine, "b")
    lease = await a.acquire(kind, 1, 30)
    assert await a.renew(lease, 7000)
    assert await a.release(lease)
    taken = await b.acquire(kind, 1, 30)
    assert (taken.number, taken.high_water) == (0, 7000)

    assert await b.release(taken, high_water=6500)  # the largest value actually used
    assert (await a.acquire(kind, 1, 30)).high_water == 6500


async def test_a_restart_under_the_same_name_takes_its_lease_back(engine: AsyncEngine, kind: str) -> None:
    await Leases(engine, "other").acquire(kind, 4, 30)
    before = Leases(engine, "me")
    lease = await before.acquire(kind, 4, 30)
    assert await before.renew(lease, 42)
    await Leases(engine, "third").acquire(kind, 4, 30)

    after = Leases(engine, "me")  # same name, new process: the unexpired row is its own
    again = await after.acquire(kind, 4, 30)
    assert (again.number, again.high_water) == (lease.number, 42)


async def test_bad_arguments(engine: AsyncEngine, kind: str) -> None:
    with pytest.raises(ValueError, match="holder"):
        Leases(engine, "x" * 65)
    with pytest.raises(ValueError, match="count"):
        await Leases(engine, "a").acquire(kind, 0, 30)
