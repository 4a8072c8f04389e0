"""Seeding a long conversation straight into the server's embedded Redis.

A million messages through the API would take longer than the whole run, so they go in
through the storage plugin's own public API (``RedisStorage.append``, in large
batches, from two processes) on the embedded redis-server's port: the same keys and bytes the server writes
when it accepts a message (history, per-sender index, idempotency key). They are not in
the JetStream log (nobody's event log has them), which history reads do not need.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson

from kibitz import EPOCH_MS, TIME_SHIFT, PluginSettings, StoredMessage
from kibitz.plugins.redis import RedisStorage

from .clients import stamped_body

BATCH = 10_000
IN_PROCESS = 100_000  # fewer than this: not worth starting processes
PROCESSES = 2  # encoding the commands is the slow part, and it is Python: one process per core
ID_STEP = 1 << TIME_SHIFT  # one millisecond apart (the time sits above the lowest 12 bits)


def seeded_ids(newest_real: int, count: int) -> list[int]:
    """``count`` ids, oldest first, all below ``newest_real`` (a real message's id)."""
    return [newest_real - (count - k) * ID_STEP for k in range(count)]


def _created_at(message_id: int) -> str:
    """The time an id carries (``kibitz.first_id_of``: ms since 2026-01-01 above 12 bits)."""
    ms = (message_id >> TIME_SHIFT) + EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seeded_messages(
    conversation_id: str, senders: list[str], ids: list[int], first: int = 0
) -> list[StoredMessage]:
    """A message for each id, as the server stores it (senders taking turns); ``first``
    numbers the first one, which makes its ``client_msg_id`` (``seed-<conversation>-<number>``)."""
    batch = []
    for k, message_id in enumerate(ids):
        number = first + k
        sender = senders[number % len(senders)]
        client_msg_id = f"seed-{conversation_id}-{number}"
        message = {
            "id": str(message_id),
            "conversation_id": conversation_id,
            "sender_id": sender,
            "body": stamped_body(0.0),
            "client_msg_id": client_msg_id,
            "created_at": _created_at(message_id),
        }
        json = orjson.dumps(message)
        batch.append(StoredMessage(message_id, int(conversation_id), int(sender), client_msg_id, json))
    return batch


async def _seed(
    redis_port: int, conversation_id: str, senders: list[str], ids: list[int], first: int
) -> None:
    """Append a message for each id in batches of ``BATCH``; ``first`` numbers the first one."""
    settings = PluginSettings("redis", {"url": f"redis://127.0.0.1:{redis_port}/0"}, {})
    storage = RedisStorage(settings)
    await storage.start(SimpleNamespace(data_dir="."))
    try:
        for start in range(0, len(ids), BATCH):
            part = ids[start : start + BATCH]
            await storage.append(seeded_messages(conversation_id, senders, part, first + start))
    finally:
        await storage.close()


def _seed_part(redis_port: int, conversation_id: str, senders: list[str], ids: list[int], first: int) -> None:
    asyncio.run(_seed(redis_port, conversation_id, senders, ids, first))


def seed(redis_port: int, conversation_id: str, senders: list[str], ids: list[int]) -> float:
    """Store a message for each id, from ``PROCESSES`` processes at once; the seconds it took."""
    began = time.perf_counter()
    if len(ids) < IN_PROCESS:
        _seed_part(redis_port, conversation_id, senders, ids, 0)
        return time.perf_counter() - began
    size = -(-len(ids) // PROCESSES)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        parts = [
            pool.submit(_seed_part, redis_port, conversation_id, senders, ids[i : i + size], i)
            for i in range(0, len(ids), size)
        ]
        for part in parts:
            part.result(timeout=900)
    return time.perf_counter() - began
