"""Cursors: a transport position, signed so the server can tell which cursors it issued.

A cursor is ``<position>.<signature>``, the signature an HMAC of the user id and the
position under a key every instance shares (kept in the database). A cursor that does
not verify, or belongs to another user, is one this server did not issue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from sqlalchemy.ext.asyncio import AsyncEngine

from .database import shared_secret


class Cursors:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, user_id: int, position: int) -> str:
        mac = hmac.digest(self._key, f"{user_id}:{position}".encode(), hashlib.sha256)[:9]
        return base64.urlsafe_b64encode(mac).decode()

    def encode(self, user_id: int, position: int) -> str:
        return f"{position}.{self._sign(user_id, position)}"

    def decode(self, user_id: int, cursor: str) -> int | None:
        """The position in ``cursor``, or None if this server did not issue it to this user."""
        position, _, signature = cursor.partition(".")
        if not (position.isascii() and position.isdigit()) or len(position) > 19:
            return None
        number = int(position)
        return number if hmac.compare_digest(signature, self._sign(user_id, number)) else None


async def load_cursor_key(engine: AsyncEngine) -> bytes:
    """The shared signing key, made by whichever instance starts first."""
    return bytes.fromhex(await shared_secret(engine, "cursor_key", lambda: secrets.token_hex(32)))
