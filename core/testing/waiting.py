"""Waiting on a condition, never on a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

POLL_INTERVAL = 0.01


async def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> None:
    """Poll ``condition`` (a function returning a bool, or an awaitable bool) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        await asyncio.sleep(POLL_INTERVAL)
