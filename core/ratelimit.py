"""Rate limits of one instance: failed logins, sends, and frames on one WebSocket.

The defaults let people and bots work normally (see docs/api.md); ``KIBITZ_RATE_LIMITS=off``
turns them all off. Counters live in memory: each instance limits what reaches it.
"""

from __future__ import annotations

import math
import time
from collections import deque

from .errors import RateLimited

MAX_KEYS = 100_000


class Window:
    """At most ``limit`` hits per key within ``seconds`` (a sliding window)."""

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

    def check(self, key: str) -> None:
        """Raise ``RateLimited`` (with the seconds until a hit frees up) if the key is at its limit."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if len(hits) >= self.limit:
            retry = max(1, math.ceil(hits[0] + self.seconds - now))
            raise RateLimited(f"too many {self.what}; retry in {retry} s", retry_after=retry)

    def hit(self, key: str) -> None:
        self._recent(key, time.monotonic()).append(time.monotonic())

    def forget_one(self, key: str) -> None:
        """Take back the latest hit (an attempt that turned out not to count)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()


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


class Buckets:
    """A ``Bucket`` per key; a refused take raises ``RateLimited``."""

    def __init__(self, burst: int, rate: float, what: str) -> None:
        self.burst = burst
        self.rate = rate
        self.what = what
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._forget_full()
            bucket = self._buckets[key] = Bucket(self.burst, self.rate)
        retry = bucket.take()
        if retry is not None:
            bucket.tokens += 1  # refused, so not taken
            raise RateLimited(f"too many {self.what}; retry in {retry} s", retry_after=retry)

    def _forget_full(self) -> None:
        """Drop the buckets that have filled up again: a new one would be the same."""
        now = time.monotonic()
        self._buckets = {
            key: b for key, b in self._buckets.items() if b.tokens + (now - b.at) * b.rate < b.burst
        }


FRAME_BURST = 300  # frames one WebSocket may send at once
FRAME_RATE = 50  # frames per second sustained, per WebSocket


class RateLimits:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.failed_logins = Window(10, 15 * 60, "failed logins for this account from this address")
        self.failed_logins_here = Window(100, 15 * 60, "failed logins from this address")
        self.sends = Buckets(300, 30, "messages sent")

    def login_attempt(self, username: str, address: str) -> None:
        """Count a login attempt as failed, for the account and for the address, until
        ``login_forgiven`` takes it back.

        Counting before the password check keeps parallel guesses from slipping past the limit.
        """
        if self.enabled:
            self.failed_logins_here.check(address)
            self.failed_logins.check(f"{username}\0{address}")
            self.failed_logins_here.hit(address)
            self.failed_logins.hit(f"{username}\0{address}")

    def login_forgiven(self, username: str, address: str) -> None:
        """Take back the attempt ``login_attempt`` counted: it succeeded, or no password was checked."""
        if self.enabled:
            self.failed_logins_here.forget_one(address)
            self.failed_logins.forget_one(f"{username}\0{address}")

    def send(self, user_id: int) -> None:
        if self.enabled:
            self.sends.take(str(user_id))

    def frames(self) -> Bucket | None:
        """The frame allowance of a new WebSocket (None when limits are off)."""
        return Bucket(FRAME_BURST, FRAME_RATE) if self.enabled else None
