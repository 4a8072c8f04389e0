"""``GET /api/v1/ws``: the WebSocket gateway.

A connection says ``hello`` with its token (and a cursor to resume from), gets ``ready``
once live delivery to it is in place, then the backlog after its cursor, then live
events, each exactly once and in log order. It can send, mark read, say it is typing and
ping. Every frame the server writes goes through one bounded queue and one writer task;
a client too slow to take its events is closed (1013) and resumes from its cursor.
Frames are decoded by ``kibitz.inputs``. Abuse is bounded: a user has at most
``MAX_SOCKETS_PER_USER`` sockets on an instance (one more is closed with 4429), and a
socket sends within its frame allowance (``RateLimits.frames``). Pings to keep sockets
alive are ``kibitz.gateways.keepalive``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from sanic import DefaultSanic, Request
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..api import PREFIX
from ..errors import ApiError, CursorExpired, InvalidRequest
from ..inputs import Frame, Hello, Ping, Read, Send, Typing, decode_frame
from ..messages import SendOrder
from ..models import Device, User
from .keepalive import Keepalive
from .sync import Backlog, read_backlog

if TYPE_CHECKING:
    from ..app import Kibitz

log = logging.getLogger("kibitz.ws")

HELLO_TIMEOUT = 10.0
QUEUE_FRAMES = 2048  # frames waiting for a slow client before it is closed
SENDS_IN_FLIGHT = 32  # sends of one connection being accepted at once; more frames wait
WRITE_FRAMES = 64  # frames written in one system call at most
REPLAY_PAGE = 500
TYPING_INTERVAL = 2.0  # seconds: typing frames closer together than this are not passed on

MAX_SOCKETS_PER_USER = 64  # WebSockets one user may have open on one instance

CLOSE_GOING_AWAY = 1001
CLOSE_ALL_TIMEOUT = 5.0
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_CURSOR = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_CURSOR_EXPIRED = 4410
CLOSE_TOO_MANY = 4429


class Connection:
    """One live WebSocket of one device: what the hub delivers to."""

    def __init__(self, ws: WebsocketImplProtocol, app: Kibitz, user: User, device: Device) -> None:
        self.ws = ws
        self.app = app
        self.user = user
        self.user_id = user.id
        self.device_id = device.id
        self.device = device
        self.queue: asyncio.Queue[bytes | tuple[int, str]] = asyncio.Queue(QUEUE_FRAMES)
        self.position = 0  # the position of the last event written to this connection
        self.replaying = True
        self.held: list[tuple[int, bytes]] = []  # live events that arrived during the replay
        self.closing = False
        self.typed: dict[int, float] = {}  # conversation id: when this connection last said typing
        self.order = SendOrder()
        self.sends = asyncio.Semaphore(SENDS_IN_FLIGHT)
        self.ended = asyncio.Event()  # set once the handler has let the connection go

    # -- from the hub ---------------------------------------------------------------------

    def deliver(self, position: int, event: bytes) -> None:
        if self.closing:
            return
        if self.replaying:
            self.held.append((position, event))
            if len(self.held) > QUEUE_FRAMES * 4:
                self.close(CLOSE_TRY_AGAIN, "too far behind; resume from your cursor")
        elif position > self.position:
            self.position = position
            self.put(self.event_frame(position, event))

    def signal(self, payload: bytes) -> None:
        self.put(b'{"type":"event","event":' + payload + b"}")

    def revoke(self) -> None:
        self.close(CLOSE_UNAUTHORIZED, "token revoked")

    # -- writing ------------------------------------------------------------------------

    def event_frame(self, position: int, event: bytes) -> bytes:
        cursor = self.app.cursors.encode(self.user_id, position)
        return b'{"type":"event","event":' + event + b',"cursor":"' + cursor.encode() + b'"}'

    def put(self, frame: bytes) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(CLOSE_TRY_AGAIN, "too far behind; resume from your cursor")

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (a control item in the same queue)."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((code, reason))
        if self.queue.full():  # no room even for the close: close now
            self.app.tasks.spawn(self.ws.close(code, reason))

    async def write_loop(self) -> None:
        """Write the queued frames, all that are waiting in one system call, until a close."""
        queue = self.queue
        while True:
            item: bytes | tuple[int, str] | None = await queue.get()  # None: nothing more waiting
            frames = []
            while isinstance(item, bytes):
                frames.append(item)
                item = queue.get_nowait() if not queue.empty() and len(frames) < WRITE_FRAMES else None
            if frames and not await self.write(frames):
                return
            if isinstance(item, tuple):
                await self.ws.close(*item)
                return

    async def write(self, frames: list[bytes]) -> bool:
        """Frame the texts and write them at once; False once the socket is closing.

        What ``ws.send`` does for one frame (under the same lock), for many.
        """
        ws = self.ws
        async with ws.conn_mutex:
            if ws.ws_proto.state is not State.OPEN:
                return False
            for frame in frames:
                ws.ws_proto.send_text(frame)
            await ws.send_data([b"".join(ws.ws_proto.data_to_send())])  # type: ignore[no-untyped-call]  # unannotated in Sanic
        return True

    # -- replay ------------------------------------------------------------------------------

    async def replay(self, after: int, first: Backlog | None) -> None:
        """Write the backlog after ``after`` then the events held meanwhile, then go live."""
        position = after
        backlog = first
        while True:
            if backlog is None:
                backlog = await read_backlog(self.app, self.user_id, position, REPLAY_PAGE)
            for event_position, event in backlog.events:
                await self.queue.put(self.event_frame(event_position, event))
                position = event_position
            if not backlog.has_more:
                break
            backlog = None
        self.position = position
        self.replaying = False
        held, self.held = self.held, []
        for event_position, event in held:
            self.deliver(event_position, event)


async def websocket(request: Request, ws: WebsocketImplProtocol) -> None:
    app: Kibitz = request.app.ctx.app
    keepalive: Keepalive = request.app.ctx.keepalive
    if app.stopping.is_set():  # a client reconnecting during the drain: elsewhere, please
        await ws.close(CLOSE_GOING_AWAY, "server shutting down")
        return
    hello = await _hello(ws, app)
    if hello is None:
        return
    user, device, since = hello
    if app.rate_limits.enabled and len(app.hub.connections.get(user.id, ())) >= MAX_SOCKETS_PER_USER:
        await ws.close(CLOSE_TOO_MANY, f"this user has {MAX_SOCKETS_PER_USER} WebSockets open; close one")
        return
    connection = Connection(ws, app, user, device)
    app.hub.add(connection)
    if app.hub.was_revoked(device.id):  # logged out between the token check and now
        app.hub.remove(connection)
        await ws.close(CLOSE_UNAUTHORIZED, "token revoked")
        return
    if app.stopping.is_set():  # the drain began during its hello: close_all has passed it by
        app.hub.remove(connection)
        await ws.close(CLOSE_GOING_AWAY, "server shutting down")
        return
    keepalive.add(ws)
    writer: asyncio.Task[None] | None = None
    try:
        await app.presence.arrived(user.id)  # counted at once, so the finally block undoes it
        first: Backlog | None = None
        if since is None:
            start = max(await app.transport.now(), app.hub.position)
        else:
            start = since
            try:
                first = await read_backlog(app, user.id, since, REPLAY_PAGE)
            except CursorExpired:
                await ws.close(
                    CLOSE_CURSOR_EXPIRED, "cursor expired; reload history, then connect without since"
                )
                return
        ready = {"type": "ready", "user": user.to_dict(), "cursor": app.cursors.encode(user.id, start)}
        await ws.send(orjson.dumps(ready).decode())
        writer = asyncio.create_task(connection.write_loop())
        app.tasks.spawn(app.hooks.call_each("connection_opened", user=user, device=device, app=app))
        await connection.replay(start, first)
        await _read_loop(ws, connection, app)
    except (ConnectionClosed, asyncio.CancelledError):
        pass
    finally:
        app.hub.remove(connection)
        connection.ended.set()
        app.presence.left(user.id)
        keepalive.remove(ws)
        if writer is not None:
            writer.cancel()
        app.tasks.spawn(app.hooks.call_each("connection_closed", user=user, device=device, app=app))


async def _hello(ws: WebsocketImplProtocol, app: Kibitz) -> tuple[User, Device, int | None] | None:
    """Read and check the ``hello`` frame; close the socket and return None if it fails."""
    try:
        data = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
    except TimeoutError:
        await ws.close(CLOSE_UNAUTHORIZED, "no hello within 10 seconds")
        return None
    if isinstance(data, bytes):
        await ws.close(CLOSE_UNSUPPORTED, "text frames only")
        return None
    try:
        hello = decode_frame(data or "")
    except InvalidRequest:
        hello = None
    if not isinstance(hello, Hello):
        await ws.close(CLOSE_UNAUTHORIZED, "the first frame must be a hello with a token")
        return None
    found = await app.accounts.authenticate(hello.token)
    if found is None:
        await ws.close(CLOSE_UNAUTHORIZED, "unknown or revoked token")
        return None
    user, device = found
    if hello.since is None:
        return user, device, None
    position = app.cursors.decode(user.id, hello.since)
    if position is None:
        await ws.close(CLOSE_BAD_CURSOR, "since: not a cursor this server issued")
        return None
    return user, device, position


async def _read_loop(ws: WebsocketImplProtocol, connection: Connection, app: Kibitz) -> None:
    """Answer each frame; sends run at once (up to ``SENDS_IN_FLIGHT``), in frame order.

    Frames beyond the connection's allowance (``RateLimits.frames``) are answered
    ``rate_limited`` and dropped; a client that goes on for a whole burst more is closed (1008).
    """
    allowance = app.rate_limits.frames()
    while True:
        data = await ws.recv()
        if data is None:
            return
        if isinstance(data, bytes):
            await ws.close(CLOSE_UNSUPPORTED, "text frames only")
            return
        if allowance is not None and (retry := allowance.take()) is not None:
            if allowance.debt > allowance.burst:
                await ws.close(CLOSE_POLICY, "too many frames; slow down")
                return
            connection.put(
                _error("rate_limited", f"too many frames; retry in {retry} s", _msg_id(data), retry)
            )
            continue
        try:
            frame = decode_frame(data)
        except InvalidRequest as e:
            connection.put(_error(e.code, e.message, _msg_id(data)))
            continue
        if not isinstance(frame, Send):
            await _answer(frame, connection, app)
            continue
        await connection.sends.acquire()
        app.tasks.spawn(_answer(frame, connection, app)).add_done_callback(
            lambda _: connection.sends.release()
        )


async def _answer(frame: Frame, connection: Connection, app: Kibitz) -> None:
    """Run a frame's handler; any failure becomes an error frame."""
    client_msg_id = frame.client_msg_id if isinstance(frame, Send) else None
    try:
        await HANDLERS[type(frame)](frame, connection, app)
    except ApiError as e:
        connection.put(_error(e.code, e.message, client_msg_id, e.retry_after))
    except (ConnectionError, TimeoutError) as e:
        log.warning("backing_service_failed", extra={"frame": type(frame).__name__, "error": str(e)})
        connection.put(
            _error("unavailable", "a backing service did not answer; retry shortly", client_msg_id, 1)
        )
    except Exception:
        log.exception("frame_failed", extra={"frame": type(frame).__name__})
        connection.put(
            _error("internal_error", "the server failed to answer; this has been logged", client_msg_id)
        )


async def _send(frame: Send, connection: Connection, app: Kibitz) -> None:
    turn = connection.order.take()  # first, while the frames' tasks still start in order
    try:
        _, data, _ = await app.messages.submit(
            connection.user, int(frame.conversation_id), frame.body, frame.client_msg_id, turn
        )
    finally:
        turn.release()  # if this send ended before its message joined the log
    connection.put(
        b'{"type":"sent","client_msg_id":' + orjson.dumps(frame.client_msg_id) + b',"message":' + data + b"}"
    )


async def _read(frame: Read, connection: Connection, app: Kibitz) -> None:
    conversation = await app.conversations.of_member(int(frame.conversation_id), connection.user_id)
    await app.conversations.mark_read(conversation, connection.user_id, int(frame.message_id))


async def _typing(frame: Typing, connection: Connection, app: Kibitz) -> None:
    cid = int(frame.conversation_id)
    conversation = await app.conversations.of_member(cid, connection.user_id)
    now = time.monotonic()
    if now - connection.typed.get(cid, -TYPING_INTERVAL) < TYPING_INTERVAL:
        return  # said moments ago: the others' typing indicator is still on
    connection.typed[cid] = now
    others = [uid for uid in conversation.members if uid != connection.user_id]
    if others:
        event = {"type": "typing", "conversation_id": str(cid), "user_id": str(connection.user_id)}
        await app.transport.signal(others, orjson.dumps(event))


async def _ping(frame: Ping, connection: Connection, app: Kibitz) -> None:
    connection.put(b'{"type":"pong"}')


async def _second_hello(frame: Hello, connection: Connection, app: Kibitz) -> None:
    raise InvalidRequest("already said hello")


HANDLERS: dict[type[Any], Callable[[Any, Connection, Kibitz], Awaitable[None]]] = {
    Send: _send,
    Read: _read,
    Typing: _typing,
    Ping: _ping,
    Hello: _second_hello,
}


def _msg_id(data: str) -> str | None:
    """The ``client_msg_id`` of a frame that could not be taken, so a client can match the error."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    value = frame.get("client_msg_id") if isinstance(frame, dict) else None
    return value if isinstance(value, str) else None


def _error(
    code: str, message: str, client_msg_id: str | None = None, retry_after: int | None = None
) -> bytes:
    """An error frame; ``retry_after`` (seconds, an extension) comes with rate_limited and unavailable."""
    frame: dict[str, object] = {"type": "error", "code": code, "message": message}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return orjson.dumps(frame)


async def close_all(app: Kibitz) -> None:
    """Close every WebSocket of this instance with 1001, so clients reconnect elsewhere;
    return once they are closed (at most ``CLOSE_ALL_TIMEOUT``), before the server itself
    closes what is left, with 1000 (which would tell clients nothing)."""
    closing = [c for connections in list(app.hub.connections.values()) for c in connections]
    for connection in closing:
        connection.close(CLOSE_GOING_AWAY, "server shutting down")
    if closing:
        waiters = [asyncio.create_task(c.ended.wait()) for c in closing]
        _, late = await asyncio.wait(waiters, timeout=CLOSE_ALL_TIMEOUT)
        for waiter in late:
            waiter.cancel()


def register(sanic: DefaultSanic, ping_interval: float) -> None:
    keepalive = Keepalive(ping_interval)
    sanic.ctx.keepalive = keepalive
    sanic.after_server_start(keepalive.start)
    sanic.before_server_stop(keepalive.stop)
    sanic.add_websocket_route(websocket, PREFIX + "/ws", name="websocket")
