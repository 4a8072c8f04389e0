"""The send path, history reads, and keeping storage in step with the log.

A message goes: checks → ``wrap_send`` plugins → an id → the transport (the commit
point: one durable append writes the event into every member's log) → storage (so
history and ``GET /conversations`` see it at once) → the sender's answer. Plugins'
``message_accepted`` run after that, off the send path; notifications follow the log
(``kibitz.notifications``).

Storage can always be rebuilt from the log: the transport keeps every accepted message
in commit order, and ``StorageFollower`` stores what storage has not confirmed yet, at
start-up (before the server is ready) and then continuously.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .batching import Batcher
from .errors import Forbidden, InvalidRequest, PayloadTooLarge, Rejected, Unavailable
from .idempotency import SentKeys
from .models import Conversation, Draft, LogEntry, Message, User, message_event, rfc3339
from .plugin_manager import Hooks, SendWrappers
from .progress import Progress
from .slots import IdGenerator, Storage, StoredMessage, Transport

if TYPE_CHECKING:
    from .app import Kibitz

log = logging.getLogger("kibitz.messages")

MAX_PAGE = 200
FOLLOW_BATCH = 1000
FOLLOW_INTERVAL = 1.0
REPORT_ABOVE = 50_000  # log positions to catch up with before progress is shown


class Messages:
    def __init__(
        self,
        app: Kibitz,
        hooks: Hooks,
        transport: Transport,
        storage: Storage,
        ids: IdGenerator,
        max_chars: int,
        follower: StorageFollower,
    ) -> None:
        self.app = app
        self.hooks = hooks
        self.transport = transport
        self.storage = storage
        self.ids = ids
        self.max_chars = max_chars
        self.follower = follower
        self._in_flight: dict[tuple[int, str], asyncio.Task[tuple[Message, bytes, bool]]] = {}
        # Concurrent sends share storage round trips (see kibitz.batching).
        self._writes: Batcher[StoredMessage, None] = Batcher(self._store)
        self.keys = SentKeys(storage, follower, app.instance_id)

    def check_body(self, body: str) -> None:
        """400 for an empty body, 413 for one over the limit."""
        if not body:
            raise InvalidRequest("body: at least 1 character")
        if len(body) > self.max_chars:
            raise PayloadTooLarge(f"body: at most {self.max_chars} characters")

    async def submit(
        self, sender: User, conversation_id: int, body: str, client_msg_id: str, turn: Turn | None = None
    ) -> tuple[Message, bytes, bool]:
        """A send as the sender makes it (HTTP, WebSocket, a plugin's ``App.post``): the body's
        limits, membership (404 otherwise), the sender's rate limit, then ``send``."""
        self.check_body(body)
        conversation = await self.app.conversations.for_sender(conversation_id, sender.id)
        await self.app.rate_limits.send(sender.id)
        return await self.send(sender, conversation, body, client_msg_id, turn)

    async def send(
        self,
        sender: User,
        conversation: Conversation,
        body: str,
        client_msg_id: str,
        turn: Turn | None = None,
    ) -> tuple[Message, bytes, bool]:
        """Accept a message; return it, its JSON, and whether it is new (False: an idempotent resend).

        The work runs as a task of its own, so a client that hangs up mid-send does not
        cut it short between the log and storage; a resend meanwhile waits for the same
        task and gets its message. ``turn`` keeps concurrent sends of one connection in
        the order they came (see ``SendOrder``); whoever took the turn releases it once
        this returns.
        """
        key = (sender.id, client_msg_id)
        task = self._in_flight.get(key)
        first = task is None
        if task is None:
            task = asyncio.create_task(self._send_once(sender, conversation, body, client_msg_id, turn))
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        elif turn is not None:
            # A resend adds nothing to the log: let the next frames go now. Holding the
            # turn while awaiting a task that itself waits for this turn would stall
            # the connection for good (the resend's frame may have started first).
            turn.release()
        message, data, new = await asyncio.shield(task)
        return message, data, new and first

    async def _send_once(
        self, sender: User, conversation: Conversation, body: str, client_msg_id: str, turn: Turn | None
    ) -> tuple[Message, bytes, bool]:
        existing = await self.keys.claim(sender.id, client_msg_id)
        if existing is not None:
            return Message.from_json(existing), existing, False
        try:
            full = self.app.disk.problem()
            if full is not None:  # refused before anything is written (kibitz.disk)
                raise Unavailable(full, retry_after=30)
            message, data = await self._accept(sender, conversation, body, client_msg_id, turn)
        except Exception:
            await self.keys.failed(sender.id, client_msg_id)
            raise
        return message, data, True

    async def _store(self, messages: list[StoredMessage]) -> list[None]:
        await self.storage.append(messages)
        return [None] * len(messages)

    def _checked_body(self, body: object) -> str:
        """A body as a ``wrap_send`` plugin left it, held to the same rules as the sender's."""
        if not isinstance(body, str) or not body:
            raise InvalidRequest("a plugin left the message body empty")
        if len(body) > self.max_chars:
            raise PayloadTooLarge(f"body: at most {self.max_chars} characters (after plugins)")
        return body

    async def _accept(
        self, sender: User, conversation: Conversation, body: str, client_msg_id: str, turn: Turn | None
    ) -> tuple[Message, bytes]:
        draft = Draft(conversation.id, sender.id, body, client_msg_id)
        wrappers = self.hooks.send_wrappers()
        try:
            await wrappers.before(draft=draft, sender=sender, conversation=conversation, app=self.app)
        except Rejected as e:
            raise Forbidden(e.reason) from None
        try:
            body = self._checked_body(draft.body)
            if turn is not None:
                await turn.wait()
            now = time.time()
            message = Message(
                id=self.ids.next_id(),
                conversation_id=conversation.id,
                sender_id=sender.id,
                body=body,
                client_msg_id=client_msg_id,
                created_at=rfc3339(int(now * 1000)),
            )
        except Exception:
            await wrappers.abort()
            raise
        data = message.to_json()
        # The append joins the commit queue when its task starts: tasks start in the order
        # they are made, so the next send of this connection, let go now, commits after it.
        commit = asyncio.create_task(
            self.transport.append([LogEntry(conversation.members, message_event(data), data)])
        )
        if turn is not None:
            turn.release()
        try:
            await commit
        except Exception as e:
            await wrappers.abort()
            self.keys.uncertain(sender.id, client_msg_id)
            log.warning("append_failed", extra={"error": f"{type(e).__name__}: {e}"})
            raise Unavailable(
                "the message queue did not accept the message; retry with the same client_msg_id"
            ) from None
        try:
            await self._writes.submit(StoredMessage.of(message, data))
        except Exception as e:
            # Durable in the log already: the follower stores it once storage answers again.
            self.keys.uncertain(sender.id, client_msg_id)
            log.warning("storage_append_failed", extra={"error": f"{type(e).__name__}: {e}"})
            raise Unavailable("history storage did not answer; retry with the same client_msg_id") from None
        self.app.metrics.accepted(time.time() - now)
        # Beside the send path; shutdown waits for it (``Kibitz.tasks``).
        self.app.tasks.spawn(self._accepted(wrappers, message, conversation), name="message-accepted")
        return message, data

    async def _accepted(self, wrappers: SendWrappers, message: Message, conversation: Conversation) -> None:
        await wrappers.after(message)
        await self.hooks.call_each(
            "message_accepted", message=message, conversation=conversation, app=self.app
        )

    async def drain(self) -> None:
        """Wait for the sends in flight, so none is cut off between the log and storage."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def history(
        self, conversation: Conversation, before: int | None, after: int | None, limit: int
    ) -> bytes:
        page = await self.storage.page(conversation.id, before, after, limit)
        return (
            b'{"messages":['
            + b",".join(page.messages)
            + b'],"has_more":'
            + (b"true" if page.has_more else b"false")
            + b"}"
        )


class Turn:
    """One send's place in its connection's order (see ``SendOrder``)."""

    def __init__(self, previous: asyncio.Future[None] | None) -> None:
        self.previous = previous
        self.passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._released = False

    async def wait(self) -> None:
        """Until the previous send of the connection has joined the log, or ended without."""
        if self.previous is not None and not self.previous.done():
            # asyncio.wait, not await: a cancelled waiter must not cancel the turn itself.
            await asyncio.wait((self.previous,))

    def release(self) -> None:
        """This send has joined the commit queue, or ended without: the next may go, once
        every earlier one has gone too. (A resend or a refused send lets go of its turn
        before the sends ahead of it have their ids; passing at once would let the next
        send overtake them.)"""
        if self.passed.done() or self._released:
            return
        self._released = True
        if self.previous is None or self.previous.done():
            self.passed.set_result(None)
        else:
            self.previous.add_done_callback(self._pass)

    def _pass(self, _previous: asyncio.Future[None]) -> None:
        if not self.passed.done():
            self.passed.set_result(None)


class SendOrder:
    """Lets one connection's sends run at once yet join the log in the order they came.

    Each send takes a ``Turn`` as its frame arrives. It does its checks and its
    idempotency look-up at once with the others, then waits for the previous turn
    before it gets its id and joins the commit queue. So a sender's messages get
    increasing ids in the order of their frames (PROTOCOL.md), and one connection can
    have many sends in flight instead of one.
    """

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def take(self) -> Turn:
        """The turn of the frame that has just arrived, after every earlier one."""
        turn = Turn(self._last)
        self._last = turn.passed
        return turn


class StorageFollower:
    """Stores the log's messages that storage has not confirmed (``Storage.position``)."""

    def __init__(self, transport: Transport, storage: Storage) -> None:
        self.transport = transport
        self.storage = storage
        self._task: asyncio.Task[None] | None = None

    async def catch_up(self, progress: Progress | None = None) -> int:
        """Store every message after storage's position; return how many were read.

        ``progress`` hears how far along the log it is, when that is a long way (a
        storage rebuild after Redis lost its data, at start-up).
        """
        count = 0
        start = await self.storage.position()
        total = await self.transport.now() - start if progress is not None else 0
        report = progress if total > REPORT_ABOVE else None
        while True:
            after = await self.storage.position()
            records = await self.transport.messages(after, FOLLOW_BATCH)
            if not records:
                if report is not None:
                    report("log positions", total, total)
                return count
            # Most are stored already (the send path stored them); storing again is harmless,
            # and it is what brings them back if storage lost them.
            await self.storage.append(_readable(records), through=records[-1][0])
            count += len(records)
            if report is not None:
                report("log positions", min(records[-1][0] - start, total), total)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="storage-follower")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                await self.catch_up()
            except Exception as e:
                log.warning("storage_follow_failed", extra={"error": f"{type(e).__name__}: {e}"})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _readable(records: list[tuple[int, bytes]]) -> list[StoredMessage]:
    """The records as messages to store; one that is not a message is logged and passed
    over, so one bad record cannot stop start-up or the follower for good."""
    messages = []
    for position, data in records:
        try:
            messages.append(StoredMessage.of(Message.from_json(data), data))
        except (ValueError, KeyError, TypeError) as e:
            log.error("record_unreadable", extra={"position": position, "error": f"{type(e).__name__}: {e}"})
    return messages
