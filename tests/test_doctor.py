"""``kibitz doctor`` as an operator runs it: against a running appliance, against external
services set up well and badly, and with a data folder and settings that need fixing."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kibitz.supervisor import ChildProcess, free_port

from .kibitz_client import KIBITZ, Server, make_server, nats_child

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def doctor(server: Server, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [KIBITZ, "doctor"], env={**server.env, **env}, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout


async def nats_with_monitor(folder: Path, fsync: bool) -> tuple[ChildProcess, str]:
    """A nats-server with JetStream and its monitoring port, fsyncing every write or not."""
    monitor = free_port()
    await asyncio.to_thread(folder.mkdir, parents=True)
    child = nats_child(folder, sync_always=fsync, monitor_port=monitor)
    await child.start()
    return child, f"http://127.0.0.1:{monitor}"


@pytest.fixture
async def two_nats(tmp_path: Path) -> AsyncIterator[dict[bool, tuple[str, str]]]:
    """{fsyncs: (NATS URL, monitoring URL)} for a server that fsyncs every write and one that does not."""
    made = {fsync: await nats_with_monitor(tmp_path / f"nats-{fsync}", fsync) for fsync in (True, False)}
    yield {fsync: (f"nats://127.0.0.1:{child.port}", monitor) for fsync, (child, monitor) in made.items()}
    for child, _ in made.values():
        await child.stop()


async def test_a_running_appliance_is_all_ok(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    await asyncio.to_thread(server.start)
    try:
        status, out = await asyncio.to_thread(doctor, server)
    finally:
        await asyncio.to_thread(server.stop)
    assert status == 0, out
    assert "FAIL" not in out and "WARN" not in out, out
    assert f"ok    server: process {server.process.pid if server.process else ''} is ready" in out
    assert f"ok    instances: 1 serving: {server.url}" in out, out
    for part in ("database:", "schema 0006 (current)", "transport nats: embedded", "storage redis: embedded"):
        assert part in out, out


async def test_external_services_are_checked_for_what_acknowledged_rests_on(
    tmp_path: Path, two_nats: dict[bool, tuple[str, str]], redis_url: str
) -> None:
    server = make_server(tmp_path / "data", KIBITZ_REDIS_URL=redis_url)
    url, monitor = two_nats[True]
    status, out = await asyncio.to_thread(
        doctor, server, KIBITZ_NATS_URL=url, KIBITZ_NATS_MONITOR_URL=monitor
    )
    assert status == 0, out
    assert "fsyncs every write (sync_interval: always)" in out, out
    assert "storage redis: redis://" in out, out
    url, monitor = two_nats[False]
    status, out = await asyncio.to_thread(
        doctor, server, KIBITZ_NATS_URL=url, KIBITZ_NATS_MONITOR_URL=monitor
    )
    assert status == 1, out
    assert "FAIL  transport nats:" in out and "does not fsync every write" in out, out
    assert "sync_interval: always" in out  # the fix
    status, out = await asyncio.to_thread(doctor, server, KIBITZ_NATS_URL=url)  # no monitoring URL given
    assert "WARN  transport nats: cannot tell whether it fsyncs" in out, out


async def test_what_needs_fixing_is_named_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/kibitz"
    server = make_server(folder, KIBITZ_HOST="0.0.0.0", KIBITZ_DATABASE_URL=dead, KIBITZ_PORTT="1")
    status, out = await asyncio.to_thread(doctor, server, KIBITZ_PUBLIC_URL="")
    assert status == 1, out
    assert "WARN  configuration: KIBITZ_PORTT" in out and "did you mean KIBITZ_PORT" in out, out
    assert "is open to others (0o755)" in out and "chmod 700" in out, out
    assert "FAIL  database: cannot be reached" in out, out
    assert "WARN  registration: anyone who reaches 0.0.0.0" in out, out
    assert "WARN  public URL" in out and "https" in out, out
    assert out.strip().splitlines()[-1].startswith("1 failed")
