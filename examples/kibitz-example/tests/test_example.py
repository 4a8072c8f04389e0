"""The example plugin's own tests, as a third-party plugin writes them: ``kibitz.testing``'s
pytest fixtures start a real server in the test's process with the plugin enabled by
configuration, found through its entry point like any installed plugin."""

from __future__ import annotations

import uuid

import pytest

from kibitz.testing import Client, Socket
from kibitz.testing.client import assert_error


@pytest.fixture
def kibitz_environ() -> dict[str, str]:
    return {"KIBITZ_PLUGINS": "example"}


async def test_it_is_discovered_and_enabled(kibitz_client: Client) -> None:
    r = await kibitz_client.http.get("/-/example/counts")
    assert r.status_code == 200, r.text
    assert r.json()["started"] >= 1


async def test_it_shouts_and_refuses(kibitz_client: Client, kibitz_server: object) -> None:
    alice, bob = await kibitz_client.user(), await kibitz_client.user()
    cid = await kibitz_client.direct(alice, bob)
    socket = await Socket.open(kibitz_server, bob)  # type: ignore[arg-type]
    sent = await kibitz_client.send(alice, cid, "!shout hello there")
    assert sent["body"] == "HELLO THERE"
    assert [m["body"] for m in await socket.messages(1)] == ["HELLO THERE"]
    r = await kibitz_client.http.post(
        f"/conversations/{cid}/messages",
        json={"body": "!reject this", "client_msg_id": uuid.uuid4().hex},
        headers=alice.headers,
    )
    assert "!reject" in assert_error(r, 403, "forbidden")["message"]
    await socket.close()


async def test_it_counts_accepted_messages(kibitz_client: Client) -> None:
    before = (await kibitz_client.http.get("/-/example/accepted")).json()["accepted"]
    alice, bob = await kibitz_client.user(), await kibitz_client.user()
    cid = await kibitz_client.direct(alice, bob)
    await kibitz_client.send(alice, cid, "one")
    await kibitz_client.send(alice, cid, "two")

    async def counted() -> bool:
        r = await kibitz_client.http.get("/-/example/accepted")
        return bool(r.json()["accepted"] >= before + 2)

    from kibitz.testing import wait_until

    await wait_until(counted, what="both messages counted")
