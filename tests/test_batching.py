"""Group commit: concurrent submissions share one flush, results and errors reach their callers."""

from __future__ import annotations

import asyncio

import pytest

from kibitz.batching import Batcher


async def test_concurrent_items_share_a_flush_and_get_their_own_results() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_items=4)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert all(len(batch) <= 4 for batch in batches)
    assert len(batches) < 10  # items travelled together


async def test_a_failed_flush_fails_its_items_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flush(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_items=1)
    first, second = await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
    assert isinstance(first, ConnectionError)
    assert second == "b"
    assert await batcher.submit("c") == "c"


async def test_a_lone_item_is_flushed_at_once() -> None:
    async def flush(items: list[int]) -> list[int]:
        return items

    batcher: Batcher[int, int] = Batcher(flush)
    assert await asyncio.wait_for(batcher.submit(7), 5) == 7


@pytest.mark.parametrize("count", [1, 501])
async def test_results_line_up_with_items(count: int) -> None:
    async def flush(items: list[int]) -> list[str]:
        return [str(i) for i in items]

    batcher: Batcher[int, str] = Batcher(flush)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(count))) == [str(i) for i in range(count)]
