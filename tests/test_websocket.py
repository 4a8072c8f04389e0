"""``GET /api/v1/ws``: hello and ready, replay and live events, client frames, close codes,
as PROTOCOL.md "WebSocket" states them, against a real server.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from kibitz.testing import running_server, wait_until

from .kibitz_client import (
    Client,
    Server,
    Session,
    Socket,
    close_code,
    connect,
    frames_until_pong,
    hello,
)

Frame = dict[str, Any]

# The client contract: these tests run on every supported stack (default, sql, memory).
pytestmark = pytest.mark.protocol


def is_event(kind: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == "event" and f["event"]["type"] == kind


def send_frame(cid: str, body: str, client_msg_id: str | None = None) -> Frame:
    return {
        "type": "send",
        "conversation_id": cid,
        "body": body,
        "client_msg_id": client_msg_id or uuid.uuid4().hex,
    }


def forge_number(cursor: str) -> str:
    forged = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), cursor, count=1)
    assert forged != cursor
    return forged


# -- hello ----------------------------------------------------------------------------------


async def test_no_hello_within_10_seconds_closes_4401(server: Server) -> None:
    ws = await connect(server)
    started = time.monotonic()
    code, frames = await close_code(ws, timeout=15)
    assert code == 4401
    assert frames == []
    assert time.monotonic() - started > 9  # the client had its 10 seconds


async def test_bad_token_closes_4401(client: Client) -> None:
    alice = await client.user()
    for token in ("not a token", "", alice.token + "x", alice.token[:-1]):
        code, frames = await close_code(await hello(client.server, token))
        assert (code, frames) == (4401, []), token


async def test_revoked_token_closes_4401(client: Client) -> None:
    alice = await client.user()
    cursor = (await client.sync(alice))["cursor"]
    r = await client.http.delete("/sessions/current", headers=alice.headers)
    assert r.status_code == 204, r.text
    code, frames = await close_code(await hello(client.server, alice.token))
    assert (code, frames) == (4401, [])
    # Not with a cursor it was given either.
    code, frames = await close_code(await hello(client.server, alice.token, since=cursor))
    assert (code, frames) == (4401, [])


async def test_first_frame_not_a_valid_hello_closes_4401(client: Client) -> None:
    alice = await client.user()
    firsts = [
        "garbage",
        "{not json",
        "[]",
        '"hello"',
        "null",
        orjson.dumps({"type": "ping"}).decode(),
        orjson.dumps({"type": "send", "token": alice.token}).decode(),
        orjson.dumps({"type": "hello"}).decode(),
        orjson.dumps({"type": "hello", "token": 12345}).decode(),
        orjson.dumps({"token": alice.token}).decode(),
    ]
    for first in firsts:
        ws = await connect(client.server)
        await ws.send(first)
        code, frames = await close_code(ws)
        assert (code, frames) == (4401, []), first


async def test_since_this_server_did_not_issue_closes_4400(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    await client.direct(alice, bob)
    mine = (await client.sync(alice))["cursor"]
    bobs = (await client.sync(bob))["cursor"]
    for since in ("garbage", "12345", "abc.def", "", forge_number(mine), bobs, mine + "x"):
        code, frames = await close_code(await hello(client.server, alice.token, since=since))
        assert (code, frames) == (4400, []), since
    # The genuine cursor works.
    socket = await Socket.open(client.server, alice, since=mine)
    assert socket.ready["cursor"] == mine
    await socket.close()


async def test_since_with_non_ascii_digits_closes_4400(client: Client) -> None:
    """Superscript two passes str.isdigit() but is not a position this server issued."""
    alice = await client.user()
    signature = (await client.sync(alice))["cursor"].partition(".")[2]
    for since in ("\u00b2", "\u00b2." + signature):
        code, frames = await close_code(await hello(client.server, alice.token, since=since))
        assert (code, frames) == (4400, []), since


async def test_expired_since_closes_4410(short_retention: Server) -> None:
    client = Client(short_retention)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        old = (await client.sync(alice))["cursor"]
        for n in range(3):
            await client.send(bob, cid, f"soon gone {n}")

        async def expired() -> bool:
            r = await client.http.get("/sync", params={"since": old}, headers=alice.headers)
            assert r.status_code in (200, 410), r.text
            return r.status_code == 410

        await wait_until(expired, timeout=30, what="the cursor to expire")
        code, frames = await close_code(await hello(short_retention, alice.token, since=old))
        assert (code, frames) == (4410, [])
        # Then connect without since, as the client is told to.
        socket = await Socket.open(short_retention, alice)
        assert socket.ready["user"] == alice.user
        await socket.close()
    finally:
        await client.close()


async def test_ready_has_the_user_and_a_cursor_of_now(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    await client.send(bob, cid, "before ready")
    socket = await Socket.open(client.server, alice)
    assert set(socket.ready) >= {"type", "user", "cursor"}
    assert socket.ready["user"] == alice.user
    cursor = socket.ready["cursor"]
    assert isinstance(cursor, str) and cursor
    assert (await client.sync(alice, cursor))["events"] == []  # "now"
    # Live events after ready's cursor follow, each with a cursor.
    message = await client.send(bob, cid, "after ready")
    frame = await socket.until(is_event("message"))
    assert frame["event"] == {"type": "message", "message": message}
    assert isinstance(frame["cursor"], str)
    assert (await client.sync(alice, frame["cursor"]))["events"] == []
    assert await frames_until_pong(socket) == []
    await socket.close()


async def test_live_events_of_every_kind_come_with_cursors_as_in_the_log(client: Client) -> None:
    alice, bob, carol = await client.user(), await client.user(), await client.user()
    direct = await client.direct(alice, bob)
    socket = await Socket.open(client.server, alice)
    start = socket.ready["cursor"]
    from_bob = await client.send(bob, direct, "one")
    r = await client.http.put(
        f"/conversations/{direct}/read", json={"message_id": from_bob["id"]}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    group = await client.group(carol, [bob], "later")
    r = await client.http.post(
        f"/conversations/{group}/members", json={"user_id": alice.id}, headers=bob.headers
    )
    assert r.status_code == 200, r.text
    in_group = await client.send(carol, group, "welcome")
    r = await client.http.delete(f"/conversations/{group}/members/{alice.id}", headers=carol.headers)
    assert r.status_code == 204, r.text
    await client.send(carol, group, "alice is gone")  # not hers any more
    fence = await client.send(bob, direct, "fence")

    frames = [await socket.recv() for _ in range(6)]
    assert all(f["type"] == "event" and isinstance(f.get("cursor"), str) for f in frames), frames
    assert await frames_until_pong(socket) == []
    events = [f["event"] for f in frames]
    assert [e["type"] for e in events] == [
        "message",
        "read",
        "conversation",
        "message",
        "conversation",
        "message",
    ]
    assert events[0]["message"] == from_bob
    assert events[1] == {"type": "read", "conversation_id": direct, "message_id": from_bob["id"]}
    assert events[2]["conversation"]["id"] == group
    assert sorted(events[2]["conversation"]["members"]) == sorted([alice.id, bob.id, carol.id])
    assert events[3]["message"] == in_group
    assert events[4]["conversation"]["id"] == group
    assert alice.id not in events[4]["conversation"]["members"]
    assert events[5]["message"] == fence
    assert (await client.drain_sync(alice, start))[0] == events
    await socket.close()


# -- replay, then live -----------------------------------------------------------------------


async def test_resume_replays_then_goes_live_exactly_once_while_messages_keep_coming(
    client: Client,
) -> None:
    reader = await client.user()
    backlog_senders = [await client.user() for _ in range(4)]
    live_senders = [await client.user() for _ in range(3)]
    backlog_cids = [await client.direct(s, reader) for s in backlog_senders]
    group = await client.group(live_senders[0], [reader, *live_senders[1:]], "live")
    live_cids = [await client.direct(s, reader) for s in live_senders]
    since = (await client.sync(reader))["cursor"]

    async def burst(who: Session, cid: str, count: int, tag: str, lanes: int = 10) -> None:
        async def lane(n: int) -> None:
            for i in range(n, count, lanes):
                await client.send(who, cid, f"{tag} {i}")

        await asyncio.gather(*(lane(n) for n in range(lanes)))

    # 600 events in the backlog, from several senders (each under its burst allowance).
    await asyncio.gather(
        *(burst(s, cid, 150, "backlog") for s, cid in zip(backlog_senders, backlog_cids, strict=True))
    )
    assert len((await client.drain_sync(reader, since))[0]) == 600

    # While the socket resumes, others keep sending, one at a time, so sends straddle the replay.
    async def trickle(who: Session, cids: list[str], count: int) -> None:
        for i in range(count):
            await client.send(who, cids[i % len(cids)], f"live {i}")

    senders = asyncio.gather(
        *(trickle(s, [group, cid], 40) for s, cid in zip(live_senders, live_cids, strict=True))
    )
    try:
        socket = await Socket.open(client.server, reader, since=since)
        assert socket.ready["cursor"] == since
        assert socket.ready["user"] == reader.user
        frames: list[Frame] = []
        while len(frames) < 720:
            frame = await socket.recv(timeout=30)
            assert frame["type"] == "event", frame
            frames.append(frame)
    finally:
        await senders
    # A fence: a last message, then a ping; nothing else may come before the pong.
    fence = await client.send(live_senders[0], group, "fence")
    frames.append(await socket.until(lambda f: f["type"] == "event", timeout=10))
    assert frames[-1]["event"] == {"type": "message", "message": fence}
    assert await frames_until_pong(socket) == []

    for frame in frames:
        assert set(frame) == {"type", "event", "cursor"}, frame
        assert isinstance(frame["cursor"], str) and frame["cursor"]
    got = [f["event"]["message"]["id"] for f in frames]
    assert len(set(got)) == len(got) == 721, "duplicates"
    logged, _ = await client.drain_sync(reader, since)
    assert got == [e["message"]["id"] for e in logged], "not exactly the log after since, in order"
    assert [f["event"] for f in frames] == logged
    # Every frame's cursor resumes right after its event.
    for n in (0, 299, 600, 719):
        rest, _ = await client.drain_sync(reader, frames[n]["cursor"])
        assert [e["message"]["id"] for e in rest] == got[n + 1 :]
    await socket.close()


# -- client frames ----------------------------------------------------------------------------


async def test_send_answers_sent_and_the_sending_device_gets_its_own_event(client: Client) -> None:
    phone, laptop = await client.devices(2)
    bob = await client.user()
    cid = await client.direct(phone, bob)
    sockets = [await Socket.open(client.server, who) for who in (phone, laptop, bob)]
    sender = sockets[0]
    await sender.send_json(send_frame(cid, "hello there", "cm-1"))
    # The sender gets both its "sent" and the message event, in either order.
    own: list[Frame] = []
    while len(own) < 2:
        own.append(await sender.until(lambda f: f["type"] == "sent" or is_event("message")(f)))
    (sent,) = [f for f in own if f["type"] == "sent"]
    (own_event,) = [f for f in own if f["type"] == "event"]
    message = sent["message"]
    assert own_event["event"] == {"type": "message", "message": message}
    assert sent["client_msg_id"] == "cm-1"
    assert message["client_msg_id"] == "cm-1"
    assert message["body"] == "hello there"
    assert message["conversation_id"] == cid
    assert message["sender_id"] == phone.id
    assert isinstance(message["id"], str) and message["id"].isdigit()
    # Read your writes: durable and in history once sent has arrived.
    assert (await client.history(bob, cid))["messages"] == [message]
    for socket in sockets[1:]:  # and every other device of every member
        frame = await socket.until(lambda f: f["type"] == "event" and f["event"]["type"] == "message")
        assert frame["event"]["message"] == message
        assert frame["event"]["message"]["client_msg_id"] == "cm-1"
    # The same client_msg_id again: the same message, nothing new stored or delivered.
    await sender.send_json(send_frame(cid, "hello there", "cm-1"))
    again = await sender.until(lambda f: f["type"] == "sent")
    assert again == sent
    for socket in sockets:
        assert await frames_until_pong(socket) == []
    assert (await client.history(bob, cid))["messages"] == [message]
    for socket in sockets:
        await socket.close()


async def test_send_errors(client: Client) -> None:
    alice, bob, carol, dave = [await client.user() for _ in range(4)]
    mine = await client.direct(alice, bob)
    theirs = await client.direct(carol, dave)
    socket = await Socket.open(client.server, alice)

    async def error_for(frame: Frame) -> Frame:
        await socket.send_json(frame)
        answer = await socket.until(lambda f: f["type"] in ("error", "sent"))
        assert answer["type"] == "error", (frame, answer)
        assert isinstance(answer["message"], str)
        return answer

    # Not a member (or no such conversation): not_found, with the client_msg_id.
    for cid in (theirs, "999999999999"):
        answer = await error_for(send_frame(cid, "let me in", "nf-" + cid))
        assert (answer["code"], answer["client_msg_id"]) == ("not_found", "nf-" + cid)
    # Too long a body: payload_too_large.
    answer = await error_for(send_frame(mine, "x" * 4001, "too-long"))
    assert (answer["code"], answer["client_msg_id"]) == ("payload_too_large", "too-long")
    # Bad fields: invalid_request.
    bad_frames = [
        {"type": "send", "conversation_id": mine, "client_msg_id": "no-body"},
        send_frame(mine, "", "empty-body"),
        {**send_frame(mine, "x", "int-body"), "body": 5},
        {"type": "send", "conversation_id": mine, "body": "no client_msg_id"},
        send_frame(mine, "x", "c" * 65),
        {**send_frame(mine, "x"), "client_msg_id": 7},
        {**send_frame(mine, "x", "no-cid"), "conversation_id": None},
        send_frame("not-an-id", "x", "bad-cid"),
        {**send_frame(mine, "x", "list-cid"), "conversation_id": [mine]},
    ]
    for frame in bad_frames:
        answer = await error_for(frame)
        assert answer["code"] == "invalid_request", (frame, answer)
        if isinstance(frame.get("client_msg_id"), str) and len(frame["client_msg_id"]) <= 64:
            assert answer["client_msg_id"] == frame["client_msg_id"], (frame, answer)
    # A failed send changes nothing, and the socket is still fine.
    assert (await client.history(alice, mine))["messages"] == []
    await socket.send_json(send_frame(mine, "fine", "ok"))
    assert (await socket.until(lambda f: f["type"] in ("sent", "error")))["type"] == "sent"
    await socket.close()


async def test_sends_pipelined_on_one_socket_join_the_log_in_frame_order(client: Client) -> None:
    """Frames sent back to back without waiting: each answered once, ids in frame order."""
    alice, bob, carol, dave = [await client.user() for _ in range(4)]
    first, second = await client.direct(alice, bob), await client.group(alice, [carol, dave])
    theirs = await client.direct(carol, dave)
    socket = await Socket.open(client.server, alice)
    frames = []
    for n in range(120):
        cid = theirs if n == 50 else (first, second)[n % 2]  # one refused among them
        frames.append(send_frame(cid, f"message {n}", f"pipe-{n}"))
    frames.insert(80, send_frame(first, "message 10", "pipe-10"))  # a resend, mid-stream
    for frame in frames:
        await socket.send_json(frame)
    answers: dict[str, list[Frame]] = {}
    while sum(len(a) for a in answers.values()) < len(frames):
        answer = await socket.until(lambda f: f["type"] in ("sent", "error"))
        answers.setdefault(answer["client_msg_id"], []).append(answer)
    assert [a["code"] for a in answers.pop("pipe-50")] == ["not_found"]
    assert [a["message"]["id"] for a in answers["pipe-10"]] == [answers["pipe-10"][0]["message"]["id"]] * 2
    sent = [answers[f"pipe-{n}"][0]["message"] for n in range(120) if n != 50]
    assert all(a["type"] == "sent" for n in range(120) if n != 50 for a in answers[f"pipe-{n}"])
    ids = [int(m["id"]) for m in sent]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids are not in the frames' order"
    for cid in (first, second):
        history = (await client.history(alice, cid, limit=100))["messages"]
        assert history == [m for m in sent if m["conversation_id"] == cid]
    await socket.close()


async def test_send_with_non_ascii_digit_ids_is_invalid_request(client: Client) -> None:
    """Superscript two passes str.isdigit() but is no id: invalid_request, and the socket lives."""
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    socket = await Socket.open(client.server, alice)
    for frame in (
        send_frame("\u00b2", "x", "sup"),
        {"type": "read", "conversation_id": cid, "message_id": "\u00b2"},
        {"type": "typing", "conversation_id": "\u00b2"},
    ):
        await socket.send_json(frame)
        answer = await socket.until(lambda f: f["type"] in ("error", "sent", "pong"))
        assert (answer["type"], answer.get("code")) == ("error", "invalid_request"), (frame, answer)
    assert await frames_until_pong(socket) == []
    await socket.close()


async def test_read_frame_moves_the_marker(client: Client) -> None:
    phone, laptop = await client.devices(2)
    bob = await client.user()
    cid = await client.direct(phone, bob)
    first = await client.send(bob, cid, "one")
    second = await client.send(bob, cid, "two")
    sockets = [await Socket.open(client.server, phone), await Socket.open(client.server, laptop)]
    bobs = await Socket.open(client.server, bob)
    await sockets[0].send_json({"type": "read", "conversation_id": cid, "message_id": first["id"]})
    expected = {"type": "read", "conversation_id": cid, "message_id": first["id"]}
    for socket in sockets:
        frame = await socket.until(is_event("read"))
        assert frame["event"] == expected
        assert isinstance(frame["cursor"], str)
    r = await client.http.get(f"/conversations/{cid}", headers=laptop.headers)
    assert r.json()["conversation"]["unread_count"] == 1
    # Never backwards: an older message changes nothing (no event).
    await sockets[1].send_json({"type": "read", "conversation_id": cid, "message_id": second["id"]})
    await sockets[1].until(is_event("read"))
    await sockets[1].send_json({"type": "read", "conversation_id": cid, "message_id": first["id"]})
    r = await client.http.get(f"/conversations/{cid}", headers=phone.headers)
    assert r.json()["conversation"]["unread_count"] == 0
    # A marker must name a message of the conversation; a stranger's conversation is not_found.
    await sockets[1].send_json({"type": "read", "conversation_id": cid, "message_id": "999999999999"})
    assert (await sockets[1].until(lambda f: f["type"] == "error"))["code"] == "invalid_request"
    await sockets[1].send_json({"type": "read", "conversation_id": "999999999999", "message_id": first["id"]})
    assert (await sockets[1].until(lambda f: f["type"] == "error"))["code"] == "not_found"
    assert [f for f in await frames_until_pong(sockets[1]) if f["type"] == "event"] == []
    assert [f["event"] for f in await frames_until_pong(sockets[0])] == [
        {"type": "read", "conversation_id": cid, "message_id": second["id"]}
    ]
    # Bob's marker did not move, and he got no read events.
    r = await client.http.get(f"/conversations/{cid}", headers=bob.headers)
    assert r.json()["conversation"]["unread_count"] == 0  # his own side: no messages from others
    assert await frames_until_pong(bobs) == []
    for socket in [*sockets, bobs]:
        await socket.close()


async def test_typing_reaches_the_other_members_only_and_is_never_in_sync(client: Client) -> None:
    alice_phone, alice_laptop = await client.devices(2)
    bob, carol, dave = await client.user(), await client.user(), await client.user()
    group = await client.group(alice_phone, [bob, carol], "typing")
    await client.direct(alice_phone, dave)
    cursors = {who.id: (await client.sync(who))["cursor"] for who in (alice_phone, bob)}
    typer = await Socket.open(client.server, alice_phone)
    typer_other_device = await Socket.open(client.server, alice_laptop)
    bobs, carols, daves = [await Socket.open(client.server, who) for who in (bob, carol, dave)]
    await typer.send_json({"type": "typing", "conversation_id": group})
    expected = {
        "type": "event",
        "event": {"type": "typing", "conversation_id": group, "user_id": alice_phone.id},
    }
    for socket in (bobs, carols):
        assert await socket.until(lambda f: f["type"] == "event") == expected  # no cursor
    # The signal has been handed out: anything for the typer or a non-member would be queued already.
    assert await frames_until_pong(typer) == []
    assert await frames_until_pong(daves) == []
    # The typer's own user is not "the other members".
    assert await frames_until_pong(typer_other_device) == []
    # Never in /sync: a message after the typing is the only event.
    message = await client.send(bob, group, "fence")
    for who in (alice_phone, bob):
        events, _ = await client.drain_sync(who, cursors[who.id])
        assert events == [{"type": "message", "message": message}]
    for socket in (typer, typer_other_device, bobs, carols, daves):
        await socket.close()


async def test_ping_answers_pong(client: Client) -> None:
    socket = await Socket.open(client.server, await client.user())
    for _ in range(3):
        await socket.send_json({"type": "ping"})
        assert await socket.recv() == {"type": "pong"}
    await socket.close()


async def test_bad_frames_get_invalid_request_and_the_socket_stays_open(client: Client) -> None:
    alice = await client.user()
    socket = await Socket.open(client.server, alice)
    frames = [
        "{not json",
        "",
        orjson.dumps({"type": "dance"}).decode(),
        orjson.dumps({"no": "type"}).decode(),
        orjson.dumps({"type": 5}).decode(),
        "[1, 2, 3]",
        '"ping"',
        "42",
        "null",
        orjson.dumps({"type": "hello", "token": alice.token}).decode(),
    ]
    for text in frames:
        await socket.ws.send(text)
        answer = await socket.recv()
        assert answer["type"] == "error", (text, answer)
        assert answer["code"] == "invalid_request", (text, answer)
        assert isinstance(answer["message"], str)
        await socket.send_json({"type": "ping"})
        assert await socket.recv() == {"type": "pong"}, text
    await socket.close()


async def test_binary_frame_closes_1003(client: Client) -> None:
    socket = await Socket.open(client.server, await client.user())
    await socket.ws.send(b'{"type": "ping"}')
    code, frames = await close_code(socket.ws)
    assert code == 1003
    assert all(f.get("type") != "pong" for f in frames)


async def test_frame_over_64_kib_closes_1009(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    socket = await Socket.open(client.server, alice)
    # Just under the limit is fine (the body itself is then too long: an error, not a close).
    await socket.send_json(send_frame(cid, "x" * 60_000, "big"))
    assert (await socket.until(lambda f: f["type"] == "error"))["code"] == "payload_too_large"
    await socket.send_json({"type": "ping", "padding": "x" * (64 * 1024 + 1)})
    code, _ = await close_code(socket.ws)
    assert code == 1009


async def test_logout_closes_that_devices_sockets_4401_only(client: Client) -> None:
    phone, laptop = await client.devices(2)
    bob = await client.user()
    cid = await client.direct(phone, bob)
    phone_sockets = [await Socket.open(client.server, phone) for _ in range(2)]
    laptop_socket = await Socket.open(client.server, laptop)
    r = await client.http.delete("/sessions/current", headers=phone.headers)
    assert r.status_code == 204, r.text
    for socket in phone_sockets:
        code, _ = await close_code(socket.ws, timeout=10)
        assert code == 4401
    r = await client.http.get("/me", headers=phone.headers)
    assert r.status_code == 401
    # The other device stays connected and keeps getting events.
    assert await frames_until_pong(laptop_socket) == []
    message = await client.send(bob, cid, "still here?")
    assert await laptop_socket.messages(1) == [message]
    await laptop_socket.close()


async def test_a_socket_opened_while_the_server_drains_is_sent_elsewhere_at_once(tmp_path: Path) -> None:
    """A client reconnecting to an instance that has begun to drain gets 1001 before its
    hello, instead of a socket that would be held until the server's own deadline."""
    async with running_server(tmp_path) as server:
        client = Client(server)
        try:
            alice = await client.user()
            server.app.stopping.set()  # what SIGTERM does first
            async with websockets.connect(server.ws_url) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send(orjson.dumps({"type": "hello", "token": alice.token}).decode())
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        finally:
            await client.close()


async def test_answers_given_while_the_server_drains_close_their_connection(tmp_path: Path) -> None:
    """Sanic closes idle keep-alive connections once, when it stops listening: one busy at
    that moment (a long poll answered at once, say) must not go back to waiting, idle."""
    async with running_server(tmp_path) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.url + "/readyz")).headers["connection"] == "keep-alive"
        server.app.stopping.set()  # what SIGTERM does first
        assert (await http.get(server.url + "/readyz")).headers["connection"] == "close"
