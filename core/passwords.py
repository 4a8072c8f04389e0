"""Password hashing: argon2id in worker threads, a few at a time, served fairly by client address.

An argon2 hash takes 64 MiB and tens of milliseconds of a core, by design. So hashing
runs in at most ``WORKERS`` threads, and what waits for a thread waits in one queue per
client address, served in turn: a client that floods logins waits behind itself, while
someone else's login waits for at most one hash per address ahead of it. The queues are
bounded; a full one answers 429 ``rate_limited`` at once, before any hashing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import RateLimited

WORKERS = 2
MAX_WAITING = 128  # password checks waiting for a thread, from every address together
MAX_WAITING_PER_ADDRESS = 16

T = TypeVar("T")

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both failures take the same time.
_NO_SUCH_USER = _hasher.hash("kibitz-no-such-user")


class PasswordWork:
    """Hash and verify passwords for callers known by their client address."""

    def __init__(self) -> None:
        self._busy = 0  # threads hashing now
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._count = 0  # futures in ``_waiting``

    async def hash(self, address: str, password: str) -> str:
        return await self._run(address, _hasher.hash, password)

    async def verify(self, address: str, hashed: str | None, password: str) -> bool:
        """Whether ``password`` matches ``hashed``; for None (no such user) the same work, then False."""
        ok = await self._run(address, _verify, hashed or _NO_SUCH_USER, password)
        return ok and hashed is not None

    async def _run(self, address: str, work: Callable[[str, str], T], *args: str) -> T:
        await self._turn(address)
        thread = asyncio.ensure_future(asyncio.to_thread(work, *args))
        thread.add_done_callback(lambda _: self._pass_on())  # the thread's end frees the turn
        return await asyncio.shield(thread)

    async def _turn(self, address: str) -> None:
        """Until a thread is free for this caller: at once, or after the waiters ahead in turn."""
        if self._busy < WORKERS and not self._count:
            self._busy += 1
            return
        queue = self._waiting.setdefault(address, deque())
        if len(queue) >= MAX_WAITING_PER_ADDRESS or self._count >= MAX_WAITING:
            if not queue:
                del self._waiting[address]
            raise RateLimited("too many password checks are waiting; retry in 1 s", retry_after=1)
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        self._count += 1
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self._pass_on()  # handed a thread it will not use
            elif turn in queue:  # still waiting (else ``_pass_on`` has passed over it)
                queue.remove(turn)
                self._count -= 1
                if not queue and self._waiting.get(address) is queue:
                    del self._waiting[address]
            raise

    def _pass_on(self) -> None:
        """A thread is free: give it to the first waiter of the next address in turn."""
        while self._waiting:
            address, queue = self._waiting.popitem(last=False)
            turn = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting[address] = queue  # to the back of the round
            if not turn.done():
                turn.set_result(None)
                return
        self._busy -= 1


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False
