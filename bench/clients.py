"""WebSocket clients for the load agents: ``hello``/``ready``, then frames to a callback.

Frames are parsed with orjson; a socket's reader task hands every frame, with the
``time.monotonic()`` at which it was read, to the callback given at open. CLOCK_MONOTONIC
is one clock for every process on the machine, so a send time written into a message
body by one process can be compared with a receive time taken in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

Frame = dict[str, Any]
OnFrame = Callable[[Frame, float], None]

BODY_PAD = "x" * 48  # a message of about 70 characters, a typical chat line


def stamped_body(sent_at: float) -> str:
    """A message body that carries its send time (``time.monotonic()``)."""
    return f"{sent_at:.6f} {BODY_PAD}"


def sent_at(body: str) -> float:
    """The send time a ``stamped_body`` carries."""
    return float(body.partition(" ")[0])


class Socket:
    """One open WebSocket after ``ready``."""

    def __init__(self, ws: ClientConnection, ready: Frame, on_frame: OnFrame | None) -> None:
        self.ws = ws
        self.ready = ready
        self.cursor: str = ready["cursor"]
        self.on_frame = on_frame
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read()) if on_frame is not None else None

    @classmethod
    async def open(
        cls,
        url: str,
        token: str,
        on_frame: OnFrame | None = None,
        since: str | None = None,
        timeout: float = 30,
    ) -> Socket:
        """Connect, say hello, wait for ready. With no ``on_frame`` nothing is read after ready."""
        ws = await asyncio.wait_for(
            connect(url, max_size=2**24, compression=None, ping_interval=None, open_timeout=timeout), timeout
        )
        hello: Frame = {"type": "hello", "token": token}
        if since is not None:
            hello["since"] = since
        await ws.send(orjson.dumps(hello).decode())
        ready: Frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if ready.get("type") != "ready":
            await ws.close()
            raise RuntimeError(f"expected ready, got {ready}")
        return cls(ws, ready, on_frame)

    async def _read(self) -> None:
        assert self.on_frame is not None
        try:
            async for data in self.ws:
                now = time.monotonic()
                frame: Frame = orjson.loads(data)
                cursor = frame.get("cursor")
                if cursor:
                    self.cursor = cursor
                self.on_frame(frame, now)
        except Exception:  # a closed connection ends the reader
            pass
        finally:
            self.closed.set()

    async def send(self, frame: Frame) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


async def open_many(
    url: str, tokens: list[str], on_frame: OnFrame | None = None, concurrency: int = 50
) -> list[Socket]:
    """One socket per token (a token may repeat), at most ``concurrency`` handshakes at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(token: str) -> Socket:
        async with gate:
            return await Socket.open(url, token, on_frame)

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def close_all(sockets: list[Socket]) -> None:
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


async def until(done: Callable[[], bool], seconds: float, step: float = 0.02) -> bool:
    """Poll ``done`` until it is true or ``seconds`` pass; whether it came true."""
    deadline = time.monotonic() + seconds
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
