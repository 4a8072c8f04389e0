"""PROTOCOL.md "Conversations and messages": sending, idempotency, limits, history pages,
ids and times, per-sender order under concurrency, and delivery to every device.

Everything runs against a real ``kibitz serve`` over HTTP and WebSocket; every user is
new to its test. The server limits sends per user (a burst of 300, then 30/s): no user
here sends more than 60.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from .kibitz_client import Client, Session, Socket, assert_error

# The client contract: these tests run on every supported stack (default, sql, memory).
pytestmark = pytest.mark.protocol

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
NO_SUCH_ID = "999999999999"
MESSAGE_FIELDS = {"id", "conversation_id", "sender_id", "body", "client_msg_id", "created_at"}


async def post(client: Client, who: Session, cid: str, body: Any) -> httpx.Response:
    return await client.http.post(f"/conversations/{cid}/messages", json=body, headers=who.headers)


async def page(client: Client, who: Session, cid: str, **params: Any) -> httpx.Response:
    return await client.http.get(f"/conversations/{cid}/messages", params=params, headers=who.headers)


def check_message(message: dict[str, Any]) -> None:
    """The Message object of PROTOCOL.md "Objects"."""
    assert set(message) >= MESSAGE_FIELDS, message
    for name in MESSAGE_FIELDS:
        assert isinstance(message[name], str), (name, message)
    for name in ("id", "conversation_id", "sender_id"):
        assert message[name].isdigit(), (name, message)
    assert RFC3339_UTC.match(message["created_at"]), message["created_at"]


def message_events(events: list[dict[str, Any]], cid: str) -> list[dict[str, Any]]:
    return [e["message"] for e in events if e["type"] == "message" and e["message"]["conversation_id"] == cid]


# -- sending -----------------------------------------------------------------------------


async def test_send_answers_201_with_the_message(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    r = await post(client, alice, cid, {"body": "hello", "client_msg_id": "c-1", "extra": "ignored"})
    assert r.status_code == 201, r.text
    message = r.json()["message"]
    check_message(message)
    assert message["conversation_id"] == cid
    assert message["sender_id"] == alice.id
    assert message["body"] == "hello"
    assert message["client_msg_id"] == "c-1"
    assert (await client.history(bob, cid))["messages"] == [message]


async def test_resending_a_client_msg_id_is_idempotent(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    starts = {who.id: (await client.sync(who))["cursor"] for who in (alice, bob)}

    first = await post(client, alice, cid, {"body": "once", "client_msg_id": "same"})
    assert first.status_code == 201, first.text
    again = await post(client, alice, cid, {"body": "once", "client_msg_id": "same"})
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # The same message even when the resend's body differs: nothing new is stored.
    changed = await post(client, alice, cid, {"body": "twice?", "client_msg_id": "same"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == first.json()
    message = first.json()["message"]

    assert (await client.history(alice, cid))["messages"] == [message]
    for who in (alice, bob):
        events, _ = await client.drain_sync(who, starts[who.id])
        assert message_events(events, cid) == [message], who.user["username"]
    conversation = (await client.http.get(f"/conversations/{cid}", headers=bob.headers)).json()
    assert conversation["conversation"]["unread_count"] == 1


async def test_client_msg_id_is_per_sender(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    r1 = await post(client, alice, cid, {"body": "from alice", "client_msg_id": "shared"})
    r2 = await post(client, bob, cid, {"body": "from bob", "client_msg_id": "shared"})
    assert r1.status_code == r2.status_code == 201, (r1.text, r2.text)
    assert r1.json()["message"]["id"] != r2.json()["message"]["id"]
    assert r2.json()["message"]["sender_id"] == bob.id
    bodies = [m["body"] for m in (await client.history(alice, cid))["messages"]]
    assert bodies == ["from alice", "from bob"]


async def test_concurrent_resends_store_one_message(client: Client) -> None:
    """A client that retries before the first answer: one 201, the rest 200 with the same message."""
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    rounds, copies = 5, 10
    for n in range(rounds):
        payload = {"body": f"racy {n}", "client_msg_id": f"race-{n}"}
        answers = await asyncio.gather(*[post(client, alice, cid, payload) for _ in range(copies)])
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * (copies - 1) + [201], (n, [r.text for r in answers])
        assert len({r.text for r in answers}) == 1, n
    stored = (await client.history(bob, cid, limit=200))["messages"]
    assert [m["body"] for m in stored] == [f"racy {n}" for n in range(rounds)]


async def test_body_limits(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    assert_error(
        await post(client, alice, cid, {"body": "", "client_msg_id": "empty"}), 400, "invalid_request"
    )
    assert_error(await post(client, alice, cid, {"client_msg_id": "missing"}), 400, "invalid_request")
    assert_error(
        await post(client, alice, cid, {"body": 5, "client_msg_id": "number"}), 400, "invalid_request"
    )
    assert_error(
        await post(client, alice, cid, {"body": None, "client_msg_id": "null"}), 400, "invalid_request"
    )
    r = await post(client, alice, cid, {"body": "x" * 4001, "client_msg_id": "too-long"})
    assert_error(r, 413, "payload_too_large")
    r = await post(client, alice, cid, {"body": "é" * 4001, "client_msg_id": "too-long-2"})
    assert_error(r, 413, "payload_too_large")
    assert (await client.history(alice, cid))["messages"] == []  # failures change nothing

    r = await post(client, alice, cid, {"body": "x" * 4000, "client_msg_id": "longest"})
    assert r.status_code == 201, r.text
    assert r.json()["message"]["body"] == "x" * 4000
    # Characters, not bytes: 4,000 two-byte characters fit.
    r = await post(client, alice, cid, {"body": "é" * 4000, "client_msg_id": "longest-2"})
    assert r.status_code == 201, r.text
    r = await post(client, alice, cid, {"body": "x", "client_msg_id": "shortest"})
    assert r.status_code == 201, r.text
    bodies = [m["body"] for m in (await client.history(alice, cid))["messages"]]
    assert bodies == ["x" * 4000, "é" * 4000, "x"]


async def test_client_msg_id_limits(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    for bad in ("", "k" * 65, 7, None):
        r = await post(client, alice, cid, {"body": "hi", "client_msg_id": bad})
        assert_error(r, 400, "invalid_request")
    assert_error(await post(client, alice, cid, {"body": "hi"}), 400, "invalid_request")
    assert (await client.history(alice, cid))["messages"] == []

    for good in ("k", "k" * 64):
        r = await post(client, alice, cid, {"body": "hi", "client_msg_id": good})
        assert r.status_code == 201, r.text
        assert r.json()["message"]["client_msg_id"] == good


async def test_malformed_send_body_is_400(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    for raw in (b"{", b"[]", b'"text"'):
        r = await client.http.post(
            f"/conversations/{cid}/messages",
            content=raw,
            headers={**alice.headers, "Content-Type": "application/json"},
        )
        assert_error(r, 400, "invalid_request")


async def test_non_member_send_is_404(client: Client) -> None:
    alice, bob, eve = await client.users(3)
    cid = await client.direct(alice, bob)
    hidden = assert_error(
        await post(client, eve, cid, {"body": "hi", "client_msg_id": "e1"}), 404, "not_found"
    )
    missing = assert_error(
        await post(client, eve, NO_SUCH_ID, {"body": "hi", "client_msg_id": "e2"}), 404, "not_found"
    )
    assert hidden == missing
    assert (await client.history(alice, cid))["messages"] == []
    assert_error(await page(client, eve, cid), 404, "not_found")


# -- history pages ---------------------------------------------------------------------------


async def test_history_pages(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.group(alice, [bob])
    empty = await client.history(alice, cid)
    assert empty == {"messages": [], "has_more": False}

    sent = [await client.send(alice if i % 2 else bob, cid, f"m{i}") for i in range(60)]
    ids = [m["id"] for m in sent]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)

    async def got(**params: Any) -> tuple[list[str], bool]:
        body = await client.history(bob, cid, **params)
        assert set(body) >= {"messages", "has_more"}
        found = [m["id"] for m in body["messages"]]
        assert [int(i) for i in found] == sorted(int(i) for i in found), "not ascending by id"
        return found, body["has_more"]

    # Whole messages, exactly as sent.
    assert (await client.history(bob, cid, limit=200))["messages"] == sent

    # Neither: the newest `limit`; has_more says older ones remain. Default limit 50.
    assert await got() == (ids[10:], True)
    assert await got(limit=5) == (ids[55:], True)
    assert await got(limit=60) == (ids, False)
    assert await got(limit=200) == (ids, False)

    # before: the newest `limit` older than ID.
    assert await got(before=ids[20], limit=5) == (ids[15:20], True)
    assert await got(before=ids[5], limit=5) == (ids[0:5], False)
    assert await got(before=ids[3], limit=5) == (ids[0:3], False)
    assert await got(before=ids[0]) == ([], False)
    assert await got(before=ids[59]) == (ids[9:59], True)  # default limit

    # after: the oldest `limit` newer than ID; has_more says newer ones remain.
    assert await got(after=ids[20], limit=5) == (ids[21:26], True)
    assert await got(after=ids[54], limit=5) == (ids[55:60], False)
    assert await got(after=ids[57], limit=5) == (ids[58:60], False)
    assert await got(after=ids[59]) == ([], False)
    assert await got(after=ids[0]) == (ids[1:51], True)  # default limit
    assert await got(after="0", limit=200) == (ids, False)

    # Both: the oldest `limit` strictly between; has_more counts only those before `before`.
    assert await got(after=ids[10], before=ids[20], limit=3) == (ids[11:14], True)
    assert await got(after=ids[10], before=ids[20], limit=9) == (ids[11:20], False)
    assert await got(after=ids[10], before=ids[20], limit=50) == (ids[11:20], False)
    assert await got(after=ids[10], before=ids[11]) == ([], False)
    assert await got(after=ids[10], before=ids[50]) == (ids[11:50], False)
    assert await got(after=ids[0], before=ids[59]) == (ids[1:51], True)  # default limit

    # Bounds need not be ids of this conversation.
    assert await got(before=str(int(ids[59]) + 1), limit=1) == (ids[59:], True)
    assert await got(after=str(int(ids[0]) - 1), limit=1) == (ids[:1], True)

    # Walking backwards from the newest page with `before` visits every message once.
    walked: list[str] = []
    found, more = await got(limit=7)
    walked = found + walked
    while more:
        found, more = await got(before=walked[0], limit=7)
        walked = found + walked
    assert walked == ids
    # And forwards with `after`.
    walked, more = await got(after="0", limit=7)
    while more:
        found, more = await got(after=walked[-1], limit=7)
        walked += found
    assert walked == ids


async def test_history_query_limits(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    message = await client.send(alice, cid, "only")
    for good in ("1", "200", "50"):
        r = await page(client, alice, cid, limit=good)
        assert r.status_code == 200, r.text
        assert r.json() == {"messages": [message], "has_more": False}
    accepted: list[tuple[dict[str, str], int]] = []
    for params in (
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"before": "abc"},
        {"before": "-5"},
        {"after": "abc"},
        {"after": "1e3"},
        {"limit": "\u00b2"},  # a digit to str.isdigit, not to int()
        {"before": "\u00b2"},
        {"after": "\u00b2"},
    ):
        r = await page(client, alice, cid, **params)
        if r.status_code != 400:
            accepted.append((params, r.status_code))
        else:
            assert_error(r, 400, "invalid_request")
    assert accepted == [], f"the server did not answer 400 to these: {accepted}"


async def test_history_blank_query_values_are_400(client: Client) -> None:
    """``?limit=`` is a parameter given and not an integer from 1 to 200: 400, not the default."""
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    await client.send(alice, cid, "only")
    accepted: list[tuple[dict[str, str], int]] = []
    for params in ({"limit": ""}, {"before": ""}, {"after": ""}):
        r = await page(client, alice, cid, **params)
        if r.status_code != 400:
            accepted.append((params, r.status_code))
        else:
            assert_error(r, 400, "invalid_request")
    assert accepted == [], f"the server did not answer 400 to these: {accepted}"


async def test_history_of_a_non_member_is_404(client: Client) -> None:
    alice, bob, eve = await client.users(3)
    cid = await client.direct(alice, bob)
    await client.send(alice, cid, "private")
    hidden = assert_error(await page(client, eve, cid), 404, "not_found")
    assert assert_error(await page(client, eve, NO_SUCH_ID), 404, "not_found") == hidden


# -- ids and times ---------------------------------------------------------------------------


async def test_ids_increase_with_acceptance_and_times_are_utc(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    cid = await client.group(alice, [bob, carol])
    other = await client.direct(bob, carol)
    sent: list[dict[str, Any]] = []
    for i in range(12):
        who = (alice, bob, carol)[i % 3]
        where = other if who is not alice and i % 2 else cid
        sent.append(await client.send(who, where, f"n{i}"))
    numbers = [int(m["id"]) for m in sent]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    for message in sent:
        check_message(message)
        assert message["id"] == str(int(message["id"]))  # plain decimal digits, no padding
        when = datetime.fromisoformat(message["created_at"].replace("Z", "+00:00"))
        assert when.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=5), message["created_at"]


async def test_many_concurrent_senders_keep_each_senders_order(client: Client) -> None:
    senders = await client.users(10)
    cid = await client.group(senders[0], senders[1:])
    per_sender = 30

    async def run(index: int, who: Session) -> list[dict[str, Any]]:
        return [await client.send(who, cid, f"{index}:{n}", f"{index}-{n}") for n in range(per_sender)]

    results = await asyncio.gather(*[run(i, who) for i, who in enumerate(senders)])
    for answers in results:
        numbers = [int(m["id"]) for m in answers]
        assert numbers == sorted(numbers) and len(set(numbers)) == per_sender, numbers

    history = await client.whole_history(senders[3], cid)
    assert len(history) == len(senders) * per_sender
    numbers = [int(m["id"]) for m in history]
    assert numbers == sorted(numbers), "history is not ascending by id"
    assert len(set(numbers)) == len(numbers), "a message is in history twice"
    assert sorted(m["id"] for m in history) == sorted(m["id"] for r in results for m in r)
    for index, who in enumerate(senders):
        theirs = [m for m in history if m["sender_id"] == who.id]
        assert [m["body"] for m in theirs] == [f"{index}:{n}" for n in range(per_sender)], index
        assert theirs == results[index]


# -- delivery to every device -------------------------------------------------------------------


class Inbox:
    """One WebSocket's frames, read in order: no message event is skipped while waiting for a reply."""

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self.messages: list[dict[str, Any]] = []

    async def _next(self, deadline: float) -> dict[str, Any]:
        frame = await self.socket.recv(max(0.01, deadline - time.monotonic()))
        if frame["type"] == "event" and frame["event"]["type"] == "message":
            self.messages.append(frame["event"]["message"])
        return frame

    async def reply(self, timeout: float = 15) -> dict[str, Any]:
        """The next ``sent`` or ``error`` frame."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._next(deadline)
            if frame["type"] in ("sent", "error"):
                return frame

    async def send(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.socket.send_json({"type": "send", **frame})
        return await self.reply()

    async def messages_through(self, marker_id: str, timeout: float = 15) -> list[dict[str, Any]]:
        """Every message event's message so far, reading on until the one with ``marker_id``."""
        deadline = time.monotonic() + timeout
        while not any(m["id"] == marker_id for m in self.messages):
            await self._next(deadline)
        return self.messages


async def test_a_group_message_reaches_every_device(client: Client) -> None:
    alice, bob, carol, dave = await client.users(4)
    alice_phone = await client.log_in(alice.user["username"], "phone")
    bob_phone = await client.log_in(bob.user["username"], "phone")
    cid = await client.group(alice, [bob, carol, dave])
    dave_start = (await client.sync(dave))["cursor"]

    devices = {"alice": alice, "alice phone": alice_phone, "bob": bob, "bob phone": bob_phone, "carol": carol}
    inboxes = {name: Inbox(await Socket.open(client.server, who)) for name, who in devices.items()}
    try:
        sent = await inboxes["alice"].send({"conversation_id": cid, "body": "all", "client_msg_id": "g1"})
        assert sent["type"] == "sent", sent
        assert sent["client_msg_id"] == "g1"
        message = sent["message"]
        check_message(message)
        assert message["sender_id"] == alice.id and message["body"] == "all"
        # A later message from the same sender reaches each device after the first one, so
        # anything between the two would be a duplicate.
        marker = await client.send(alice, cid, "marker")

        for name, inbox in inboxes.items():
            assert await inbox.messages_through(marker["id"]) == [message, marker], name
        events, _ = await client.drain_sync(dave, dave_start)  # dave has no connection
        assert message_events(events, cid) == [message, marker]
    finally:
        for inbox in inboxes.values():
            await inbox.socket.close()


async def test_an_idempotent_resend_over_websocket_delivers_nothing_new(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    a = Inbox(await Socket.open(client.server, alice))
    b = Inbox(await Socket.open(client.server, bob))
    try:
        frame = {"conversation_id": cid, "body": "once", "client_msg_id": "ws-1"}
        first = await a.send(frame)
        assert first["type"] == "sent", first
        assert first["client_msg_id"] == "ws-1"
        message = first["message"]
        check_message(message)

        again = await a.send(frame)
        assert again == first
        changed = await a.send({**frame, "body": "different"})
        assert changed == first

        # Over HTTP too: the same message, 200.
        r = await post(client, alice, cid, {"body": "once", "client_msg_id": "ws-1"})
        assert r.status_code == 200, r.text
        assert r.json()["message"] == message

        marker_sent = await a.send({**frame, "client_msg_id": "ws-2", "body": "marker"})
        assert marker_sent["type"] == "sent", marker_sent
        marker = marker_sent["message"]

        assert await a.messages_through(marker["id"]) == [message, marker]
        assert await b.messages_through(marker["id"]) == [message, marker]
        assert (await client.history(bob, cid))["messages"] == [message, marker]
    finally:
        await a.socket.close()
        await b.socket.close()


async def test_websocket_send_is_refused_like_http(client: Client) -> None:
    alice, bob, eve = await client.users(3)
    cid = await client.direct(alice, bob)
    member = Inbox(await Socket.open(client.server, alice))
    stranger = Inbox(await Socket.open(client.server, eve))
    try:
        cases = [
            (stranger, {"conversation_id": cid, "body": "hi", "client_msg_id": "e1"}, "not_found"),
            (stranger, {"conversation_id": NO_SUCH_ID, "body": "hi", "client_msg_id": "e2"}, "not_found"),
            (member, {"conversation_id": cid, "body": "", "client_msg_id": "e3"}, "invalid_request"),
            (
                member,
                {"conversation_id": cid, "body": "x" * 4001, "client_msg_id": "e4"},
                "payload_too_large",
            ),
            (member, {"conversation_id": cid, "body": "hi", "client_msg_id": "k" * 65}, "invalid_request"),
        ]
        for inbox, frame, code in cases:
            answer = await inbox.send(frame)
            assert answer["type"] == "error", answer
            assert answer["code"] == code, (frame, answer)
        assert (await client.history(alice, cid))["messages"] == []
        assert member.messages == stranger.messages == []
    finally:
        await member.socket.close()
        await stranger.socket.close()


async def test_a_send_cut_off_by_a_hang_up_then_resent_is_stored_once(client: Client) -> None:
    """The client hangs up right after sending, then resends: one message, whatever the timing."""
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    host, port = client.server.url.removeprefix("http://").split(":")
    for n in range(30):
        body = orjson.dumps({"body": f"cut {n}", "client_msg_id": f"cut-{n}"})
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /api/v1/conversations/{cid}/messages HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {alice.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.transport.abort()  # hang up without waiting for the answer
        again = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": f"cut {n}", "client_msg_id": f"cut-{n}"},
            headers=alice.headers,
        )
        assert again.status_code in (200, 201), again.text
    history = (await client.history(bob, cid, limit=200))["messages"]
    ids = [m["client_msg_id"] for m in history]
    assert sorted(ids) == sorted(f"cut-{n}" for n in range(30)), "a resend after a hang-up was stored twice"
