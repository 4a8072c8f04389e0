"""A nearly full disk: on a small file system of its own (a tmpfs with a size), the server
refuses new messages with 503 before the disk fills, keeps serving what it has, loses
nothing it acknowledged, and takes messages again by itself once space is freed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kibitz.testing import wait_until

from .kibitz_client import Socket, assert_error, serving

SIZE_MB = 128
RESERVE_MB = 32

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MB tmpfs mounted for this test alone."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave_free: int) -> Path:
    """A file that leaves about ``leave_free`` bytes free on ``disk``."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave_free
    with open(filler, "wb") as out:
        out.truncate(0)
        chunk = b"\0" * 2**20
        while size > 0:
            out.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
    return filler


async def test_a_nearly_full_disk_refuses_new_messages_and_recovers_by_itself(small_disk: Path) -> None:
    settings = {"KIBITZ_DISK_RESERVE": f"{RESERVE_MB}MB", "KIBITZ_NATS_RETENTION_BYTES": "16MB"}
    async with serving(small_disk / "data", **settings) as (server, client):
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        first = await client.send(alice, cid, "before the disk filled", client_msg_id="first")

        async def warnings() -> list[str]:
            r = await client.http.get(server.url + "/readyz")
            assert r.status_code == 200, r.text  # reads still served: not a failure to restart on
            found: list[str] = r.json()["warnings"]
            return found

        async def disk_low() -> bool:
            return bool(await warnings())

        async def disk_ok() -> bool:
            return not await warnings()

        filler = await asyncio.to_thread(fill, small_disk, (RESERVE_MB // 2) * 2**20)
        await wait_until(disk_low, 30, "a warning about the disk in /readyz")
        r = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": "refused", "client_msg_id": "x"},
            headers=alice.headers,
        )
        assert "disk" in assert_error(r, 503, "unavailable")["message"]
        assert r.headers["Retry-After"] == "30"
        again = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": "resent", "client_msg_id": "first"},
            headers=alice.headers,
        )
        assert again.status_code == 200 and again.json()["message"] == first  # a resend still answers
        socket = await Socket.open(server, bob)
        await socket.send_json(
            {"type": "send", "conversation_id": cid, "body": "by socket", "client_msg_id": "ws"}
        )
        frame = await socket.until(lambda f: f["type"] == "error")
        assert frame["code"] == "unavailable" and frame["client_msg_id"] == "ws"
        await socket.close()
        metrics = (await client.http.get(server.url + "/metrics")).text
        assert "kibitz_disk_low 1.0" in metrics
        assert [m["body"] for m in (await client.history(bob, cid))["messages"]] == ["before the disk filled"]

        await asyncio.to_thread(filler.unlink)
        await wait_until(disk_ok, 30, "the disk warning to clear")
        later = await client.send(alice, cid, "after space came back", client_msg_id=uuid.uuid4().hex)
        history = [m["id"] for m in (await client.history(bob, cid))["messages"]]
        assert history == [first["id"], later["id"]]
        assert "kibitz_disk_low 0.0" in (await client.http.get(server.url + "/metrics")).text
