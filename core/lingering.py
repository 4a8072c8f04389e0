"""An HTTP protocol that answers before it hangs up on a client still sending.

When Sanic refuses a request early (a body over ``REQUEST_MAX_SIZE`` gets 413), it closes
the socket while the client is still uploading; the kernel then resets the connection
and the client never reads the answer. Here the server half-closes instead, reads and
drops what the client still sends, and closes once the client does, or after a grace
period: the client gets its 413.
"""

from __future__ import annotations

from typing import Any

from sanic.server.protocols.websocket_protocol import WebSocketProtocol

LINGER_SECONDS = 2.0


class LingeringProtocol(WebSocketProtocol):
    __slots__ = ("_lingering",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lingering = False

    def close(self, timeout: float | None = None) -> None:
        transport = self.transport
        if (
            self.websocket is not None
            or self._lingering
            or transport is None
            or transport.is_closing()
            or not transport.can_write_eof()
        ):
            super().close(timeout)
            return
        self._lingering = True
        transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, WebSocketProtocol.close, self, timeout)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._lingering:
            WebSocketProtocol.close(self)
            return False
        return super().eof_received()
