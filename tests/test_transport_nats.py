"""The ``nats`` transport on a real embedded NATS JetStream of its own: appends, reads,
the live feed, which takes one live message per batch and fans it out to events, and
the storage follower reading its records into a real Redis."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kibitz import LogEntry, Message, PluginSettings, Tasks
from kibitz.messages import StorageFollower
from kibitz.plugins.nats import LIVE_INLINE_BYTES, NatsTransport
from kibitz.plugins.redis import RedisStorage
from kibitz.supervisor import free_port
from kibitz.testing import wait_until

from .kibitz_client import nats_child

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@dataclass
class App:
    data_dir: Path
    instance_id: str = "test-transport"
    tasks: Tasks = field(default_factory=Tasks)


@dataclass
class Feed:
    events: dict[int, list[tuple[int, bytes]]]  # per user: (position, event) in arrival order
    order: list[int]  # every position, in arrival order

    def on_event(self, user_id: int, position: int, event: bytes, committed_at: float) -> None:
        self.events.setdefault(user_id, []).append((position, event))
        self.order.append(position)

    def on_signal(self, user_ids: tuple[int, ...], payload: bytes) -> None:
        pass


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[tuple[NatsTransport, Feed]]:
    feed = Feed({}, [])
    t = NatsTransport(PluginSettings("nats", {}, {}))
    t.listen(feed.on_event, feed.on_signal)
    await t.start(App(tmp_path))
    yield t, feed
    await t.close()


def users(count: int) -> tuple[int, ...]:
    """User ids no other append of the test uses."""
    base = random.randrange(10**12, 10**13)
    return tuple(range(base, base + count))


async def test_the_feed_hands_over_every_event_at_its_position(transport: tuple[NatsTransport, Feed]) -> None:
    t, feed = transport
    pair, group, crowd = users(2), users(50), users(100)
    # Each of the crowd gets its own event of 1 KiB: together past what the live message
    # carries itself, so the feed reads these back from the log.
    big = [LogEntry((uid,), b'{"type":"conversation","pad":"' + b"x" * 1024 + b'"}') for uid in crowd]
    assert sum(len(e.event) for e in big) > LIVE_INLINE_BYTES
    calls = [
        *[[LogEntry(pair, b'{"n":%d}' % n, b'{"id":"%d"}' % n)] for n in range(20)],
        [LogEntry(group, b'{"type":"message","to":"group"}', b'{"id":"group"}')],
        big,
        [LogEntry((pair[0],), b'{"type":"read"}')],
    ]
    positions = await asyncio.gather(*(t.append(entries) for entries in calls))
    ours = set(pair) | set(group) | set(crowd)
    expected = 2 * 20 + len(group) + len(crowd) + 1
    await wait_until(lambda: sum(len(feed.events.get(u, [])) for u in ours) >= expected, what="every event")
    assert sum(len(feed.events.get(u, [])) for u in ours) == expected  # and none twice

    # Each user's live events are exactly that user's log, in order.
    for uid in ours:
        log, _ = await t.read(uid, min(p for p, _ in feed.events[uid]) - 1, 1000)
        assert feed.events[uid] == log
    # The whole feed arrives in log order, and each append's position is its last event's.
    assert feed.order == sorted(feed.order)
    for entries, returned in zip(calls, positions, strict=True):
        for entry, position in zip(entries, returned, strict=True):
            last_user = entry.user_ids[-1]
            assert (position - (entry.message is not None), entry.event) in feed.events[last_user]


async def test_an_append_too_large_for_one_batch_is_refused(transport: tuple[NatsTransport, Feed]) -> None:
    t, _ = transport
    with pytest.raises(ValueError, match="at most"):
        await t.append([LogEntry(users(t.max_fanout + 1), b"{}", b"{}")])
    await t.append([LogEntry(users(t.max_fanout), b"{}", b"{}")])  # the largest group fits


async def test_the_feed_retries_a_read_back_that_fails(
    transport: tuple[NatsTransport, Feed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large append's events are read back; when NATS fails to answer, the feed waits
    and reads again rather than skip them."""
    t, feed = transport
    crowd = users(100)
    big = [LogEntry((uid,), b'{"pad":"' + b"x" * 1024 + b'"}') for uid in crowd]
    read = t._direct_get
    failures = []

    async def flaky(subject: str, start: int, limit: int) -> tuple[list[tuple[int, str, bytes]], bool]:
        if subject.endswith("*") and len(failures) < 2:
            failures.append(start)
            raise ConnectionError("nats: no answer to a direct get")
        return await read(subject, start, limit)

    monkeypatch.setattr(t, "_direct_get", flaky)
    await t.append(big)
    await wait_until(lambda: all(uid in feed.events for uid in crowd), what="every event, after the retries")
    assert len(failures) == 2
    assert [feed.events[uid] for uid in crowd] == [
        [(p, e.event)] for p, e in zip(feed.order, big, strict=True)
    ]


async def test_the_storage_follower_passes_over_a_record_that_is_not_a_message(
    transport: tuple[NatsTransport, Feed], redis_url: str, tmp_path: Path
) -> None:
    """One bad record in the log (written by a broken plugin or by hand) is logged and
    passed over; the messages around it are stored and the position moves past it."""
    t, _ = transport
    storage = RedisStorage(
        PluginSettings("redis", {"url": redis_url, "prefix": f"test:{uuid.uuid4().hex}:"}, {})
    )
    await storage.start(App(tmp_path))
    try:
        cid, sender = users(2)
        good = [Message(n, cid, sender, f"body {n}", f"c{n}", "2026-11-25T10:00:00.000Z") for n in (1, 2)]
        await t.append([LogEntry((sender,), b"{}", good[0].to_json())])
        await t.append([LogEntry((sender,), b"{}", b'{"not": "a message"}')])
        (last,) = await t.append([LogEntry((sender,), b"{}", good[1].to_json())])
        assert await StorageFollower(t, storage).catch_up() == 3
        page = await storage.page(cid, None, None, 10)
        assert sorted(Message.from_json(m).id for m in page.messages) == [1, 2]
        assert await storage.position() == last
    finally:
        await storage.close()


async def test_a_long_storage_rebuild_reports_its_progress(
    transport: tuple[NatsTransport, Feed], redis_url: str, tmp_path: Path
) -> None:
    """Storage emptied (a lost Redis) while the log holds much: catching up says how far it is."""
    t, _ = transport
    storage = RedisStorage(
        PluginSettings("redis", {"url": redis_url, "prefix": f"test:{uuid.uuid4().hex}:"}, {})
    )
    await storage.start(App(tmp_path))
    try:
        group = users(t.max_fanout)
        for n in range(1, 61):  # 60 messages to 998 members: about 60,000 log positions
            m = Message(n, 42, group[0], f"body {n}", f"c{n}", "2026-11-25T10:00:00.000Z")
            await t.append([LogEntry(group, b"{}", m.to_json())])
        heard: list[tuple[str, int, int]] = []
        assert await StorageFollower(t, storage).catch_up(lambda *said: heard.append(said)) == 60
        assert heard, "no progress was reported"
        done = [d for _, d, _ in heard]
        assert done == sorted(done) and heard[-1][1] == heard[-1][2] > 50_000
        assert len((await storage.page(42, None, None, 100)).messages) == 60
    finally:
        await storage.close()


@pytest.mark.parametrize("sync_always", [True, False])
async def test_an_external_nats_that_may_not_fsync_is_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sync_always: bool
) -> None:
    monitor = free_port()
    server = nats_child(tmp_path, sync_always=sync_always, monitor_port=monitor)
    await server.start()
    app = App(tmp_path)
    settings = {"url": f"nats://127.0.0.1:{server.port}", "monitor_url": f"http://127.0.0.1:{monitor}"}
    t = NatsTransport(PluginSettings("nats", settings, {}))
    try:
        with caplog.at_level(logging.WARNING, "kibitz.nats"):
            await t.start(app)
            await app.tasks.wait()
        warned = [r for r in caplog.records if r.getMessage() == "nats_fsync_unconfirmed"]
        if sync_always:
            assert warned == []
        else:
            (warning,) = warned
            assert "does not fsync every write" in warning.__dict__["problem"]
            assert "sync_interval: always" in warning.__dict__["fix"]
    finally:
        await t.close()
        await server.stop()
