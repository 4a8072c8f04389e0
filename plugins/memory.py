"""The ``memory`` transport and storage: everything in this process, nothing on disk.

For the fast test tier and for trying Kibitz out: ``KIBITZ_TRANSPORT=memory`` and
``KIBITZ_STORAGE=memory`` need no NATS and no Redis, and start in milliseconds. One
instance only (nothing is shared), and **nothing survives a restart**: a message is
acknowledged once it is in this process's memory, not once it is fsynced, so these are
not for data anyone keeps (``kibitz doctor`` says so). With memory transport and a real
storage (``redis`` or ``sql``) history survives a restart, but every device's cursor
then expires and it resyncs.

The transport keeps every user's event log as a list of ``(position, event)`` and the
accepted messages in commit order; positions count up from 1. ``append`` takes its
positions before it returns to the event loop, so calls commit in the order they start,
and the live feed hands events over on the next turn of the loop, in log order.

The storage keeps, per conversation, the ids and JSON of its messages in ascending order
(a page is two bisections), per conversation and sender the ids of their messages
(unread counts are two bisections), and each ``(sender, client_msg_id)``'s message.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from kibitz import (
    App,
    BackupRecords,
    CursorExpired,
    Finding,
    LiveEvent,
    LiveSignal,
    LogEntry,
    Message,
    Page,
    PluginSettings,
    StoredMessage,
    hookimpl,
)

MAX_ID = 2**53
NOT_KEPT = "kept in this process only: a restart loses it"
NOT_KEPT_FIX = "use it for tests and trials; for data you keep, the nats or sql plugins"
_RECORD = struct.Struct(">qq")  # position, user id (0 for an accepted message's record)
_MESSAGE = struct.Struct(">qqq")  # message id, conversation id, sender id


@hookimpl
def register_transport(name: str, settings: PluginSettings) -> MemoryTransport | None:
    return MemoryTransport() if name == "memory" else None


@hookimpl
def register_storage(name: str, settings: PluginSettings) -> MemoryStorage | None:
    return MemoryStorage() if name == "memory" else None


class MemoryTransport:
    """The Transport slot in this process's memory (see the module docstring)."""

    max_fanout = 998  # as the nats transport's, so groups fit whichever transport runs

    def __init__(self) -> None:
        self._position = 0
        self._logs: defaultdict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self._records: list[tuple[int, bytes]] = []
        self._live: dict[int, int] = {}  # user id: live connections marked
        self._on_event: LiveEvent | None = None
        self._on_signal: LiveSignal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, app: App) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._on_event = self._on_signal = None  # what is scheduled finds no one to hand it to

    async def check(self) -> None:
        if self._loop is None:
            raise ConnectionError("the memory transport is not started")

    async def diagnose(self) -> list[Finding]:
        return [Finding("warn", "transport memory", f"the event log is {NOT_KEPT}", NOT_KEPT_FIX)]

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if any(len(e.user_ids) > self.max_fanout for e in entries):
            raise ValueError(f"an entry fans out to more than {self.max_fanout} users")
        committed_at = time.time()
        positions = []
        for entry in entries:
            for user_id in entry.user_ids:
                self._position += 1
                self._logs[user_id].append((self._position, entry.event))
                self._hand_over(user_id, self._position, entry.event, committed_at)
            if entry.message is not None:
                self._position += 1
                self._records.append((self._position, entry.message))
            positions.append(self._position)
        return positions

    def _hand_over(self, user_id: int, position: int, event: bytes, committed_at: float) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._deliver, user_id, position, event, committed_at)

    def _deliver(self, user_id: int, position: int, event: bytes, committed_at: float) -> None:
        if self._on_event is not None:
            self._on_event(user_id, position, event, committed_at)

    async def now(self) -> int:
        return self._position

    async def read(self, user_id: int, after: int, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        if after > self._position:
            raise CursorExpired(f"position {after} is beyond the log (this process started after it)")
        log = self._logs.get(user_id, [])
        start = bisect.bisect_right(log, after, key=lambda event: event[0])
        return log[start : start + limit], start + limit < len(log)

    async def messages(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        start = bisect.bisect_right(self._records, after, key=lambda record: record[0])
        return self._records[start : start + limit]

    def listen(self, on_event: LiveEvent, on_signal: LiveSignal) -> None:
        self._on_event, self._on_signal = on_event, on_signal

    async def signal(self, user_ids: Sequence[int], payload: bytes) -> None:
        if self._loop is not None and self._on_signal is not None:
            self._loop.call_soon(self._on_signal, tuple(user_ids), payload)

    async def mark_live(self, user_id: int, live: bool) -> None:
        count = self._live.get(user_id, 0) + (1 if live else -1)
        if count > 0:
            self._live[user_id] = count
        else:
            self._live.pop(user_id, None)

    async def live_users(self, user_ids: Sequence[int]) -> set[int]:
        return {u for u in user_ids if u in self._live}

    async def backup(self) -> BackupRecords:
        return len(self._records) + sum(map(len, self._logs.values())), self._dump()

    async def _dump(self) -> AsyncIterator[bytes]:
        for user_id, log in list(self._logs.items()):
            for position, event in log:
                yield _RECORD.pack(position, user_id) + event
        for position, message in list(self._records):
            yield _RECORD.pack(position, 0) + message

    async def is_empty(self) -> bool:
        return self._position == 0

    async def restore(self, records: AsyncIterator[bytes]) -> None:
        async for record in records:
            position, user_id = _RECORD.unpack_from(record)
            data = record[_RECORD.size :]
            if user_id:
                self._logs[user_id].append((position, data))
            else:
                self._records.append((position, data))
            self._position = max(self._position, position)
        for log in self._logs.values():
            log.sort()
        self._records.sort()


class MemoryStorage:
    """The Storage slot in this process's memory (see the module docstring)."""

    def __init__(self) -> None:
        self._ids: defaultdict[int, list[int]] = defaultdict(list)  # conversation: ids, ascending
        self._json: dict[int, bytes] = {}  # message id: its wire JSON
        self._by_sender: defaultdict[tuple[int, int], list[int]] = defaultdict(list)
        self._conversation_of: dict[int, int] = {}
        self._sent: dict[tuple[int, str], bytes] = {}
        self._claims: dict[tuple[int, str], tuple[str, float]] = {}  # key: (owner, expiry)
        self._position = 0

    async def start(self, app: App) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check(self) -> None:
        pass

    async def diagnose(self) -> list[Finding]:
        return [Finding("warn", "storage memory", f"history is {NOT_KEPT}", NOT_KEPT_FIX)]

    async def append(self, messages: Sequence[StoredMessage], through: int | None = None) -> None:
        for m in messages:
            if not 1 <= m.id <= MAX_ID:
                raise ValueError(f"message id {m.id} is outside 1..2**53")
        for m in messages:
            if m.id in self._json:
                continue
            _insert(self._ids[m.conversation_id], m.id)
            _insert(self._by_sender[m.conversation_id, m.sender_id], m.id)
            self._json[m.id] = m.json
            self._conversation_of[m.id] = m.conversation_id
            self._sent.setdefault((m.sender_id, m.client_msg_id), m.json)
            self._claims.pop((m.sender_id, m.client_msg_id), None)  # the message answers now
        if through is not None:
            self._position = max(self._position, through)

    async def position(self) -> int:
        return self._position

    async def page(self, conversation_id: int, before: int | None, after: int | None, limit: int) -> Page:
        if limit < 1:
            raise ValueError(f"limit {limit} is below 1")
        ids = self._ids.get(conversation_id, [])
        end = len(ids) if before is None else bisect.bisect_left(ids, before)
        if after is None:
            start = max(0, end - limit)
            return Page([self._json[i] for i in ids[start:end]], start > 0)
        start = bisect.bisect_right(ids, after)
        stop = min(end, start + limit)
        return Page([self._json[i] for i in ids[start:stop]], stop < end)

    async def contains(self, conversation_id: int, message_id: int) -> bool:
        return self._conversation_of.get(message_id) == conversation_id

    async def latest(self, conversation_ids: Sequence[int]) -> list[bytes | None]:
        newest = [self._ids.get(cid) for cid in conversation_ids]
        return [self._json[ids[-1]] if ids else None for ids in newest]

    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        return [
            _count_after(self._ids.get(cid, []), marker)
            - _count_after(self._by_sender.get((cid, user_id), []), marker)
            for cid, user_id, marker in queries
        ]

    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        return [self._sent.get(key) for key in keys]

    async def claim_sent(self, keys: Sequence[tuple[int, str]], owner: str, ttl: float) -> list[bytes | bool]:
        now = time.monotonic()
        found: list[bytes | bool] = []
        for key in keys:
            holder, expiry = self._claims.get(key, (owner, 0.0))
            if key in self._sent:
                found.append(self._sent[key])
            elif holder != owner and expiry > now:
                found.append(False)
            else:
                self._claims[key] = (owner, now + ttl)
                found.append(True)
        return found

    async def release_sent(self, keys: Sequence[tuple[int, str]], owner: str) -> None:
        for key in keys:
            if self._claims.get(key, ("",))[0] == owner:
                del self._claims[key]

    async def forget_before(self, message_id: int) -> int:
        gone = [i for i in self._json if i < message_id]
        for ids in (*self._ids.values(), *self._by_sender.values()):
            del ids[: bisect.bisect_left(ids, message_id)]
        for i in gone:
            del self._json[i], self._conversation_of[i]
        # Idempotency keys stay: a resend of a forgotten message still returns it, as on redis.
        return len(gone)

    async def backup(self) -> BackupRecords:
        return len(self._json) + 1, self._dump()

    async def _dump(self) -> AsyncIterator[bytes]:
        yield b"%d" % self._position
        for m in [self._stored(i) for i in list(self._json)]:
            head = _MESSAGE.pack(m.id, m.conversation_id, m.sender_id)
            yield head + m.client_msg_id.encode() + b"\n" + m.json

    def _stored(self, message_id: int) -> StoredMessage:
        json = self._json[message_id]
        return StoredMessage.of(Message.from_json(json), json)

    async def is_empty(self) -> bool:
        return not self._json and self._position == 0

    async def restore(self, records: AsyncIterator[bytes]) -> None:
        position = int(await anext(records))
        messages = []
        async for record in records:
            message_id, conversation_id, sender_id = _MESSAGE.unpack_from(record)
            client_msg_id, _, json = record[_MESSAGE.size :].partition(b"\n")
            stored = StoredMessage(message_id, conversation_id, sender_id, client_msg_id.decode(), json)
            messages.append(stored)
        await self.append(messages, through=position)


def _insert(ids: list[int], message_id: int) -> None:
    """Put ``message_id`` in its place in ascending ``ids`` (nearly always at the end)."""
    if not ids or ids[-1] < message_id:
        ids.append(message_id)
    else:
        bisect.insort(ids, message_id)


def _count_after(ids: list[int], marker: int) -> int:
    return len(ids) - bisect.bisect_right(ids, marker)
