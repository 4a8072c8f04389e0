"""The snowflake id generator: layout, monotonicity, clock steps, leases and restarts."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz import EPOCH_MS, ConfigError, IdsUnavailable, PluginSettings
from kibitz.database import leases
from kibitz.leases import Leases
from kibitz.plugins import snowflake
from kibitz.plugins.snowflake import SnowflakeIds, decode
from kibitz.testing import wait_until

from .clock import Clock

T0 = 1_780_000_000.0  # 2026-05-28, a fixed wall-clock time


def worker(ids: SnowflakeIds) -> int | None:
    """The worker number the generator holds, or None."""
    return None if ids._lease is None else ids._lease.number


@pytest.fixture
async def started(engine: AsyncEngine, kind: str) -> AsyncIterator[Callable[..., Any]]:
    """Start generators on the test's lease kind; close them all afterwards."""
    generators: list[SnowflakeIds] = []

    async def start(
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        lease_clock: Callable[[], float] | None = None,
    ) -> SnowflakeIds:
        holder = holder or uuid.uuid4().hex
        ids = SnowflakeIds(clock=clock)
        ids.lease_kind = kind
        app = SimpleNamespace(leases=Leases(engine, holder, clock=lease_clock or clock), instance_id=holder)
        await ids.start(app)  # type: ignore[arg-type]
        generators.append(ids)
        return ids

    yield start
    for ids in generators:
        await ids.close()


def test_register_ids() -> None:
    settings = PluginSettings("snowflake", {}, {})
    assert isinstance(snowflake.register_ids("snowflake", settings), SnowflakeIds)
    assert snowflake.register_ids("other", settings) is None
    assert SnowflakeIds(PluginSettings("snowflake", {"lease_ttl": "1m"}, {})).ttl == 60
    with pytest.raises(ConfigError, match="KIBITZ_SNOWFLAKE_LEASE_TTL='1s': must be at least 3s"):
        SnowflakeIds(PluginSettings("snowflake", {}, {"KIBITZ_SNOWFLAKE_LEASE_TTL": "1s"}))


def test_layout_limits() -> None:
    assert decode((1 << 53) - 1) == (EPOCH_MS + (1 << 41) - 1, 63, 63)
    assert decode(0) == (EPOCH_MS, 0, 0)
    assert decode((5 << 12) | (7 << 6) | 9) == (EPOCH_MS + 5, 7, 9)


async def test_strictly_increasing_below_2_53(started: Callable[..., Any]) -> None:
    before = int(time.time() * 1000)
    ids = await started()
    got = [ids.next_id() for _ in range(100_000)]
    after = int(time.time() * 1000)
    assert all(a < b for a, b in itertools.pairwise(got))
    assert got[-1] < 2**53
    for value in [*got[::997], got[-1]]:
        ms, value_worker, _ = decode(value)
        assert value_worker == worker(ids)
        # 100k ids need at least 1563 ms of id space: a burst borrows future milliseconds.
        assert before <= ms <= after + 100_000 // 64 + 1


async def test_decode_gives_back_ms_worker_sequence(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    await started(clock=clock)  # takes worker 0
    ids = await started(clock=clock)
    assert worker(ids) == 1
    got = [decode(ids.next_id()) for _ in range(130)]
    ms = int(T0 * 1000)
    expected = [(ms + i // 64, 1, i % 64) for i in range(130)]  # 64 per ms, then the next ms
    assert got == expected
    clock.t += 0.010
    assert decode(ids.next_id()) == (ms + 10, 1, 0)


async def test_first_id_at_cuts_between_milliseconds(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    await started(clock=clock)
    ids = await started(clock=clock)  # worker 1: not the smallest worker of its millisecond
    before = [ids.next_id() for _ in range(3)]
    clock.t += 0.005
    after = ids.next_id()
    cut = ids.first_id_at(int(T0 * 1000) + 5)
    assert max(before) < cut <= after
    assert decode(cut) == (int(T0 * 1000) + 5, 0, 0)


async def test_clock_stepping_back_gives_no_duplicates(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    ids = await started(clock=clock)
    got = [ids.next_id() for _ in range(100)]
    clock.t -= 5  # NTP steps the clock back 5 s
    got += [ids.next_id() for _ in range(200)]
    clock.t += 0.001
    got += [ids.next_id() for _ in range(10)]
    assert got == sorted(set(got))
    assert decode(got[-1])[0] == int(T0 * 1000) + 4  # kept counting from the last ms (310 ids)
    clock.t += 6
    assert decode(ids.next_id()) == (int(clock.t * 1000), worker(ids), 0)


async def test_two_generators_never_collide(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    a, b = await started(clock=clock), await started(clock=clock)
    assert worker(a) != worker(b)
    first: list[int] = []
    second: list[int] = []
    for step in range(2000):
        first.append(a.next_id())
        second.append(b.next_id())
        if step % 50 == 0:
            clock.t += 0.001
    assert len(set(first) | set(second)) == 4000


async def test_restart_with_clock_set_back_stays_above(started: Callable[..., Any]) -> None:
    """A clean stop records the last ms used; the next holder starts above it."""
    clock = Clock(T0)
    first = await started(clock=clock, lease_clock=time.time)
    earlier = [first.next_id() for _ in range(1000)]  # runs 15 ms ahead of the clock
    await first.close()

    clock.t -= 3600  # the restarted instance's clock is an hour behind
    second = await started(clock=clock, lease_clock=time.time)
    assert worker(second) == first_worker(earlier)
    later = [second.next_id() for _ in range(1000)]
    assert min(later) > max(earlier)
    assert decode(later[0])[0] == decode(earlier[-1])[0] + 1


async def test_crash_restart_with_clock_set_back_stays_above(started: Callable[..., Any]) -> None:
    """No clean stop: the ceiling recorded while running keeps the restarted instance above."""
    clock = Clock(T0)
    crashed = await started("host-1", clock=clock)
    earlier = [crashed.next_id() for _ in range(500)]
    clock.t += 12
    await crashed.renew()  # a renewal records last ms + ttl
    earlier += [crashed.next_id() for _ in range(500)]
    crashed._task.cancel()  # type: ignore[union-attr]  # dies: no release

    clock.t -= 600
    restarted = await started("host-1", clock=clock)  # same name takes its row back
    assert worker(restarted) == worker(crashed)
    later = [restarted.next_id() for _ in range(1000)]
    assert min(later) > max(earlier)


async def test_lost_lease_raises_then_recovers_with_a_new_worker(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    ids = await started(clock=clock)
    mine = [ids.next_id() for _ in range(100)]
    lost_worker = worker(ids)

    # Another instance, whose clock is far ahead, sees the lease expired and takes it.
    ahead = Clock(T0 + 3600)
    thief = await started(clock=ahead)
    assert worker(thief) == lost_worker
    await ids.renew()
    with pytest.raises(IdsUnavailable, match="lost"):
        ids.next_id()

    await ids.renew()  # takes a new worker number
    assert worker(ids) not in (None, lost_worker)
    mine += [ids.next_id() for _ in range(100)]
    theirs = [thief.next_id() for _ in range(100)]
    assert mine == sorted(set(mine))
    assert not set(mine) & set(theirs)


async def test_ceiling_blocks_until_renewed(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    ids = await started(clock=clock)
    before = ids.next_id()
    clock.t += ids.ttl + 1  # no renewal recorded this far ahead (say, the database was down)
    with pytest.raises(IdsUnavailable, match="renewed in time"):
        ids.next_id()
    await ids.renew()
    assert ids.next_id() > before


async def test_background_task_renews_when_woken(started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    ids = await started(clock=clock)
    clock.t += ids.ttl + 1
    with pytest.raises(IdsUnavailable):
        ids.next_id()  # wakes the renewal task

    def renewed() -> bool:
        try:
            ids.next_id()
        except IdsUnavailable:
            return False
        return True

    await wait_until(renewed, 10, "the renewal")


async def test_close_releases_and_blocks(engine: AsyncEngine, kind: str, started: Callable[..., Any]) -> None:
    clock = Clock(T0)
    ids = await started(clock=clock)
    last = [ids.next_id() for _ in range(100)][-1]
    await ids.close()
    with pytest.raises(IdsUnavailable, match="closed"):
        ids.next_id()
    async with engine.connect() as connection:
        result = await connection.execute(leases.select().where(leases.c.kind == kind))
        row = result.one()
    assert row.high_water == decode(last)[0]
    assert row.expires_ms < time.time() * 1000


async def test_a_clock_before_the_epoch_is_refused(started: Callable[..., Any]) -> None:
    with pytest.raises(IdsUnavailable, match="fix the system clock"):
        await started(clock=Clock(EPOCH_MS / 1000 - 86400))


def first_worker(ids: list[int]) -> int:
    return decode(ids[0])[1]
