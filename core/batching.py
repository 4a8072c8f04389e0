"""Group commit for any call: concurrent submissions travel together in one batch.

While one batch is on its way, new items wait; when it returns they all go in the next
one. Under light load a batch is one item and adds no delay; under heavy load each
round trip carries many items. The send path uses it for storage writes and idempotency
look-ups (the ``nats`` transport gathers its appends into atomic batches with a commit
loop of its own, which keeps two batches in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """``await submit(item)`` returns ``flush([... item ...])[i]`` for that item."""

    def __init__(self, flush: Callable[[list[In]], Awaitable[Sequence[Out]]], max_items: int = 500) -> None:
        self._flush = flush
        self._max_items = max_items
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_items], self._pending[self._max_items :]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as e:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = None
