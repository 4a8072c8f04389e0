"""A minimal keep-alive HTTP/1.1 client for the measured requests.

httpx is fine for setting up, but it costs the client far more than the server spends
on a request: with a few hundred long polls answering at once, one httpx client takes
over a second to take in what the server answered within 100 ms, and on single
requests it adds about a millisecond. Timing the server needs a client that costs
little: one connection, a GET with a bearer token, status and body back.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlencode


class HttpError(RuntimeError):
    pass


class Connection:
    """One persistent connection to ``host:port``; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection now (else the first request does), or again if the server
        closed it meanwhile (it closes idle ones)."""
        if self._writer is None or self._writer.is_closing() or (self._reader and self._reader.at_eof()):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str, token: str, params: dict[str, object] | None = None) -> tuple[int, bytes]:
        """``GET path?params`` with ``Authorization: Bearer token``: the status and the body."""
        await self.connect()
        assert self._reader is not None and self._writer is not None
        target = path + ("?" + urlencode(params) if params else "")
        self._writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n".encode()
        )
        await self._writer.drain()
        status_line = await self._reader.readline()
        if not status_line:
            await self.close()
            raise HttpError("the server closed the connection")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked, keep_alive = False, True
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                keep_alive = False
        if chunked:
            body = await self._chunks()
        elif length is not None:
            body = await self._reader.readexactly(length)
        else:
            body = await self._reader.read()
            keep_alive = False
        if not keep_alive:
            await self.close()
        return status, body

    async def _chunks(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self._reader.readline()
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
