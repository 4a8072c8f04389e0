"""Password checks wait their turn fairly: by client address, real accounts first, bounded."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kibitz.errors import RateLimited
from kibitz.passwords import MAX_WAITING_PER_ADDRESS, WORKERS, PasswordWork
from kibitz.testing import wait_until


class Checks:
    """Password checks whose work (in a thread) waits until the test lets it end."""

    def __init__(self) -> None:
        self.work = PasswordWork()
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.tasks: list[asyncio.Task[Any]] = []

    def _job(self, label: str, _: str) -> str:
        self.started.append(label)
        self.gates[label].wait(30)
        return label

    async def queue(self, label: str, address: str, real_account: bool = True) -> None:
        self.gates[label] = threading.Event()
        self.tasks.append(asyncio.create_task(self.work._run(address, real_account, self._job, label, "")))
        await asyncio.sleep(0)  # let it take its place in the queue before the next one

    async def finish(self, label: str) -> None:
        """Let ``label``'s work end; wait until the thread it frees has started the next."""
        count = len(self.started)
        self.gates[label].set()
        await wait_until(
            lambda: len(self.started) > count or not self._waiting(), 10, f"a turn after {label}"
        )

    def _waiting(self) -> int:
        return sum(len(r) for r in self.work._rounds)

    async def close(self) -> None:
        for gate in self.gates.values():
            gate.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_turns_go_address_by_address_and_real_accounts_before_made_up_ones() -> None:
    checks = Checks()
    try:
        for n in range(WORKERS):
            await checks.queue(f"busy{n}", "10.0.0.1")
        await wait_until(lambda: len(checks.started) == WORKERS, 10, "the threads to be busy")
        # One address floods made-up usernames, then its own user logs in; two others follow.
        for n in range(5):
            await checks.queue(f"flood{n}", "10.0.0.1", real_account=False)
        await checks.queue("a-real", "10.0.0.1")
        await checks.queue("b1", "10.0.0.2")
        await checks.queue("b2", "10.0.0.2")
        await checks.queue("c1", "10.0.0.3")
        for label in [f"busy{n}" for n in range(WORKERS)] + ["a-real", "b1", "c1", "b2"]:
            await checks.finish(label)
        assert checks.started[WORKERS:] == ["a-real", "b1", "c1", "b2", "flood0", "flood1"]
    finally:
        await checks.close()


async def test_a_full_queue_answers_rate_limited_at_once() -> None:
    checks = Checks()
    try:
        for n in range(WORKERS + MAX_WAITING_PER_ADDRESS):
            await checks.queue(f"c{n}", "10.0.0.1")
        with pytest.raises(RateLimited) as refused:
            await checks.work._run("10.0.0.1", True, checks._job, "one too many", "")
        assert refused.value.retry_after == 1
        await checks.queue("elsewhere", "10.0.0.2")  # another address still has room
        await checks.queue("made-up", "10.0.0.1", real_account=False)  # and made-up usernames too
        assert not any(task.done() for task in checks.tasks[-2:])
    finally:
        await checks.close()


async def test_a_check_given_up_while_waiting_leaves_its_place() -> None:
    checks = Checks()
    try:
        for n in range(WORKERS):
            await checks.queue(f"busy{n}", "10.0.0.1")
        await checks.queue("gives up", "10.0.0.2")
        await checks.queue("stays", "10.0.0.3")
        checks.tasks[-2].cancel()
        await checks.finish("busy0")
        assert checks.started[WORKERS:] == ["stays"]
    finally:
        await checks.close()
