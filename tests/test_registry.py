"""Service discovery's registry over the ``instances`` table, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.registry import EXPIRY, Instance, Registry
from kibitz.testing import wait_until
from kibitz.web_client import socket_sources

from .clock import Clock

Make = Callable[..., Registry]


@pytest.fixture
async def make(engine: AsyncEngine) -> AsyncIterator[Make]:
    """Registries of this test's own instances (ids with a prefix of their own), closed afterwards."""
    prefix = uuid.uuid4().hex[:8]
    made: list[Registry] = []

    def make(name: str, connections: int = 0, **options: object) -> Registry:
        registry = Registry(engine, f"{prefix}-{name}", f"http://{name}.test", lambda: connections, **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


async def started(registry: Registry, make: Make) -> None:
    """Started, once its first heartbeat (written in the background) is in the table."""
    registry.start()

    async def listed() -> bool:  # a new reader each look: none reuses a listing
        return any(i.id == registry.me for i in await make("reader").live())

    await wait_until(listed, 10, f"{registry.me} in the registry")


def mine(instances: list[Instance], registry: Registry) -> list[str]:
    """The ids of this test's instances among ``instances``, without the prefix."""
    prefix = registry.me.split("-")[0] + "-"
    return [i.id.removeprefix(prefix) for i in instances if i.id.startswith(prefix)]


async def test_every_started_instance_is_listed_with_its_url(make: Make) -> None:
    one, two = make("one", 3), make("two", 5)
    await started(one, make)
    await started(two, make)
    listed = await one.live()
    assert mine(listed, one) == ["one", "two"]
    by_id = {i.id: i for i in listed}
    assert (by_id[two.me].url, by_id[two.me].connections) == ("http://two.test", 5)
    assert by_id[one.me].started_ms == one.started_ms


async def test_a_clean_stop_leaves_the_list_at_once(make: Make) -> None:
    one, two = make("one"), make("two")
    await started(one, make)
    await started(two, make)
    await two.close()
    assert mine(await make("three").live(), one) == ["one", "three"]  # not cached: a new reader


async def test_an_instance_that_stops_beating_leaves_the_list_after_expiry(make: Make) -> None:
    clock = Clock()
    dead, alive = make("dead", clock=clock), make("alive", clock=clock)
    await started(dead, make)
    await started(alive, make)
    clock.t += EXPIRY - 1
    reader = make("reader", clock=clock)
    assert mine(await reader.live(), dead) == ["alive", "dead", "reader"]
    await alive.beat()
    clock.t += 2
    assert mine(await make("later", clock=clock).live(), dead) == ["alive", "later"]


async def test_the_heartbeat_keeps_the_count_of_connections_fresh(make: Make) -> None:
    counts = {"busy": 0}
    busy = make("busy", heartbeat=0.05)
    busy.connections = lambda: counts["busy"]
    await started(busy, make)
    counts["busy"] = 7

    async def seen() -> bool:  # a new reader each look: none reuses a listing
        return any(i.id == busy.me and i.connections == 7 for i in await make("reader").live())

    await wait_until(seen, 10, "the new count in the registry")


def test_the_least_loaded_is_recommended_and_a_tie_keeps_the_client_here() -> None:
    a, b, c = (Instance(name, f"http://{name}", n, 0) for name, n in (("a", 4), ("b", 2), ("c", 2)))
    assert Registry.recommend([a, b, c], "a").id == "b"
    assert Registry.recommend([a, b, c], "c").id == "c"
    assert Registry.recommend([a], "a").id == "a"


def test_the_page_allows_sockets_to_the_instances_plain_urls_only() -> None:
    urls = ["https://b.example:8443", "http://10.0.0.5:8000", "http://[fd00::1]:80"]
    urls.append("http://a b;script-src *")  # never quoted into the policy
    assert socket_sources(urls) == " ws://10.0.0.5:8000 ws://[fd00::1]:80 wss://b.example:8443"
    assert socket_sources([]) == ""
