"""Backing services that go away and come back, under a real ``kibitz serve``: clear 503s
meanwhile, and recovery without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from kibitz.supervisor import free_port
from kibitz.testing import wait_until

from .conftest import fresh_postgres_database
from .kibitz_client import assert_error, redis_child, serving

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


class Cable:
    """A TCP proxy to a real server that the test can pull out and plug back in."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def plug(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def pull(self) -> None:
        """Refuse new connections and cut the open ones, as a network that went away."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


@pytest.fixture
async def database_behind_a_cable() -> AsyncIterator[tuple[str, Cable]]:
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    async with fresh_postgres_database(base) as url:
        parsed = make_url(url)
        cable = Cable(parsed.host or "127.0.0.1", parsed.port or 5432)
        await cable.plug()
        yield parsed.set(host="127.0.0.1", port=cable.port).render_as_string(hide_password=False), cable
        with contextlib.suppress(AssertionError, RuntimeError):
            await cable.pull()


async def test_postgresql_away_means_clear_503s_and_back_means_service_again(
    tmp_path: Path, database_behind_a_cable: tuple[str, Cable]
) -> None:
    url, cable = database_behind_a_cable
    async with serving(tmp_path / "data", KIBITZ_DATABASE_URL=url) as (_, client):
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        await client.send(alice, cid, "before")
        await cable.pull()
        listed = await client.http.get("/conversations", headers=alice.headers)
        assert_error(listed, 503, "unavailable")
        sent = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": "during", "client_msg_id": "d"},
            headers=alice.headers,
        )
        assert_error(sent, 503, "unavailable")
        await cable.plug()

        async def serving_again() -> bool:
            answer = await client.http.get("/conversations", headers=alice.headers)
            return answer.status_code == 200

        await wait_until(serving_again, 30, "the server to answer again once PostgreSQL is back")
        await client.send(alice, cid, "during", client_msg_id="d")
        assert [m["body"] for m in await client.whole_history(bob, cid)] == ["before", "during"]


async def test_redis_restarted_empty_gets_the_history_back_from_the_log(tmp_path: Path) -> None:
    redis = redis_child(tmp_path / "redis-before")
    (tmp_path / "redis-before").mkdir()
    await redis.start()
    env = {"KIBITZ_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
    async with serving(tmp_path / "data", **env) as (_, client):
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        bodies = [f"kept {n}" for n in range(20)]
        for body in bodies:
            await client.send(alice, cid, body)
        await redis.stop()
        unanswered = await client.http.get(f"/conversations/{cid}/messages", headers=bob.headers)
        assert_error(unanswered, 503, "unavailable")
        (tmp_path / "redis-after").mkdir()
        empty = redis_child(tmp_path / "redis-after", port=redis.port)  # same address, nothing in it
        await empty.start()
        try:

            async def history_back() -> bool:
                answer = await client.http.get(f"/conversations/{cid}/messages", headers=bob.headers)
                return answer.status_code == 200 and len(answer.json()["messages"]) == len(bodies)

            await wait_until(history_back, 30, "the history to come back from the log")
            await client.send(alice, cid, "and on it goes")
            assert [m["body"] for m in await client.whole_history(bob, cid)] == [*bodies, "and on it goes"]
        finally:
            await empty.stop()
