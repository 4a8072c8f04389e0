"""The four slots: the moving parts the core knows only through these protocols.

A plugin fills a slot by returning one of these objects from its ``register_*`` hook
(see ``hookspecs.py``). A slot never sees HTTP: it gets ints, bytes and the objects of
``kibitz.models``. Positions are the transport's: ints that grow along the log; the core
turns them into the opaque cursors clients see.

The rules every slot keeps (``kibitz.testing`` checks them):

- **Start and close.** ``start(app)`` runs once, in the order ids, transport, storage,
  notifiers, before the server takes requests; it connects (or starts an embedded
  service) and returns once the slot can serve, or raises, which stops start-up naming
  the slot (``ConfigError`` for a setting only a started slot can check: one line, exit
  status 2). Background loops a slot starts are its own, and ``close()`` (reverse order,
  after every connection has drained) stops and awaits them, then disconnects. ``close``
  is called after a failed ``start`` too, and must not raise for what never started.
- **A backing service that does not answer** is ``ConnectionError`` (or ``TimeoutError``),
  raised from the slot's methods: the core answers the request with 503 and
  ``Retry-After``, and nothing is half-done. A slot translates its client library's own
  connection errors; anything else is a bug and answers 500. ``kibitz.Unavailable`` lets a
  slot give its own message and retry time (an ids generator without a lease).
- **Commit order.** ``Transport.append`` commits calls in the order they start (the core
  keeps a sender's messages in order that way), so an implementation queues the call
  before its first ``await``; the live feed hands events over in log order per user.
- **Control signals pass everywhere.** ``Transport.signal`` carries control signals as
  well as typing: a revoked device's ``!revoke <id>`` must reach the connections of every
  instance, so a transport serving several instances delivers each signal to all of them
  (and to this one), and a transport serving one instance says so in its docs.
- **Idempotence.** Storage appends may repeat (a replay of the log after a crash) and
  change nothing the second time; ``forget_before`` may run on several instances at once.
  A storage serving several instances keeps its claims (``claim_sent``) where all of
  them see them, so that one ``client_msg_id`` gives one message whichever instance a
  resend reaches.
- **No blocking.** Every method runs on the event loop: blocking work goes to a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .models import Conversation, LogEntry, Message

if TYPE_CHECKING:
    from .app_protocol import App

# (user_id, position, event JSON, committed_at): one event of a user's log, as the live
# feed hands it over; committed_at is when the transport made it durable (Unix seconds).
LiveEvent = Callable[[int, int, bytes, float], None]
# (user_ids, payload): a live-only signal for some users (typing, device revoked).
LiveSignal = Callable[[tuple[int, ...], bytes], None]
# (how many records, the records): a slot's state for ``kibitz backup``, as opaque records
# that only the same plugin reads back. The count is for progress and may be an estimate.
BackupRecords = tuple[int, AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of ``kibitz doctor``: ``level`` is ok, warn or fail; ``fix`` says what to do."""

    level: str
    what: str
    detail: str
    fix: str = ""


class Restorable(Protocol):
    """What ``kibitz backup`` and ``kibitz restore`` ask of the transport and of storage.

    Backup runs while the server serves; storage is backed up first, then the
    transport, then the database. So a storage backup may stop short of the transport's
    (the core's storage follower replays the rest after ``position()`` when the restored
    server starts), and the database may know users and conversations the logs do not.
    """

    async def backup(self) -> BackupRecords:
        """The whole state of the backing service that belongs to App, as records."""

    async def is_empty(self) -> bool:
        """Whether the backing service holds nothing of App's (restore needs that)."""

    async def restore(self, records: AsyncIterator[bytes]) -> None:
        """Put back what ``backup`` gave, into an empty backing service (after ``start``).

        The transport must give every event back at its old position, so the cursors
        that clients hold stay valid.
        """


class Diagnosable(Protocol):
    async def diagnose(self) -> list[Finding]:
        """For ``kibitz doctor``: check the backing service without starting anything
        (no connection is kept, nothing is created); one finding per thing checked."""


class Transport(Restorable, Diagnosable, Protocol):
    """The message sync queue: durable append, per-user event logs, live feed, resume."""

    # The most users one entry may fan out to (the largest group the server accepts).
    max_fanout: int

    async def start(self, app: App) -> None:
        """Connect (and start any embedded server); return once appends can be made."""

    async def close(self) -> None:
        """Stop the live feed, flush what is in flight, disconnect."""

    async def check(self) -> None:
        """Raise if the backing service does not answer (``/readyz``)."""

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        """Append every entry to the logs of its users; return each entry's position.

        All or nothing, and durable (fsynced) when it returns: this is the commit point
        of a message. Concurrent calls may be committed together (group commit). Entries
        of one call keep their order in every log, and calls are committed in the order
        they start: the core relies on that to keep a sender's messages in order, so an
        implementation queues the call before its first ``await``.
        """

    async def now(self) -> int:
        """The position of now: every event appended before this call is at or before it."""

    async def read(self, user_id: int, after: int, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        """Up to ``limit`` events of the user's log after ``after``, oldest first, and
        whether more follow them (a read may return fewer than ``limit`` and still have more).

        Raise ``CursorExpired`` when events after ``after`` may have been dropped by
        retention.
        """

    async def messages(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Accepted messages (``LogEntry.message``) after ``after`` in commit order.

        Storage is rebuilt from these. Returns an empty list at the end of the log.
        """

    def listen(self, on_event: LiveEvent, on_signal: LiveSignal) -> None:
        """Hand every event appended from now on, by any instance, to ``on_event``, in
        log order per user, and every signal to ``on_signal``. Called once, before
        ``start``; keeps going across reconnects of the backing service.
        """

    async def signal(self, user_ids: Sequence[int], payload: bytes) -> None:
        """Send a live-only payload to the users' connections on every instance. Never stored."""

    async def mark_live(self, user_id: int, live: bool) -> None:
        """Record whether ``user_id`` has a live connection on this instance.

        The core calls it when the user's first connection here goes live, and once the
        last has ended (after a grace period). Once it returns, ``live_users`` on every
        instance sees the change. What an instance marked is dropped when it closes, and
        soon after it dies.
        """

    async def live_users(self, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` marked live by an instance that is running."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as storage receives it: the keys it indexes by, and its wire JSON."""

    id: int
    conversation_id: int
    sender_id: int
    client_msg_id: str
    json: bytes

    @classmethod
    def of(cls, message: Message, json: bytes | None = None) -> StoredMessage:
        return cls(
            message.id,
            message.conversation_id,
            message.sender_id,
            message.client_msg_id,
            json if json is not None else message.to_json(),
        )


@dataclass(frozen=True, slots=True)
class Page:
    """Messages of one history page, ascending by id, as wire JSON."""

    messages: list[bytes]
    has_more: bool


class Storage(Restorable, Diagnosable, Protocol):
    """Conversation history: append, range reads by id, counts after a marker."""

    async def start(self, app: App) -> None: ...

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise if the backing service does not answer (``/readyz``)."""

    async def append(self, messages: Sequence[StoredMessage], through: int | None = None) -> None:
        """Store messages; storing one again changes nothing (idempotent).

        ``through`` is given when the messages are a replay of the transport's log: once
        they are stored, ``position()`` becomes at least ``through``, atomically with them.
        """

    async def position(self) -> int:
        """The transport position through which every message has been stored (0 if none)."""

    async def page(self, conversation_id: int, before: int | None, after: int | None, limit: int) -> Page:
        """A history page as PROTOCOL.md defines it (neither, before, after, or both bounds)."""

    async def contains(self, conversation_id: int, message_id: int) -> bool: ...

    async def latest(self, conversation_ids: Sequence[int]) -> list[bytes | None]:
        """The newest message of each conversation, or None where it has none."""

    async def unread_counts(self, queries: Sequence[tuple[int, int, int]]) -> list[int]:
        """For each ``(conversation_id, user_id, marker)``: messages after ``marker`` not sent by the user."""

    async def find_sent(self, keys: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """For each ``(sender_id, client_msg_id)``: the message already sent with it, or None."""

    async def claim_sent(self, keys: Sequence[tuple[int, str]], owner: str, ttl: float) -> list[bytes | bool]:
        """For each ``(sender_id, client_msg_id)``, as ``find_sent`` and then atomically
        with it: the message already sent with the key (bytes); else ``False`` while
        another ``owner`` holds an unexpired claim on it; else ``True``: ``owner`` (an
        instance id) now holds the key for ``ttl`` seconds (its own claim is taken again).
        The core claims a key before it appends the send, so that a resend reaching
        another instance meanwhile waits for the message instead of sending it again.
        Added in 0.3."""

    async def release_sent(self, keys: Sequence[tuple[int, str]], owner: str) -> None:
        """Drop ``owner``'s claims on these keys: their sends ended before anything was
        written. Added in 0.3."""

    async def forget_before(self, message_id: int) -> int:
        """Delete every message whose id is below ``message_id``, from every conversation
        (``history_retention``); how many went. Idempotent: instances may run it at once."""


class IdGenerator(Protocol):
    """Message ids: time-sortable, unique across instances, at most 2**53."""

    async def start(self, app: App) -> None: ...

    async def close(self) -> None: ...

    def next_id(self) -> int:
        """A new id, larger than every id this generator gave before."""

    def first_id_at(self, unix_ms: int) -> int:
        """No larger than any id that any instance gives at or after ``unix_ms``, and as close
        to them as the generator can tell, so that ids given well before are smaller. History
        retention deletes below it: too high, and it would delete newer messages."""


class Notifier(Protocol):
    """Reaches members who have no live connection when a message arrives."""

    async def start(self, app: App) -> None: ...

    async def close(self) -> None: ...

    async def reachable(self, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` this notifier can reach at all (a push subscription, an
        address). Asked once per batch of messages, before presence: ``notify`` then gets
        only these, so a batch nobody can be notified of costs one look-up."""

    async def notify(self, message: Message, conversation: Conversation, user_ids: Sequence[int]) -> None:
        """Tell each of ``user_ids`` about ``message``: the members other than the sender
        with no live connection on any instance.

        Called from the log once the message is durable, by one instance at a time, off
        every send path (``kibitz.notifications``); several messages may be notified at
        once. Return once what is owed is sent, or given up: the log's position moves on
        after that, and a crash before it means this message may be notified again.
        Raising is logged and skipped.
        """
