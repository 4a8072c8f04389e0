"""Every built-in slot plugin passes the contract of its slot (``kibitz.testing``), found
through its entry point and started as ``kibitz serve`` starts it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kibitz.plugins.redis.server import connect
from kibitz.supervisor import free_port
from kibitz.testing import (
    Feed,
    IdsContract,
    NotifierContract,
    SlotApp,
    StorageContract,
    TransportContract,
    slot_app,
    started_slot,
)

from .conftest import fresh_postgres_database

MakeTransport = Callable[..., AbstractAsyncContextManager[Any]]


def transport_maker(tmp_path: Path, name: str, settings: Callable[[bool], dict[str, Any]]) -> MakeTransport:
    """``make_transport`` for the plugin ``name``: ``settings(empty)`` is its table."""

    @asynccontextmanager
    async def make(feed: Feed, empty: bool = False, shared_with: Any = None) -> AsyncIterator[Any]:
        folder = tmp_path / uuid.uuid4().hex
        async with (
            slot_app(folder, instance_id=folder.name) as app,
            started_slot(
                "transport",
                name,
                app,
                settings(empty),
                before_start=lambda t: t.listen(feed.on_event, feed.on_signal),
            ) as transport,
        ):
            yield transport

    return make


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def make_transport(self, tmp_path: Path) -> MakeTransport:
        memory = transport_maker(tmp_path, "memory", lambda empty: {})

        @asynccontextmanager
        async def make(feed: Feed, empty: bool = False, shared_with: Any = None) -> AsyncIterator[Any]:
            if shared_with is not None:
                yield None  # one instance only
                return
            async with memory(feed) as transport:
                yield transport

        return make


class TestNatsTransport(TransportContract):
    @pytest.fixture
    def make_transport(self, tmp_path: Path, nats_url: str) -> MakeTransport:
        """On the session's nats-server; ``empty``: an embedded one of its own."""
        return transport_maker(tmp_path, "nats", lambda empty: {} if empty else {"url": nats_url})


@asynccontextmanager
async def redis_storage(tmp_path: Path, redis_url: str) -> AsyncIterator[Any]:
    """A redis storage on the session's Redis (or cluster) with a key prefix of its own (removed after)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    async with (
        slot_app(tmp_path / prefix) as app,
        started_slot("storage", "redis", app, {"url": redis_url, "prefix": prefix}) as storage,
    ):
        yield storage
    raw = connect(redis_url)
    async for key in raw.scan_iter(match=f"{prefix}*"):
        await raw.delete(key)
    await raw.aclose()


class TestRedisStorage(StorageContract):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    async def storage(self, tmp_path: Path, url: str) -> AsyncIterator[Any]:
        async with redis_storage(tmp_path, url) as storage:
            yield storage

    @pytest.fixture
    async def empty_storage(self, tmp_path: Path, url: str) -> AsyncIterator[Any]:
        async with redis_storage(tmp_path, url) as storage:
            yield storage


class TestRedisClusterStorage(TestRedisStorage):
    """The redis storage on a Redis Cluster of three primaries."""

    @pytest.fixture
    def url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


@asynccontextmanager
async def memory_storage(tmp_path: Path) -> AsyncIterator[Any]:
    async with (
        slot_app(tmp_path / uuid.uuid4().hex) as app,
        started_slot("storage", "memory", app) as storage,
    ):
        yield storage


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[Any]:
        async with memory_storage(tmp_path) as storage:
            yield storage

    @pytest.fixture
    async def empty_storage(self, tmp_path: Path) -> AsyncIterator[Any]:
        async with memory_storage(tmp_path) as storage:
            yield storage


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_database(request: pytest.FixtureRequest) -> Callable[[], AbstractAsyncContextManager[str]]:
    """Makes databases of the test's own: SQLite in its folder (``""``: slot_app's default),
    or a fresh PostgreSQL database when KIBITZ_TEST_DATABASE_URL names a server."""
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite() -> AsyncIterator[str]:
            yield ""

        return sqlite
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    return lambda: fresh_postgres_database(base)


class TestSqlTransport(TransportContract):
    @pytest.fixture
    def make_transport(self, tmp_path: Path, sql_database: Any) -> MakeTransport:
        urls: dict[int, str] = {}

        @asynccontextmanager
        async def make(feed: Feed, empty: bool = False, shared_with: Any = None) -> AsyncIterator[Any]:
            folder = tmp_path / uuid.uuid4().hex
            async with contextlib.AsyncExitStack() as stack:
                if shared_with is None:
                    url = await stack.enter_async_context(sql_database())
                else:
                    url = urls[id(shared_with)]
                    if not url:
                        yield None  # SQLite: one instance only
                        return
                app = await stack.enter_async_context(slot_app(folder, url, instance_id=folder.name))
                listen = lambda t: t.listen(feed.on_event, feed.on_signal)  # noqa: E731
                transport = await stack.enter_async_context(started_slot("transport", "sql", app, {}, listen))
                urls[id(transport)] = url
                yield transport

        return make


@asynccontextmanager
async def sql_storage(
    tmp_path: Path, database: Callable[[], AbstractAsyncContextManager[str]]
) -> AsyncIterator[Any]:
    async with (
        database() as url,
        slot_app(tmp_path / uuid.uuid4().hex, url) as app,
        started_slot("storage", "sql", app) as storage,
    ):
        yield storage


class TestSqlStorage(StorageContract):
    @pytest.fixture
    async def storage(self, tmp_path: Path, sql_database: Any) -> AsyncIterator[Any]:
        async with sql_storage(tmp_path, sql_database) as storage:
            yield storage

    @pytest.fixture
    async def empty_storage(self, tmp_path: Path, sql_database: Any) -> AsyncIterator[Any]:
        async with sql_storage(tmp_path, sql_database) as storage:
            yield storage


class TestSnowflakeIds(IdsContract):
    plugin = "snowflake"


class TestSequenceIds(IdsContract):
    plugin = "sequence"

    @pytest.fixture(params=["sqlite", "postgresql"])
    async def database_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
        if request.param == "sqlite":
            yield f"sqlite+aiosqlite:///{tmp_path / 'ids.sqlite3'}"
            return
        base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
        if not base:
            pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
        async with fresh_postgres_database(base) as url:
            yield url


@pytest.fixture
async def notifier_app(tmp_path: Path) -> AsyncIterator[SlotApp]:
    async with slot_app(tmp_path, push_allow_insecure=True) as app:
        yield app


class TestLogNotifier(NotifierContract):
    @pytest.fixture
    async def notifier(self, notifier_app: SlotApp) -> AsyncIterator[Any]:
        async with started_slot("notifier", "log", notifier_app) as notifier:
            yield notifier


class TestWebPushNotifier(NotifierContract):
    @pytest.fixture
    async def notifier(self, notifier_app: SlotApp) -> AsyncIterator[Any]:
        await notifier_app.push.start()  # the server's VAPID key
        async with started_slot("notifier", "webpush", notifier_app) as notifier:
            yield notifier


class TestWebhookNotifier(NotifierContract):
    @pytest.fixture
    async def notifier(self, notifier_app: SlotApp) -> AsyncIterator[Any]:
        settings = {"url": f"http://127.0.0.1:{free_port()}/hook", "secret": "s" * 32}
        async with started_slot("notifier", "webhook", notifier_app, settings) as notifier:
            yield notifier
