"""Presence: whether a user has a live connection on any instance, for notifications.

A device is live from its WebSocket's ``ready`` until that connection closes, and while
a long poll of it is in flight (PROTOCOL.md). This instance counts each user's live
connections; the first marks the user live in the transport, where every instance can
read it, before the connection is told it is live. When the last one ends the mark is
taken back: at once after a WebSocket, ``POLL_GRACE`` seconds after a long poll unless
another came meanwhile (a long-polling client asks again the moment it is answered, so
between two polls it is live for every purpose). Marks of one user are made in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .slots import Transport
from .tasks import Tasks

log = logging.getLogger("kibitz.presence")

POLL_GRACE = 2.0


class Presence:
    def __init__(self, transport: Transport, tasks: Tasks) -> None:
        self.transport = transport
        self.tasks = tasks
        self._live: dict[int, int] = {}  # live connections per user on this instance
        self._leaving: dict[int, asyncio.TimerHandle] = {}  # users whose last connection ended
        self._marking: dict[int, asyncio.Task[None]] = {}  # the latest mark of each user, until done

    async def arrived(self, user_id: int) -> None:
        """A connection of the user goes live: return once every instance can see it."""
        self._live[user_id] = self._live.get(user_id, 0) + 1
        leaving = self._leaving.pop(user_id, None)
        if leaving is not None:
            leaving.cancel()  # still marked live
        elif self._live[user_id] == 1:
            self._mark(user_id, True)
        marking = self._marking.get(user_id)
        if marking is not None:
            await asyncio.wait((marking,))

    def left(self, user_id: int, grace: float = 0.0) -> None:
        """A live connection of the user ended; with ``grace``, the mark outlives it that long."""
        self._live[user_id] -= 1
        if self._live[user_id]:
            return
        del self._live[user_id]
        if grace:
            self._leaving[user_id] = asyncio.get_running_loop().call_later(grace, self._gone, user_id)
        else:
            self._mark(user_id, False)

    def _gone(self, user_id: int) -> None:
        del self._leaving[user_id]
        self._mark(user_id, False)

    def _mark(self, user_id: int, live: bool) -> None:
        previous = self._marking.get(user_id)

        async def mark() -> None:
            if previous is not None:
                await asyncio.wait((previous,))
            try:
                await self.transport.mark_live(user_id, live)
            except Exception as e:  # a lost mark means a push too many or too few, not a lost message
                log.warning(
                    "presence_mark_failed", extra={"user": user_id, "error": f"{type(e).__name__}: {e}"}
                )

        task = self.tasks.spawn(mark(), name="presence-mark")
        self._marking[user_id] = task
        task.add_done_callback(lambda done: self._marked(user_id, done))

    def _marked(self, user_id: int, task: asyncio.Task[None]) -> None:
        if self._marking.get(user_id) is task:  # no later mark is queued behind it
            del self._marking[user_id]

    async def live(self, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` with a live connection on some instance."""
        return await self.transport.live_users(user_ids) if user_ids else set()

    def close(self) -> None:
        """Stop the grace timers (the transport takes back this instance's marks as it closes)."""
        for timer in self._leaving.values():
            timer.cancel()
        self._leaving.clear()
