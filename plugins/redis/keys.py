"""The redis storage's key layout (``P`` is the prefix, ids are decimal).

``P history:{<conversation_id>}``
    Sorted set: score = message id, member = the message's wire JSON exactly as given
    (``StoredMessage.json``); pages return these bytes as they are. Ids are at most
    2**53, exact as a double score. A page is one ZRANGEBYSCORE or ZREVRANGEBYSCORE with
    ``LIMIT 0 limit+1`` (the extra one says ``has_more``): O(log N + limit) however long
    the conversation.
``P by_sender:{<conversation_id>}:<sender_id>``
    Sorted set of the ids of one sender's messages in the conversation (member = score =
    id). Unread for a user = ZCOUNT of history after the marker minus ZCOUNT of the
    user's own messages after it: two O(log N) counts.
``P client_msg:{<sender_id>}:<client_msg_id>``
    String: the JSON of the message the sender sent with that ``client_msg_id``; set once
    (NX), kept 30 days for idempotent resends.
``P claim:{<sender_id>}:<client_msg_id>``
    String: the instance that claimed the key for a send not stored yet, for 120 s
    (``Storage.claim_sent``); deleted when the message is stored. Not backed up.
``P position``
    String: the transport position through which every message is stored; only grows.
``P layout``
    String: the version of this layout the keys are in (``LAYOUT``).

The braces are Redis Cluster hash tags: the keys of one conversation share a hash slot,
and so do the two keys of one idempotency key, so that every script call touches one
slot. Layout 1 (Kibitz 0.1) had no braces; ``retagged`` names its keys in this layout.
"""

from __future__ import annotations

import re

LAYOUT = b"2"
_UNTAGGED = re.compile(rb"^(history|by_sender|client_msg|claim):(\d+)(?=:|$)")


class Keys:
    """The names of the keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.position = f"{prefix}position"
        self.layout = f"{prefix}layout"
        self.claims = f"{prefix}claim:".encode()

    def history(self, conversation_id: int) -> str:
        return f"{self.prefix}history:{{{conversation_id}}}"

    def by_sender(self, conversation_id: int, sender_id: int) -> str:
        return f"{self.prefix}by_sender:{{{conversation_id}}}:{sender_id}"

    def client_msg(self, sender_id: int, client_msg_id: str) -> str:
        return f"{self.prefix}client_msg:{{{sender_id}}}:{client_msg_id}"

    def claim(self, sender_id: int, client_msg_id: str) -> str:
        return f"{self.prefix}claim:{{{sender_id}}}:{client_msg_id}"


def retagged(name: bytes) -> bytes:
    """A key's name (without the prefix) in today's layout: layout 1's get their braces."""
    return _UNTAGGED.sub(rb"\1:{\2}", name, count=1)
