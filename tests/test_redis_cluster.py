"""Two ``kibitz serve`` instances whose history and rate limits are in a Redis Cluster of
three primaries: the scale-out checks of test_scale_out.py that touch Redis, run again on
the cluster (each imported test runs here with this module's deployment, under the pair
of instances conftest makes of it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kibitz.plugins.redis.server import connect

from . import test_scale_out as on_one_redis
from .conftest import Deployment, running_deployment
from .kibitz_client import Client

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
async def deployment(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster_url: str
) -> AsyncIterator[Deployment]:
    """NATS and PostgreSQL of its own; storage and rate limits in the session's Redis Cluster."""
    async with running_deployment(tmp_path_factory.mktemp("redis-cluster"), redis_cluster_url) as deployment:
        yield deployment


clients = on_one_redis.clients
test_a_message_sent_through_one_reaches_the_other_live_and_cursors_move = (
    on_one_redis.test_a_message_sent_through_one_reaches_the_other_live_and_cursors_move
)
test_failed_logins_are_counted_across_instances = on_one_redis.test_failed_logins_are_counted_across_instances
test_one_send_reaching_both_instances_at_once_is_one_message = (
    on_one_redis.test_one_send_reaching_both_instances_at_once_is_one_message
)
test_an_instance_killed_during_a_burst_loses_nothing_it_acknowledged = (
    on_one_redis.test_an_instance_killed_during_a_burst_loses_nothing_it_acknowledged
)


async def test_the_history_is_in_the_cluster(redis_cluster_url: str, clients: tuple[Client, Client]) -> None:
    at_one, at_two = clients
    alice, bob = await at_one.users(2)
    cid = await at_one.direct(alice, bob)
    sent = await at_one.send(alice, cid, "kept in a slot of the cluster")
    assert [m["id"] for m in await at_two.whole_history(bob, cid)] == [sent["id"]]
    cluster = connect(redis_cluster_url)
    try:
        assert await cluster.zcard(f"kibitz:history:{{{cid}}}") == 1
    finally:
        await cluster.aclose()
