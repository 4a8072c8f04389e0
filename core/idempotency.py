"""One message per ``(sender, client_msg_id)``, whichever instance a send or its resend reaches.

Before a send is appended, its key is claimed in storage for this instance
(``Storage.claim_sent``), in one batched round trip with the look-up of a message already
sent with it. Of two sends of one key reaching two instances at once, one claims it; the
other waits for that one's message to be stored and answers with it, or, if it is not
stored within ``WAIT`` seconds, answers 503 so that the client retries. Sends of one key
on one instance share one task before they get here (``Messages.send``).

A claim is released when its send fails before anything was written. After an append
whose outcome is unknown it is kept until it expires (``TTL``), and the next send of the
key here first lets storage catch up with the log, so it finds the message if the log
took it. A send that takes longer than ``TTL`` from its claim to storage could be
accepted twice: appends answer or fail long before that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .batching import Batcher
from .errors import Unavailable
from .slots import Storage

if TYPE_CHECKING:
    from .messages import StorageFollower

TTL = 120.0  # seconds a claim holds its key
WAIT = 5.0  # seconds a send waits for another instance's send of its key
POLL = 0.05  # seconds between two looks at that other send
MAX_UNCERTAIN = 10_000

log = logging.getLogger("kibitz.messages")

Key = tuple[int, str]


class SentKeys:
    """The claims of this instance (``owner``) on idempotency keys."""

    def __init__(self, storage: Storage, follower: StorageFollower, owner: str) -> None:
        self.storage = storage
        self.follower = follower
        self.owner = owner
        self._claims: Batcher[Key, bytes | bool] = Batcher(self._claim_many)
        # Sends whose append failed without a clear answer: the log may hold them anyway.
        self._uncertain: dict[Key, None] = {}

    async def claim(self, sender_id: int, client_msg_id: str) -> bytes | None:
        """The message already sent with this key, or None once this instance holds it."""
        key = (sender_id, client_msg_id)
        if key in self._uncertain:
            await self.follower.catch_up()
            del self._uncertain[key]
        deadline = time.monotonic() + WAIT
        while True:
            found = await self._claims.submit(key)
            if found is True:
                return None
            if found is not False:
                return found
            if time.monotonic() > deadline:
                raise Unavailable(
                    "a send with this client_msg_id is under way on another instance; retry it", retry_after=1
                )
            await asyncio.sleep(POLL)  # the pause between two looks at the other instance's send

    async def failed(self, sender_id: int, client_msg_id: str) -> None:
        """The send failed: its key is free again, unless its append's outcome is unknown
        (``uncertain``), when the claim is kept until it expires."""
        if (sender_id, client_msg_id) in self._uncertain:
            return
        try:
            await self.storage.release_sent([(sender_id, client_msg_id)], self.owner)
        except Exception as e:  # the claim expires instead
            log.warning("claim_release_failed", extra={"error": f"{type(e).__name__}: {e}"})

    def uncertain(self, sender_id: int, client_msg_id: str) -> None:
        """The send's append failed without a clear answer: the log may hold it."""
        self._uncertain[(sender_id, client_msg_id)] = None
        while len(self._uncertain) > MAX_UNCERTAIN:
            del self._uncertain[next(iter(self._uncertain))]

    async def _claim_many(self, keys: list[Key]) -> list[bytes | bool]:
        return await self.storage.claim_sent(keys, self.owner, TTL)
