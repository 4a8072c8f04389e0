"""WebSocket keepalive: every open socket is pinged once per ``ping_interval``, from one task.

Sockets sit on a wheel of one-second slots; each second the sweep visits the next slot
and pings its sockets, closing with 1011 those whose previous ping went unanswered. That
is one small write per socket per interval and no task or timer per socket: Sanic's own
keepalive, a task with a timer and a pong wait per socket, kept 13 % of a core busy
with 10,000 idle sockets.
"""

from __future__ import annotations

import asyncio
import logging

from sanic import DefaultSanic
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.protocol import State

log = logging.getLogger("kibitz.ws")

PING = b"kibitz"  # the payload of every keepalive ping; Sanic resolves it when the pong comes
CLOSE_NO_PONG = 1011


class Keepalive:
    def __init__(self, interval: float) -> None:
        self.slots: list[set[WebsocketImplProtocol]] = [set() for _ in range(max(1, round(interval)))]
        self.slot_of: dict[WebsocketImplProtocol, int] = {}
        self.tick = interval / len(self.slots)
        self.turn = 0  # the slot the next sweep visits
        self.task: asyncio.Task[None] | None = None

    def add(self, ws: WebsocketImplProtocol) -> None:
        """Put a new socket on the slot visited last: its first ping comes an interval on."""
        slot = (self.turn - 1) % len(self.slots)
        self.slots[slot].add(ws)
        self.slot_of[ws] = slot

    def remove(self, ws: WebsocketImplProtocol) -> None:
        slot = self.slot_of.pop(ws, None)
        if slot is not None:
            self.slots[slot].discard(ws)

    async def run(self) -> None:
        """Each tick, ping the sockets of the next slot; one failing ping skips only itself."""
        while True:
            await asyncio.sleep(self.tick)
            due = self.slots[self.turn]
            self.turn = (self.turn + 1) % len(self.slots)
            for ws in list(due):
                try:
                    ping(ws)
                except Exception:
                    log.exception("keepalive_ping_failed")

    async def start(self, sanic: DefaultSanic) -> None:
        """Sanic listener: after the server starts."""
        self.task = asyncio.create_task(self.run(), name="websocket-keepalive")

    async def stop(self, sanic: DefaultSanic) -> None:
        """Sanic listener: before the server stops."""
        if self.task is not None:
            self.task.cancel()


def ping(ws: WebsocketImplProtocol) -> None:
    """A keepalive ping; if the previous one is still unanswered, close the socket instead.

    Written straight to the transport, as Sanic's own ``fail_connection`` does, so a
    client that stopped reading cannot hold up the sweep.
    """
    transport = ws.io_proto.transport if ws.io_proto else None
    if ws.ws_proto.state is not State.OPEN or transport is None or transport.is_closing() or ws.loop is None:
        return
    if PING in ws.pings:  # Sanic removes a ping from ``pings`` when its pong arrives
        ws.fail_connection(CLOSE_NO_PONG, "keepalive ping timeout")
        return
    ws.pings[PING] = ws.loop.create_future()
    ws.ws_proto.send_ping(PING)
    for data in ws.ws_proto.data_to_send():
        transport.write(data)
