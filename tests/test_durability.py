"""Nothing acknowledged is lost: SIGKILL during a burst, a NATS restart under a live server,
Redis losing its data, and a restart on the same data folder.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from kibitz.supervisor import ChildProcess
from kibitz.testing import wait_until

from .kibitz_client import Client, Session, Socket, make_server, nats_child, redis_child

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[ChildProcess]:
    """A nats-server of this test's own, which the test may kill."""
    child = nats_child(tmp_path)
    await child.start()
    yield child
    await child.stop()


async def _burst(
    client: Client, senders: list[Session], cid: str, count: int, acked: list[dict[str, Any]]
) -> None:
    """Each sender sends ``count`` messages in turn; every acknowledged one is recorded."""

    async def one(sender: Session) -> None:
        for n in range(count):
            try:
                message = await client.send(sender, cid, f"{sender.id}:{n}", uuid.uuid4().hex)
            except (httpx.HTTPError, AssertionError):
                return  # the server went away mid-burst: what was not acknowledged may be lost
            acked.append(message)

    await asyncio.gather(*(one(s) for s in senders))


async def test_sigkill_during_a_burst_loses_no_acknowledged_message(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", KIBITZ_RATE_LIMITS="off")
    server.start()
    client = Client(server)
    try:
        members = [await client.user() for _ in range(4)]
        cid = await client.group(members[0], members[1:])
        starts = {m.id: (await client.sync(m))["cursor"] for m in members}
        marker = await client.send(members[0], cid, "before the burst")
        r = await client.http.put(
            f"/conversations/{cid}/read", json={"message_id": marker["id"]}, headers=members[1].headers
        )
        assert r.status_code == 200
        acked: list[dict[str, Any]] = []
        burst = asyncio.create_task(_burst(client, members, cid, 200, acked))
        await wait_until(lambda: len(acked) >= 150)
        server.stop(signal.SIGKILL, group=True)
        await burst
        server.start()

        history = await client.whole_history(members[0], cid)
        ids = [m["id"] for m in history]
        assert len(ids) == len(set(ids)), "a message is in history twice"
        for message in acked:
            assert message["id"] in ids, f"acknowledged message {message['id']} lost from history"
        for member in members:
            events, _ = await client.drain_sync(member, starts[member.id])
            logged = [e["message"]["id"] for e in events if e["type"] == "message"]
            assert len(logged) == len(set(logged)), "an event is in a log twice"
            assert {m["id"] for m in acked} <= set(logged), "acknowledged message missing from a member's log"
        # Tokens, cursors and read markers survived the kill too.
        r = await client.http.get(f"/conversations/{cid}", headers=members[1].headers)
        assert r.status_code == 200
        unread = [m for m in history if m["sender_id"] != members[1].id and int(m["id"]) > int(marker["id"])]
        assert r.json()["conversation"]["unread_count"] == len(unread)
    finally:
        await client.close()
        server.stop()


async def test_a_restart_keeps_history_tokens_cursors_and_read_markers(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    server.start()
    client = Client(server)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        cursor = (await client.sync(bob))["cursor"]
        first = await client.send(alice, cid, "one")
        await client.send(alice, cid, "two")
        r = await client.http.put(
            f"/conversations/{cid}/read", json={"message_id": first["id"]}, headers=bob.headers
        )
        assert r.status_code == 200
        assert server.stop(signal.SIGTERM) == 0
        server.start()
        assert [m["body"] for m in (await client.history(bob, cid))["messages"]] == ["one", "two"]
        r = await client.http.get(f"/conversations/{cid}", headers=bob.headers)
        assert r.status_code == 200, "the token should survive a restart"
        assert r.json()["conversation"]["unread_count"] == 1
        events, _ = await client.drain_sync(bob, cursor)
        assert [e["message"]["body"] for e in events if e["type"] == "message"] == ["one", "two"]
    finally:
        await client.close()
        server.stop()


async def test_history_comes_back_when_redis_lost_its_data(tmp_path: Path, own_nats: ChildProcess) -> None:
    redis = redis_child(tmp_path)
    await redis.start()
    port = redis.port
    server = make_server(
        tmp_path / "data",
        KIBITZ_NATS_URL=f"nats://127.0.0.1:{own_nats.port}",
        KIBITZ_REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    server.start()
    client = Client(server)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        sent = [await client.send(alice, cid, f"m{n}") for n in range(20)]
        server.stop()
        connection = aioredis.Redis(port=port)
        await connection.flushall()
        server.start()
        assert (await client.history(bob, cid))["messages"] == sent

        # Redis losing what was just written while Kibitz runs: the follower writes it back,
        # and a resend is still recognised.
        fresh = await client.send(alice, cid, "fresh", "fresh-1")
        await connection.flushall()
        await connection.aclose()

        async def back() -> bool:
            return (await client.history(bob, cid))["messages"][-1:] == [fresh]

        await wait_until(back, 30)
        r = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": "fresh", "client_msg_id": "fresh-1"},
            headers=alice.headers,
        )
        assert r.status_code == 200 and r.json()["message"] == fresh
    finally:
        await client.close()
        server.stop()
        await redis.stop()


async def test_nats_restarted_under_a_live_server_recovers(tmp_path: Path, own_nats: ChildProcess) -> None:
    server = make_server(tmp_path / "data", KIBITZ_NATS_URL=f"nats://127.0.0.1:{own_nats.port}")
    server.start()
    client = Client(server)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        cursor = (await client.sync(bob))["cursor"]
        socket = await Socket.open(server, bob)
        await client.send(alice, cid, "before")
        assert [m["body"] for m in await socket.messages(1)] == ["before"]

        own_nats.kill()  # the fixture's supervisor restarts it on the same port and store

        async def sent_after_restart() -> bool:
            try:
                r = await client.http.post(
                    f"/conversations/{cid}/messages",
                    json={"body": "after", "client_msg_id": "after-restart"},
                    headers=alice.headers,
                )
            except httpx.HTTPError:
                return False
            return r.status_code in (200, 201)

        await wait_until(sent_after_restart, 60)
        assert [m["body"] for m in await socket.messages(1, timeout=30)] == ["after"]
        events, _ = await client.drain_sync(bob, cursor)
        assert [e["message"]["body"] for e in events if e["type"] == "message"] == ["before", "after"]
        assert own_nats.restarts >= 1
        await socket.close()
    finally:
        await client.close()
        server.stop()
