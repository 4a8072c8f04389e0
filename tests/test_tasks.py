"""Background tasks: held until they end, waited for at shutdown, and never waited for ever."""

from __future__ import annotations

import asyncio

from kibitz.tasks import Tasks


async def test_wait_returns_once_every_task_and_the_tasks_they_start_have_ended() -> None:
    tasks = Tasks()
    done: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0)
        done.append("child")

    async def parent() -> None:
        await asyncio.sleep(0)
        tasks.spawn(child())
        done.append("parent")

    tasks.spawn(parent())
    await tasks.wait()
    assert done == ["parent", "child"]


async def test_a_task_that_hangs_is_cancelled_after_the_timeout() -> None:
    tasks = Tasks()
    hanging = tasks.spawn(asyncio.Event().wait(), name="hangs")
    finished = tasks.spawn(asyncio.sleep(0), name="ends")
    await tasks.wait(timeout=0.2)
    assert hanging.cancelled() and finished.done() and not finished.cancelled()
