"""Two instances on a NATS cluster of three (JetStream, the stream on all three) while the
node leading the stream is killed under load: the service goes on, and no message an
instance acknowledged is lost or stored twice."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from kibitz.plugins.nats import STREAM
from kibitz.supervisor import ChildProcess, find_binary, free_port
from kibitz.testing import wait_until

from .conftest import fresh_postgres_database
from .kibitz_client import Client, Server, Session, Socket, make_server, redis_child

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services

SENDERS = 4
PER_SENDER = 40


def cluster(folder: Path) -> list[ChildProcess]:
    """Three nats-servers routed to each other, JetStream fsyncing every write."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    routes = ", ".join(f"nats-route://127.0.0.1:{route}" for _, route in ports)
    nodes = []
    for number, (port, route) in enumerate(ports, 1):
        home = folder / f"n{number}"
        home.mkdir()
        conf = home / "nats.conf"
        conf.write_text(
            f'server_name: "n{number}"\nlisten: "127.0.0.1:{port}"\n'
            f'jetstream {{ store_dir: "{home / "js"}", sync_interval: always }}\n'
            f'cluster {{ name: "kibitz-test", listen: "127.0.0.1:{route}", routes: [{routes}] }}\n'
        )
        argv = [find_binary("nats-server"), "-c", str(conf)]
        nodes.append(ChildProcess(f"nats-n{number}", argv, port, home / "nats.log"))
    return nodes


async def jetstream_ready(urls: list[str]) -> bool:
    """Whether the cluster has elected its JetStream meta leader."""
    try:
        nc = await nats.connect(servers=urls, connect_timeout=2, allow_reconnect=False)
    except Exception:
        return False
    try:
        await nc.jetstream(timeout=2).account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


@pytest.fixture
async def clustered(tmp_path: Path) -> AsyncIterator[tuple[list[ChildProcess], list[str], Server, Server]]:
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    nodes = cluster(tmp_path)
    await asyncio.gather(*(node.start() for node in nodes))
    urls = [f"nats://127.0.0.1:{node.port}" for node in nodes]
    redis = redis_child(tmp_path)
    await redis.start()
    try:
        await wait_until(lambda: jetstream_ready(urls), 60, "the cluster's JetStream")
        async with fresh_postgres_database(base) as database:
            env = {
                "KIBITZ_NATS_URL": ",".join(urls),
                "KIBITZ_NATS_REPLICAS": "3",
                "KIBITZ_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                "KIBITZ_DATABASE_URL": database,
                "KIBITZ_RATE_LIMITS": "off",  # the burst is the point
            }
            one, two = make_server(tmp_path / "one", **env), make_server(tmp_path / "two", **env)
            await asyncio.to_thread(one.start)
            await asyncio.to_thread(two.start)
            try:
                yield nodes, urls, one, two
            finally:
                await asyncio.gather(asyncio.to_thread(one.stop), asyncio.to_thread(two.stop))
    finally:
        await redis.stop()
        await asyncio.gather(*(node.stop() for node in nodes))


async def stream_leader(urls: list[str]) -> str:
    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=5).stream_info(STREAM)
        assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def send_until_acknowledged(client: Client, who: Session, cid: str, key: str) -> str:
    """Send ``key`` as a client does: the same client_msg_id again after each 503, until an
    answer acknowledges it; the message's id."""
    answers = []

    async def acknowledged() -> bool:
        body = {"body": key, "client_msg_id": key}
        answer = await client.http.post(f"/conversations/{cid}/messages", json=body, headers=who.headers)
        assert answer.status_code in (200, 201, 503), answer.text  # a clear "retry", nothing else
        answers.append(answer)
        return answer.status_code != 503

    await wait_until(acknowledged, 60, f"send {key} to be acknowledged")
    message_id: str = answers[-1].json()["message"]["id"]
    return message_id


async def test_killing_the_stream_leader_under_load_loses_nothing_acknowledged(
    clustered: tuple[list[ChildProcess], list[str], Server, Server],
) -> None:
    nodes, urls, one, two = clustered
    at_one, at_two = Client(one), Client(two)
    try:
        alice, bob = await at_one.users(2)
        cid = await at_one.direct(alice, bob)
        start = (await at_two.sync(bob))["cursor"]
        leader = await stream_leader(urls)
        acknowledged: list[str] = []
        killed = asyncio.Event()

        async def sender(number: int) -> None:
            for sequence in range(PER_SENDER):
                acknowledged.append(
                    await send_until_acknowledged(at_one, alice, cid, f"s{number}-{sequence}")
                )
                if len(acknowledged) == SENDERS * PER_SENDER // 4 and not killed.is_set():
                    killed.set()
                    node = next(n for n in nodes if n.name == f"nats-{leader}")
                    assert node.pid is not None
                    os.kill(node.pid, signal.SIGKILL)
                    await node.stop()  # and no restart: the node is lost

        await asyncio.gather(*(sender(n) for n in range(SENDERS)))
        assert killed.is_set() and len(acknowledged) == SENDERS * PER_SENDER
        assert (
            await stream_leader([u for u, n in zip(urls, nodes, strict=True) if n.name != f"nats-{leader}"])
            != leader
        )

        async def all_in_history() -> bool:
            return len(await at_two.whole_history(bob, cid)) >= len(acknowledged)

        await wait_until(all_in_history, 30, "every acknowledged message in history")
        history = [m["id"] for m in await at_two.whole_history(bob, cid)]
        assert sorted(history) == sorted(set(history)) and set(acknowledged) == set(history)
        logged, _ = await at_two.drain_sync(bob, start)
        in_log = [e["message"]["id"] for e in logged if e["type"] == "message"]
        assert sorted(in_log) == sorted(set(acknowledged)), "bob's log lacks or repeats a message"
        socket = await Socket.open(two, bob, since=start)  # and live delivery goes on
        late = await at_one.send(alice, cid, "after the node was lost")
        frame = await socket.until(
            lambda f: f.get("event", {}).get("message", {}).get("id") == late["id"], 30
        )
        assert frame["event"]["message"]["body"] == "after the node was lost"
        await socket.close()
    finally:
        await at_one.close()
        await at_two.close()
