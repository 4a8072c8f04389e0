"""PROTOCOL.md "Service discovery and operations" and the conventions every call shares:
``/healthz``, ``/readyz`` (and its 503 when Redis goes away), ``/metrics``, discovery, the
OpenAPI document, and the protocol's error body for unknown paths, wrong methods,
oversized and malformed bodies.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kibitz.supervisor import free_port
from kibitz.testing import wait_until

from .kibitz_client import (
    POLL_INTERVAL,
    Client,
    Server,
    Socket,
    assert_error,
    make_server,
    redis_child,
)

# Every HTTP call of PROTOCOL.md, as (method, full path); path parameters as ``{}``.
# The Web Push calls join when Web Push is built (it is not part of this release).
PROTOCOL_API_CALLS = {
    ("post", "/api/v1/accounts"),
    ("post", "/api/v1/sessions"),
    ("delete", "/api/v1/sessions/current"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{}"),
    ("post", "/api/v1/conversations"),
    ("get", "/api/v1/conversations"),
    ("get", "/api/v1/conversations/{}"),
    ("post", "/api/v1/conversations/{}/members"),
    ("delete", "/api/v1/conversations/{}/members/{}"),
    ("post", "/api/v1/conversations/{}/messages"),
    ("get", "/api/v1/conversations/{}/messages"),
    ("put", "/api/v1/conversations/{}/read"),
    ("get", "/api/v1/sync"),
    ("get", "/api/v1/ws"),
    ("get", "/api/v1/discovery"),
    ("get", "/api/v1/push/vapid-key"),
    ("post", "/api/v1/push/subscriptions"),
    ("delete", "/api/v1/push/subscriptions"),
    ("get", "/api/v1/openapi.json"),
}
PROTOCOL_OPERATOR_CALLS = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture
async def root(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP at the server's root (outside ``/api/v1``)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


# -- /healthz, /readyz, /metrics ------------------------------------------------------------


async def test_healthz(root: httpx.AsyncClient) -> None:
    r = await root.get("/healthz")
    assert r.status_code == 200, r.text


async def test_readyz(root: httpx.AsyncClient) -> None:
    r = await root.get("/readyz")
    assert r.status_code == 200, r.text


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text."""
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_is_prometheus_text(root: httpx.AsyncClient) -> None:
    r = await root.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    text = r.text
    for name in (
        "kibitz_connections",
        "kibitz_messages_accepted",
        "kibitz_events_delivered",
        "kibitz_delivery_latency_seconds",
    ):
        assert re.search(rf"^# TYPE {name}(_total)? (gauge|counter|histogram)$", text, re.MULTILINE), (
            f"no # TYPE line for {name}"
        )
        assert re.search(rf"^{name}(_[a-z]+)?(\{{.*\}})? [0-9.eE+-]+$", text, re.MULTILINE), name
    assert re.search(r"^# TYPE kibitz_delivery_latency_seconds histogram$", text, re.MULTILINE)
    assert re.search(r'^kibitz_delivery_latency_seconds_bucket\{le="\+Inf"\} ', text, re.MULTILINE)


async def test_metrics_count_accepted_and_delivered(client: Client, root: httpx.AsyncClient) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    before = (await root.get("/metrics")).text
    accepted = metric_value(before, "kibitz_messages_accepted_total")
    delivered = metric_value(before, "kibitz_events_delivered_total")
    socket = await Socket.open(client.server, bob)
    sent = await client.send(alice, cid, "counted")
    (got,) = await socket.messages(1)
    assert got["id"] == sent["id"]
    await socket.close()
    after = (await root.get("/metrics")).text
    assert metric_value(after, "kibitz_messages_accepted_total") >= accepted + 1
    assert metric_value(after, "kibitz_events_delivered_total") >= delivered + 1


# -- discovery ------------------------------------------------------------------------------


async def discovery(client: Client) -> dict[str, Any]:
    r = await client.http.get("/discovery")  # no token needed
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_discovery_shape(client: Client) -> None:
    body = await discovery(client)
    assert isinstance(body["servers"], list) and body["servers"], body
    for server in body["servers"]:
        assert set(server) >= {"id", "url", "connections"}, server
        assert isinstance(server["id"], str) and server["id"], server
        assert isinstance(server["url"], str), server
        assert isinstance(server["connections"], int) and not isinstance(server["connections"], bool)
    urls = [s["url"] for s in body["servers"]]
    assert client.server.url in urls, (client.server.url, urls)  # KIBITZ_PUBLIC_URL
    assert body["recommended"] in urls, body
    assert body["registration"] == "open", body  # the session server's; clients show sign-up as it says


async def test_discovery_counts_open_websockets_and_long_polls(client: Client) -> None:
    me = await client.user()

    async def connections() -> int:
        (mine,) = [s for s in (await discovery(client))["servers"] if s["url"] == client.server.url]
        count: int = mine["connections"]
        return count

    async def counted(expected: int) -> bool:
        return await connections() == expected

    before = await connections()
    socket = await Socket.open(client.server, me)
    await wait_until(lambda: counted(before + 1), 10, "the WebSocket to be counted")
    poll = asyncio.create_task(client.sync(me, socket.cursor, timeout=30))
    await wait_until(lambda: counted(before + 2), 10, "the long poll to be counted")
    await socket.close()
    await wait_until(lambda: counted(before + 1), 10, "the closed WebSocket to leave the count")
    await client.send(me, await client.direct(me, await client.user()), "wakes the poll")
    await poll
    await wait_until(lambda: counted(before), 10, "the answered long poll to leave the count")


# -- OpenAPI --------------------------------------------------------------------------------


async def openapi(client: Client) -> dict[str, Any]:
    r = await client.http.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc: dict[str, Any] = r.json()
    return doc


def documented_calls(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (method, full path) of the document, resolving ``servers`` at path and top level."""
    top = (doc.get("servers") or [{"url": ""}])[0]["url"]
    calls = set()
    for path, item in doc["paths"].items():
        base = (item.get("servers") or [{"url": top}])[0]["url"]
        prefix = httpx.URL(base).path.rstrip("/") if base else ""
        full = re.sub(r"\{[^}]*\}", "{}", prefix + path)
        for method in item:
            if method in METHODS:
                calls.add((method, full))
    return calls


async def test_openapi_is_3_1(client: Client) -> None:
    doc = await openapi(client)
    assert str(doc["openapi"]).startswith("3.1"), doc["openapi"]
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    assert isinstance(doc["paths"], dict)


async def test_openapi_lists_every_protocol_call(client: Client) -> None:
    missing = PROTOCOL_API_CALLS - documented_calls(await openapi(client))
    assert not missing, f"calls of PROTOCOL.md missing from openapi.json: {sorted(missing)}"


async def test_openapi_lists_the_operator_endpoints(client: Client) -> None:
    missing = PROTOCOL_OPERATOR_CALLS - documented_calls(await openapi(client))
    assert not missing, f"operator endpoints missing from openapi.json: {sorted(missing)}"


# -- error bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/no-such-thing", "/api/v1/conversations/1/nope", "/nope", "/api/v2/me"]
)
async def test_unknown_path_is_404_not_found(root: httpx.AsyncClient, path: str) -> None:
    assert_error(await root.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/me"),
        ("GET", "/api/v1/accounts"),
        ("PUT", "/api/v1/sessions"),
        ("PATCH", "/api/v1/conversations"),
        ("POST", "/healthz"),
        ("DELETE", "/api/v1/discovery"),
    ],
)
async def test_wrong_method_is_405_method_not_allowed(
    root: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await root.request(method, path), 405, "method_not_allowed")


async def test_declared_body_over_the_request_limit_is_413(server: Server) -> None:
    """A Content-Length over the limit is refused from the headers alone, before any body."""
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/v1/accounts HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (64 * 1024 * 1024)
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    r = httpx.Response(
        int(head.split()[1]),
        headers=[tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:]],
        content=body,
    )
    assert_error(r, 413, "payload_too_large")


async def test_body_over_the_request_limit_is_413(root: httpx.AsyncClient) -> None:
    """A client that sends a whole oversized body must still read the 413, not a reset."""
    body = b'{"username": "' + b"x" * (8 * 1024 * 1024) + b'", "password": "correct horse"}'
    r = await root.post("/api/v1/accounts", content=body, headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    # and the server carries on
    assert (await root.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/accounts", "/api/v1/sessions"])
async def test_malformed_json_is_400_invalid_request(root: httpx.AsyncClient, path: str) -> None:
    r = await root.post(path, content=b'{"username": ', headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")


async def test_malformed_json_on_an_authenticated_call(client: Client) -> None:
    me = await client.user()
    r = await client.http.post(
        "/conversations", content=b"{nope", headers={**me.headers, "content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_request")


async def test_unauthorized_has_the_error_body(client: Client) -> None:
    assert_error(await client.http.get("/conversations"), 401, "unauthorized")


# -- /readyz names the backing service that does not answer --------------------------------


async def poll_readyz(url: str, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            r = await http.get(url + "/readyz")
            if r.status_code == status:
                return r
            assert time.monotonic() < deadline, f"/readyz stayed {r.status_code}: {r.text}"
            await asyncio.sleep(POLL_INTERVAL)


async def test_readyz_is_503_naming_redis_when_it_stops(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    folder.mkdir()
    port = free_port()
    redis = redis_child(folder, port)
    await redis.start()
    server = make_server(tmp_path / "data", KIBITZ_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    server.env.pop("KIBITZ_NATS_URL", None)  # embedded NATS: its own stream, not the session's
    try:
        await asyncio.to_thread(server.start)
        await poll_readyz(server.url, 200)
        await redis.stop()
        r = await poll_readyz(server.url, 503)
        error = assert_error(r, 503, "unavailable")
        assert re.search(r"redis|storage", error["message"], re.IGNORECASE), error
        # once Redis answers again, so does /readyz
        redis = redis_child(folder, port)
        await redis.start()
        await poll_readyz(server.url, 200)
    finally:
        if server.process is not None:
            await asyncio.to_thread(server.stop)
        await redis.stop()


@pytest.mark.parametrize("plugins", ["", "incoming_webhooks"])
def test_every_route_the_server_has_is_in_openapi(tmp_path: Path, plugins: str) -> None:
    """The built-in extensions' routes too, when they are enabled (they document them as they register)."""
    from kibitz.app import create_app
    from kibitz.openapi import openapi_document
    from kibitz.settings import load_settings

    environ = {"KIBITZ_DATA_DIR": str(tmp_path / "data"), "KIBITZ_PLUGINS": plugins}
    app = create_app(load_settings(environ=environ))
    routes = {
        (method.lower(), re.sub(r"<[^>]*>", "{}", "/" + route.path.strip("/")))
        for route in app.router.routes
        for method in route.methods
        if method not in ("HEAD", "OPTIONS")
    }
    undocumented = routes - documented_calls(openapi_document(app.ctx.app.openapi_paths))
    assert not undocumented, f"routes missing from openapi.json: {sorted(undocumented)}"
