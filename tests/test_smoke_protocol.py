"""A first end-to-end pass over a real server: sign up, chat over WebSocket, history, sync."""

from __future__ import annotations

import pytest

from .kibitz_client import Client, Socket

# The client contract: these tests run on every supported stack (default, sql, memory).
pytestmark = pytest.mark.protocol


async def test_two_users_chat_live_and_in_history(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    start = (await client.sync(bob))["cursor"]
    a, b = await Socket.open(client.server, alice), await Socket.open(client.server, bob)
    await a.send_json({"type": "send", "conversation_id": cid, "body": "hi", "client_msg_id": "m1"})
    sent = await a.until(lambda f: f["type"] == "sent")
    (got,) = await b.messages(1)
    assert got == sent["message"]
    assert [m["body"] for m in (await client.history(bob, cid))["messages"]] == ["hi"]
    events, _ = await client.drain_sync(bob, start)
    assert [e["message"]["body"] for e in events if e["type"] == "message"] == ["hi"]
    await a.close()
    await b.close()
