"""Several ``kibitz serve`` instances on one NATS, one Redis and one PostgreSQL, black-box:
discovery, chat and cursors across instances, and instances that stop or die."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kibitz.registry import EXPIRY
from kibitz.testing import wait_until

from .conftest import Deployment
from .kibitz_client import KIBITZ, PASSWORD, Client, Server, Socket, assert_error

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture
async def clients(pair: tuple[Server, Server]) -> AsyncIterator[tuple[Client, Client]]:
    """A client of each instance of the pair."""
    at_one, at_two = Client(pair[0]), Client(pair[1])
    yield at_one, at_two
    await at_one.close()
    await at_two.close()


async def discovery(server: Server) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(server.api + "/discovery")
    assert answer.status_code == 200
    found: dict[str, Any] = answer.json()
    return found


async def listed_urls(server: Server) -> set[str]:
    return {s["url"] for s in (await discovery(server))["servers"]}


async def test_every_instance_lists_both_and_recommends_the_least_loaded(pair: tuple[Server, Server]) -> None:
    one, two = pair
    for server in pair:
        found = await discovery(server)
        assert {s["url"] for s in found["servers"]} == {one.url, two.url}
        assert all(s["started_at"].endswith("Z") for s in found["servers"])
        assert found["recommended"] == server.url  # a tie keeps the client where it is
    client = Client(one)
    try:
        alice = await client.user()
        sockets = [await Socket.open(one, alice) for _ in range(2)]

        async def two_recommended() -> bool:  # one counts its own sockets at once
            return (await discovery(one))["recommended"] == two.url

        await wait_until(two_recommended, 10, "one to recommend two")
        for socket in sockets:
            await socket.close()
    finally:
        await client.close()


async def test_a_message_sent_through_one_reaches_the_other_live_and_cursors_move(
    pair: tuple[Server, Server],
    clients: tuple[Client, Client],
) -> None:
    one, two = pair
    at_one, at_two = clients
    alice, bob = await at_one.users(2)
    cid = await at_one.direct(alice, bob)
    there = await Socket.open(two, bob)
    sent = await at_one.send(alice, cid, "across instances")
    (live,) = await there.messages(1)
    assert live["id"] == sent["id"]
    cursor = there.ready["cursor"]
    await there.close()
    await at_one.send(alice, cid, "while bob was away")
    back = await Socket.open(one, bob, since=cursor)  # the cursor of two, resumed on one
    bodies = [m["body"] for m in await back.messages(2)]
    assert bodies == ["across instances", "while bob was away"]
    await back.close()
    assert [m["body"] for m in await at_two.whole_history(bob, cid)] == bodies


async def test_the_page_lets_the_client_open_its_socket_on_another_instance(
    pair: tuple[Server, Server],
) -> None:
    one, two = pair
    async with httpx.AsyncClient() as http:
        policy = (await http.get(one.url + "/")).headers["content-security-policy"]
    connect = next(part for part in policy.split("; ") if part.startswith("connect-src"))
    assert connect == f"connect-src 'self' {two.url.replace('http://', 'ws://')}"


async def test_an_instance_that_stops_leaves_at_once_and_one_that_dies_within_expiry(
    deployment: Deployment, pair: tuple[Server, Server]
) -> None:
    one, _ = pair
    stopping, dying = await asyncio.gather(deployment.instance("stopping"), deployment.instance("dying"))
    assert {stopping.url, dying.url} <= await listed_urls(one)
    await asyncio.to_thread(stopping.stop)

    async def stopped_gone() -> bool:  # at once, but for the second one caches a listing
        return stopping.url not in await listed_urls(one)

    await wait_until(stopped_gone, 5, "the stopped instance to leave the list")
    assert dying.url in await listed_urls(one)
    await asyncio.to_thread(dying.stop, signal.SIGKILL)

    async def dead_gone() -> bool:
        return dying.url not in await listed_urls(one)

    await wait_until(dead_gone, EXPIRY + 10, "the killed instance to leave the list")


async def test_failed_logins_are_counted_across_instances(
    clients: tuple[Client, Client],
) -> None:
    at_one, at_two = clients
    name, _ = await at_one.sign_up()
    for attempt in range(10):
        client = at_one if attempt % 2 else at_two
        wrong = await client.http.post("/sessions", json={"username": name, "password": f"no {attempt}"})
        assert_error(wrong, 401, "unauthorized")
    for client in (at_one, at_two):
        refused = await client.http.post("/sessions", json={"username": name, "password": PASSWORD})
        assert_error(refused, 429, "rate_limited")


async def test_a_change_of_members_holds_on_the_other_instance_once_it_has_answered(
    pair: tuple[Server, Server],
    clients: tuple[Client, Client],
) -> None:
    one = pair[0]
    at_one, at_two = clients
    alice, bob, carol = await at_one.users(3)
    cid = await at_one.group(alice, [bob], "moving")
    await at_two.send(bob, cid, "two has the group cached now")
    await at_two.send(alice, cid, "and with alice in it")
    removed = await at_one.http.delete(f"/conversations/{cid}/members/{bob.id}", headers=alice.headers)
    assert removed.status_code == 204, removed.text
    late = {"body": "am I still in?", "client_msg_id": "late"}
    refused = await at_two.http.post(f"/conversations/{cid}/messages", json=late, headers=bob.headers)
    assert_error(refused, 404, "not_found")
    added = await at_one.http.post(
        f"/conversations/{cid}/members", json={"user_id": carol.id}, headers=alice.headers
    )
    assert added.status_code == 200, added.text
    carols = await Socket.open(one, carol)
    sent = await at_two.send(alice, cid, "welcome, carol")  # two's copy of the group lacked carol
    message = await carols.until(lambda f: f["type"] == "event" and f["event"]["type"] == "message")
    assert message["event"]["message"]["id"] == sent["id"]
    await carols.close()


async def test_an_instance_killed_during_a_burst_loses_nothing_it_acknowledged(
    deployment: Deployment, pair: tuple[Server, Server]
) -> None:
    """Senders and a recipient on one instance; SIGKILL it mid-burst. Every message it
    acknowledged is in history once and in the recipient's log once, and the recipient
    resumes on another instance from its last cursor with no gap."""
    survivor, _ = pair
    victim = await deployment.instance("victim")
    at_victim, at_survivor = Client(victim), Client(survivor)
    try:
        alice, bob = await at_victim.users(2)
        cid = await at_victim.direct(alice, bob)
        start = (await at_victim.sync(bob))["cursor"]
        socket = await Socket.open(victim, bob, since=start)
        acknowledged: list[str] = []
        killed = asyncio.Event()

        async def sender(number: int) -> None:
            for sequence in itertools.count():
                key = f"burst-{number}-{sequence}"
                body = {"body": key, "client_msg_id": key}
                try:
                    answer = await at_victim.http.post(
                        f"/conversations/{cid}/messages", json=body, headers=alice.headers
                    )
                except httpx.HTTPError:
                    return  # in flight when the instance died: never acknowledged
                if answer.status_code != 201:
                    return
                acknowledged.append(answer.json()["message"]["id"])
                if len(acknowledged) >= 60 and not killed.is_set():
                    killed.set()
                    await asyncio.to_thread(victim.stop, signal.SIGKILL)

        seen_live: list[str] = []

        async def recipient() -> None:
            with contextlib.suppress(Exception):  # until the socket dies with the instance
                while True:
                    frame = await socket.recv(30)
                    if frame["type"] == "event" and frame["event"]["type"] == "message":
                        seen_live.append(frame["event"]["message"]["id"])

        await asyncio.gather(recipient(), *(sender(n) for n in range(6)))
        resumed = await Socket.open(survivor, bob, since=socket.cursor or start)
        last = await at_survivor.send(alice, cid, "after the kill")  # the end of what bob is owed
        seen_after: list[str] = []
        while not seen_after or seen_after[-1] != last["id"]:
            frame = await resumed.recv(30)
            if frame["type"] == "event" and frame["event"]["type"] == "message":
                seen_after.append(frame["event"]["message"]["id"])
        await resumed.close()
        history = [m["id"] for m in await at_survivor.whole_history(bob, cid)]
        assert len(history) == len(set(history)), "a message twice in history"
        assert set(acknowledged) <= set(history), "an acknowledged message is missing from history"
        logged, _ = await at_survivor.drain_sync(bob, start)
        in_log = [e["message"]["id"] for e in logged if e["type"] == "message"]
        assert len(in_log) == len(set(in_log)), "a message twice in bob's log"
        assert set(acknowledged) <= set(in_log), "an acknowledged message is missing from bob's log"
        assert seen_live + seen_after == in_log, "the resumed socket skipped or repeated events"
    finally:
        await at_victim.close()
        await at_survivor.close()


async def test_doctor_lists_the_instances_and_asks_for_shared_rate_limits(
    deployment: Deployment, pair: tuple[Server, Server]
) -> None:
    env = {k: v for k, v in pair[0].env.items() if k != "KIBITZ_RATE_LIMIT_URL"}
    env["KIBITZ_DATA_DIR"] = str(deployment.folder / "doctor")
    alone = await asyncio.to_thread(
        subprocess.run, [KIBITZ, "doctor"], env=env, capture_output=True, text=True
    )
    (listed,) = [line for line in alone.stdout.splitlines() if "instances:" in line]
    assert pair[0].url in listed and pair[1].url in listed, listed  # (and any killed < 30 s ago)
    count = listed.split("instances: ")[1].split(" serving")[0]
    warning = f"WARN  rate limits: {count} instances share this database but each counts rate limits alone"
    assert warning in alone.stdout, alone.stdout
    env["KIBITZ_RATE_LIMIT_URL"] = pair[0].env["KIBITZ_RATE_LIMIT_URL"]
    shared = await asyncio.to_thread(
        subprocess.run, [KIBITZ, "doctor"], env=env, capture_output=True, text=True
    )
    assert "rate limits" not in shared.stdout, shared.stdout


async def test_one_send_reaching_both_instances_at_once_is_one_message(
    clients: tuple[Client, Client],
) -> None:
    at_one, at_two = clients
    alice, bob = await at_one.users(2)
    cid = await at_one.direct(alice, bob)
    for number in range(30):
        key = f"both-{number}"
        body = {"body": key, "client_msg_id": key}
        answers = await asyncio.gather(
            *(
                c.http.post(f"/conversations/{cid}/messages", json=body, headers=alice.headers)
                for c in clients
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
        assert len({a.json()["message"]["id"] for a in answers}) == 1
    history = await at_two.whole_history(bob, cid)
    assert [m["body"] for m in history] == [f"both-{n}" for n in range(30)]
