"""The protocol's HTTP calls the harness needs (PROTOCOL.md), on one ``httpx.AsyncClient``.

Setup calls check their status and raise ``ProtocolError`` with the answer otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

PASSWORD = "bench-password-123"


class ProtocolError(RuntimeError):
    pass


@dataclass(frozen=True)
class Device:
    """A logged-in device of a user: what a load client needs to connect."""

    user_id: str
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def client(api: str, connections: int = 100, timeout: float = 60) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=api, timeout=timeout, limits=limits)


def _check(r: httpx.Response, *ok: int) -> Any:
    if r.status_code not in ok:
        raise ProtocolError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return orjson.loads(r.content) if r.content else None


async def sign_up_and_log_in(http: httpx.AsyncClient, username: str) -> Device:
    _check(await http.post("/accounts", json={"username": username, "password": PASSWORD}), 201)
    body = _check(
        await http.post(
            "/sessions", json={"username": username, "password": PASSWORD, "device_name": "bench"}
        ),
        201,
    )
    return Device(body["user"]["id"], username, body["token"])


async def make_users(http: httpx.AsyncClient, prefix: str, count: int, concurrency: int = 6) -> list[Device]:
    """``count`` new users with one device each. Password hashing is slow by design, so the
    server's hashing threads set the pace; a few requests in flight keep them busy."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Device:
        async with gate:
            return await sign_up_and_log_in(http, f"{prefix}{i}")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def direct(http: httpx.AsyncClient, a: Device, b: Device) -> str:
    body = _check(
        await http.post("/conversations", json={"type": "direct", "members": [b.user_id]}, headers=a.headers),
        200,
        201,
    )
    return str(body["conversation"]["id"])


async def group(http: httpx.AsyncClient, creator: Device, members: list[Device], name: str) -> str:
    payload = {"type": "group", "name": name, "members": [m.user_id for m in members if m != creator]}
    body = _check(await http.post("/conversations", json=payload, headers=creator.headers), 201)
    return str(body["conversation"]["id"])


async def send(
    http: httpx.AsyncClient, who: Device, cid: str, body: str, client_msg_id: str
) -> dict[str, Any]:
    payload = {"body": body, "client_msg_id": client_msg_id}
    answer = _check(
        await http.post(f"/conversations/{cid}/messages", json=payload, headers=who.headers), 200, 201
    )
    message: dict[str, Any] = answer["message"]
    return message


async def sync(http: httpx.AsyncClient, who: Device, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = _check(await http.get("/sync", params=params, headers=who.headers), 200)
    return body


async def metric(http: httpx.AsyncClient, base_url: str, name: str, labels: str = "") -> float:
    """One sample of ``/metrics`` (at the root, outside the API prefix); 0 if absent."""
    r = await http.get(base_url + "/metrics")
    wanted = name + (f"{{{labels}}}" if labels else "")
    for line in r.text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
