"""The server under hostile use: each attack a black-box probe made, and the answer the
contract asks for. Attacks come from addresses of their own (127.0.0.2, 127.0.0.3 ...),
so the limits they trip never touch the other tests, which connect from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.exceptions import ConnectionClosed

from kibitz.conversations import Conversations
from kibitz.database import users
from kibitz.errors import NotFound
from kibitz.gateways.ws import MAX_SOCKETS_PER_USER
from kibitz.http_protocol import FIRST_REQUEST_TIMEOUT
from kibitz.ratelimit import FRAME_BURST
from kibitz.testing import wait_until

from .kibitz_client import (
    PASSWORD,
    Client,
    Server,
    Socket,
    assert_error,
    close_code,
    hello,
    long_polls,
)


def client_from(server: Server, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z reaches loopback)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.api, transport=transport, timeout=60)


async def raw_connection(server: Server, address: str = "127.0.0.3") -> tuple[Any, Any]:
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    return await asyncio.open_connection(host, port, local_addr=(address, 0))


async def trickle(writer: Any, data: bytes, reader: Any, seconds_per_byte: float) -> bytes:
    """Send ``data`` a byte at a time until the server hangs up; what it answered.

    Fails if the server let the whole of ``data`` arrive: it was meant to give up first.
    """
    answer = asyncio.ensure_future(reader.read())
    sent = 0
    while sent < len(data) and not answer.done():
        writer.write(data[sent : sent + 1])
        sent += 1
        # The pause is the attack (a client as slow as this), not a wait for the server.
        await asyncio.wait((answer,), timeout=seconds_per_byte)
    writer.close()
    assert answer.done() and sent < len(data), f"the server waited for all {len(data)} bytes"
    return answer.result()


# -- revocation --------------------------------------------------------------------------------


async def test_a_revoked_devices_long_poll_answers_401_and_delivers_nothing(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    before = await long_polls(client.server)
    poll = asyncio.create_task(
        client.http.get("/sync", params={"since": cursor, "timeout": 20}, headers=alice.headers, timeout=60)
    )
    await wait_until(lambda: _polling(client.server, before), 10, "the long poll to be in flight")
    r = await client.http.delete("/sessions/current", headers=alice.headers)
    assert r.status_code == 204, r.text
    await client.send(bob, cid, "after the logout")
    assert_error(await poll, 401, "unauthorized")


async def _polling(server: Server, before: float) -> bool:
    return await long_polls(server) > before


# -- slow and idle connections -------------------------------------------------------------------


async def test_slow_headers_slow_bodies_and_silent_connections_are_cut_off(client: Client) -> None:
    """Headers or a body at one byte a second get 408 within the 30 s a request may take to
    arrive; a connection that never sends is closed after its first-request timeout."""
    header_reader, header_writer = await raw_connection(client.server)
    body_reader, body_writer = await raw_connection(client.server)
    silent_reader, silent_writer = await raw_connection(client.server)
    slow_headers = b"GET /healthz HTTP/1.1\r\nHost: kibitz\r\n" + b"X-Padding: " + b"a" * 90 + b"\r\n\r\n"
    body = orjson.dumps({"username": "slowpoke", "password": PASSWORD})
    slow_body = (
        b"POST /api/v1/accounts HTTP/1.1\r\nHost: kibitz\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) + 100)
    )
    body_writer.write(slow_body)
    headers_answer, body_answer, silent = await asyncio.gather(
        trickle(header_writer, slow_headers, header_reader, 1.0),
        trickle(body_writer, body + b" " * 100, body_reader, 1.0),
        asyncio.wait_for(silent_reader.read(), FIRST_REQUEST_TIMEOUT + 20),
    )
    assert headers_answer.startswith(b"HTTP/1.1 408"), headers_answer[:200]
    assert body_answer.startswith(b"HTTP/1.1 408"), body_answer[:200]
    assert b'"code":"invalid_request"' in body_answer, body_answer
    assert silent == b""  # closed by the server with nothing said
    silent_writer.close()
    r = await client.http.get("/users", params={"query": "slowpoke"}, headers=(await client.user()).headers)
    assert r.json()["users"] == []  # the half-sent sign-up changed nothing


async def test_connections_per_address_are_capped_with_429(client: Client, server: Server) -> None:
    from kibitz.settings import Settings

    cap = Settings().max_connections_per_address
    held = [await raw_connection(server, "127.0.0.4") for _ in range(cap)]
    try:
        reader, writer = await raw_connection(server, "127.0.0.4")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: kibitz\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        assert b"retry-after:" in answer.lower() and b'"code":"rate_limited"' in answer, answer
        r = await client.http.get(server.url + "/healthz")  # another address is not affected
        assert r.status_code == 200
    finally:
        for _, held_writer in held:
            held_writer.close()


# -- ids are strings, in one spelling ---------------------------------------------------------------


async def test_ids_given_as_numbers_or_with_leading_zeros_are_refused(client: Client) -> None:
    alice, bob, carol = await client.users(3)
    group = await client.group(alice, [bob], "ids")
    message = await client.send(alice, group, "hello")
    bad_bodies = [
        ("/conversations", {"type": "direct", "members": [int(bob.id)]}),
        ("/conversations", {"type": "direct", "members": ["0" + bob.id]}),
        ("/conversations", {"type": "group", "name": "g", "members": [int(carol.id)]}),
        (f"/conversations/{group}/members", {"user_id": int(carol.id)}),
        (f"/conversations/{group}/members", {"user_id": " " + carol.id}),
    ]
    for path, body in bad_bodies:
        r = await client.http.post(path, json=body, headers=alice.headers)
        assert_error(r, 400, "invalid_request")
    r = await client.http.put(
        f"/conversations/{group}/read", json={"message_id": int(message["id"])}, headers=bob.headers
    )
    assert_error(r, 400, "invalid_request")
    conversation = (await client.http.get(f"/conversations/{group}", headers=alice.headers)).json()
    assert set(conversation["conversation"]["members"]) == {alice.id, bob.id}  # carol was never added
    assert conversation["conversation"]["unread_count"] == 0
    for path in (f"/conversations/0{group}", f"/users/0{bob.id}", f"/conversations/0{group}/messages"):
        assert_error(await client.http.get(path, headers=alice.headers), 404, "not_found")
    socket = await Socket.open(client.server, alice)
    await socket.send_json(
        {"type": "send", "conversation_id": int(group), "body": "as a number", "client_msg_id": "n1"}
    )
    error = await socket.until(lambda f: f["type"] == "error")
    assert (error["code"], error["client_msg_id"]) == ("invalid_request", "n1"), error
    await socket.close()
    assert [m["body"] for m in (await client.history(alice, group))["messages"]] == ["hello"]


async def test_a_query_parameter_given_twice_is_refused(client: Client) -> None:
    alice, bob = await client.users(2)
    cid = await client.direct(alice, bob)
    cursor = (await client.sync(alice))["cursor"]
    for path, query in [
        ("/sync", f"since={cursor}&timeout=0&timeout=61"),
        (f"/conversations/{cid}/messages", "limit=20&limit=abc"),
        (f"/conversations/{cid}/messages", "limit=20&limit=20"),
        ("/users", "query=a&query=b"),
    ]:
        error = assert_error(
            await client.http.get(f"{path}?{query}", headers=alice.headers), 400, "invalid_request"
        )
        assert "once" in error["message"], error


# -- logins ----------------------------------------------------------------------------------


async def test_a_login_flood_from_one_address_does_not_hold_up_another(client: Client) -> None:
    """One address floods logins with made-up usernames 64 at a time: most get 429 at once,
    its checks wait behind its own, and real logins, from another address or from the same
    one, are answered before the flood's last answer."""
    name, _ = await client.sign_up()
    answered: list[str] = []

    async def attempt(http: httpx.AsyncClient) -> int:
        body = {"username": "nobody" + uuid.uuid4().hex[:8], "password": "guessing-hard"}
        r = await http.post("/sessions", json=body)
        answered.append(f"flood {r.status_code}")
        return r.status_code

    async def real_login(http: httpx.AsyncClient, label: str) -> None:
        await asyncio.sleep(0)  # once the flood's requests are on their way
        r = await http.post("/sessions", json={"username": name, "password": PASSWORD})
        answered.append(f"{label} {r.status_code}")

    async with client_from(client.server, "127.0.0.2") as flood:
        statuses, *_ = await asyncio.gather(
            asyncio.gather(*[attempt(flood) for _ in range(64)]),
            real_login(client.http, "elsewhere"),
            real_login(flood, "same address"),  # the flooder's own address: a real account goes first
        )
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(429) >= 20, statuses  # refused before any hashing
        for real in ("elsewhere 201", "same address 201"):
            assert real in answered and answered.index(real) < len(answered) - 1, answered

        # Failures across usernames from one address: 100 per 15 minutes, then 429 at once.
        failures = statuses.count(401)
        while failures < 100:
            batch = await asyncio.gather(*[attempt(flood) for _ in range(min(10, 100 - failures))])
            failures += batch.count(401)
        r = await flood.post("/sessions", json={"username": name, "password": PASSWORD})
        error = assert_error(r, 429, "rate_limited")
        assert "failed logins from this address" in error["message"], error
        assert int(r.headers["retry-after"]) >= 1
    session = await client.log_in(name)  # the account itself is not locked for others
    assert session.token


# -- per-user and per-socket limits --------------------------------------------------------------


async def test_a_user_may_open_64_websockets_and_the_65th_is_closed_4429(client: Client) -> None:
    alice = await client.user()
    sockets = [await Socket.open(client.server, alice) for _ in range(MAX_SOCKETS_PER_USER)]
    try:
        code, frames = await close_code(await hello(client.server, alice.token))
        assert (code, frames) == (4429, [])
    finally:
        await asyncio.gather(*[s.close() for s in sockets])
    socket = await Socket.open(client.server, alice)  # room again once others closed
    await socket.close()


async def test_a_frame_flood_is_answered_rate_limited_then_closed_1008(client: Client) -> None:
    alice = await client.user()
    socket = await Socket.open(client.server, alice)
    sent = FRAME_BURST * 4
    with contextlib.suppress(ConnectionClosed):  # the server may close before the last is out
        for _ in range(sent):
            await socket.ws.send('{"type":"ping"}')
    code, frames = await close_code(socket.ws, 30)
    pongs = [f for f in frames if f["type"] == "pong"]
    limited = [f for f in frames if f["type"] == "error"]
    assert code == 1008, (code, frames[-3:])
    assert FRAME_BURST <= len(pongs) < sent, len(pongs)  # a burst is fine; then the limit holds
    assert limited and {f["code"] for f in limited} == {"rate_limited"}, limited[:3]
    assert all(f["retry_after"] >= 1 for f in limited)


# -- a 404 takes the same work whether the conversation exists or not -----------------------------


async def test_a_non_member_costs_the_same_queries_as_an_absent_conversation(engine: AsyncEngine) -> None:
    names = {role: f"{role}-{uuid.uuid4().hex[:8]}" for role in ("alice", "bob", "mallory")}
    async with engine.begin() as db:
        for name in names.values():
            await db.execute(
                users.insert().values(username=name, display_name=name, password_hash="x", created_ms=0)
            )
        rows = await db.execute(
            sa.select(users.c.username, users.c.id).where(users.c.username.in_(names.values()))
        )
        by_name = {name: user_id for name, user_id in rows}
    ids = {role: by_name[name] for role, name in names.items()}
    conversations = Conversations(engine, transport=None, storage=None)  # type: ignore[arg-type]
    key = f"{ids['alice']}:{ids['bob']}"
    cid = await conversations._insert("direct", None, ids["alice"], [ids["alice"], ids["bob"]], key)
    await conversations.of_member(cid, ids["alice"])  # a member's look-up caches the conversation

    statements: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    async def queries_of_a_404(conversation_id: int) -> list[str]:
        statements.clear()
        with pytest.raises(NotFound):
            await conversations.of_member(conversation_id, ids["mallory"])
        return list(statements)

    someone_elses = await queries_of_a_404(cid)
    absent = await queries_of_a_404(cid + 1000)
    assert someone_elses == absent and someone_elses, (someone_elses, absent)
