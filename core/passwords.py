"""Password hashing: argon2id in worker threads, a few at a time, served fairly by client address.

An argon2 hash takes 64 MiB and tens of milliseconds of a core, by design. So hashing
runs in at most ``WORKERS`` threads, and what waits for a thread waits in one queue per
client address, served in turn: a client that floods logins waits behind itself, while
someone else's login waits for at most one hash per address ahead of it. Logins to
accounts that exist go before the stand-in checks made for unknown usernames, so a
flood of made-up usernames, even from one's own address, does not hold up a real
login. The queues are bounded; a full one answers 429 ``rate_limited`` at once, before
any hashing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import RateLimited

WORKERS = 2
MAX_WAITING = 128  # password checks waiting for a thread, from every address together
MAX_WAITING_PER_ADDRESS = 16  # of each kind: logins to real accounts, and the stand-ins

T = TypeVar("T")
Args = TypeVarTuple("Args")

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both failures take the same time.
_NO_SUCH_USER = _hasher.hash("kibitz-no-such-user")


class PasswordWork:
    """Hash and verify passwords for callers known by their client address."""

    def __init__(self) -> None:
        self._busy = 0  # threads hashing now
        # Checks for accounts that exist go first; the stand-in checks for unknown usernames
        # (done only so that both failures take the same time) wait until none is left.
        self._rounds = (_Round(), _Round())

    async def hash(self, address: str, password: str) -> str:
        return await self._run(address, True, _hasher.hash, password)

    async def verify(self, address: str, hashed: str | None, password: str) -> bool:
        """Whether ``password`` matches ``hashed``; for None (no such user) the same work, then False."""
        ok = await self._run(address, hashed is not None, _verify, hashed or _NO_SUCH_USER, password)
        return ok and hashed is not None

    async def _run(self, address: str, first: bool, work: Callable[[*Args], T], *args: *Args) -> T:
        await self._turn(address, self._rounds[0 if first else 1])
        thread = asyncio.ensure_future(asyncio.to_thread(work, *args))
        thread.add_done_callback(lambda _: self._pass_on())  # the thread's end frees the turn
        return await asyncio.shield(thread)

    async def _turn(self, address: str, round_: _Round) -> None:
        """Until a thread is free for this caller: at once, or after the waiters ahead in turn."""
        waiting = sum(len(r) for r in self._rounds)
        if self._busy < WORKERS and not waiting:
            self._busy += 1
            return
        if round_.waiting(address) >= MAX_WAITING_PER_ADDRESS or waiting >= MAX_WAITING:
            raise RateLimited("too many password checks are waiting; retry in 1 s", retry_after=1)
        turn = asyncio.get_running_loop().create_future()
        round_.add(address, turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self._pass_on()  # handed a thread it will not use
            else:
                round_.remove(address, turn)
            raise

    def _pass_on(self) -> None:
        """A thread is free: give it to the next waiter in turn."""
        for round_ in self._rounds:
            while (turn := round_.take()) is not None:
                if not turn.done():
                    turn.set_result(None)
                    return
        self._busy -= 1


class _Round:
    """Waiters in one queue per client address, served one address after another."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def waiting(self, address: str) -> int:
        queue = self._queues.get(address)
        return len(queue) if queue else 0

    def add(self, address: str, turn: asyncio.Future[None]) -> None:
        self._queues.setdefault(address, deque()).append(turn)
        self._count += 1

    def remove(self, address: str, turn: asyncio.Future[None]) -> None:
        """Take back a waiter that gave up (if ``take`` has not passed over it already)."""
        queue = self._queues.get(address)
        if queue is not None and turn in queue:
            queue.remove(turn)
            self._count -= 1
            if not queue:
                del self._queues[address]

    def take(self) -> asyncio.Future[None] | None:
        """The first waiter of the next address in turn, which goes to the back of the round."""
        if not self._queues:
            return None
        address, queue = self._queues.popitem(last=False)
        turn = queue.popleft()
        self._count -= 1
        if queue:
            self._queues[address] = queue
        return turn


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False
