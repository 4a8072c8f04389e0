"""The objects of the protocol, as the core passes them to slots and hooks.

Ids are ints inside the server and decimal strings on the wire; ``to_json`` gives the
wire form, encoded once and then passed around as bytes.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import orjson


def now_ms() -> int:
    """Milliseconds since the Unix epoch, now."""
    return int(time.time() * 1000)


def rfc3339(ms: int) -> str:
    """Milliseconds since the Unix epoch as an RFC 3339 UTC string with milliseconds."""
    seconds, millis = divmod(ms, 1000)
    return f"{_utc_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=64)
def _utc_second(seconds: int) -> str:
    """The date and time part; messages sent within the same second share it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@dataclass(slots=True)
class Draft:
    """A message on its way in: what ``wrap_send`` plugins may inspect and change."""

    conversation_id: int
    sender_id: int
    body: str
    client_msg_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted message."""

    id: int
    conversation_id: int
    sender_id: int
    body: str
    client_msg_id: str
    created_at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": str(self.id),
            "conversation_id": str(self.conversation_id),
            "sender_id": str(self.sender_id),
            "body": self.body,
            "client_msg_id": self.client_msg_id,
            "created_at": self.created_at,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> Message:
        d = orjson.loads(data)
        return cls(
            id=int(d["id"]),
            conversation_id=int(d["conversation_id"]),
            sender_id=int(d["sender_id"]),
            body=d["body"],
            client_msg_id=d["client_msg_id"],
            created_at=d["created_at"],
        )


@dataclass(frozen=True, slots=True)
class User:
    """An account; ``bot`` (added in 0.2) marks one that plugins post as, with no password."""

    id: int
    username: str
    display_name: str
    bot: bool = False

    def to_dict(self) -> dict[str, str | bool]:
        return {
            "id": str(self.id),
            "username": self.username,
            "display_name": self.display_name,
            "bot": self.bot,
        }


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    user_id: int
    name: str
    created_at: str

    def to_dict(self) -> dict[str, str]:
        return {"id": str(self.id), "name": self.name, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation as the relational store holds it (no per-user fields)."""

    id: int
    type: str  # "direct" | "group"
    name: str | None
    creator_id: int
    members: tuple[int, ...]
    created_at: str


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's Web Push subscription, as its device's user made it (keys base64url)."""

    id: int
    user_id: int
    device_id: int
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One event bound for the event logs of ``user_ids``.

    ``event`` is the protocol's Event object as JSON bytes, exactly as clients get it.
    ``message`` is set when the event carries a newly accepted message; the transport keeps
    it in its commit order so storage can be rebuilt from the log (``Transport.messages``).
    """

    user_ids: tuple[int, ...]
    event: bytes
    message: bytes | None = None


def message_event(message_json: bytes) -> bytes:
    """The Event JSON for a message, spliced from the message's JSON without re-encoding."""
    return b'{"type":"message","message":' + message_json + b"}"
