"""Web Push end to end: VAPID keys, subscriptions and their guard, and the pushes a real
server sends to a stand-in push service (tests/push_service.py), which checks each JWT
and decrypts each payload with the subscription's private key."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kibitz.testing import wait_until

from .kibitz_client import (
    Client,
    Server,
    Session,
    Socket,
    assert_error,
    long_polls,
    make_server,
    nats_child,
    redis_child,
)
from .push_service import PushService, Subscription, unb64url

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    await service.start()
    yield service
    await service.stop()


async def started(server: Server, service: PushService) -> Server:
    await asyncio.to_thread(server.start)
    async with httpx.AsyncClient() as http:
        service.vapid_key = (await http.get(server.api + "/push/vapid-key")).json()["public_key"]
    return server


@pytest.fixture(scope="module")
async def push_server(
    tmp_path_factory: pytest.TempPathFactory, push_service: PushService
) -> AsyncIterator[Server]:
    """A server of its own that may push to loopback (the stand-in service)."""
    server = make_server(tmp_path_factory.mktemp("push") / "data", KIBITZ_PUSH_ALLOW_INSECURE="1")
    yield await started(server, push_service)
    await asyncio.to_thread(server.stop)


@pytest.fixture
async def push_client(push_server: Server) -> AsyncIterator[Client]:
    client = Client(push_server)
    yield client
    await client.close()


async def subscribe(client: Client, who: Session, subscription: Subscription) -> None:
    r = await client.http.post("/push/subscriptions", json=subscription.as_json(), headers=who.headers)
    assert r.status_code == 201, r.text


def rows(server: Server, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.data_dir / "kibitz.sqlite3") as db:
        return db.execute(sql).fetchall()


class Witness:
    """A member who is never online: once its push for a later message arrives, every push
    owed for earlier messages has been sent (the log is notified in order, batch by batch)."""

    def __init__(self, client: Client, sender: Session, user: Session, subscription: Subscription, cid: str):
        self.client, self.sender, self.user, self.subscription, self.cid = (
            client,
            sender,
            user,
            subscription,
            cid,
        )

    @classmethod
    async def of(cls, client: Client, sender: Session, service: PushService, name: str) -> Witness:
        user = await client.user()
        subscription = service.subscription(name)
        await subscribe(client, user, subscription)
        return cls(client, sender, user, subscription, await client.direct(sender, user))

    async def settle(self) -> None:
        message = await self.client.send(self.sender, self.cid, "settle")
        await wait_until(
            lambda: any(p["message_id"] == message["id"] for p in self.subscription.delivered),
            30,
            "the witness's push",
        )


# -- keys and subscriptions -----------------------------------------------------------------


async def test_the_vapid_key_is_an_uncompressed_p256_point(client: Client) -> None:
    r = await client.http.get("/push/vapid-key")  # no token needed
    assert r.status_code == 200
    point = unb64url(r.json()["public_key"])
    assert len(point) == 65 and point[0] == 4


BAD_ENDPOINTS = [
    "http://push.example.com/x",  # not https
    "https://127.0.0.1/x",
    "https://localhost/x",
    "https://10.1.2.3/x",
    "https://192.168.1.1/x",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/x",
    "https://[fd00::1]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://user:pw@push.example.com/x",
    "https://no-such-host.invalid/x",
    "ftp://push.example.com/x",
    "not a url",
]


async def test_a_subscription_outside_the_guard_or_malformed_is_400_and_nothing_is_stored(
    client: Client, server: Server
) -> None:
    me = await client.user()
    good_keys = PushService().subscription("shape").as_json()["keys"]
    bodies: list[Any] = [{"endpoint": endpoint, "keys": good_keys} for endpoint in BAD_ENDPOINTS]
    bodies += [
        {"endpoint": "https://push.example.com/x"},
        {"endpoint": "https://push.example.com/x", "keys": {"p256dh": good_keys["p256dh"]}},
        {"endpoint": "https://push.example.com/x", "keys": {**good_keys, "p256dh": "AAAA"}},
        {
            "endpoint": "https://push.example.com/x",
            "keys": {**good_keys, "p256dh": "B" + good_keys["p256dh"][1:]},
        },
        {"endpoint": "https://push.example.com/x", "keys": {**good_keys, "auth": "%%%"}},
        {"endpoint": 7, "keys": good_keys},
        [],
    ]
    for body in bodies:
        r = await client.http.post("/push/subscriptions", json=body, headers=me.headers)
        assert_error(r, 400, "invalid_request")
    assert rows(server, "SELECT count(*) FROM push_subscriptions")[0][0] == 0
    r = await client.http.post("/push/subscriptions", json={"endpoint": "https://x/y", "keys": good_keys})
    assert_error(r, 401, "unauthorized")


# -- who gets a push ----------------------------------------------------------------------------


async def test_offline_members_get_one_correct_push_per_message_and_online_ones_none(
    push_client: Client, push_service: PushService
) -> None:
    client, service = push_client, push_service
    alice = await client.user(display_name="Alice A.")
    offline, on_socket, on_poll = await client.users(3)
    subs = {name: service.subscription(f"who-{name}") for name in ("offline", "socket", "poll", "alice")}
    for name, who in [("offline", offline), ("socket", on_socket), ("poll", on_poll), ("alice", alice)]:
        await subscribe(client, who, subs[name])
    cid = await client.group(alice, [offline, on_socket, on_poll], "push")
    witness = await Witness.of(client, alice, service, "who-witness")
    socket = await Socket.open(client.server, on_socket)
    poll_cursor = (await client.sync(on_poll))["cursor"]
    polls: list[asyncio.Task[Any]] = []

    async def keep_polling() -> None:
        nonlocal poll_cursor
        while True:
            page = await client.sync(on_poll, poll_cursor, timeout=30)
            poll_cursor = page["cursor"]

    polls.append(asyncio.create_task(keep_polling()))
    try:
        await asyncio.sleep(0)  # the poll's request is on its way
        await wait_until(lambda: _polling(client), 10, "the long poll to be in flight")
        sent = [await client.send(alice, cid, f"message {n} " + "x" * 300) for n in range(3)]
        await wait_until(
            lambda: len(subs["offline"].delivered) == 3, 30, "three pushes to the offline member"
        )
        await witness.settle()
    finally:
        polls[0].cancel()
        await socket.close()
    assert service.problems == []
    assert [p["message_id"] for p in subs["offline"].delivered] == [m["id"] for m in sent]
    first = subs["offline"].delivered[0]
    assert first == {
        "type": "message",
        "conversation_id": cid,
        "message_id": sent[0]["id"],
        "sender": {"id": alice.id, "display_name": "Alice A."},
        "body": sent[0]["body"][:200],
    }
    headers = subs["offline"].pushes[0].headers
    assert (
        headers["Topic"] == f"conversation-{cid}" and headers["Urgency"] == "high" and int(headers["TTL"]) > 0
    )
    assert headers["Content-Encoding"] == "aes128gcm"
    assert subs["socket"].pushes == [] and subs["poll"].pushes == []  # online: none
    assert subs["alice"].pushes == []  # the sender: none


async def _polling(client: Client) -> bool:
    return await long_polls(client.server) >= 1


async def test_a_gone_subscription_is_deleted_and_busy_services_are_retried(
    push_client: Client, push_server: Server, push_service: PushService
) -> None:
    client, service = push_client, push_service
    alice, gone, busy = await client.users(3)
    gone_sub, busy_sub = service.subscription("gone"), service.subscription("busy")
    gone_sub.answers = [(410, {})]
    busy_sub.answers = [(429, {"Retry-After": "1"}), (503, {})]
    await subscribe(client, gone, gone_sub)
    await subscribe(client, busy, busy_sub)
    cid = await client.group(alice, [gone, busy], "answers")
    witness = await Witness.of(client, alice, service, "answers-witness")
    first = await client.send(alice, cid, "first")
    await wait_until(lambda: len(busy_sub.delivered) == 1, 30, "the busy service to take the push at last")
    await witness.settle()
    assert [p.status for p in busy_sub.pushes] == [429, 503, 201]  # tried again, and no more
    assert busy_sub.delivered[0]["message_id"] == first["id"]
    assert [p.status for p in gone_sub.pushes] == [410]
    endpoints = [row[0] for row in rows(push_server, "SELECT endpoint FROM push_subscriptions")]
    assert gone_sub.endpoint not in endpoints and busy_sub.endpoint in endpoints
    await client.send(alice, cid, "second")
    await witness.settle()
    assert len(gone_sub.pushes) == 1  # deleted: never pushed again
    assert service.problems == []


async def test_unsubscribing_and_logging_out_stop_the_pushes(
    push_client: Client, push_server: Server, push_service: PushService
) -> None:
    client, service = push_client, push_service
    alice = await client.user()
    name, _ = await client.sign_up()
    laptop, phone = await client.log_in(name, "laptop"), await client.log_in(name, "phone")
    laptop_sub, phone_sub = service.subscription("laptop"), service.subscription("phone")
    await subscribe(client, laptop, laptop_sub)
    await subscribe(client, phone, phone_sub)
    cid = await client.direct(alice, laptop)
    witness = await Witness.of(client, alice, service, "stop-witness")
    r = await client.http.request(
        "DELETE", "/push/subscriptions", json={"endpoint": laptop_sub.endpoint}, headers=laptop.headers
    )
    assert r.status_code == 204, r.text
    assert (await client.http.delete("/sessions/current", headers=phone.headers)).status_code == 204
    assert rows(
        push_server,
        "SELECT count(*) FROM push_subscriptions WHERE endpoint LIKE '%/laptop' OR endpoint LIKE '%/phone'",
    ) == [(0,)]
    await client.send(alice, cid, "anyone there?")
    await witness.settle()
    assert laptop_sub.pushes == [] and phone_sub.pushes == []


# -- a restart between the commit and the push -----------------------------------------------------


async def test_a_restart_between_commit_and_push_still_pushes_once_and_keeps_the_key(
    tmp_path: Path, push_service: PushService
) -> None:
    server = make_server(tmp_path / "data", KIBITZ_PUSH_ALLOW_INSECURE="1", KIBITZ_PUSH_PREVIEW="0")
    await started(server, push_service)
    key = push_service.vapid_key
    client = Client(server)
    try:
        alice, bob = await client.users(2)
        sub = push_service.subscription("restart")
        sub.answers = [(503, {"Retry-After": "1"})] * 1000  # the push service is down for now
        await subscribe(client, bob, sub)
        cid = await client.direct(alice, bob)
        message = await client.send(alice, cid, "while the push service is down")
        await wait_until(lambda: len(sub.pushes) >= 1, 30, "a first try at the push")
        assert server.stop(signal.SIGKILL, group=True) != 0  # the pushes owed are not sent
        sub.answers = []  # the push service is back
        await started(server, push_service)
        assert push_service.vapid_key == key
        await wait_until(lambda: len(sub.delivered) == 1, 60, "the push owed from before the restart")
        assert sub.delivered[0]["message_id"] == message["id"]
        assert "body" not in sub.delivered[0]  # KIBITZ_PUSH_PREVIEW=0
        witness = await Witness.of(client, alice, push_service, "restart-witness")
        await witness.settle()
        assert len(sub.delivered) == 1
        assert push_service.problems == []
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)


# -- presence across instances ------------------------------------------------------------------


async def test_a_member_online_only_on_another_instance_gets_no_push(
    tmp_path: Path, push_service: PushService
) -> None:
    nats, redis = nats_child(tmp_path), redis_child(tmp_path)
    await nats.start()
    await redis.start()
    shared = {
        "KIBITZ_NATS_URL": f"nats://127.0.0.1:{nats.port}",
        "KIBITZ_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "KIBITZ_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}",
        "KIBITZ_PUSH_ALLOW_INSECURE": "1",
    }
    one, two = make_server(tmp_path / "one", **shared), make_server(tmp_path / "two", **shared)
    await started(one, push_service)
    await started(two, push_service)
    at_one, at_two = Client(one), Client(two)
    try:
        alice, bob = await at_one.users(2)
        sub = push_service.subscription("elsewhere")
        await subscribe(at_one, bob, sub)
        cid = await at_one.direct(alice, bob)
        witness = await Witness.of(at_one, alice, push_service, "elsewhere-witness")
        socket = await Socket.open(two, bob)  # bob is live on the other instance only
        await at_one.send(alice, cid, "you are online over there")
        await witness.settle()
        assert sub.pushes == []
        await socket.close()

        async def pushed_again() -> bool:  # once the grace after his last connection has passed
            message = await at_one.send(alice, cid, "are you gone?")
            await witness.settle()
            return any(p["message_id"] == message["id"] for p in sub.delivered)

        await wait_until(pushed_again, 30, "pushes once bob has left the other instance")
        assert push_service.problems == []
    finally:
        await at_one.close()
        await at_two.close()
        await asyncio.to_thread(one.stop)
        await asyncio.to_thread(two.stop)
        await nats.stop()
        await redis.stop()
