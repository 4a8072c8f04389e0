"""The ``nats`` transport: NATS JetStream as the message sync queue and the commit point.

One stream, ``KIBITZ``, holds every user's event log:

- ``kibitz.ev.<user_id>``: one JetStream message per event per user. A message to a
  group of N is N of these (fan-out on write), so a device only ever reads its own
  user's subject. A position (what cursors encode) is the stream sequence.
- ``kibitz.msg``: one record per accepted message, in commit order, from which storage
  is rebuilt.
- ``kibitz.live``: one per committed batch, last in it: which events the batch holds
  for which users, with the event itself when the append was small (see
  ``_live_message``). The instances' live feed reads only these, so a message to a
  group of 100 reaches each instance as one message, not 100.

Group commit: concurrent ``append`` calls are gathered and published as one JetStream
*atomic batch* (``allow_atomic``), which nats-server stores all-or-nothing with one
fsync. The embedded server runs with ``sync_interval: always``, so the batch's ack
means every event in it is on disk; an external server must be set up the same way.
nats-server caps an atomic batch at 1,000 messages, so one message fans out to at most
998 users (``max_fanout``: 998 events, the record and the live message), the largest
group Kibitz accepts.

Reads use batched direct gets (``allow_direct``) filtered by subject: no consumer state
per device. Presence (who is live on which instance) is a memory stream of its own
(``kibitz.plugins.nats.presence``). The live feed is one ordered push consumer per instance on
``kibitz.live``, re-created from the last seen position when NATS restarts. Typing and
other live-only signals go over core NATS on ``kibitz.signal`` and are never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from kibitz import (
    App,
    BackupRecords,
    ChildProcess,
    ConfigError,
    CursorExpired,
    Finding,
    LiveEvent,
    LiveSignal,
    LogEntry,
    PluginSettings,
    Tasks,
    find_binary,
    free_port,
    hookimpl,
    redact_url,
)

from . import backup, checks
from .presence import Presence

log = logging.getLogger("kibitz.nats")

STREAM = "KIBITZ"
EVENTS = "kibitz.ev"
RECORDS = "kibitz.msg"
LIVE = "kibitz.live"
SIGNALS = "kibitz.signal"
MAX_BATCH = 1000  # nats-server's limit on one atomic batch
# nats-server commits a stream's atomic batches one after another, each in about 4.5 ms
# whatever its size (for a file stream with one replica it stages every batch in a file
# store of its own). Two in flight: one is published while the other commits; more
# would only queue behind them, small, while the sends arriving meanwhile could have
# joined a larger one.
BATCHES_IN_FLIGHT = 2
COMMIT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
CONNECT_DEADLINE = 30.0
ERROR_LOG_INTERVAL = 10.0
DIRECT_GET_MAX_BYTES = 1024 * 1024
READS_IN_FLIGHT = 8  # direct gets at once: reads never crowd out commits and the live feed
LIVE_INLINE_BYTES = 64 * 1024  # an append whose events are larger is read back by the feed
LIVE_MAX_BYTES = 512 * 1024  # the live message of one batch stays under NATS's 1 MB payload


@hookimpl
def register_transport(name: str, settings: PluginSettings) -> NatsTransport | None:
    return NatsTransport(settings) if name == "nats" else None


class NatsTransport:
    """The Transport slot on NATS JetStream (see the module docstring)."""

    max_fanout = MAX_BATCH - 2

    def __init__(self, settings: PluginSettings) -> None:
        url = str(settings.get("url", "embedded")).strip()
        self.embedded = url in ("", "embedded")
        self.servers = [] if self.embedded else [u.strip() for u in url.split(",") if u.strip()]
        for server in self.servers:
            if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ConfigError(
                    f"{settings.source('url')}={redact_url(server)!r}: expected 'embedded' or nats:// URLs"
                )
        # Where kibitz doctor reads each server's settings (/varz): http://<host>:8222 by default.
        monitor = str(settings.get("monitor_url", "")).strip()
        self.monitor_urls = [u.strip().rstrip("/") for u in monitor.split(",") if u.strip()]
        self.retention_age = settings.duration("retention_age", "30d")
        self.retention_bytes = settings.size("retention_bytes", "10GB")
        self.replicas = settings.integer("replicas", 1, minimum=1)
        if self.replicas > 5:
            raise ConfigError(
                f"{settings.source('replicas')}={self.replicas}: JetStream allows 1 to 5 replicas"
            )
        self.child: ChildProcess | None = None
        self.nc: Any = None
        self._pending: deque[Append] = deque()
        self._wake = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._in_flight = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        self._batches = Tasks()
        self._on_event: LiveEvent | None = None
        self._on_signal: LiveSignal | None = None
        self._replies: dict[str, asyncio.Queue[Msg]] = {}
        self._reply_prefix = ""
        self._tokens = itertools.count()
        self._reads = asyncio.Semaphore(READS_IN_FLIGHT)
        self._feed: Any = None
        self._presence: Presence | None = None
        self._last_error_log = 0.0
        self._quiet = False  # no warnings while this process closes the connection

    # -- lifecycle -------------------------------------------------------------

    async def start(self, app: App) -> None:
        if self.embedded:
            self.child = await _start_embedded(Path(app.data_dir) / "nats")
            self.servers = [f"nats://127.0.0.1:{self.child.port}"]
        self.nc = await self._connect(app.instance_id)
        await self._ensure_stream()
        if not self.embedded:  # an acknowledged message must be on disk: say so if unsure
            app.tasks.spawn(checks.warn_unless_fsynced(self), name="nats-fsync-check")
        self._reply_prefix = f"_INBOX.kibitz.{uuid.uuid4().hex}"
        await self.nc.subscribe(f"{self._reply_prefix}.*", cb=self._route_reply)
        self._presence = Presence(self.nc.jetstream(), self.direct_batch, app.instance_id, self.replicas)
        await self._presence.start()
        if self._on_signal is not None:
            await self.nc.subscribe(SIGNALS, cb=self._receive_signal)
        if self._on_event is not None:
            await self._start_feed()
        self._committer = asyncio.create_task(self._commit_loop(), name="nats-committer")

    async def _connect(self, instance_id: str) -> Any:
        """Connect within ``CONNECT_DEADLINE`` seconds; once connected, reconnect forever."""
        try:
            return await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    name=f"kibitz {instance_id}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    connect_timeout=REQUEST_TIMEOUT,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    pending_size=64 * 1024 * 1024,
                ),
                CONNECT_DEADLINE,
            )
        except TimeoutError:
            servers = ", ".join(redact_url(server) for server in self.servers)
            raise ConnectionError(f"cannot reach NATS at {servers} within {CONNECT_DEADLINE:.0f} s") from None

    async def _on_error(self, error: Exception) -> None:
        """Log connection errors, at most one line every ``ERROR_LOG_INTERVAL`` seconds."""
        if time.monotonic() - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = time.monotonic()
            log.warning("nats_error", extra={"error": f"{type(error).__name__}: {error}"})

    async def _on_disconnected(self) -> None:
        if not self._quiet:
            log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        log.warning("nats_reconnected")

    async def close(self) -> None:
        if self._committer:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        await self._batches.wait()
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(ConnectionError("transport closed"))
        if self._feed is not None:
            with contextlib.suppress(Exception):
                await self._feed.unsubscribe()
        if self._presence is not None:
            await self._presence.close()
        if self.nc is not None:
            self._quiet = True
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.child:
            await self.child.stop()

    async def check(self) -> None:
        if self.nc is None or not self.nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await self._stream_info()

    async def _stream_info(self) -> Any:
        try:
            return await self.nc.jetstream().stream_info(STREAM)
        except nats.errors.Error as e:
            raise ConnectionError(f"nats: {type(e).__name__}: {e}") from e

    async def _ensure_stream(self, first_seq: int | None = None) -> None:
        """Create the stream (its first message at ``first_seq``, for a restore) or update its settings."""
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{EVENTS}.*", RECORDS, LIVE],
            storage=StorageType.FILE,
            max_age=self.retention_age or None,
            max_bytes=self.retention_bytes or -1,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            allow_atomic=True,
            num_replicas=self.replicas,
            first_seq=first_seq,
        )
        js = self.nc.jetstream()
        try:
            await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)

    # -- backup and restore (kibitz.plugins.nats.backup) -------------------------

    async def backup(self) -> BackupRecords:
        return await backup.backup(self)

    async def is_empty(self) -> bool:
        return await backup.is_empty(self)

    async def restore(self, records: AsyncIterator[bytes]) -> None:
        await backup.restore(self, records)

    async def diagnose(self) -> list[Finding]:
        return await checks.diagnose(self)

    # -- appending (group commit) ----------------------------------------------

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        pending = Append(entries)
        if pending.size + 1 > MAX_BATCH:
            raise ValueError(f"{pending.size} log messages in one append; at most {MAX_BATCH - 1}")
        self._pending.append(pending)
        self._wake.set()
        return await pending.future

    async def _commit_loop(self) -> None:
        """Take what is pending, as much as fits one atomic batch, and commit it; repeat."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._in_flight.acquire()
                batch: list[Append] = [self._pending.popleft()]
                size, live_bytes = batch[0].size + 1, batch[0].live_bytes
                while self._pending:
                    following = self._pending[0]
                    too_many = size + following.size > MAX_BATCH
                    if too_many or live_bytes + following.live_bytes > LIVE_MAX_BYTES:
                        break  # a full batch, or a live message near NATS's payload limit
                    batch.append(self._pending.popleft())
                    size += following.size
                    live_bytes += following.live_bytes
                self._batches.spawn(self._commit(batch), name="nats-commit")

    async def _commit(self, batch: list[Append]) -> None:
        try:
            messages: list[tuple[str, bytes]] = []
            ends: list[list[int]] = []  # per append call: the index of each entry's last message
            live = []
            for pending in batch:
                marks = []
                if not pending.inline:
                    live.append(b"r %d %d\n" % (len(messages), sum(len(e.user_ids) for e in pending.entries)))
                for entry in pending.entries:
                    if pending.inline:
                        users = b",".join(b"%d" % u for u in entry.user_ids)
                        live.append(b"e %d %d %s\n%s" % (len(messages), len(entry.event), users, entry.event))
                    messages.extend((f"{EVENTS}.{user_id}", entry.event) for user_id in entry.user_ids)
                    if entry.message is not None:
                        messages.append((RECORDS, entry.message))
                    marks.append(len(messages) - 1)
                ends.append(marks)
            messages.append((LIVE, b"%d\n%s" % (len(messages) + 1, b"".join(live))))
            last_seq = await self._publish_atomic(messages)
            first_seq = last_seq - len(messages) + 1
            for pending, marks in zip(batch, ends, strict=True):
                if not pending.future.done():
                    pending.future.set_result([first_seq + mark for mark in marks])
        except Exception as e:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
        finally:
            self._in_flight.release()

    async def _publish_atomic(self, messages: list[tuple[str, bytes]]) -> int:
        """Publish ``messages`` as one atomic batch; return the stream sequence of the last."""
        batch_id = uuid.uuid4().hex[:22]
        publish = self.nc.publish
        for number, (subject, payload) in enumerate(messages[:-1], 1):
            await publish(
                subject, payload, headers={"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
            )
        subject, payload = messages[-1]
        headers = {
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": str(len(messages)),
            "Nats-Batch-Commit": "1",
        }
        try:
            reply = await self.nc.request(subject, payload, headers=headers, timeout=COMMIT_TIMEOUT)
        except nats.errors.Error as e:
            raise ConnectionError(f"nats: the batch commit failed: {type(e).__name__}") from e
        ack = orjson.loads(reply.data)
        if "error" in ack:
            raise ConnectionError(f"JetStream refused the batch: {ack['error'].get('description')}")
        seq: int = ack["seq"]
        return seq

    # -- reading -----------------------------------------------------------------

    async def now(self) -> int:
        info = await self._stream_info()
        last: int = info.state.last_seq
        return last

    async def read(self, user_id: int, after: int, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        found, more = await self._direct_get(f"{EVENTS}.{user_id}", after + 1, limit)
        events = [(seq, data) for seq, _, data in found]
        # Retention drops events from the front: if the first sequence, looked up after
        # the read, is past ``after + 1``, events after the cursor may be gone. A position
        # past the end is from before a restore of an older backup: what came after it is lost.
        state = (await self._stream_info()).state
        if after + 1 < state.first_seq:
            raise CursorExpired(f"position {after} is older than the retained events")
        if after > state.last_seq:
            raise CursorExpired(f"position {after} is beyond the log (restored from an older backup)")
        return events, more

    async def messages(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        records, _ = await self._direct_get(RECORDS, after + 1, limit)
        return [(seq, data) for seq, _, data in records]

    async def _direct_get(
        self, subject: str, start: int, limit: int
    ) -> tuple[list[tuple[int, str, bytes]], bool]:
        """Up to ``limit`` messages (sequence, subject, data) on ``subject`` from sequence
        ``start`` (a batched direct get), and whether more follow (the batch may also stop
        at ``DIRECT_GET_MAX_BYTES``).
        """
        request = {"seq": start, "next_by_subj": subject, "batch": limit, "max_bytes": DIRECT_GET_MAX_BYTES}
        return await self.direct_batch(STREAM, request)

    async def direct_batch(
        self, stream: str, request: dict[str, Any]
    ) -> tuple[list[tuple[int, str, bytes]], bool]:
        """The messages (sequence, subject, data) a batched direct get of ``stream`` answers,
        and whether more match beyond the batch."""
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        found: list[tuple[int, str, bytes]] = []
        async with self._reads:
            self._replies[token] = queue
            try:
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{stream}",
                    orjson.dumps(request),
                    reply=f"{self._reply_prefix}.{token}",
                )
                while True:
                    try:  # asyncio.timeout: wait_for can swallow a cancellation (Python 3.11)
                        async with asyncio.timeout(REQUEST_TIMEOUT):
                            msg = await queue.get()
                    except TimeoutError:
                        raise ConnectionError("nats: no answer to a direct get") from None
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "204":  # end of the batch: how many more match
                        return found, int(headers.get("Nats-Num-Pending", 0)) > 0
                    if status == "404":  # nothing (more) there
                        return found, False
                    if status:
                        raise ConnectionError(
                            f"direct get answered {status} {headers.get('Description', '')}"
                        )
                    found.append((int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data))
            finally:
                del self._replies[token]

    async def _route_reply(self, msg: Msg) -> None:
        queue = self._replies.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:
            queue.put_nowait(msg)

    # -- live delivery -------------------------------------------------------------

    def listen(self, on_event: LiveEvent, on_signal: LiveSignal) -> None:
        self._on_event = on_event
        self._on_signal = on_signal

    async def _start_feed(self) -> None:
        """One ordered consumer of the live messages for this instance, from now onwards.

        nats-py's ordered consumer watches idle heartbeats and sequence gaps and re-creates
        itself from the last delivered stream sequence, so a NATS restart loses nothing.
        """
        start = await self.now() + 1
        self._feed = await self.nc.jetstream().subscribe(
            LIVE,
            stream=STREAM,
            cb=self._receive_live,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=nats.js.api.ConsumerConfig(opt_start_seq=start),
            pending_msgs_limit=100_000,
            pending_bytes_limit=256 * 1024 * 1024,
        )

    async def _receive_live(self, msg: Msg) -> None:
        """Hand each event of a committed batch to the hub, in log order.

        The live message (see ``_commit``) starts with the number of messages in its
        batch, itself included, which places the batch's first message. Then, per entry
        of a small append, ``e <index> <length> <user,user,...>`` and the event's bytes:
        the event of the n-th user is at the batch's first sequence + index + n. A large
        append is one ``r <index> <count>`` line: its ``count`` events, from that index
        on, are read back from the log.
        """
        assert self._on_event is not None
        on_event = self._on_event
        meta = msg.metadata
        committed_at = meta.timestamp.timestamp()
        data = msg.data
        end = data.index(b"\n")
        first = meta.sequence.stream - int(data[:end]) + 1
        at = end + 1
        while at < len(data):
            end = data.index(b"\n", at)
            kind, index, length, *users = data[at:end].split(b" ")
            at = end + 1
            position = first + int(index)
            if kind == b"e":
                event = data[at : at + int(length)]
                at += len(event)
                for offset, user_id in enumerate(users[0].split(b",")):
                    on_event(int(user_id), position + offset, event, committed_at)
            else:
                for seq, subject, event in await self._read_back(position, int(length)):
                    on_event(int(subject[len(EVENTS) + 1 :]), seq, event, committed_at)

    async def _read_back(self, start: int, count: int) -> list[tuple[int, str, bytes]]:
        """The ``count`` user events from sequence ``start`` on (records in between skipped).

        Retried until it succeeds: the feed hands events over in log order, so nothing
        after these can go out before them, and skipping them would move connected
        devices' cursors past events they never got.
        """
        delay = 0.1
        while True:
            try:
                return await self._read_range(start, count)
            except ConnectionError as e:
                log.warning("live_read_back_failed", extra={"error": str(e), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _read_range(self, start: int, count: int) -> list[tuple[int, str, bytes]]:
        events: list[tuple[int, str, bytes]] = []
        while len(events) < count:
            found, _ = await self._direct_get(f"{EVENTS}.*", start, count - len(events))
            if not found:
                raise ConnectionError(f"nats: events from {start} are not in the log yet")
            events += found
            start = found[-1][0] + 1
        return events

    # -- presence ---------------------------------------------------------------------------

    async def mark_live(self, user_id: int, live: bool) -> None:
        assert self._presence is not None, "the nats transport is not started"
        await self._presence.mark(user_id, live)

    async def live_users(self, user_ids: Sequence[int]) -> set[int]:
        assert self._presence is not None, "the nats transport is not started"
        return await self._presence.live_users(user_ids)

    async def signal(self, user_ids: Sequence[int], payload: bytes) -> None:
        await self.nc.publish(SIGNALS, ",".join(map(str, user_ids)).encode() + b"\n" + payload)

    async def _receive_signal(self, msg: Msg) -> None:
        assert self._on_signal is not None
        head, _, payload = msg.data.partition(b"\n")
        self._on_signal(tuple(int(u) for u in head.split(b",") if u), payload)


class Append:
    """One ``append`` call waiting to be committed in a batch."""

    __slots__ = ("entries", "future", "inline", "live_bytes", "size")

    def __init__(self, entries: Sequence[LogEntry]) -> None:
        self.entries = entries
        self.size = sum(len(e.user_ids) + (e.message is not None) for e in entries)  # log messages
        event_bytes = sum(len(e.event) for e in entries)
        self.inline = event_bytes <= LIVE_INLINE_BYTES  # its events ride in the live message
        # What it adds to the batch's live message (header lines estimated generously).
        self.live_bytes = event_bytes + sum(32 + 12 * len(e.user_ids) for e in entries) if self.inline else 32
        self.future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()


async def _start_embedded(folder: Path) -> ChildProcess:
    """nats-server with JetStream in ``folder``, fsyncing every write, on a free loopback port."""
    port = free_port()
    config = await asyncio.to_thread(_write_config, folder, port)
    child = ChildProcess(
        "nats-server", [find_binary("nats-server"), "-c", str(config)], port, folder / "nats-server.log"
    )
    await child.start()
    return child


def _write_config(folder: Path, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nats-server.conf"
    config.write_text(
        "# Written by Kibitz at every start of the embedded server.\n"
        f'listen: "127.0.0.1:{port}"\n'
        'server_name: "kibitz-embedded"\n'
        "max_payload: 1MB\n"
        f'jetstream {{\n  store_dir: "{folder / "jetstream"}"\n  sync_interval: always\n}}\n'
    )
    return config
