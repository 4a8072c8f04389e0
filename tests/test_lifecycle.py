"""The appliance's life: embedded children supervised and stopped, SIGTERM drains, URLs start nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from kibitz.testing import wait_until

from .kibitz_client import Client, Server, Socket, make_server

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def children(server: Server) -> dict[str, int]:
    """The server's child processes, by program name."""
    assert server.process is not None
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == server.process.pid:
            found[name] = int(entry.name)
    return found


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie not yet reaped counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ", 1)[1].startswith("Z")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Server]:
    server = make_server(tmp_path / "data")
    server.start()
    yield server
    server.stop()


def test_embedded_children_run_in_the_data_folder_and_stop_with_kibitz(embedded: Server) -> None:
    running = children(embedded)
    assert {"nats-server", "redis-server"} <= set(running)
    assert (embedded.data_dir / "nats" / "jetstream").is_dir()
    assert (embedded.data_dir / "redis").is_dir()
    assert embedded.stop(signal.SIGTERM) == 0
    assert all(gone(pid) for pid in running.values()), running


async def test_a_dead_embedded_child_is_restarted(embedded: Server) -> None:
    client = Client(embedded)
    try:
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        await client.send(alice, cid, "before")
        old = children(embedded)["nats-server"]
        os.kill(old, signal.SIGKILL)
        await wait_until(lambda: children(embedded).get("nats-server") not in (None, old))

        async def sent() -> bool:
            try:
                r = await client.http.post(
                    f"/conversations/{cid}/messages",
                    json={"body": "after", "client_msg_id": "after"},
                    headers=alice.headers,
                )
            except httpx.HTTPError:
                return False
            return r.status_code in (200, 201)

        await wait_until(sent, 60, "a send after the restart")
        bodies = [m["body"] for m in (await client.history(bob, cid))["messages"]]
        assert bodies == ["before", "after"]
    finally:
        await client.close()


async def test_sigterm_closes_websockets_with_1001_and_exits_cleanly(embedded: Server) -> None:
    client = Client(embedded)
    try:
        alice = await client.user()
        socket = await Socket.open(embedded, alice)
        assert embedded.process is not None
        embedded.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await socket.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert embedded.process.wait(30) == 0
    finally:
        await client.close()


async def test_with_urls_it_starts_no_children(tmp_path: Path, nats_url: str, redis_url: str) -> None:
    server = make_server(
        tmp_path / "data", KIBITZ_NATS_URL=nats_url, KIBITZ_REDIS_URL=redis_url.replace("/0", "/1")
    )
    server.start()
    try:
        assert children(server) == {}
    finally:
        server.stop()
