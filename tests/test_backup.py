"""``kibitz backup`` under load, ``kibitz restore`` into an empty folder, and a comparison of
everything; ``kibitz export``. Run as an operator runs them: processes next to a server."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from kibitz.testing import wait_until

from .conftest import fresh_postgres_database
from .kibitz_client import KIBITZ, Client, Server, Session, make_server, serving
from .push_service import PushService

# Tables compared row for row; leases are run-time state (holders, expiries) and differ.
TABLES = ("users", "devices", "conversations", "members", "secrets", "push_subscriptions", "invitations")

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def kibitz(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([KIBITZ, *args], env=server.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"kibitz {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def refused(server: Server, *args: str) -> str:
    done = subprocess.run([KIBITZ, *args], env=server.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    return done.stderr.strip().splitlines()[-1]


def table_rows(folder: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(folder / "kibitz.sqlite3") as db:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


class Load:
    """Senders that keep writing into a conversation until stopped; what was acknowledged, in order."""

    def __init__(self, client: Client, sender: Session, cid: str) -> None:
        self.client, self.sender, self.cid = client, sender, cid
        self.acknowledged: list[str] = []
        self._stop = asyncio.Event()
        self._numbers = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, senders: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._send()) for _ in range(senders)]

    async def _send(self) -> None:
        while not self._stop.is_set():
            message = await self.client.send(self.sender, self.cid, f"load {next(self._numbers)}")
            self.acknowledged.append(message["id"])

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_backup_under_load_restores_everything_and_a_device_resumes_its_cursor(tmp_path: Path) -> None:
    service = PushService()
    env = {"KIBITZ_PUSH_ALLOW_INSECURE": "1", "KIBITZ_NOTIFY": "", "KIBITZ_RATE_LIMITS": "off"}
    source = make_server(tmp_path / "source", **env)
    await asyncio.to_thread(source.start)
    client = Client(source)
    try:
        alice, bob, carol = await client.users(3)
        direct = await client.direct(alice, bob)
        group = await client.group(alice, [bob, carol], "backed up")
        subscription = service.subscription("bob's phone")
        r = await client.http.post("/push/subscriptions", json=subscription.as_json(), headers=bob.headers)
        assert r.status_code == 201, r.text
        seeded = Load(client, alice, group)
        seeded.start(8)
        await wait_until(lambda: len(seeded.acknowledged) >= 400, 120, "400 messages seeded")
        await seeded.stop()
        await client.send(bob, direct, "hello alice")
        read = await client.http.put(
            f"/conversations/{group}/read",
            json={"message_id": seeded.acknowledged[100]},
            headers=carol.headers,
        )
        assert read.status_code == 200, read.text
        cursor = (await client.sync(carol))["cursor"]  # carol's device goes away here

        load = Load(client, alice, group)
        load.start()
        await wait_until(lambda: len(load.acknowledged) >= 20, 60, "the load under way")
        before_backup = list(load.acknowledged)
        file = tmp_path / "kibitz-backup.tar.gz"
        done = await asyncio.to_thread(kibitz, source, "backup", str(file))
        assert "Backup done" in done.stdout, done.stdout
        await load.stop()
        assert len(load.acknowledged) > len(before_backup), "the backup ran under load"
        expected = {cid: await client.whole_history(alice, cid) for cid in (direct, group)}
        rows = table_rows(source.data_dir)
    finally:
        await client.close()
        await asyncio.to_thread(source.stop)

    # Refused, changing nothing: a folder in use, a folder not empty, a damaged file.
    assert "exists already" in refused(source, "backup", str(file))
    target = make_server(tmp_path / "target", **env)
    damaged = tmp_path / "damaged.tar.gz"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert "damaged" in refused(target, "restore", str(damaged)) or "not a readable" in refused(
        target, "restore", str(damaged)
    )
    assert not target.data_dir.exists() or not any(target.data_dir.iterdir())
    assert "not empty" in refused(source, "restore", str(file))

    kibitz(target, "restore", str(file))
    restored_rows = table_rows(target.data_dir)
    assert restored_rows == rows
    await asyncio.to_thread(target.start)
    assert "in use by process" in refused(target, "restore", str(file))
    client = Client(target)
    try:
        again = {cid: await client.whole_history(alice, cid) for cid in (direct, group)}
        assert again[direct] == expected[direct]
        ids = [m["id"] for m in again[group]]
        assert len(ids) == len(set(ids)), "no message twice"
        assert set(seeded.acknowledged + before_backup) <= set(ids), (
            "every message acknowledged before the backup"
        )
        assert again[group] == expected[group][: len(again[group])], "nothing that was not sent"
        views = (await client.http.get("/conversations", headers=carol.headers)).json()["conversations"]
        (mine,) = [v for v in views if v["id"] == group]
        assert mine["unread_count"] == len(
            [m for m in again[group] if int(m["id"]) > int(seeded.acknowledged[100])]
        )

        events, _ = await client.drain_sync(carol, cursor)  # the old cursor works on the restored server
        resumed = [e["message"]["id"] for e in events if e["type"] == "message"]
        assert resumed == ids[ids.index(resumed[0]) :], "no gap and no duplicate after the cursor"
        assert set(before_backup) <= set(resumed)
        later = await client.send(alice, group, "after the restore")
        assert int(later["id"]) > int(ids[-1])
        events, _ = await client.drain_sync(carol, cursor)
        assert events[-1]["message"]["id"] == later["id"]
    finally:
        await client.close()
        await asyncio.to_thread(target.stop)

    with tarfile.open(file) as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["schema"] == "0006" and set(manifest["parts"]) == {"database", "storage", "transport"}
    assert oct(os.stat(file).st_mode & 0o777) == "0o600"


async def test_a_backup_of_a_stopped_server_restores_into_postgresql(tmp_path: Path) -> None:
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    source = make_server(tmp_path / "source")
    await asyncio.to_thread(source.start)
    client = Client(source)
    try:
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        sent = [await client.send(alice, cid, f"message {n}") for n in range(5)]
    finally:
        await client.close()
        await asyncio.to_thread(source.stop)
    file = tmp_path / "stopped.tar.gz"
    kibitz(source, "backup", str(file))  # no server running: the command starts the services itself
    if not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    async with fresh_postgres_database(base) as url:
        target = make_server(tmp_path / "target", KIBITZ_DATABASE_URL=url)
        kibitz(target, "restore", str(file))
        await asyncio.to_thread(target.start)
        client = Client(target)
        try:
            assert await client.whole_history(alice, cid) == sent
            carol = await client.user()  # new ids follow the restored ones
            assert int(carol.id) > int(bob.id)
        finally:
            await client.close()
            await asyncio.to_thread(target.stop)


async def test_export_writes_a_conversation_and_a_users_history_as_json_lines(tmp_path: Path) -> None:
    async with serving(tmp_path / "data") as (server, client):
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        group = await client.group(alice, [bob], "two of us")
        sent = [await client.send(alice, cid, f"number {n}") for n in range(3)]
        await client.send(bob, group, "in the group")
        me = (await client.http.get("/me", headers=alice.headers)).json()["user"]
        out = tmp_path / f"{uuid.uuid4().hex}.jsonl"
        await asyncio.to_thread(kibitz, server, "export", "--conversation", cid, str(out))
        lines = [orjson.loads(line) for line in out.read_text().splitlines()]
        assert lines[0]["type"] == "conversation" and lines[0]["conversation"]["id"] == cid
        assert [line["message"] for line in lines[1:]] == sent
        everything = tmp_path / "alice.jsonl"
        await asyncio.to_thread(kibitz, server, "export", "--user", me["username"], str(everything))
        lines = [orjson.loads(line) for line in everything.read_text().splitlines()]
        assert lines[0] == {"type": "user", "user": {k: v for k, v in me.items() if k != "admin"}}
        assert [line["type"] for line in lines].count("conversation") == 2
        assert [line["type"] for line in lines].count("message") == 4
        assert "exists" in refused(server, "export", "--user", me["username"], str(everything))
        assert "no user" in refused(server, "export", "--user", "nobody", str(tmp_path / "x.jsonl"))


def test_a_restore_that_did_not_finish_keeps_serve_and_restore_away(tmp_path: Path) -> None:
    """``kibitz restore`` marks the folder until it has finished; killed half-way, the folder
    is neither served nor restored into, until the operator empties it."""
    file = tmp_path / "empty.tar.gz"
    kibitz(make_server(tmp_path / "source"), "backup", str(file))
    server = make_server(tmp_path / "data")
    server.data_dir.mkdir()
    (server.data_dir / "restore-incomplete").write_text("restore of x not finished\n")
    done = subprocess.run([KIBITZ, "serve"], env=server.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "restore that did not finish" in done.stderr, done.stderr
    assert "did not finish" in refused(server, "restore", str(file))
