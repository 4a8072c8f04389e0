"""Background tasks with one owner: work that runs beside what started it, and that
shutdown waits for before the parts it uses stop.

asyncio keeps only a weak reference to a task, so a task nobody holds may vanish
mid-way; ``Tasks`` holds each one until it ends, logs a failure nobody awaited, and
``wait()`` returns once every task started so far (and any they started) has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("kibitz.tasks")

T = TypeVar("T")
WAIT_AT_MOST = 10.0  # seconds shutdown waits for background work before cancelling it


class Tasks:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``work`` as a task held until it ends; nobody awaits it, so a failure is logged."""
        task = asyncio.create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", exc_info=task.exception(), extra={"task": task.get_name()})

    async def wait(self, timeout: float = WAIT_AT_MOST) -> None:
        """Until every task started so far, and those they started meanwhile, has ended.

        What is still running after ``timeout`` seconds (a plugin hook that hangs) is
        cancelled and logged, so a shutdown always ends.
        """
        try:
            async with asyncio.timeout(timeout):
                while self._running:
                    await asyncio.gather(*self._running, return_exceptions=True)
        except TimeoutError:
            log.error("tasks_cancelled", extra={"tasks": sorted(t.get_name() for t in self._running)})
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task (loops that run until their owner closes) and wait until they end."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
