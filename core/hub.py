"""The live side of one instance: which devices are connected, and handing them events.

The transport's live feed calls ``Hub.on_event`` for every event of every user, in log
order. The hub passes each to the WebSocket connections of that user on this instance
and wakes the long polls waiting for that user. Live-only signals (typing, a revoked
device) arrive through ``Hub.on_signal``. A revoked device's WebSockets close with 4401
and its long polls answer 401; the hub remembers the revocation for a while, for a
connection that checked its token just before and goes live just after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from .metrics import Metrics

CONVERSATION_EVENT = b'{"type":"conversation","conversation":{"id":"'
REVOKE_SIGNAL = b"!revoke "  # a control signal, never shown to clients: b"!revoke <device id>"


def revocation(device_id: int) -> bytes:
    """The signal that closes a revoked device's connections on every instance."""
    return REVOKE_SIGNAL + b"%d" % device_id


REMEMBER_REVOKED = 120.0  # seconds a revocation is remembered for connections just starting


class LiveConnection(Protocol):
    user_id: int
    device_id: int
    ended: asyncio.Event  # set once the connection is let go (shutdown waits for it)

    def deliver(self, position: int, event: bytes) -> None:
        """An event of the user's log, in log order; must not block."""

    def signal(self, payload: bytes) -> None:
        """A live-only event (typing); must not block."""

    def revoke(self) -> None:
        """The device's token was revoked: close with 4401."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after what is already queued for it."""


class Poll:
    """A long poll in flight: the user's events that arrive while it waits, in log order."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.events: list[tuple[int, bytes]] = []
        self.arrived = asyncio.Event()
        self.revoked = False

    def revoke(self) -> None:
        self.revoked = True
        self.arrived.set()

    def add(self, position: int, event: bytes) -> None:
        self.events.append((position, event))
        self.arrived.set()


class Hub:
    def __init__(self, metrics: Metrics, forget_conversation: Callable[[int], None]) -> None:
        self.metrics = metrics
        self.forget_conversation = forget_conversation
        self.connections: dict[int, set[LiveConnection]] = {}
        self.polls: dict[int, list[Poll]] = {}  # long polls in flight, per user
        # The largest position the live feed has handed over: every event at or before it
        # that belongs to a connected user has been delivered to that user's connections.
        self.position = 0
        self.log_grew = asyncio.Event()  # set by every event of the feed (for the log's followers)
        self._revoked: dict[int, float] = {}  # device id: when its revocation arrived

    # -- the feed ------------------------------------------------------------------

    def on_event(self, user_id: int, position: int, event: bytes, committed_at: float) -> None:
        self.position = max(self.position, position)
        self.log_grew.set()
        if event.startswith(CONVERSATION_EVENT):
            start = len(CONVERSATION_EVENT)
            self.forget_conversation(int(event[start : event.index(b'"', start)]))
        connections = self.connections.get(user_id)
        if connections:
            for connection in list(connections):
                connection.deliver(position, event)
            self.metrics.delivered(len(connections), time.time() - committed_at)
        for poll in self.polls.get(user_id, ()):
            poll.add(position, event)

    def on_signal(self, user_ids: tuple[int, ...], payload: bytes) -> None:
        if payload.startswith(REVOKE_SIGNAL):
            self._revoke(int(payload[len(REVOKE_SIGNAL) :]), user_ids)
            return
        for user_id in user_ids:
            for connection in list(self.connections.get(user_id, ())):
                connection.signal(payload)

    def _revoke(self, device_id: int, user_ids: tuple[int, ...]) -> None:
        now = time.monotonic()
        self._revoked = {d: at for d, at in self._revoked.items() if now - at < REMEMBER_REVOKED}
        self._revoked[device_id] = now
        for user_id in user_ids:
            for connection in list(self.connections.get(user_id, ())):
                if connection.device_id == device_id:
                    connection.revoke()
            for poll in self.polls.get(user_id, ()):
                if poll.device_id == device_id:
                    poll.revoke()

    def was_revoked(self, device_id: int) -> bool:
        """Whether the device's revocation passed through lately (its token checked out before)."""
        at = self._revoked.get(device_id)
        return at is not None and time.monotonic() - at < REMEMBER_REVOKED

    # -- connections -------------------------------------------------------------------

    def add(self, connection: LiveConnection) -> None:
        self.connections.setdefault(connection.user_id, set()).add(connection)
        self.metrics.connections.labels("websocket").inc()

    def remove(self, connection: LiveConnection) -> None:
        connections = self.connections.get(connection.user_id)
        if connections and connection in connections:
            connections.discard(connection)
            if not connections:
                del self.connections[connection.user_id]
            self.metrics.connections.labels("websocket").dec()

    def start_poll(self, user_id: int, device_id: int) -> Poll:
        """A long poll begins: it collects the events of ``user_id`` that arrive from now on."""
        poll = Poll(device_id)
        if self.was_revoked(device_id):
            poll.revoke()
        self.polls.setdefault(user_id, []).append(poll)
        self.metrics.connections.labels("longpoll").inc()
        return poll

    def end_poll(self, user_id: int, poll: Poll) -> None:
        waiters = self.polls.get(user_id, [])
        waiters.remove(poll)
        if not waiters:
            del self.polls[user_id]
        self.metrics.connections.labels("longpoll").dec()

    @property
    def count(self) -> int:
        """Open WebSockets and long polls in flight on this instance."""
        return sum(len(c) for c in self.connections.values()) + sum(len(p) for p in self.polls.values())

    def close_all(self) -> None:
        """Wake every long poll (shutdown); WebSockets are closed by their gateway."""
        for polls in self.polls.values():
            for poll in polls:
                poll.arrived.set()
