"""Fixtures for testing Kibitz plugins, registered with pytest through the ``pytest11``
entry point: installing Kibitz's test extra makes them available to every test suite.

- ``kibitz_environ``: the server's settings as ``KIBITZ_*`` variables; ``{}`` by default
  (the memory transport and storage, no rate limits). Override it in a test module or a
  ``conftest.py`` to enable your plugin: ``{"KIBITZ_PLUGINS": "mine"}``.
- ``kibitz_plugins``: plugin objects registered besides (``[]`` by default).
- ``kibitz_server``: a real server in the test's process (``kibitz.testing.server``), on
  a free loopback port, stopped after the test.
- ``kibitz_client``: a ``kibitz.testing.client.Client`` of it: ``await
  kibitz_client.user()`` is a new user logged in, ``Socket.open(kibitz_server, user)``
  a WebSocket of that user's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .client import Client
from .server import InProcessServer, running_server


@pytest.fixture
def kibitz_environ() -> dict[str, str]:
    return {}


@pytest.fixture
def kibitz_plugins() -> list[object]:
    return []


@pytest_asyncio.fixture
async def kibitz_server(
    tmp_path: Path, kibitz_environ: dict[str, str], kibitz_plugins: list[object]
) -> AsyncIterator[InProcessServer]:
    async with running_server(tmp_path, kibitz_environ, kibitz_plugins) as server:
        yield server


@pytest_asyncio.fixture
async def kibitz_client(kibitz_server: InProcessServer) -> AsyncIterator[Client]:
    client = Client(kibitz_server)
    yield client
    await client.close()
