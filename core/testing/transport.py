"""The contract every Transport keeps, as tests any transport plugin runs against itself.

Subclass ``TransportContract`` in a test module, name the class ``Test...``, and give it a
fixture ``make_transport(feed, empty=False, shared_with=None)``: an async context manager
that yields a started Transport of your plugin, listening with ``feed``'s callbacks. Calls
may share a backing service (the tests use user ids of their own), except that
``empty=True`` must give one holding nothing (for restore), and ``shared_with=other``
one on ``other``'s backing service, as a second instance would be (yield None if your
transport serves one instance only)::

    class TestMyTransport(TransportContract):
        @pytest.fixture
        def make_transport(self, tmp_path):
            @asynccontextmanager
            async def make(feed, empty=False, shared_with=None):
                async with slot_app(tmp_path / uuid4().hex) as app, started_slot(
                    "transport", "mine", app, before_start=lambda t: t.listen(feed.on_event, feed.on_signal)
                ) as transport:
                    yield transport
            return make
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..errors import CursorExpired
from ..models import LogEntry
from .waiting import wait_until


@dataclass
class Feed:
    """What a transport's live feed handed over: events per user, and signals."""

    events: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # every position, in arrival order
    signals: list[tuple[tuple[int, ...], bytes]] = field(default_factory=list)

    def on_event(self, user_id: int, position: int, event: bytes, committed_at: float) -> None:
        self.events.setdefault(user_id, []).append((position, event))
        self.order.append(position)

    def on_signal(self, user_ids: tuple[int, ...], payload: bytes) -> None:
        self.signals.append((user_ids, payload))

    def count(self, user_ids: Any) -> int:
        return sum(len(self.events.get(u, [])) for u in user_ids)


def users(count: int) -> tuple[int, ...]:
    """User ids no other test uses, on a backing service shared by many."""
    base = random.randrange(10**12, 10**13)
    return tuple(range(base, base + count))


class TransportContract:
    """Appends, reads, the live feed, signals and presence, as ``kibitz.slots.Transport`` defines them."""

    @pytest.fixture
    async def started(self, make_transport: Any) -> Any:
        feed = Feed()
        async with make_transport(feed) as transport:
            yield transport, feed

    async def test_reads_give_each_users_events_in_order(self, started: Any) -> None:
        t, _ = started
        alice, bob = users(2)
        start = await t.now()
        positions = []
        for n in range(25):
            positions += await t.append([LogEntry((alice, bob), b'{"n":%d}' % n, b'{"id":"%d"}' % n)])
        assert positions == sorted(positions) and len(set(positions)) == 25
        events, more = await t.read(alice, start, 10)
        assert [e for _, e in events] == [b'{"n":%d}' % n for n in range(10)] and more
        all_of_bob, more = await t.read(bob, start, 1000)
        assert [e for _, e in all_of_bob] == [b'{"n":%d}' % n for n in range(25)] and not more
        after_fifth, _ = await t.read(bob, all_of_bob[4][0], 1000)
        assert after_fifth == all_of_bob[5:]
        assert await t.read(bob, all_of_bob[-1][0], 10) == ([], False)
        assert await t.now() >= positions[-1]

    async def test_an_appends_position_is_its_last_event(self, started: Any) -> None:
        t, _ = started
        a, b, c = users(3)
        entries = [LogEntry((a, b), b'{"to":"ab"}', b'{"id":"1"}'), LogEntry((c,), b'{"to":"c"}')]
        first, second = await t.append(entries)
        assert first < second
        assert (await t.read(c, first, 10))[0] == [(second, b'{"to":"c"}')]
        b_events, _ = await t.read(b, 0, 10)
        assert b_events[-1][0] <= first

    async def test_concurrent_appends_commit_in_the_order_they_start(self, started: Any) -> None:
        t, _ = started
        (user,) = users(1)
        returned = await asyncio.gather(*(t.append([LogEntry((user,), b'{"n":%d}' % n)]) for n in range(100)))
        positions = [p for (p,) in returned]
        assert positions == sorted(positions)
        events, _ = await t.read(user, 0, 1000)
        assert [e for _, e in events] == [b'{"n":%d}' % n for n in range(100)]

    async def test_messages_come_back_in_commit_order(self, started: Any) -> None:
        t, _ = started
        sender, other = users(2)
        start = await t.now()
        for n in range(5):
            await t.append([LogEntry((sender, other), b"{}", b'{"id":"%d","s":%d}' % (n, sender))])
        await t.append([LogEntry((sender,), b'{"type":"read"}')])  # no message: no record
        records = await t.messages(start, 1000)
        ours = [data for _, data in records if b',"s":%d}' % sender in data]
        assert ours == [b'{"id":"%d","s":%d}' % (n, sender) for n in range(5)]
        positions = [p for p, _ in records]
        assert positions == sorted(positions) and positions[0] > start
        assert await t.messages(positions[-1], 10) == []
        assert (await t.messages(start, 2))[:2] == records[:2]

    async def test_the_feed_hands_over_every_event_in_log_order(self, started: Any) -> None:
        t, feed = started
        pair, group = users(2), users(50)
        calls = [
            *[[LogEntry(pair, b'{"n":%d}' % n, b'{"id":"%d"}' % n)] for n in range(20)],
            [LogEntry(group, b'{"to":"group"}', b'{"id":"group"}')],
            [LogEntry((pair[0],), b'{"type":"read"}')],
        ]
        await asyncio.gather(*(t.append(entries) for entries in calls))
        ours = set(pair) | set(group)
        expected = 2 * 20 + len(group) + 1
        await wait_until(lambda: feed.count(ours) >= expected, what="every event on the live feed")
        assert feed.count(ours) == expected  # and none twice
        for uid in ours:
            log, _ = await t.read(uid, feed.events[uid][0][0] - 1, 1000)
            assert feed.events[uid] == log
        our_positions = {p for u in ours for p, _ in feed.events[u]}
        mine = [p for p in feed.order if p in our_positions]
        assert mine == sorted(mine)

    async def test_signals_reach_every_listener_and_are_not_stored(self, started: Any) -> None:
        t, feed = started
        a, b = users(2)
        before = await t.now()
        await t.signal([a, b], b'{"type":"typing"}')
        await wait_until(lambda: ((a, b), b'{"type":"typing"}') in feed.signals, what="the signal")
        assert await t.read(a, 0, 10) == ([], False)
        assert await t.now() == before

    async def test_signals_pass_between_instances(self, make_transport: Any) -> None:
        """Control signals (a revoked device) must reach every instance's connections."""
        (user,) = users(1)
        here, there = Feed(), Feed()
        async with make_transport(here) as one, make_transport(there, shared_with=one) as two:
            if two is None:
                pytest.skip("this transport serves one instance only")
            await one.signal([user], b"revoke 42")
            await wait_until(lambda: ((user,), b"revoke 42") in there.signals, what="the signal elsewhere")
            (position,) = await two.append([LogEntry((user,), b'{"from":"two"}')])
            await wait_until(
                lambda: here.events.get(user) == [(position, b'{"from":"two"}')], what="the event"
            )

    async def test_presence(self, started: Any) -> None:
        t, _ = started
        a, b, c = users(3)
        assert await t.live_users([a, b, c]) == set()
        await t.mark_live(a, True)
        await t.mark_live(c, True)
        assert await t.live_users([a, b, c]) == {a, c}
        await t.mark_live(a, False)
        assert await t.live_users([a, b, c]) == {c}
        assert await t.live_users([]) == set()

    async def test_a_position_beyond_the_log_is_expired(self, started: Any) -> None:
        t, _ = started
        (user,) = users(1)
        (position,) = await t.append([LogEntry((user,), b"{}")])
        assert (await t.read(user, position, 10))[0] == []
        with pytest.raises(CursorExpired):
            await t.read(user, await t.now() + 5, 10)

    async def test_the_largest_group_fits_one_entry(self, started: Any) -> None:
        t, _ = started
        group = users(t.max_fanout + 1)
        with pytest.raises(ValueError):
            await t.append([LogEntry(group, b"{}", b"{}")])
        (position,) = await t.append([LogEntry(group[1:], b'{"big":1}', b"{}")])
        assert (await t.read(group[-1], position - 2, 10))[0][-1][1] == b'{"big":1}'

    async def test_check(self, started: Any) -> None:
        t, _ = started
        await t.check()

    async def test_backup_restores_every_event_at_its_position(self, make_transport: Any) -> None:
        a, b = users(2)
        async with make_transport(Feed(), empty=True) as source:
            positions = []
            for n in range(30):
                positions += await source.append([LogEntry((a, b), b'{"n":%d}' % n, b'{"id":"%d"}' % n)])
            await source.append([LogEntry((a,), b'{"type":"read"}')])
            assert not await source.is_empty()
            _, records = await source.backup()
            kept = [record async for record in records]
            logs = [await source.read(u, 0, 1000) for u in (a, b)]
            messages = await source.messages(0, 1000)
            now = await source.now()
        async with make_transport(Feed(), empty=True) as target:
            assert await target.is_empty()

            async def replay() -> Any:
                for record in kept:
                    yield record

            await target.restore(replay())
            assert [await target.read(u, 0, 1000) for u in (a, b)] == logs
            assert await target.messages(0, 1000) == messages
            assert await target.now() == now
            (after,) = await target.append([LogEntry((a,), b'{"n":"new"}')])
            assert after > now
