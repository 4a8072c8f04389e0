"""A power cut loses no acknowledged message: the data folder sits on LazyFS, which keeps
every write in its own cache until fsync and drops that cache on command.

Kibitz, NATS and Redis are SIGKILLed during a burst of sends, then LazyFS drops every
write that was not fsynced (what a power cut does to the page cache); Kibitz restarts on
what is left. Skipped where LazyFS is not built (``../shared/tools/build-lazyfs.sh``;
``LAZYFS_BIN`` names the binary, else ``~/.cache/lazyfs/src/lazyfs/build/lazyfs``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kibitz.testing import wait_until

from .kibitz_client import Client, Session, make_server, poll_until

LAZYFS = Path(os.environ.get("LAZYFS_BIN", Path.home() / ".cache/lazyfs/src/lazyfs/build/lazyfs"))

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (LAZYFS.is_file() and Path("/dev/fuse").exists() and shutil.which("fusermount3")),
        reason="LazyFS is not built here (../shared/tools/build-lazyfs.sh)",
    ),
]


@dataclass
class LazyFS:
    mount: Path
    fifo: Path
    log: Path

    def power_cut(self) -> None:
        """Drop every write not yet fsynced, and wait until LazyFS says it has."""
        with open(self.fifo, "w") as fifo:
            fifo.write("lazyfs::clear-cache\n")
        poll_until(
            lambda: "cache is cleared" in self.log.read_text(errors="replace"),
            30,
            "LazyFS clearing its cache",
        )


@pytest.fixture
def lazyfs() -> Iterator[LazyFS]:
    # A folder of its own whose path has no "-o" in it: LazyFS takes a --config-path that
    # contains "-o" (in any case) for a mount option and falls back to its default config.
    tmp_path = Path(tempfile.mkdtemp(prefix="kibitz_lazyfs_", dir="/tmp"))
    mount, root = tmp_path / "mnt", tmp_path / "root"
    mount.mkdir()
    root.mkdir()
    fs = LazyFS(mount, tmp_path / "faults.fifo", tmp_path / "lazyfs.log")
    config = tmp_path / "lazyfs.toml"
    config.write_text(
        f'[faults]\nfifo_path="{fs.fifo}"\n[cache]\napply_eviction=false\n'
        '[cache.simple]\ncustom_size="1gb"\nblocks_per_page=1\n'
        f'[filesystem]\nlog_all_operations=false\nlogfile="{fs.log}"\n'
    )
    argv = [
        str(LAZYFS),
        str(mount),
        "--config-path",
        str(config),
        "-o",
        "allow_other",
        "-o",
        "modules=subdir",
        "-o",
        f"subdir={root}",
        "-f",
    ]
    output = open(tmp_path / "lazyfs.out", "wb")  # noqa: SIM115 - closed when the fixture ends
    process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)

    def mounted() -> bool:
        assert process.poll() is None, "LazyFS exited; see lazyfs.out"
        return os.path.ismount(mount) and fs.log.exists() and "waiting for fault" in fs.log.read_text()

    poll_until(mounted, 30, "the LazyFS mount")
    yield fs
    subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    subprocess.run(["fusermount3", "-uz", str(mount)], check=False, capture_output=True)
    output.close()
    shutil.rmtree(tmp_path, ignore_errors=True)


async def test_a_power_cut_during_a_burst_loses_no_acknowledged_message(lazyfs: LazyFS) -> None:
    server = make_server(lazyfs.mount / "data", KIBITZ_RATE_LIMITS="off")
    server.start()
    client = Client(server)
    try:
        members = [await client.user() for _ in range(3)]
        cid = await client.group(members[0], members[1:])
        starts = {m.id: (await client.sync(m))["cursor"] for m in members}
        acked: list[dict[str, Any]] = []

        async def sender(who: Session) -> None:
            for n in range(400):
                try:
                    acked.append(await client.send(who, cid, f"{who.id}:{n}", uuid.uuid4().hex))
                except (httpx.HTTPError, AssertionError):
                    return

        burst = asyncio.gather(*(sender(m) for m in members))
        await wait_until(lambda: len(acked) >= 200, 120, "200 acknowledged sends")
        server.stop(signal.SIGKILL, group=True)  # everything stops at once...
        lazyfs.power_cut()  # ...and what was not on disk is gone
        await burst
        survivors = list(acked)  # every answer the server sent before it died

        server.start()
        history: list[dict[str, Any]] = []
        page = await client.history(members[1], cid, limit=200)
        history = page["messages"]
        while page["has_more"]:
            page = await client.history(members[1], cid, limit=200, before=history[0]["id"])
            history = page["messages"] + history
        stored = [m["id"] for m in history]
        assert len(stored) == len(set(stored))
        missing = [m["id"] for m in survivors if m["id"] not in set(stored)]
        assert not missing, f"{len(missing)} acknowledged messages lost from history"
        for member in members:
            events, _ = await client.drain_sync(member, starts[member.id])
            logged = {e["message"]["id"] for e in events if e["type"] == "message"}
            assert {m["id"] for m in survivors} <= logged, "an acknowledged message is missing from a log"
    finally:
        await client.close()
        if server.process is not None and server.process.poll() is None:
            server.stop()
