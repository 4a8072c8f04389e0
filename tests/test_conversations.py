"""PROTOCOL.md "Conversations and messages": the conversation calls, their failures, read
markers, and the ``read`` / ``conversation`` events they write into users' event logs.

Everything runs against a real ``kibitz serve`` over HTTP; every user is new to its test.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from .kibitz_client import Client, Session, assert_error

# The client contract: these tests run on every supported stack (default, sql, memory); the
# sql one keeps conversations and members on PostgreSQL.
pytestmark = pytest.mark.protocol

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
NO_SUCH_ID = "999999999999"  # a well-formed id that no user, conversation or message has


async def create(client: Client, who: Session, body: Any) -> httpx.Response:
    return await client.http.post("/conversations", json=body, headers=who.headers)


async def get(client: Client, who: Session, cid: str) -> httpx.Response:
    return await client.http.get(f"/conversations/{cid}", headers=who.headers)


async def listing(client: Client, who: Session) -> list[dict[str, Any]]:
    r = await client.http.get("/conversations", headers=who.headers)
    assert r.status_code == 200, r.text
    conversations: list[dict[str, Any]] = r.json()["conversations"]
    return conversations


async def view(client: Client, who: Session, cid: str) -> dict[str, Any]:
    r = await get(client, who, cid)
    assert r.status_code == 200, r.text
    conversation: dict[str, Any] = r.json()["conversation"]
    return conversation


async def add(client: Client, who: Session, cid: str, user_id: Any) -> httpx.Response:
    return await client.http.post(
        f"/conversations/{cid}/members", json={"user_id": user_id}, headers=who.headers
    )


async def remove(client: Client, who: Session, cid: str, uid: str) -> httpx.Response:
    return await client.http.delete(f"/conversations/{cid}/members/{uid}", headers=who.headers)


async def mark(client: Client, who: Session, cid: str, body: Any) -> httpx.Response:
    return await client.http.put(f"/conversations/{cid}/read", json=body, headers=who.headers)


def check_shape(conversation: dict[str, Any]) -> None:
    """The Conversation object of PROTOCOL.md "Objects"."""
    assert {"id", "type", "name", "members", "created_at", "last_message", "unread_count"} <= set(
        conversation
    ), conversation
    assert isinstance(conversation["id"], str) and conversation["id"].isdigit()
    assert conversation["type"] in ("direct", "group")
    assert conversation["name"] is None or isinstance(conversation["name"], str)
    assert all(isinstance(m, str) for m in conversation["members"])
    assert RFC3339_UTC.match(conversation["created_at"]), conversation["created_at"]
    assert isinstance(conversation["unread_count"], int)


# -- direct conversations ---------------------------------------------------------------


async def test_direct_is_created_once_per_pair_whoever_creates_it(client: Client) -> None:
    alice, bob = await client.users(2)
    r = await create(client, alice, {"type": "direct", "members": [bob.id]})
    assert r.status_code == 201, r.text
    made = r.json()["conversation"]
    check_shape(made)
    assert made["type"] == "direct"
    assert made["name"] is None
    assert sorted(made["members"]) == sorted([alice.id, bob.id])
    assert made["last_message"] is None
    assert made["unread_count"] == 0

    again = await create(client, alice, {"type": "direct", "members": [bob.id]})
    assert again.status_code == 200, again.text
    assert again.json()["conversation"]["id"] == made["id"]

    other_way = await create(client, bob, {"type": "direct", "members": [alice.id]})
    assert other_way.status_code == 200, other_way.text
    assert other_way.json()["conversation"]["id"] == made["id"]
    assert sorted(other_way.json()["conversation"]["members"]) == sorted([alice.id, bob.id])

    assert [c["id"] for c in await listing(client, alice)] == [made["id"]]
    assert [c["id"] for c in await listing(client, bob)] == [made["id"]]


async def test_direct_made_by_the_other_member_first_is_shared(client: Client) -> None:
    alice, bob = await client.users(2)
    first = await create(client, bob, {"type": "direct", "members": [alice.id]})
    assert first.status_code == 201, first.text
    second = await create(client, alice, {"type": "direct", "members": [bob.id]})
    assert second.status_code == 200, second.text
    assert second.json()["conversation"]["id"] == first.json()["conversation"]["id"]


async def test_direct_created_by_both_at_once_is_one_conversation(client: Client) -> None:
    alice, bob = await client.users(2)
    answers = await asyncio.gather(
        *[create(client, alice, {"type": "direct", "members": [bob.id]}) for _ in range(3)],
        *[create(client, bob, {"type": "direct", "members": [alice.id]}) for _ in range(3)],
    )
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201], [r.text for r in answers]
    assert len({r.json()["conversation"]["id"] for r in answers}) == 1
    assert len(await listing(client, alice)) == len(await listing(client, bob)) == 1


async def test_direct_failures(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    cases: dict[str, Any] = {
        "unknown user": {"type": "direct", "members": [NO_SUCH_ID]},
        "self": {"type": "direct", "members": [alice.id]},
        "no members": {"type": "direct", "members": []},
        "two members": {"type": "direct", "members": [bob.id, carol.id]},
        "bad type": {"type": "channel", "members": [bob.id]},
        "type not a string": {"type": 1, "members": [bob.id]},
        "no type": {"members": [bob.id]},
        "members not a list": {"type": "direct", "members": bob.id},
        "members missing": {"type": "direct"},
        "member not an id": {"type": "direct", "members": ["bob"]},
        "not an object": [bob.id],
    }
    for case, body in cases.items():
        r = await create(client, alice, body)
        assert r.status_code == 400, (case, r.text)
        assert_error(r, 400, "invalid_request")
    # A request that fails changes nothing.
    assert await listing(client, alice) == []
    assert await listing(client, bob) == []


async def test_create_with_malformed_json_is_400(client: Client) -> None:
    alice = await client.user()
    r = await client.http.post(
        "/conversations",
        content=b"{not json",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")


async def test_conversation_calls_need_a_token(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    assert_error(await client.http.get("/conversations"), 401, "unauthorized")
    assert_error(
        await client.http.get("/conversations", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    assert_error(await client.http.get(f"/conversations/{cid}"), 401, "unauthorized")


# -- groups --------------------------------------------------------------------------------


async def test_group_is_created_with_the_creator_as_a_member(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    r = await create(client, alice, {"type": "group", "name": "Team", "members": [bob.id, carol.id]})
    assert r.status_code == 201, r.text
    made = r.json()["conversation"]
    check_shape(made)
    assert made["type"] == "group"
    assert made["name"] == "Team"
    assert sorted(made["members"]) == sorted([alice.id, bob.id, carol.id])
    assert made["last_message"] is None
    assert made["unread_count"] == 0
    for who in (alice, bob, carol):
        seen = await view(client, who, made["id"])
        assert seen["id"] == made["id"]
        assert sorted(seen["members"]) == sorted(made["members"])


async def test_each_group_is_a_new_conversation(client: Client) -> None:
    alice, bob = await client.users(2)
    one = await create(client, alice, {"type": "group", "name": "g", "members": [bob.id]})
    two = await create(client, alice, {"type": "group", "name": "g", "members": [bob.id]})
    assert one.status_code == two.status_code == 201, (one.text, two.text)
    assert one.json()["conversation"]["id"] != two.json()["conversation"]["id"]


async def test_group_failures(client: Client) -> None:
    alice, bob = await client.users(2)
    cases: dict[str, Any] = {
        "name missing": {"type": "group", "members": [bob.id]},
        "name empty": {"type": "group", "name": "", "members": [bob.id]},
        "name not a string": {"type": "group", "name": 7, "members": [bob.id]},
        "unknown member": {"type": "group", "name": "g", "members": [bob.id, NO_SUCH_ID]},
        "members not a list": {"type": "group", "name": "g", "members": {"id": bob.id}},
        "member not an id": {"type": "group", "name": "g", "members": [bob.id, "bob"]},
    }
    for case, body in cases.items():
        r = await create(client, alice, body)
        assert r.status_code == 400, (case, r.text)
        assert_error(r, 400, "invalid_request")
    assert await listing(client, alice) == []
    assert await listing(client, bob) == []


# -- the list ------------------------------------------------------------------------------


async def test_list_is_most_recent_activity_first(client: Client) -> None:
    alice, bob, carol, dave = await client.users(4)
    first = await client.direct(alice, bob)
    second = await client.group(alice, [carol], name="second")
    third = await client.direct(dave, alice)
    assert [c["id"] for c in await listing(client, alice)] == [third, second, first]

    message = await client.send(bob, first, "wake up")
    listed = await listing(client, alice)
    assert [c["id"] for c in listed] == [first, third, second]
    for conversation in listed:
        check_shape(conversation)
    by_id = {c["id"]: c for c in listed}
    assert by_id[first]["last_message"] == message
    assert by_id[first]["unread_count"] == 1
    assert by_id[second]["last_message"] is None
    assert by_id[second]["unread_count"] == 0

    mine = await client.send(alice, second, "me too")
    listed = await listing(client, alice)
    assert [c["id"] for c in listed] == [second, first, third]
    by_id = {c["id"]: c for c in listed}
    assert by_id[second]["last_message"] == mine
    assert by_id[second]["unread_count"] == 0  # one's own messages are never unread

    # Bob sees only his conversation, with Alice's view of unread not leaking into his.
    (bobs,) = await listing(client, bob)
    assert bobs["id"] == first
    assert bobs["last_message"] == message
    assert bobs["unread_count"] == 0
    carols = await listing(client, carol)
    assert [c["id"] for c in carols] == [second]
    assert carols[0]["unread_count"] == 1


async def test_list_of_a_new_user_is_empty(client: Client) -> None:
    alice = await client.user()
    assert await listing(client, alice) == []


# -- one conversation --------------------------------------------------------------------


async def test_get_answers_members_and_hides_from_everyone_else(client: Client) -> None:
    alice, bob, eve = await client.users(3)
    cid = await client.direct(alice, bob)
    message = await client.send(alice, cid, "hello")
    seen = await view(client, bob, cid)
    check_shape(seen)
    assert seen["id"] == cid
    assert seen["last_message"] == message
    assert seen["unread_count"] == 1
    assert (await view(client, alice, cid))["unread_count"] == 0

    hidden = assert_error(await get(client, eve, cid), 404, "not_found")
    missing = assert_error(await get(client, eve, NO_SUCH_ID), 404, "not_found")
    assert hidden == missing  # exactly as a conversation that does not exist
    # The other calls on the conversation hide it the same way.
    for r in (
        await client.http.get(f"/conversations/{cid}/messages", headers=eve.headers),
        await client.http.post(
            f"/conversations/{cid}/messages", json={"body": "x", "client_msg_id": "x"}, headers=eve.headers
        ),
        await mark(client, eve, cid, {"message_id": message["id"]}),
    ):
        assert_error(r, 404, "not_found")


async def test_a_conversation_id_that_cannot_exist_is_404(client: Client) -> None:
    """PROTOCOL.md lists only 404 for ``GET /conversations/{cid}``: no such id is no such id,
    whatever its spelling, and never a 500."""
    alice = await client.user()
    missing = assert_error(await get(client, alice, NO_SUCH_ID), 404, "not_found")
    wrong: list[tuple[str, int, str]] = []
    for cid in ("9" * 19, str(2**63), "\u00b2", "abc", "-1", "1.0", "9" * 30):
        r = await get(client, alice, cid)
        if r.status_code != 404 or r.json() != {"error": missing}:
            wrong.append((cid, r.status_code, r.text))
    assert wrong == [], wrong


# -- adding members ------------------------------------------------------------------------


async def test_any_member_may_add_to_a_group(client: Client) -> None:
    alice, bob, carol, dave = await client.users(4)
    cid = await client.group(alice, [bob])
    assert_error(await get(client, carol, cid), 404, "not_found")

    r = await add(client, bob, cid, carol.id)  # bob did not create the group
    assert r.status_code == 200, r.text
    added = r.json()["conversation"]
    check_shape(added)
    assert added["id"] == cid
    assert sorted(added["members"]) == sorted([alice.id, bob.id, carol.id])

    assert sorted((await view(client, carol, cid))["members"]) == sorted(added["members"])
    assert [c["id"] for c in await listing(client, carol)] == [cid]
    message = await client.send(carol, cid, "thanks")
    assert message["sender_id"] == carol.id

    r = await add(client, carol, cid, dave.id)  # a member added later may add too
    assert r.status_code == 200, r.text
    assert dave.id in r.json()["conversation"]["members"]


async def test_adding_to_a_direct_conversation_is_400(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    cid = await client.direct(alice, bob)
    assert_error(await add(client, alice, cid, carol.id), 400, "invalid_request")
    assert sorted((await view(client, alice, cid))["members"]) == sorted([alice.id, bob.id])
    assert_error(await get(client, carol, cid), 404, "not_found")


async def test_adding_failures(client: Client) -> None:
    alice, bob, eve, carol = await client.users(4)
    cid = await client.group(alice, [bob])
    # A caller who is not a member: 404, as for a conversation that does not exist.
    hidden = assert_error(await add(client, eve, cid, carol.id), 404, "not_found")
    assert assert_error(await add(client, eve, NO_SUCH_ID, carol.id), 404, "not_found") == hidden
    assert_error(await add(client, alice, cid, NO_SUCH_ID), 400, "invalid_request")
    assert_error(await add(client, alice, cid, None), 400, "invalid_request")
    assert_error(await add(client, alice, cid, "carol"), 400, "invalid_request")
    r = await client.http.post(f"/conversations/{cid}/members", json={}, headers=alice.headers)
    assert_error(r, 400, "invalid_request")
    # Nothing changed.
    assert sorted((await view(client, alice, cid))["members"]) == sorted([alice.id, bob.id])
    assert_error(await get(client, carol, cid), 404, "not_found")
    assert_error(await get(client, eve, cid), 404, "not_found")


# -- removing members ----------------------------------------------------------------------


async def test_leaving_and_removing_in_a_group(client: Client) -> None:
    alice, bob, carol, dave, eve = await client.users(5)
    cid = await client.group(alice, [bob, carol, dave])

    # Only the creator removes others.
    assert_error(await remove(client, bob, cid, carol.id), 403, "forbidden")
    assert carol.id in (await view(client, alice, cid))["members"]

    # Anyone leaves.
    r = await remove(client, bob, cid, bob.id)
    assert r.status_code == 204, r.text
    assert r.content == b""
    r = await remove(client, alice, cid, carol.id)
    assert r.status_code == 204, r.text

    assert sorted((await view(client, alice, cid))["members"]) == sorted([alice.id, dave.id])
    assert sorted((await view(client, dave, cid))["members"]) == sorted([alice.id, dave.id])

    # A caller who is not a member: 404.
    assert_error(await remove(client, eve, cid, eve.id), 404, "not_found")
    assert_error(await remove(client, eve, cid, dave.id), 404, "not_found")
    assert sorted((await view(client, alice, cid))["members"]) == sorted([alice.id, dave.id])


async def test_after_leaving_the_conversation_is_gone_for_that_user(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.group(alice, [bob])
    before = await client.send(alice, cid, "before")
    r = await remove(client, bob, cid, bob.id)
    assert r.status_code == 204, r.text

    missing = assert_error(await get(client, bob, NO_SUCH_ID), 404, "not_found")
    assert assert_error(await get(client, bob, cid), 404, "not_found") == missing
    r = await client.http.post(
        f"/conversations/{cid}/messages", json={"body": "hi", "client_msg_id": "late"}, headers=bob.headers
    )
    assert_error(r, 404, "not_found")
    assert_error(
        await client.http.get(f"/conversations/{cid}/messages", headers=bob.headers), 404, "not_found"
    )
    assert_error(await mark(client, bob, cid, {"message_id": before["id"]}), 404, "not_found")
    assert_error(await remove(client, bob, cid, bob.id), 404, "not_found")
    assert await listing(client, bob) == []
    # Bob's refused send stored nothing.
    assert [m["id"] for m in (await client.history(alice, cid))["messages"]] == [before["id"]]

    # The removed may be added back by a member.
    r = await add(client, alice, cid, bob.id)
    assert r.status_code == 200, r.text
    assert (await view(client, bob, cid))["id"] == cid


async def test_after_being_removed_the_conversation_is_gone_for_that_user(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.group(alice, [bob])
    r = await remove(client, alice, cid, bob.id)
    assert r.status_code == 204, r.text
    assert_error(await get(client, bob, cid), 404, "not_found")
    r = await client.http.post(
        f"/conversations/{cid}/messages", json={"body": "hi", "client_msg_id": "x"}, headers=bob.headers
    )
    assert_error(r, 404, "not_found")
    assert await listing(client, bob) == []


async def test_a_direct_conversation_cannot_be_left(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    assert_error(await remove(client, alice, cid, alice.id), 403, "forbidden")
    assert_error(await remove(client, alice, cid, bob.id), 403, "forbidden")
    assert_error(await remove(client, bob, cid, alice.id), 403, "forbidden")
    for who in (alice, bob):
        assert sorted((await view(client, who, cid))["members"]) == sorted([alice.id, bob.id])


async def test_a_stranger_cannot_touch_a_direct_conversation(client: Client) -> None:
    alice, bob, eve = await client.users(3)
    cid = await client.direct(alice, bob)
    assert_error(await remove(client, eve, cid, alice.id), 404, "not_found")
    assert_error(await remove(client, eve, cid, eve.id), 404, "not_found")


# -- read markers ----------------------------------------------------------------------------


async def test_read_marker_and_unread_count(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    m1, m2, m3 = [await client.send(alice, cid, f"a{i}") for i in range(1, 4)]
    own = await client.send(bob, cid, "b1")
    assert (await view(client, bob, cid))["unread_count"] == 3  # bob's own message is not unread
    assert (await view(client, alice, cid))["unread_count"] == 1

    r = await mark(client, bob, cid, {"message_id": m1["id"]})
    assert r.status_code == 200, r.text
    marked = r.json()["conversation"]
    check_shape(marked)
    assert marked["id"] == cid
    assert marked["unread_count"] == 2
    assert marked["last_message"] == own

    r = await mark(client, bob, cid, {"message_id": own["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["conversation"]["unread_count"] == 0

    # Never backwards: an older id answers 200 and changes nothing.
    r = await mark(client, bob, cid, {"message_id": m2["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["conversation"]["unread_count"] == 0
    assert (await view(client, bob, cid))["unread_count"] == 0
    m4 = await client.send(alice, cid, "a4")
    assert (await view(client, bob, cid))["unread_count"] == 1  # the marker is still at `own`
    listed = {c["id"]: c for c in await listing(client, bob)}
    assert listed[cid]["unread_count"] == 1

    # Alice's marker is her own: bob marking read changed nothing for her.
    assert (await view(client, alice, cid))["unread_count"] == 1
    r = await mark(client, alice, cid, {"message_id": m4["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["conversation"]["unread_count"] == 0
    assert m3["id"] != m4["id"]


async def test_read_marker_failures(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    cid = await client.direct(alice, bob)
    elsewhere = await client.direct(alice, carol)
    message = await client.send(alice, cid, "one")
    foreign = await client.send(alice, elsewhere, "other conversation")

    for body in (
        {"message_id": foreign["id"]},  # a message of another conversation
        {"message_id": NO_SUCH_ID},  # no such message
        {"message_id": "abc"},
        {"message_id": None},
        {},
    ):
        assert_error(await mark(client, bob, cid, body), 400, "invalid_request")
    r = await client.http.put(
        f"/conversations/{cid}/read",
        content=b"[1,",
        headers={**bob.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")
    assert_error(await mark(client, carol, cid, {"message_id": message["id"]}), 404, "not_found")
    # A request that fails changes nothing.
    assert (await view(client, bob, cid))["unread_count"] == 1


# -- events in users' logs ---------------------------------------------------------------------


async def test_read_marker_goes_into_the_users_own_log_only(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    message = await client.send(alice, cid, "read me")
    bob_start = (await client.sync(bob))["cursor"]
    alice_start = (await client.sync(alice))["cursor"]

    r = await mark(client, bob, cid, {"message_id": message["id"]})
    assert r.status_code == 200, r.text

    events, _ = await client.drain_sync(bob, bob_start)
    reads = [e for e in events if e["type"] == "read"]
    assert reads == [{"type": "read", "conversation_id": cid, "message_id": message["id"]}]
    events, _ = await client.drain_sync(alice, alice_start)
    assert [e for e in events if e["type"] == "read"] == []


def conversation_events(events: list[dict[str, Any]], cid: str) -> list[dict[str, Any]]:
    found = [e["conversation"] for e in events if e["type"] == "conversation"]
    for conversation in found:
        check_shape(conversation)
    return [c for c in found if c["id"] == cid]


async def test_conversation_events_reach_the_members_logs(client: Client) -> None:
    alice, bob, carol, eve = await client.users(4)
    start = {who.id: (await client.sync(who))["cursor"] for who in (alice, bob, carol, eve)}

    async def new_events(who: Session) -> list[dict[str, Any]]:
        events, start[who.id] = await client.drain_sync(who, start[who.id])
        return events

    # Created: every member learns of it.
    cid = await client.group(alice, [bob], name="news")
    for who in (alice, bob):
        (made,) = conversation_events(await new_events(who), cid)
        assert made["type"] == "group"
        assert made["name"] == "news"
        assert sorted(made["members"]) == sorted([alice.id, bob.id])
    assert conversation_events(await new_events(carol), cid) == []

    # Joined: the new member and the others.
    r = await add(client, bob, cid, carol.id)
    assert r.status_code == 200, r.text
    for who in (alice, bob, carol):
        events = conversation_events(await new_events(who), cid)
        assert events, f"no conversation event for {who.user['username']}"
        assert sorted(events[-1]["members"]) == sorted([alice.id, bob.id, carol.id])

    # Members changed: someone leaves.
    r = await remove(client, carol, cid, carol.id)
    assert r.status_code == 204, r.text
    for who in (alice, bob):
        events = conversation_events(await new_events(who), cid)
        assert events, f"no conversation event for {who.user['username']}"
        assert sorted(events[-1]["members"]) == sorted([alice.id, bob.id])

    # Someone is removed by the creator.
    r = await remove(client, alice, cid, bob.id)
    assert r.status_code == 204, r.text
    events = conversation_events(await new_events(alice), cid)
    assert events
    assert events[-1]["members"] == [alice.id]

    # Nobody outside ever heard of it.
    assert conversation_events(await new_events(eve), cid) == []


async def test_direct_creation_is_an_event_for_both(client: Client) -> None:
    alice, bob = await client.users(2)
    start = {who.id: (await client.sync(who))["cursor"] for who in (alice, bob)}
    cid = await client.direct(bob, alice)
    for who in (alice, bob):
        events, _ = await client.drain_sync(who, start[who.id])
        (made,) = conversation_events(events, cid)
        assert made["type"] == "direct"
        assert sorted(made["members"]) == sorted([alice.id, bob.id])
