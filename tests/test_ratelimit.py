"""Rate-limit windows: in memory, and shared in a real Redis (or Redis Cluster) by two instances' limits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from kibitz.errors import RateLimited
from kibitz.ratelimit import RateLimits
from kibitz.supervisor import free_port

from .conftest import SessionServices


@pytest.fixture(
    params=[
        "local",
        pytest.param("shared", marks=pytest.mark.services),
        pytest.param("cluster", marks=pytest.mark.services),
    ]
)
async def two(
    request: pytest.FixtureRequest, session_services: SessionServices
) -> AsyncIterator[tuple[RateLimits, RateLimits]]:
    """The limits of two instances: each its own in memory, or one Redis (or Redis Cluster) for both."""
    url = ""
    if request.param == "shared":  # a database of its own on the session's Redis
        url = (await session_services.url("redis")).rsplit("/", 1)[0] + "/3"
    elif request.param == "cluster":
        url = await session_services.url("redis-cluster")
    first, second = RateLimits(True, url), RateLimits(True, url)
    yield first, second
    await first.close()
    await second.close()


def shared(limits: tuple[RateLimits, RateLimits]) -> bool:
    return limits[0]._pool is not None or limits[0]._cluster is not None


async def test_sends_beyond_the_window_are_refused_with_when_to_retry(
    two: tuple[RateLimits, RateLimits],
) -> None:
    here, there = two
    user = int(uuid.uuid4().int % 2**52)
    for _ in range(150):
        await here.send(user)
        await there.send(user)
    if not shared(two):  # each counted only its own 150: here has 150 more
        for _ in range(150):
            await here.send(user)
    with pytest.raises(RateLimited, match="messages sent") as refused:
        await here.send(user)
    assert 1 <= refused.value.retry_after <= 10
    await here.send(user + 1)  # another user is not held up


async def test_failed_logins_count_wherever_they_were_tried_and_a_success_clears_them(
    two: tuple[RateLimits, RateLimits],
) -> None:
    here, there = two
    name, address = uuid.uuid4().hex, "198.51.100.7"
    for number in range(10):
        await (here if number % 2 else there).login_attempt(name, address)
    instance = here if shared(two) else there  # there took five when each counts alone
    if shared(two):
        with pytest.raises(RateLimited, match="failed logins for this account"):
            await instance.login_attempt(name, address)
    else:
        for _ in range(5):
            await instance.login_attempt(name, address)
        with pytest.raises(RateLimited):
            await instance.login_attempt(name, address)
    await here.login_succeeded(name, address)
    await there.login_succeeded(name, address)
    await here.login_attempt(name, address)  # the account's failures from there are forgotten


async def test_failures_from_one_address_add_up_over_accounts(two: tuple[RateLimits, RateLimits]) -> None:
    here, there = two
    address = f"203.0.113.{uuid.uuid4().int % 250}"
    for number in range(100):
        limits = here if number % 2 or not shared(two) else there
        await limits.login_attempt(f"user{number}-{uuid.uuid4().hex[:6]}", address)
        await limits.login_failed(address)
    with pytest.raises(RateLimited, match="failed logins from this address"):
        await here.login_attempt("someone-else", address)


async def test_a_shared_window_whose_redis_is_away_lets_hits_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = RateLimits(True, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, "kibitz.ratelimit"):
            await limits.send(1)
            await limits.login_attempt("alice", "192.0.2.1")
        assert [r.getMessage() for r in caplog.records].count("rate_limit_storage_failed") == 3
    finally:
        await limits.close()


async def test_a_cluster_url_gives_limits_its_seed_nodes_and_credentials_decoded() -> None:
    limits = RateLimits(True, "redis+cluster://us%3Aer:p%40ss@127.0.0.1:1,127.0.0.1:2")
    try:
        cluster = limits._cluster
        assert [n.name for n in cluster.startup_nodes] == ["127.0.0.1:1", "127.0.0.1:2"]
        assert (cluster.connection_kwargs["username"], cluster.connection_kwargs["password"]) == (
            "us:er",
            "p@ss",
        )
    finally:
        await limits.close()
