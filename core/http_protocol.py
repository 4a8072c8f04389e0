"""The HTTP connection protocol: Sanic's, made safe against clients that misbehave.

- **Timeouts a slow client cannot stretch.** Sanic restarts its request clock on every
  byte received, so a client sending one byte a second holds a connection for ever.
  Here a request, headers and body, must arrive within ``request_timeout`` of its first
  byte (408 otherwise); a connection that has never sent a byte closes after
  ``FIRST_REQUEST_TIMEOUT``, an idle kept-alive one after ``keep_alive_timeout``. An
  upgraded WebSocket has no such timeouts: the gateway's keepalive pings watch it.
- **A cap on connections per client address** (``Clients``): one over it is answered
  429 ``rate_limited`` and closed before a byte of its request is read.
- **Answers reach clients still sending.** When Sanic refuses a request early (a body
  over ``REQUEST_MAX_SIZE`` gets 413) it closes the socket while the client is still
  uploading; the kernel then resets the connection and the client never reads the
  answer. Here the server half-closes, drops what the client still sends, and closes
  once the client does, or after ``LINGER_SECONDS``.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import orjson
from sanic.exceptions import RequestTimeout, ServiceUnavailable
from sanic.http import Stage
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

from .clients import Clients

FIRST_REQUEST_TIMEOUT = 10.0  # seconds a new connection may stay silent
LINGER_SECONDS = 2.0
CHECK_INTERVAL = 1.0  # seconds between two looks at a connection's timeouts, at most
RETRY_BUSY_ADDRESS = 10  # Retry-After, in seconds, for a connection over the per-address cap

_BODY = orjson.dumps(
    {"error": {"code": "rate_limited", "message": "too many open connections from your address"}}
)
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"retry-after: %d\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (RETRY_BUSY_ADDRESS, len(_BODY), _BODY)
)


class KibitzProtocol(WebSocketProtocol):
    __slots__ = ("_counted", "_lingering", "_peer", "_served")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lingering = False
        self._served = False  # a byte of a request has arrived
        self._peer = ""
        self._counted = False

    @property
    def _clients(self) -> Clients:
        clients: Clients = self.app.ctx.app.clients
        return clients

    # -- the cap per address ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[no-untyped-call]  # unannotated in Sanic
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self._counted = self._clients.connected(self._peer)
        if not self._counted:
            transport.write(TOO_MANY_CONNECTIONS)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._clients.disconnected(self._peer)
        super().connection_lost(exc)  # type: ignore[no-untyped-call]  # unannotated in Sanic

    # -- timeouts --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        http = getattr(self, "_http", None)
        if self.websocket is not None or http is None or http.stage is Stage.IDLE:
            # a request begins here: Sanic starts its clock
            super().data_received(data)  # type: ignore[no-untyped-call]  # unannotated in Sanic
            self._served = True
            return
        started = self._time
        super().data_received(data)  # type: ignore[no-untyped-call]  # unannotated in Sanic
        self._time = started  # the request's clock runs from its first byte, whatever follows

    def check_timeouts(self) -> None:
        """Cancel the connection's task once its stage has lasted too long; else look again soon.

        Sanic calls this once a connection is set up; it schedules itself from then on.
        """
        http = getattr(self, "_http", None)
        if not self._task or http is None:
            return
        arriving = http.stage is Stage.REQUEST or (http.stage is Stage.HANDLER and http.request_body)
        error: Exception | None = None
        if http.stage is Stage.IDLE:
            limit = self.keep_alive_timeout if self._served else FIRST_REQUEST_TIMEOUT
        elif arriving:
            limit, error = self.request_timeout, RequestTimeout("the request did not arrive in time")
        elif http.stage is Stage.HANDLER and http.upgrade_websocket:
            return
        else:
            limit, error = self.response_timeout, ServiceUnavailable("the response took too long")
        waited = monotonic() - self._time
        if waited <= limit:
            self._callback_check_timeouts = self.loop.call_later(
                max(0.1, min(limit - waited, CHECK_INTERVAL)), self.check_timeouts
            )
            return
        if arriving:
            http.request_body = None  # answer 408 and close; do not read the late rest first
        http.exception = error
        self._task.cancel("timeout")

    # -- lingering close ---------------------------------------------------------------------

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

    def eof_received(self) -> bool | None:
        if self._lingering:
            WebSocketProtocol.close(self)
            return False
        return super().eof_received()
