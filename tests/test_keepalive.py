"""The server's keepalive: every WebSocket is pinged each ``ping_interval``; one that does
not answer is closed with 1011, one that does stays open.

The client here is websockets' sans-I/O protocol over a plain TCP stream, so the test
sees every ping frame and decides whether its pongs go out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from .kibitz_client import Client, Server, make_server

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def pinging(nats_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that pings every second."""
    data = tmp_path_factory.mktemp("keepalive") / "data"
    server = make_server(
        data, KIBITZ_NATS_URL=nats_url, KIBITZ_REDIS_URL=redis_url, KIBITZ_PING_INTERVAL="1s"
    )
    server.start()
    yield server
    server.stop()


class RawSocket:
    """A WebSocket client that shows every frame and answers pings only when told to."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol
    ) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.answer_pings = True
        self.events: deque[Response | Frame] = deque()

    @classmethod
    async def open(cls, server: Server, token: str) -> RawSocket:
        uri = parse_uri(server.ws_url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        protocol = ClientProtocol(uri)
        protocol.send_request(protocol.connect())
        socket = cls(reader, writer, protocol)
        await socket.flush()
        assert isinstance(await socket.next_event(), Response)
        protocol.send_text(orjson.dumps({"type": "hello", "token": token}))
        await socket.flush()
        ready = await socket.next_event()
        assert isinstance(ready, Frame) and orjson.loads(ready.data)["type"] == "ready"
        return socket

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> Response | Frame | None:
        """The next handshake response or frame; None once the server has hung up."""
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                self.protocol.receive_eof()
                self.events.extend(self.protocol.events_received())
                return self.events.popleft() if self.events else None
            self.protocol.receive_data(data)
            self.events.extend(self.protocol.events_received())
            if self.answer_pings:
                await self.flush()  # the protocol queued a pong for each ping
            else:
                self.protocol.data_to_send()  # drop the pongs
        return self.events.popleft()

    async def frames(self) -> AsyncIterator[Frame]:
        while (event := await self.next_event()) is not None:
            assert isinstance(event, Frame)
            yield event

    def close(self) -> None:
        self.writer.close()


async def test_a_client_that_answers_pings_stays_connected(pinging: Server) -> None:
    client = Client(pinging)
    try:
        alice = await client.user()
        socket = await RawSocket.open(pinging, alice.token)
        pings = 0
        async for frame in socket.frames():
            if frame.opcode is Opcode.PING:
                pings += 1
            if pings == 3:
                break
        assert pings == 3  # and every one answered: the socket is still open
        socket.protocol.send_text(orjson.dumps({"type": "ping"}))
        await socket.flush()
        async for frame in socket.frames():
            if frame.opcode is Opcode.TEXT:
                assert orjson.loads(frame.data) == {"type": "pong"}
                break
        else:
            pytest.fail("the server hung up on a client that answered its pings")
        socket.close()
    finally:
        await client.close()


async def test_a_client_that_stops_answering_pings_is_closed_with_1011(pinging: Server) -> None:
    client = Client(pinging)
    try:
        alice = await client.user()
        socket = await RawSocket.open(pinging, alice.token)
        socket.answer_pings = False
        opcodes = [frame.opcode async for frame in socket.frames()]
        assert opcodes[0] is Opcode.PING
        assert opcodes[-1] is Opcode.CLOSE
        assert socket.protocol.close_code == 1011
        socket.close()
    finally:
        await client.close()
