"""Notifications, driven from the log: every accepted message, on one instance at a time.

The transport keeps every accepted message in commit order (``Transport.messages``). The
instance that holds the ``notify`` lease follows them from the position recorded in
that lease (its ``high_water``: the next position to notify), so what an instance had
not notified when it stopped or died is notified by the next holder; a send never
waits for any of it. For each batch, each notifier says which members it can reach at
all (who has a push subscription), presence tells which of those have no live
connection on any instance, and each notifier gets, per message, its own of those. The
position moves on once the notifiers have returned for a whole batch: after a crash a
message may be notified twice, never not at all. The first holder ever starts at the
end of the log, so old history is never notified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .leases import Lease, LeaseUnavailable
from .models import Conversation, Message
from .slots import Notifier

if TYPE_CHECKING:
    from .app import Kibitz

log = logging.getLogger("kibitz.notify")

LEASE_KIND = "notify"
LEASE_TTL = 15.0  # seconds another instance waits before it takes over from one that died
BATCH = 100  # messages read from the log at once
AT_ONCE = 16  # messages being notified at once
IDLE_WAIT = 1.0  # seconds between two looks at the log when the live feed is quiet


async def _reachable(notifier: Notifier, user_ids: list[int]) -> set[int]:
    """Whom the notifier can reach; everyone, if it cannot say (its ``notify`` then decides)."""
    try:
        return await notifier.reachable(user_ids)
    except Exception:
        log.exception("notify_failed", extra={"notifier": type(notifier).__name__})
        return set(user_ids)


class NotificationFollower:
    def __init__(self, app: Kibitz) -> None:
        self.app = app
        self._task: asyncio.Task[None] | None = None
        self._lease: Lease | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notification-follower")

    async def stop(self) -> None:
        """Stop following, and let the lease go so another instance takes over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self.app.leases.release(self._lease)
            self._lease = None

    async def _run(self) -> None:
        """Take the lease when it is free; follow the log while it is held."""
        leases = self.app.leases
        while True:
            try:
                lease = await leases.acquire(LEASE_KIND, 1, LEASE_TTL)
            except LeaseUnavailable:
                await asyncio.sleep(LEASE_TTL / 3)  # another instance notifies
                continue
            except Exception as e:
                log.warning("notify_lease_failed", extra={"error": f"{type(e).__name__}: {e}"})
                await asyncio.sleep(LEASE_TTL / 3)
                continue
            self._lease = lease
            while True:
                try:
                    await self._follow(lease)
                    break  # the lease was lost to another instance
                except Exception as e:  # the log, presence or the database failed: again from the position
                    log.warning("notify_follow_failed", extra={"error": f"{type(e).__name__}: {e}"})
                    await asyncio.sleep(1.0)
            self._lease = None

    async def _follow(self, lease: Lease) -> None:
        """Notify what follows the lease's position, until the lease is lost.

        The lease's ``high_water`` is the position after the last one notified (0: none
        ever was, so start at the end of the log).
        """
        app = self.app
        position = lease.high_water - 1 if lease.high_water else await app.transport.now()
        loop = asyncio.get_running_loop()
        renewed = 0.0
        while True:
            if loop.time() - renewed > LEASE_TTL / 3 or position + 1 > lease.high_water:
                if not await app.leases.renew(lease, position + 1):
                    log.warning("notify_lease_lost")
                    return
                lease.high_water, renewed = position + 1, loop.time()
            app.hub.log_grew.clear()
            records = await app.transport.messages(position, BATCH)
            if not records:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow the
                # cancellation that stop() sends if the event is set in the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAIT):
                        await app.hub.log_grew.wait()
                continue
            await self._notify_all([data for _, data in records])
            position = records[-1][0]

    async def _notify_all(self, records: list[bytes]) -> None:
        """Notify a batch: one presence look-up for all its members, then each message."""
        app = self.app
        messages = []
        for data in records:
            try:
                messages.append(Message.from_json(data))
            except (ValueError, KeyError, TypeError) as e:  # not a message: pass over it
                log.error("record_unreadable", extra={"error": f"{type(e).__name__}: {e}"})
        conversations = await app.conversations.get_many(list({m.conversation_id for m in messages}))
        owed = [
            (message, conversation, [u for u in conversation.members if u != message.sender_id])
            for message in messages
            if (conversation := conversations.get(message.conversation_id)) is not None
        ]
        members = list({u for _, _, others in owed for u in others})
        reachable = [await _reachable(notifier, members) for notifier in app.notifiers]
        live = await app.presence.live(list(set().union(*reachable)))
        turns = asyncio.Semaphore(AT_ONCE)

        async def notify(
            notifier: Notifier, message: Message, conversation: Conversation, offline: list[int]
        ) -> None:
            async with turns:
                try:
                    await notifier.notify(message, conversation, offline)
                except Exception:
                    log.exception("notify_failed", extra={"notifier": type(notifier).__name__})

        await asyncio.gather(
            *(
                notify(notifier, message, conversation, offline)
                for notifier, can in zip(app.notifiers, reachable, strict=True)
                for message, conversation, others in owed
                if (offline := [u for u in others if u in can and u not in live])
            )
        )
