"""Backup and restore of the ``KIBITZ`` stream, every message at its own sequence.

A position (what clients' cursors hold) is a stream sequence, so a restore must put each
message back at the sequence it had. The backup reads the stream from its first to its
last sequence at the start, with batched direct gets; its first record names both. The
restore makes the stream anew starting at that first sequence and publishes the
messages in atomic batches of consecutive sequences; a sequence with no message (rare:
retention removes from the front) is filled with a placeholder that is then deleted.
Restored messages carry the restore's time, so retention by age counts from then.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from kibitz import BackupRecords

if TYPE_CHECKING:
    from . import NatsTransport

READ_BATCH = 500
WRITE_MESSAGES = 900  # per atomic batch (nats-server's limit is 1,000)
WRITE_BYTES = 4 * 1024 * 1024
_HEAD = struct.Struct(">QH")  # sequence, subject length; then the subject, then the data


async def backup(transport: NatsTransport) -> BackupRecords:
    from . import STREAM

    state = (await transport._stream_info()).state
    return state.messages, _read(transport, STREAM, state.first_seq, state.last_seq)


async def _read(transport: NatsTransport, stream: str, first: int, last: int) -> AsyncIterator[bytes]:
    yield orjson.dumps({"first_seq": first, "last_seq": last})
    start = first
    while last and start <= last:
        request = {"seq": start, "next_by_subj": "kibitz.>", "batch": READ_BATCH, "max_bytes": 1024 * 1024}
        found, more = await transport.direct_batch(stream, request)
        for seq, subject, data in found:
            if seq > last:
                return
            yield _HEAD.pack(seq, len(subject)) + subject.encode() + data
        if not found or not more:
            return
        start = found[-1][0] + 1


async def is_empty(transport: NatsTransport) -> bool:
    state = (await transport._stream_info()).state
    return bool(state.messages == 0 and state.last_seq == 0)


async def restore(transport: NatsTransport, records: AsyncIterator[bytes]) -> None:
    from . import LIVE, STREAM

    head = orjson.loads(await anext(records))
    js = transport.nc.jetstream()
    await js.delete_stream(STREAM)
    await transport._ensure_stream(first_seq=head["first_seq"])
    expected = head["first_seq"]  # the sequence the next message gets
    batch: list[tuple[str, bytes]] = []
    size = 0

    async def flush() -> None:
        nonlocal batch, size, expected
        if batch:
            last = await transport._publish_atomic(batch)
            if last != expected + len(batch) - 1:
                raise RuntimeError(f"restored up to sequence {last}, expected {expected + len(batch) - 1}")
            expected = last + 1
        batch, size = [], 0

    async for record in records:
        seq, length = _HEAD.unpack_from(record)
        subject = record[_HEAD.size : _HEAD.size + length].decode()
        data = record[_HEAD.size + length :]
        if seq != expected + len(batch) or len(batch) == WRITE_MESSAGES or size + len(data) > WRITE_BYTES:
            await flush()
        while expected + len(batch) < seq:  # a hole (so the batch was flushed): a placeholder, deleted
            ack = await js.publish(LIVE, b"")
            await js.delete_msg(STREAM, ack.seq)
            expected = ack.seq + 1
        batch.append((subject, data))
        size += len(data)
    await flush()
