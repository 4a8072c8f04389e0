"""``GET /sync``: polling, long polling, paging, cursors and resuming a device, as PROTOCOL.md
"Sync: polling and long polling" states them, against a real server.
"""

from __future__ import annotations

import asyncio
import re
import uuid
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
    frames_until_pong,
    long_polls,
)

# The client contract: these tests run on every supported stack (default, sql, memory).
pytestmark = pytest.mark.protocol

Event = dict[str, Any]


# -- helpers ------------------------------------------------------------------------------


async def get_sync(client: Client, who: Session, **params: Any) -> httpx.Response:
    return await client.http.get("/sync", params=params, headers=who.headers, timeout=90)


def message_ids(events: list[Event]) -> list[str]:
    return [e["message"]["id"] for e in events if e["type"] == "message"]


def forge_number(cursor: str) -> str:
    """The same cursor with its first number changed (the signature left as it was)."""
    forged = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), cursor, count=1)
    assert forged != cursor
    return forged


# -- no since, since, kinds of events ---------------------------------------------------


async def test_sync_without_since_has_no_backlog_and_a_cursor_of_now(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)  # a conversation event in both logs
    await client.send(bob, cid, "before the cursor")
    page = await client.sync(alice)
    assert page["events"] == []
    assert page["has_more"] is False
    assert isinstance(page["cursor"], str) and page["cursor"]
    # "now": nothing that happened before it comes back, what happens after it does.
    assert (await client.sync(alice, page["cursor"]))["events"] == []
    after = await client.send(bob, cid, "after the cursor")
    events, _ = await client.drain_sync(alice, page["cursor"])
    assert events == [{"type": "message", "message": after}]


async def test_sync_returns_every_kind_of_the_callers_events_and_never_typing(client: Client) -> None:
    phone, laptop = await client.devices(2)
    bob, carol, dave = await client.user(), await client.user(), await client.user()
    direct = await client.direct(phone, bob)
    start = (await client.sync(phone))["cursor"]

    from_bob = await client.send(bob, direct, "from bob")
    from_laptop = await client.send(laptop, direct, "from my laptop")
    from_phone = await client.send(phone, direct, "from this very device")
    elsewhere = await client.direct(bob, carol)
    await client.send(bob, elsewhere, "not in my conversations")

    r = await client.http.put(
        f"/conversations/{direct}/read", json={"message_id": from_bob["id"]}, headers=phone.headers
    )
    assert r.status_code == 200, r.text

    group = await client.group(carol, [phone], "made with me in it")
    r = await client.http.post(
        f"/conversations/{group}/members", json={"user_id": dave.id}, headers=carol.headers
    )
    assert r.status_code == 200, r.text
    in_group = await client.send(dave, group, "dave in the group")

    # Typing from bob reaches the phone's socket, and is never in the log.
    socket = await Socket.open(client.server, phone)
    bobs = await Socket.open(client.server, bob)
    await bobs.send_json({"type": "typing", "conversation_id": direct})
    typing = await socket.until(lambda f: f["type"] == "event" and f["event"]["type"] == "typing")
    assert typing["event"] == {"type": "typing", "conversation_id": direct, "user_id": bob.id}
    fence = await client.send(bob, direct, "after the typing")
    await socket.close()
    await bobs.close()

    events, _ = await client.drain_sync(phone, start)
    assert [e["type"] for e in events] == [
        "message",
        "message",
        "message",
        "read",
        "conversation",
        "conversation",
        "message",
        "message",
    ]
    assert [e["message"] for e in events if e["type"] == "message"] == [
        from_bob,
        from_laptop,
        from_phone,
        in_group,
        fence,
    ]
    assert events[3] == {"type": "read", "conversation_id": direct, "message_id": from_bob["id"]}
    created, changed = events[4]["conversation"], events[5]["conversation"]
    assert created["id"] == changed["id"] == group
    assert created["type"] == "group" and created["name"] == "made with me in it"
    assert sorted(created["members"]) == sorted([carol.id, phone.id])
    assert sorted(changed["members"]) == sorted([carol.id, phone.id, dave.id])
    # The other device of the same user reads the very same log.
    assert (await client.drain_sync(laptop, start))[0] == events


# -- limit, paging, timeout ------------------------------------------------------------


async def test_limit_is_1_to_1000_else_400(client: Client) -> None:
    alice = await client.user()
    cursor = (await client.sync(alice))["cursor"]
    for limit in ("0", "1001", "-1", "abc", "1.5", "+5", " 5"):
        r = await get_sync(client, alice, since=cursor, limit=limit)
        assert_error(r, 400, "invalid_request")
    for limit in (1, 1000):
        r = await get_sync(client, alice, since=cursor, limit=limit)
        assert r.status_code == 200, r.text
        assert r.json()["events"] == []


async def test_paging_gives_every_event_exactly_once_in_order(client: Client) -> None:
    alice, bob, carol = await client.user(), await client.user(), await client.user()
    first, second = await client.direct(alice, bob), await client.direct(alice, carol)
    start = (await client.sync(alice))["cursor"]
    sent = []
    for n in range(23):
        sender, cid = (bob, first) if n % 3 else (carol, second)
        sent.append(await client.send(sender, cid, f"message {n}"))

    # The default limit (100) takes them all at once.
    whole = await client.sync(alice, start)
    assert whole["has_more"] is False
    assert [e["message"] for e in whole["events"]] == sent

    for limit in (1, 5, 7, 23):
        pages, cursor = [], start
        while True:
            page = await client.sync(alice, cursor, limit=limit)
            assert len(page["events"]) <= limit
            pages.append(page)
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        got = [e for page in pages for e in page["events"]]
        assert [e["message"] for e in got] == sent, f"limit={limit}"
        assert all(len(page["events"]) == limit for page in pages[:-1])
        # Past the end: nothing more, and the cursor still works.
        tail = await client.sync(alice, cursor, limit=limit)
        assert tail["events"] == [] and tail["has_more"] is False

    later = await client.send(bob, first, "one more")
    events, _ = await client.drain_sync(alice, cursor)
    assert events == [{"type": "message", "message": later}]


async def test_timeout_is_0_to_60_else_400(client: Client) -> None:
    alice = await client.user()
    cursor = (await client.sync(alice))["cursor"]
    for timeout in ("-1", "61", "abc", "0.5", "1e1", "+1"):
        r = await get_sync(client, alice, since=cursor, timeout=timeout)
        assert_error(r, 400, "invalid_request")


async def test_timeout_bounds_are_accepted(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    message = await client.send(bob, cid, "waiting already")
    for timeout in (0, 60):  # an event exists: both answer at once
        page = await client.sync(alice, cursor, timeout=timeout)
        assert page["events"] == [{"type": "message", "message": message}]


async def test_non_ascii_digits_are_not_integers_400(client: Client) -> None:
    """Superscript two and Arabic-Indic digits pass str.isdigit(); they are not decimal integers."""
    alice = await client.user()
    cursor = (await client.sync(alice))["cursor"]
    signature = cursor.partition(".")[2]
    cases = [
        {"since": cursor, "limit": "\u00b2"},
        {"since": cursor, "timeout": "\u00b2"},
        {"since": "\u00b2"},
        {"since": "\u00b2." + signature},
        {"since": "\u0661\u0662." + signature},
    ]
    answers = {}
    for params in cases:
        r = await get_sync(client, alice, **params)
        answers[repr(params)] = (r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None)
    assert answers == {repr(params): (400, "invalid_request") for params in cases}


# -- long polling ---------------------------------------------------------------------------


async def test_long_poll_is_held_until_a_message_arrives(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    before = await long_polls(client.server)
    poll = asyncio.create_task(client.sync(alice, cursor, timeout=30))
    try:
        await wait_until(
            lambda: _more_polls(client.server, before, poll), what="the long poll to be in flight"
        )
        assert not poll.done()  # held: nothing to answer with yet
        message = await client.send(bob, cid, "wake up")
        page = await asyncio.wait_for(poll, 45)
    finally:
        poll.cancel()
    assert page["events"] == [{"type": "message", "message": message}]
    assert page["has_more"] is False
    # The cursor it returned carries on from there.
    assert (await client.sync(alice, page["cursor"]))["events"] == []
    later = await client.send(alice, cid, "and mine")
    assert (await client.sync(alice, page["cursor"]))["events"] == [{"type": "message", "message": later}]


async def _more_polls(server: Server, before: float, poll: asyncio.Task[Any]) -> bool:
    if poll.done():  # answered early: let the test see why
        poll.result()
        raise AssertionError(f"the long poll answered before any event: {poll.result()}")
    return await long_polls(server) > before


async def test_long_poll_with_nothing_answers_empty_with_a_usable_cursor(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    page = await client.sync(alice, cursor, timeout=1)
    assert page["events"] == []
    assert page["has_more"] is False
    assert isinstance(page["cursor"], str) and page["cursor"]
    assert (await client.sync(alice, page["cursor"]))["events"] == []
    message = await client.send(bob, cid, "now there is one")
    assert (await client.sync(alice, page["cursor"], timeout=1))["events"] == [
        {"type": "message", "message": message}
    ]


# -- cursors this server did not issue, expired cursors ------------------------------------


async def test_cursors_this_server_did_not_issue_are_400(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    await client.direct(alice, bob)
    mine = (await client.sync(alice))["cursor"]
    bobs = (await client.sync(bob))["cursor"]
    garbage = ["garbage", "0", "-1", "12345", "abc.def", ".", "x" * 300, mine + "x", mine[:-1]]
    for since in [*garbage, forge_number(mine), bobs]:
        r = await get_sync(client, alice, since=since)
        assert_error(r, 400, "invalid_request")
        r = await get_sync(client, alice, since=since, timeout=1)
        assert_error(r, 400, "invalid_request")
    # The genuine one still works, for its owner.
    assert (await client.sync(alice, mine))["events"] == []
    assert (await client.sync(bob, bobs))["events"] == []


async def test_cursor_older_than_retention_is_410(short_retention: Server) -> None:
    client = Client(short_retention)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        old = (await client.sync(alice))["cursor"]
        sent = [await client.send(bob, cid, f"soon gone {n}") for n in range(3)]
        first = await get_sync(client, alice, since=old)
        if first.status_code == 200:  # still retained: the cursor is a good one
            assert [e["message"] for e in first.json()["events"]] == sent

        answers: list[httpx.Response] = []

        async def expired() -> bool:
            r = await get_sync(client, alice, since=old)
            answers.append(r)
            assert r.status_code in (200, 410), r.text
            return r.status_code == 410

        await wait_until(expired, timeout=30, what="the cursor to expire")
        assert_error(answers[-1], 410, "cursor_expired")
        assert_error(await get_sync(client, alice, since=old, timeout=1), 410, "cursor_expired")
        # Then the client reloads: history still has the messages, and a new cursor works.
        assert (await client.history(alice, cid))["messages"] == sent
        fresh = await client.sync(alice)
        assert fresh["events"] == []
        assert (await client.sync(alice, fresh["cursor"]))["events"] == []
    finally:
        await client.close()


# -- an offline device resumes ------------------------------------------------------------


async def test_offline_device_resumes_every_event_once_in_the_online_devices_order(client: Client) -> None:
    online, offline = await client.devices(2)
    others = [await client.user() for _ in range(4)]
    conversations = [
        (others[0], await client.direct(online, others[0])),
        (others[1], await client.direct(others[1], online)),
        (others[2], await client.group(others[2], [online, others[3]], "g1")),
        (others[3], await client.group(others[0], [online, others[1], others[2], others[3]], "g2")),
        (online, await client.direct(online, others[2])),  # the user's own, from the online device
    ]
    socket = await Socket.open(client.server, online)
    cursor = (await client.sync(offline))["cursor"]  # device B takes its cursor, then goes away

    async def sender(who: Session, cid: str, count: int) -> None:
        for n in range(count):
            await client.send(who, cid, f"{n} from {who.user['username']}")

    # 50 messages from several senders in several conversations, concurrently.
    counts = [12, 11, 10, 9, 8]
    assert sum(counts) == 50
    await asyncio.gather(
        *(sender(who, cid, count) for (who, cid), count in zip(conversations, counts, strict=True))
    )
    live = await socket.messages(50, timeout=30)
    assert await frames_until_pong(socket) == []  # nothing else came
    live_ids = [m["id"] for m in live]
    assert len(set(live_ids)) == 50

    # B resumes over /sync: the same events, once each, in the same order.
    events, last = await client.drain_sync(offline, cursor)
    assert all(e["type"] == "message" for e in events)
    assert message_ids(events) == live_ids
    assert [e["message"] for e in events] == live
    # Also in small pages.
    paged, since = [], cursor
    while True:
        page = await client.sync(offline, since, limit=7)
        paged += page["events"]
        since = page["cursor"]
        if not page["has_more"]:
            break
    assert paged == events
    assert (await client.sync(offline, last))["events"] == []

    # B resumes over a WebSocket hello with since: the same again.
    resumed = await Socket.open(client.server, offline, since=cursor)
    assert resumed.ready["cursor"] == cursor
    replay = await resumed.messages(50, timeout=30)
    assert [m["id"] for m in replay] == live_ids
    assert await frames_until_pong(resumed) == []  # no duplicates after the replay either
    # And both devices then carry on live with the next message.
    who, cid = conversations[0]
    after = await client.send(who, cid, "after the resume")
    assert await resumed.messages(1) == [after]
    assert await socket.messages(1) == [after]
    await resumed.close()
    await socket.close()


async def test_own_sends_from_the_asking_device_are_in_its_sync(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    mine = await client.send(alice, cid, "mine", client_msg_id=uuid.uuid4().hex)
    again = await client.send(alice, cid, "mine", client_msg_id=mine["client_msg_id"])  # idempotent resend
    assert again == mine
    events, _ = await client.drain_sync(alice, cursor)
    assert events == [{"type": "message", "message": mine}]


async def test_a_backlog_bigger_than_one_read_is_never_cut_short(client: Client) -> None:
    """Large events fill a transport read before ``limit`` does: ``has_more`` must still say so."""
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    since = (await client.sync(bob))["cursor"]
    body = "€" * 4000  # 12 KB of UTF-8 per message
    sent = [(await client.send(alice, cid, body))["id"] for _ in range(120)]
    events, _ = await client.drain_sync(bob, since)
    assert [e["message"]["id"] for e in events if e["type"] == "message"] == sent
    socket = await Socket.open(client.server, bob, since=since)
    replayed = await socket.messages(len(sent))
    assert [m["id"] for m in replayed] == sent
    await socket.close()
