"""Talking to a Kibitz server as its clients do, over real HTTP and WebSocket: sign up,
log in, create conversations, send, read history and sync, hold a WebSocket.

``Client(server)`` takes anything with the server's ``api`` URL (``.../api/v1``) and its
``ws_url``: the in-process server of ``kibitz.testing`` or a ``kibitz serve`` elsewhere.
Every call that waits has a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
import websockets

PASSWORD = "correct horse battery"


class Address(Protocol):
    """Where a server answers."""

    @property
    def api(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


class BaseUrl:
    """``api`` and ``ws_url`` of a server answering at ``url`` (``http://host:port``)."""

    url: str

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/api/v1/ws"


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

    def __init__(self, server: Address) -> None:
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
    async def open(cls, server: Address, session: Session, since: str | None = None) -> Socket:
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
