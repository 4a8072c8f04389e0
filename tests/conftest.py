"""Shared fixtures: one real NATS JetStream and one real Redis per test session, on free
ports, a session server per stack, and the markers of the fast tier."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.database import create_engine, leases, migrate
from kibitz.supervisor import ChildProcess
from kibitz.testing import InProcessServer, running_server

from .kibitz_client import Client, Server, make_server, nats_child, redis_child, redis_cluster


class SessionServices:
    """The session's NATS JetStream, Redis and Redis Cluster, each started the first time a
    test needs it (the fast tier needs none), stopped at the end of the session."""

    def __init__(self, folders: pytest.TempPathFactory) -> None:
        self.folders = folders
        self.children: dict[str, list[ChildProcess]] = {}
        self.urls: dict[str, str] = {}

    async def url(self, kind: str) -> str:
        if kind not in self.urls:
            folder = self.folders.mktemp(kind)
            if kind == "redis-cluster":
                self.urls[kind], self.children[kind] = await redis_cluster(folder)
            else:
                child = nats_child(folder) if kind == "nats" else redis_child(folder)
                await child.start()
                self.children[kind] = [child]
                port = child.port
                self.urls[kind] = (
                    f"nats://127.0.0.1:{port}" if kind == "nats" else f"redis://127.0.0.1:{port}/0"
                )
        return self.urls[kind]

    async def stop(self) -> None:
        for children in self.children.values():
            for child in children:
                await child.stop()


@pytest.fixture(scope="session")
async def session_services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SessionServices]:
    services = SessionServices(tmp_path_factory)
    yield services
    await services.stop()


@pytest.fixture(scope="session")
async def nats_url(session_services: SessionServices) -> str:
    """The session's nats-server."""
    return await session_services.url("nats")


@pytest.fixture(scope="session")
async def redis_url(session_services: SessionServices) -> str:
    """The session's redis-server."""
    return await session_services.url("redis")


@pytest.fixture(scope="session")
async def redis_cluster_url(session_services: SessionServices) -> str:
    """The session's Redis Cluster of three primaries (a ``redis+cluster://`` URL)."""
    return await session_services.url("redis-cluster")


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL database of the session's own, made on the server that
    KIBITZ_TEST_DATABASE_URL names: never the named database itself, which other checkouts
    (of other schema versions) share."""
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    async with fresh_postgres_database(base) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in a temp folder, and the session's PostgreSQL database when there is a server."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kibitz.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


# What the fast tier (``pytest -m "not services"``) leaves out: tests that need NATS, Redis,
# PostgreSQL or a process of their own. Those using the session's services are found here
# by their fixtures and parameters; modules that start processes themselves say so.
SERVICE_FIXTURES = {"nats_url", "redis_url", "redis_cluster_url", "short_retention", "deployment"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        values = params.params if params is not None else {}
        if (
            SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            or values.get("stack", "memory") != "memory"
            or "postgresql" in values.values()
        ):
            item.add_marker(pytest.mark.services)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "services: needs NATS, Redis, PostgreSQL or a process of its own (not the fast tier)"
    )
    config.addinivalue_line(
        "markers", "protocol: run the module's tests on every supported stack (default, sql, memory)"
    )
    config.addinivalue_line("markers", "container: the slow test that builds and runs the container image")


# The stacks the session server runs on: (transport, storage, database).
STACKS = {
    "default": ("nats", "redis", "sqlite"),  # the appliance: the session's NATS and Redis
    "sql": ("sql", "sql", "postgresql"),  # PostgreSQL alone: no NATS, no Redis
    "memory": ("memory", "memory", "sqlite"),  # one process, nothing else
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use the session server run on the default stack, and those marked
    ``protocol`` on every stack (the sql one keeps the relational state on PostgreSQL).

    Every such test is parametrized the same way, so all of them share one server per stack.
    """
    if "stack" in metafunc.fixturenames:
        protocol = metafunc.definition.get_closest_marker("protocol")
        stacks = ["default", "sql", "memory"] if protocol else ["default"]
        metafunc.parametrize("stack", stacks, indirect=True, scope="session")


@pytest.fixture(scope="session")
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The environment of the session server on one stack; a fresh PostgreSQL database
    made from KIBITZ_TEST_DATABASE_URL where the stack needs one."""
    transport, storage, database = STACKS[request.param]
    env = {"KIBITZ_TRANSPORT": transport, "KIBITZ_STORAGE": storage}
    if database == "sqlite":
        yield env
        return
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    async with fresh_postgres_database(base) as url:
        yield env | {"KIBITZ_DATABASE_URL": url}


@asynccontextmanager
async def fresh_postgres_database(base_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``base_url``, dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"kibitz_test_{uuid.uuid4().hex[:12]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database of the test's own (SQLite, and PostgreSQL when configured)."""
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def kind(engine: AsyncEngine) -> AsyncIterator[str]:
    """A lease kind of this test alone (tests never share lease numbers); deleted afterwards."""
    kind = f"test-{uuid.uuid4().hex[:16]}"
    yield kind
    async with engine.begin() as connection:
        await connection.execute(leases.delete().where(leases.c.kind == kind))


@pytest.fixture(scope="session")
async def server(
    stack: dict[str, str], session_services: SessionServices, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server | InProcessServer]:
    """A real server for the session on one stack, with the example plugin enabled.

    On the memory stack it runs in this process (the fast tier); on the others it is a
    ``kibitz serve`` child process. The default stack uses the session's NATS and Redis.
    """
    folder = tmp_path_factory.mktemp("kibitz")
    env = stack | {"KIBITZ_PLUGINS": "example"}
    if stack["KIBITZ_TRANSPORT"] == "memory":
        async with running_server(folder, env | {"KIBITZ_RATE_LIMITS": "on"}) as in_process:
            yield in_process
        return
    if stack == {"KIBITZ_TRANSPORT": "nats", "KIBITZ_STORAGE": "redis"}:
        env |= {
            "KIBITZ_NATS_URL": await session_services.url("nats"),
            "KIBITZ_REDIS_URL": await session_services.url("redis"),
        }
    server = make_server(folder / "data", **env)
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
async def short_retention(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """A server of its own (embedded NATS and Redis) that keeps events for 2 seconds only."""
    server = make_server(tmp_path_factory.mktemp("retention") / "data", KIBITZ_NATS_RETENTION_AGE="2s")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture
async def client(server: Server | InProcessServer) -> AsyncIterator[Client]:
    client = Client(server)
    yield client
    await client.close()


# -- several instances ------------------------------------------------------------------


@dataclass
class Deployment:
    """A NATS, a Redis and a PostgreSQL database of its own, and the environment that
    makes instances share them (``instance`` starts one, with its own public URL)."""

    folder: Path
    env: dict[str, str]

    async def instance(self, name: str) -> Server:
        server = make_server(self.folder / name, **self.env)
        await asyncio.to_thread(server.start)
        return server


@asynccontextmanager
async def running_deployment(folder: Path, redis_url: str = "") -> AsyncIterator[Deployment]:
    """A Deployment with a NATS and a PostgreSQL database of its own, and a Redis of its own
    unless ``redis_url`` names one (for both storage and rate limits)."""
    postgres = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not postgres:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    nats, redis = nats_child(folder), redis_child(folder)
    await nats.start()
    if not redis_url:
        await redis.start()
    try:
        async with fresh_postgres_database(postgres) as database:
            yield Deployment(
                folder,
                {
                    "KIBITZ_NATS_URL": f"nats://127.0.0.1:{nats.port}",
                    "KIBITZ_REDIS_URL": redis_url or f"redis://127.0.0.1:{redis.port}/0",
                    "KIBITZ_RATE_LIMIT_URL": redis_url or f"redis://127.0.0.1:{redis.port}/1",
                    "KIBITZ_DATABASE_URL": database,
                },
            )
    finally:
        await redis.stop()
        await nats.stop()


@pytest.fixture(scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with running_deployment(tmp_path_factory.mktemp("scale-out")) as deployment:
        yield deployment


@pytest.fixture(scope="module")
async def pair(deployment: Deployment) -> AsyncIterator[tuple[Server, Server]]:
    """Two instances, each with its public URL."""
    one, two = await asyncio.gather(deployment.instance("one"), deployment.instance("two"))
    yield one, two
    await asyncio.gather(asyncio.to_thread(one.stop), asyncio.to_thread(two.stop))
