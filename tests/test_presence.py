"""Presence across instances, on a real NATS: two transports on one server are two instances."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kibitz import PluginSettings, Tasks
from kibitz.plugins.nats import NatsTransport
from kibitz.presence import Presence
from kibitz.testing import wait_until

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@dataclass
class App:
    data_dir: Path
    instance_id: str
    tasks: Tasks = field(default_factory=Tasks)


@pytest.fixture
async def instances(tmp_path: Path) -> AsyncIterator[tuple[Presence, Presence, NatsTransport]]:
    """Presence on two instances sharing one (embedded) NATS; the second's transport too."""
    first = NatsTransport(PluginSettings("nats", {}, {}))
    await first.start(App(tmp_path, "instance.one"))
    assert first.child is not None
    second = NatsTransport(PluginSettings("nats", {"url": f"nats://127.0.0.1:{first.child.port}"}, {}))
    await second.start(App(tmp_path, "instance-two"))
    yield Presence(first, Tasks()), Presence(second, Tasks()), second
    await second.close()
    await first.close()


async def test_a_user_live_on_one_instance_is_live_for_the_other(
    instances: tuple[Presence, Presence, NatsTransport],
) -> None:
    here, there, _ = instances
    alice, bob = random.sample(range(10**9, 10**10), 2)
    await here.arrived(alice)  # returns once every instance can see it
    assert await there.live([alice, bob]) == {alice}
    await here.arrived(alice)  # a second tab
    here.left(alice)
    await here.tasks.wait()
    assert await there.live([alice]) == {alice}  # one tab is still open
    here.left(alice)  # the last WebSocket closed: not live, at once
    await here.tasks.wait()
    assert await there.live([alice]) == set()


async def test_a_long_poll_stays_live_for_its_grace_and_across_a_renewal(
    instances: tuple[Presence, Presence, NatsTransport],
) -> None:
    here, there, _ = instances
    carol = random.randrange(10**9, 10**10)
    await here.arrived(carol)
    here.left(carol, grace=0.3)  # answered; the client asks again at once
    await here.arrived(carol)
    assert not here._leaving  # the renewal kept the mark: nothing was taken back
    assert await there.live([carol]) == {carol}
    here.left(carol, grace=0.3)  # and then it stops polling

    async def gone() -> bool:
        return await there.live([carol]) == set()

    await wait_until(gone, 10, "the mark to go after the grace")


async def test_an_instance_that_stops_takes_its_marks_with_it(
    instances: tuple[Presence, Presence, NatsTransport],
) -> None:
    here, there, second = instances
    dave = random.randrange(10**9, 10**10)
    await there.arrived(dave)
    assert await here.live([dave]) == {dave}
    await second.close()
    assert await here.live([dave]) == set()
