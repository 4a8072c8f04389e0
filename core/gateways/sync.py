"""``GET /api/v1/sync``: polling and long polling of the caller's event log, and the catch-up reads
the WebSocket gateway shares with it.

A cursor is a signed position in the user's log (``kibitz.cursors``). When a read finds
the user caught up, the cursor moves on to the live feed's position taken before the
read, so an idle user's cursor keeps up with the log instead of ageing into expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from sanic import DefaultSanic, Request
from sanic.response import HTTPResponse

from ..api import PREFIX, authenticate, int_query, json, query
from ..errors import CursorExpired, CursorGone, InvalidRequest, Unauthorized
from ..models import User
from ..presence import POLL_GRACE

if TYPE_CHECKING:
    from ..app import Kibitz

MAX_LIMIT = 1000
MAX_TIMEOUT = 60


class Backlog:
    """One read of a user's log: events after a position, and where the next read starts."""

    def __init__(self, events: list[tuple[int, bytes]], cursor_position: int, has_more: bool) -> None:
        self.events = events
        self.cursor_position = cursor_position
        self.has_more = has_more


async def read_backlog(app: Kibitz, user_id: int, after: int, limit: int) -> Backlog:
    """Up to ``limit`` events after ``after``; raise ``CursorExpired`` if retention dropped some."""
    live_position = app.hub.position
    events, has_more = await app.transport.read(user_id, after, limit)
    position = events[-1][0] if events else after
    if not has_more:
        position = max(position, live_position)
    return Backlog(events, position, has_more)


def decode_cursor(app: Kibitz, user: User, cursor: str) -> int:
    position = app.cursors.decode(user.id, cursor)
    if position is None:
        raise InvalidRequest("since: not a cursor this server issued")
    return position


async def sync(request: Request) -> HTTPResponse:
    app = request.app.ctx.app
    user, device = await authenticate(request)
    timeout = int_query(request, "timeout", 0, 0, MAX_TIMEOUT)
    limit = int_query(request, "limit", 100, 1, MAX_LIMIT)
    since = query(request, "since")
    if since is None:
        now = await app.transport.now()
        return _answer(app, user, Backlog([], now, False))
    after = decode_cursor(app, user, since)
    poll = app.hub.start_poll(user.id, device.id) if timeout else None
    try:
        if poll is not None:
            await app.presence.arrived(user.id)  # counted at once, so the finally block undoes it
        backlog = await read_backlog(app, user.id, after, limit)
        if poll is not None and not backlog.events and not app.stopping.is_set():
            # Nothing after the cursor up to the end of the log: every event of the user
            # from here on reaches the poll through the live feed, so answer with those.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # no task per poll, unlike wait_for
                    await poll.arrived.wait()
            arrived = [(position, event) for position, event in poll.events if position > after]
            if arrived:
                events = arrived[:limit]
                backlog = Backlog(events, events[-1][0], len(arrived) > limit)
    except CursorExpired:
        raise CursorGone("the cursor is older than the event retention; reload history") from None
    finally:
        if poll is not None:
            app.hub.end_poll(user.id, poll)
            app.presence.left(user.id, POLL_GRACE)
    if poll is not None and poll.revoked:  # the device logged out while its poll was held
        raise Unauthorized("the token was revoked")
    return _answer(app, user, backlog)


def _answer(app: Kibitz, user: User, backlog: Backlog) -> HTTPResponse:
    cursor = app.cursors.encode(user.id, backlog.cursor_position)
    body = (
        b'{"events":['
        + b",".join(event for _, event in backlog.events)
        + b'],"cursor":"'
        + cursor.encode()
        + b'","has_more":'
        + (b"true" if backlog.has_more else b"false")
        + b"}"
    )
    return json(body)


def register(sanic: DefaultSanic) -> None:
    sanic.add_route(sync, PREFIX + "/sync", methods=["GET"], name="sync")
