"""The guard on requests to URLs someone else chose: public addresses only, checked on the
address really connected to, no redirects."""

from __future__ import annotations

import email.utils
import time

import pytest
from aiohttp import web

from kibitz import Outbound, check_url, retry_pause, retryable
from kibitz.errors import InvalidRequest
from kibitz.outbound import _PublicOnly, is_public_address
from kibitz.supervisor import free_port


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("fd00::1", False),  # unique-local
        ("fe80::1%eth0", False),  # link-local
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("not an address", False),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


async def test_check_url_refuses_what_the_guard_would() -> None:
    for url in (
        "http://example.com/x",
        "https://localhost/x",
        "https://10.0.0.1/x",
        "https://a:b@example.com/",
    ):
        with pytest.raises(InvalidRequest):
            await check_url(url, "endpoint", allow_insecure=False)
    await check_url("http://127.0.0.1:9/x", "endpoint", allow_insecure=True)


async def test_the_resolver_gives_no_address_that_is_not_public() -> None:
    resolver = _PublicOnly()
    try:
        with pytest.raises(OSError, match="no public address"):
            await resolver.resolve("localhost", 443)  # a name that leads inside
    finally:
        await resolver.close()


async def test_outbound_never_connects_inside_and_never_follows_a_redirect() -> None:
    port = free_port()
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/redirect":
            raise web.HTTPFound(f"http://127.0.0.1:{port}/target")
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    guarded, open_ = Outbound(allow_insecure=False), Outbound(allow_insecure=True)
    try:
        with pytest.raises(ValueError):
            await guarded.post(f"http://127.0.0.1:{port}/x", b"", {})  # http, and a loopback literal
        with pytest.raises(ValueError):
            await guarded.post(f"https://127.0.0.1:{port}/x", b"", {})
        assert hits == []
        status, _ = await open_.post(f"http://127.0.0.1:{port}/redirect", b"", {})
        assert status == 302 and hits == ["/redirect"]  # answered, not followed
    finally:
        await guarded.close()
        await open_.close()
        await runner.cleanup()


async def test_post_read_gives_the_answers_body_up_to_a_limit() -> None:
    port = free_port()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"x" * 1000)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    outbound = Outbound(allow_insecure=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        status, _, body = await outbound.post_read(url, b"", {}, limit=1000)
        assert (status, body) == (200, b"x" * 1000)
        status, _, body = await outbound.post_read(url, b"", {}, limit=999)
        assert (status, body) == (200, None)  # longer than the limit
        assert (await outbound.post(url, b"", {}))[0] == 200
    finally:
        await outbound.close()
        await runner.cleanup()


def test_tries_again_after_429_5xx_or_no_answer_only() -> None:
    assert [s for s in (0, 200, 301, 400, 404, 410, 429, 500, 503) if retryable(s)] == [0, 429, 500, 503]


def test_the_pause_doubles_from_one_second_follows_retry_after_and_stops_at_a_minute() -> None:
    assert [retry_pause(attempt, {}) for attempt in (1, 2, 3, 4, 7, 1000)] == [1, 2, 4, 8, 60, 60]
    assert retry_pause(3, {"Retry-After": "7"}) == 7
    assert retry_pause(1, {"Retry-After": "3600"}) == 60
    assert retry_pause(2, {"Retry-After": "soon"}) == 2
    in_a_while = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert retry_pause(1, {"Retry-After": in_a_while}) == 60
    long_ago = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert retry_pause(2, {"Retry-After": long_ago}) == 2  # a date gone by: the pause of the try
