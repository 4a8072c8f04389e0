"""Rate limits of one instance: failed logins and sends.

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
    """A token bucket per key: bursts of ``burst``, ``rate`` per second sustained."""

    def __init__(self, burst: int, rate: float, what: str) -> None:
        self.burst = burst
        self.rate = rate
        self.what = what
        self._buckets: dict[str, tuple[float, float]] = {}  # key: (tokens, at)

    def take(self, key: str) -> None:
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            retry = max(1, math.ceil((1 - tokens) / self.rate))
            raise RateLimited(f"too many {self.what}; retry in {retry} s", retry_after=retry)
        if len(self._buckets) >= MAX_KEYS:
            self._buckets = {
                k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst
            }
        self._buckets[key] = (tokens - 1, now)


class RateLimits:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.failed_logins = Window(10, 15 * 60, "failed logins for this account from this address")
        self.sends = Bucket(300, 30, "messages sent")

    def login_attempt(self, username: str, address: str) -> None:
        """Count a login attempt as failed until ``login_succeeded`` says otherwise.

        Counting before the password check keeps parallel guesses from slipping past the limit.
        """
        if self.enabled:
            self.failed_logins.check(f"{username}\0{address}")
            self.failed_logins.hit(f"{username}\0{address}")

    def login_succeeded(self, username: str, address: str) -> None:
        if self.enabled:
            self.failed_logins.forget_one(f"{username}\0{address}")

    def send(self, user_id: int) -> None:
        if self.enabled:
            self.sends.take(str(user_id))
