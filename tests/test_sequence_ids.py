"""The sequence id generator: blocks of ids from a counter in the database, on SQLite and on
PostgreSQL. Each test has a database of its own (on PostgreSQL one made for it), since
the counter is one row that every generator on a database shares."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz import EPOCH_MS, TIME_SHIFT, ConfigError, IdsUnavailable, PluginSettings, first_id_of
from kibitz.database import create_engine
from kibitz.plugins import sequence
from kibitz.plugins.sequence import SequenceIds, counter
from kibitz.testing import wait_until

from .clock import Clock
from .conftest import fresh_postgres_database
from .kibitz_client import serving

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@dataclass
class Instance:
    """A generator with an engine of its own, as a server instance has; its database
    fails every statement while ``down``."""

    ids: SequenceIds
    engine: AsyncEngine
    down: bool = False


Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def own_database(database_url: str) -> AsyncIterator[str]:
    if database_url.startswith("sqlite"):
        yield database_url  # a file in the test's temp folder
        return
    async with fresh_postgres_database(database_url) as url:
        yield url


@pytest.fixture
async def start(own_database: str) -> AsyncIterator[Start]:
    """Start generators on the test's database (settings as in a [sequence] table); close
    them all afterwards."""
    instances: list[Instance] = []

    async def start(monotonic: Callable[[], float] = time.monotonic, **settings: Any) -> Instance:
        engine = create_engine(own_database)
        instance = Instance(
            SequenceIds(PluginSettings("sequence", settings, {}), monotonic=monotonic), engine
        )
        instances.append(instance)

        @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _outage(*_: Any) -> None:
            if instance.down:
                raise ConnectionRefusedError("the database is down (test)")

        await instance.ids.start(SimpleNamespace(engine=engine))  # type: ignore[arg-type]
        return instance

    yield start
    for instance in instances:
        await instance.ids.close()
        await instance.engine.dispose()


async def draw(ids: SequenceIds, count: int) -> list[int]:
    """``count`` ids, as fast as blocks come: when none is ready, wait for the next."""
    got: list[int] = []

    def drawn() -> bool:
        try:
            while len(got) < count:
                got.append(ids.next_id())
        except IdsUnavailable:
            return False
        return True

    await wait_until(drawn, 60, f"{count} ids")
    return got


def ms_of(value: int) -> int:
    return (value >> TIME_SHIFT) + EPOCH_MS


async def database_ms(engine: AsyncEngine) -> int:
    """The database's clock, as the generator reads it."""
    async with engine.connect() as db:
        ms: int = (
            await db.execute(sa.select(sa.literal_column(sequence._NOW_MS[engine.dialect.name])))
        ).scalar_one()
    return ms


async def set_counter(engine: AsyncEngine, next_id: int) -> None:
    async with engine.begin() as db:
        await db.execute(counter.update().values(next=next_id))


def test_register_ids_and_settings() -> None:
    blank = PluginSettings("sequence", {}, {})
    made = sequence.register_ids("sequence", blank)
    assert isinstance(made, SequenceIds) and (made.refresh, made.block) == (1.0, 4096)
    assert sequence.register_ids("snowflake", blank) is None
    ids = SequenceIds(PluginSettings("sequence", {"refresh": "2s", "block": 64000}, {}))
    assert (ids.refresh, ids.block) == (2.0, 64000)
    with pytest.raises(ConfigError, match=r"KIBITZ_SEQUENCE_REFRESH='0.1s': must be 0.25s to 60s"):
        SequenceIds(PluginSettings("sequence", {}, {"KIBITZ_SEQUENCE_REFRESH": "0.1s"}))
    with pytest.raises(ConfigError, match=r"\[sequence\] block=1000: must be 1024 to 32000"):
        SequenceIds(PluginSettings("sequence", {"block": 1000}, {}))
    with pytest.raises(ConfigError, match=r"\[sequence\] block=40000: must be 1024 to 32000"):
        SequenceIds(PluginSettings("sequence", {"block": 40000}, {}))


async def test_unique_across_instances_and_growing_in_each(start: Start) -> None:
    instances = [await start() for _ in range(3)]
    drawn = await asyncio.gather(*(draw(instance.ids, 20_000) for instance in instances))
    for got in drawn:
        assert all(a < b for a, b in itertools.pairwise(got))
        assert got[0] > 0 and got[-1] < 2**53
    assert len(set().union(*drawn)) == 3 * 20_000


async def test_ids_start_at_the_database_clock_or_above_the_counter(start: Start, own_database: str) -> None:
    probe = create_engine(own_database)
    try:
        before = await database_ms(probe)
        first = await start()  # a new database: the counter was 0
        given = first.ids.next_id()  # before a spare block (taken later) may be switched to
        after = await database_ms(probe)
        assert before <= ms_of(given) <= after
        assert given == first_id_of(ms_of(given))  # the first id of that millisecond
        await first.ids.close()

        # Say an instance whose database clock ran an hour ahead took the counter there
        ahead = first_id_of(after + 3_600_000)
        await set_counter(probe, ahead)
        later = await draw((await start()).ids, 10_000)
        assert later[0] == ahead
    finally:
        await probe.dispose()


async def test_ids_grow_across_a_restart(start: Start) -> None:
    first = await start()
    earlier = await draw(first.ids, 5_000)
    await first.ids.close()
    with pytest.raises(IdsUnavailable, match="closed"):
        first.ids.next_id()
    later = await draw((await start()).ids, 5_000)
    assert min(later) > max(earlier)


async def test_first_id_at_is_below_every_later_id_of_any_instance(start: Start) -> None:
    a, b = await start(), await start()
    earlier = await draw(a.ids, 5_000) + await draw(b.ids, 5_000)
    now_ms = int(time.time() * 1000)
    cut = a.ids.first_id_at(now_ms)
    later = await draw(a.ids, 5_000) + await draw(b.ids, 5_000)
    assert cut <= min(later)
    # ... and it reaches back no further than the max age and this clock's lead on the
    # database's: a cut that much (and a second) later falls above all that came before.
    reach_ms = int(a.ids._max_age * 1000) + a.ids._lead_ms
    assert max(earlier) < a.ids.first_id_at(now_ms + reach_ms + 1000)


async def test_a_block_gives_way_to_the_spare_at_half_the_refresh(start: Start) -> None:
    clock = Clock(0)
    instance = await start(monotonic=clock)
    ids = instance.ids
    first = ids.next_id()
    await wait_until(lambda: ids._spare is not None, 30, "a spare block")
    assert ids.next_id() == first + 1
    clock.t += ids.refresh / 2
    moved = ids.next_id()
    assert moved >= first + ids.block  # from the spare, taken after the first block
    await wait_until(lambda: ids._spare is not None, 30, "a new spare block")


async def test_without_its_database_an_instance_uses_up_its_blocks_then_refuses(start: Start) -> None:
    instance = await start(monotonic=Clock(0), block=1024)  # no block grows old meanwhile
    ids = instance.ids
    await wait_until(lambda: ids._spare is not None, 30, "a spare block")
    instance.down = True
    given: list[int] = []
    with pytest.raises(IdsUnavailable, match="has not answered"):
        while True:
            given.append(ids.next_id())
    assert len(given) == 2 * 1024  # the first block, then the spare
    for _ in range(3):
        with pytest.raises(IdsUnavailable):
            ids.next_id()

    instance.down = False
    again = await draw(ids, 3_000)
    assert given + again == sorted(set(given + again))


async def test_a_block_past_the_max_age_is_not_used(start: Start) -> None:
    clock = Clock(0)
    instance = await start(monotonic=clock)
    ids = instance.ids
    before = ids.next_id()
    await wait_until(lambda: ids._spare is not None, 30, "a spare block")
    instance.down = True
    clock.t += sequence.MAX_AGE * ids.refresh  # the database has been away this long
    with pytest.raises(IdsUnavailable):
        ids.next_id()  # ids are left in both blocks, but they are too old
    instance.down = False
    (after,) = await draw(ids, 1)
    assert after > before


async def test_the_counter_stops_below_2_53(start: Start) -> None:
    first = await start()
    await first.ids.close()
    await set_counter(first.engine, 2**53 - 4096)
    near_the_end = await start(monotonic=Clock(0), block=1024)  # Clock(0): no block grows old
    last = await draw(near_the_end.ids, 4096)  # the last four blocks fit ...
    assert last == list(range(2**53 - 4096, 2**53))
    with pytest.raises(IdsUnavailable, match=r"2\*\*53"):
        await start()  # ... and no more


async def test_a_server_with_sequence_ids_keeps_history_in_order(own_database: str, tmp_path: Path) -> None:
    environment = {"KIBITZ_IDS": "sequence", "KIBITZ_DATABASE_URL": own_database}
    async with serving(tmp_path / "data", **environment) as (_, client):
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        sent = [await client.send((alice, bob)[k % 2], cid, f"message {k}") for k in range(30)]
        sent += await asyncio.gather(*(client.send(alice, cid, f"at once {k}") for k in range(50)))
        history = await client.whole_history(bob, cid)
    ids = [int(m["id"]) for m in history]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert sorted(ids) == sorted(int(m["id"]) for m in sent)
    assert [m["body"] for m in history[:30]] == [f"message {k}" for k in range(30)]  # in the order sent
    engine = create_engine(own_database)
    try:
        async with engine.connect() as db:
            next_id = (await db.execute(sa.select(counter.c.next))).scalar_one()
    finally:
        await engine.dispose()
    assert max(ids) < next_id  # the ids came from the counter
