"""Rate limits: failed logins, sends, and frames on one WebSocket.

Logins and sends are moving windows: at most ``limit`` hits per key in the last
``seconds``. They are counted in this instance's memory (``LocalWindow``), or, with
``rate_limit_url``, in a Redis that every instance shares (``SharedWindow``: the
``limits`` library's moving window, one Lua script per hit), so that a client spreading
its attempts over instances gets no more than at one. A shared window whose Redis does
not answer lets the hit through and logs a warning: a rate limiter that fails shut
would lock every user out. The frame allowance of a WebSocket is a token bucket of that
connection alone (``Bucket``), always in memory.

The defaults let people and bots work normally (see docs/api.md); ``KIBITZ_RATE_LIMITS=off``
turns them all off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import unquote

from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import ConnectionPool

from .errors import RateLimited

MAX_KEYS = 100_000  # keys a local window keeps before it forgets the idle ones
SHARED_TIMEOUT = 1.0  # seconds a shared window waits for Redis before it lets a hit through
FRAME_BURST = 300  # frames one WebSocket may send at once
FRAME_RATE = 50  # frames per second sustained, per WebSocket
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")  # a Redis Cluster's seed nodes follow

log = logging.getLogger("kibitz.ratelimit")


class Window(Protocol):
    """At most ``limit`` hits per key within ``seconds``; a refusal raises ``RateLimited``."""

    async def hit(self, key: str) -> None:
        """Count a hit, or raise if the key is at its limit (the refused hit is not counted)."""

    async def test(self, key: str) -> None:
        """Raise if the key is at its limit; count nothing."""

    async def clear(self, key: str) -> None:
        """Forget every hit of the key."""


def refusal(what: str, retry: float) -> RateLimited:
    seconds = max(1, math.ceil(retry))
    return RateLimited(f"too many {what}; retry in {seconds} s", retry_after=seconds)


class LocalWindow:
    """A ``Window`` in this instance's memory: the times of each key's recent hits."""

    def __init__(self, limit: int, seconds: float, what: str) -> None:
        self.limit = limit
        self.seconds = seconds
        self.what = what
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= MAX_KEYS:
                self._expire(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        return hits

    def _expire(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.seconds]:
            del self._hits[key]

    def _check(self, hits: deque[float], now: float) -> None:
        if len(hits) >= self.limit:
            raise refusal(self.what, hits[0] + self.seconds - now)

    async def hit(self, key: str) -> None:
        now = time.monotonic()
        hits = self._recent(key, now)
        self._check(hits, now)
        hits.append(now)

    async def test(self, key: str) -> None:
        now = time.monotonic()
        self._check(self._recent(key, now), now)

    async def clear(self, key: str) -> None:
        self._hits.pop(key, None)


class SharedWindow:
    """A ``Window`` in the Redis every instance shares, by ``limits``'s moving window."""

    def __init__(self, limiter: MovingWindowRateLimiter, limit: int, seconds: int, what: str) -> None:
        self.limiter = limiter
        self.item = RateLimitItemPerSecond(limit, seconds, namespace="kibitz")
        self.what = what

    async def _refuse(self, key: str) -> None:
        stats = await self.limiter.get_window_stats(self.item, self.what, key)
        raise refusal(self.what, stats.reset_time - time.time())

    async def hit(self, key: str) -> None:
        with _failing_open():
            if not await self.limiter.hit(self.item, self.what, key):
                await self._refuse(key)

    async def test(self, key: str) -> None:
        with _failing_open():
            if not await self.limiter.test(self.item, self.what, key):
                await self._refuse(key)

    async def clear(self, key: str) -> None:
        with _failing_open():
            await self.limiter.clear(self.item, self.what, key)


@contextlib.contextmanager
def _failing_open() -> Iterator[None]:
    """A refusal passes; any other failure (Redis does not answer) is logged and let through."""
    try:
        yield
    except RateLimited:
        raise
    except Exception as e:
        log.warning("rate_limit_storage_failed", extra={"error": f"{type(e).__name__}: {e}"})


class Bucket:
    """A token bucket: bursts of ``burst``, ``rate`` per second sustained.

    A refused take still takes a token (the bucket goes below zero), so ``debt`` tells
    how far a client went on sending after it was refused.
    """

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> int | None:
        """None if a token was free, else the whole seconds until one is."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - 1
        self.at = now
        if self.tokens >= 0:
            return None
        return max(1, math.ceil(-self.tokens / self.rate))

    @property
    def debt(self) -> float:
        """Tokens taken beyond the empty bucket and not yet refilled."""
        return max(0.0, -self.tokens)


class RateLimits:
    """Every limit of one instance, local or shared by ``url`` (a Redis or Redis Cluster URL, or "")."""

    def __init__(self, enabled: bool, url: str = "") -> None:
        self.enabled = enabled
        self._pool: ConnectionPool | None = None
        self._cluster: Any = None
        limiter: MovingWindowRateLimiter | None = None
        timeouts = {"socket_timeout": SHARED_TIMEOUT, "socket_connect_timeout": SHARED_TIMEOUT}
        if url.startswith(CLUSTER_SCHEMES):
            # limits makes the redis-py RedisCluster from the seed nodes (kept here to close);
            # it would take the credentials undecoded from the URL, so they go in decoded.
            scheme, _, rest = url.partition("://")
            auth, _, nodes = rest.partition("/")[0].rpartition("@")
            username, _, password = (unquote(part) for part in auth.partition(":"))
            credentials = {k: v for k, v in (("username", username), ("password", password)) if v}
            cluster: Any = storage_from_string(
                f"async+redis+cluster://{nodes}",
                implementation="redispy",
                ssl=scheme == "rediss+cluster",
                **timeouts,
                **credentials,
            )
            self._cluster = cluster.bridge.storage
            limiter = MovingWindowRateLimiter(cluster)
        elif url:
            self._pool = ConnectionPool.from_url(url, **timeouts)
            # limits types its options as scalars; redis-py takes the pool, kept here to close.
            pool: Any = self._pool
            storage = storage_from_string("async+redis://", implementation="redispy", connection_pool=pool)
            limiter = MovingWindowRateLimiter(storage)

        def window(limit: int, seconds: int, what: str) -> Window:
            if limiter is None:
                return LocalWindow(limit, seconds, what)
            return SharedWindow(limiter, limit, seconds, what)

        self.failed_logins = window(10, 15 * 60, "failed logins for this account from this address")
        self.failed_logins_here = window(100, 15 * 60, "failed logins from this address")
        self.sends = window(300, 10, "messages sent")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()
        if self._cluster is not None:
            await self._cluster.aclose()

    async def login_attempt(self, username: str, address: str) -> None:
        """Before a password is checked: refuse if the address or the account from it is at
        its limit. The attempt counts for the account at once (so parallel guesses cannot
        slip past), and for the address once it has failed (``login_failed``)."""
        if self.enabled:
            await self.failed_logins_here.test(address)
            await self.failed_logins.hit(f"{username}\0{address}")

    async def login_failed(self, address: str) -> None:
        if self.enabled:
            await self.failed_logins_here.hit(address)

    async def login_succeeded(self, username: str, address: str) -> None:
        """The account's failures from this address are forgotten."""
        if self.enabled:
            await self.failed_logins.clear(f"{username}\0{address}")

    async def send(self, user_id: int) -> None:
        if self.enabled:
            await self.sends.hit(str(user_id))

    def frames(self) -> Bucket | None:
        """The frame allowance of a new WebSocket (None when limits are off)."""
        return Bucket(FRAME_BURST, FRAME_RATE) if self.enabled else None
