"""Invitations: the sign-up codes of ``registration = "invite"``.

The operator makes one with ``kibitz invite create`` (for one person, or for N uses, until
an expiry) and hands out the code or its link. Only the code's SHA-256 is stored, so a
code is shown once. Signing up uses the code up in the same transaction that makes the
account: a sign-up that fails (a taken username) uses nothing, and two people racing for
the last use of a code cannot both get it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .database import inserted_id, invitations
from .models import now_ms, rfc3339


def secret_hash(secret: str) -> str:
    """What is stored of a token or code shown once: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Invitation:
    id: int
    uses_allowed: int
    uses: int
    expires_ms: int | None
    revoked_ms: int | None
    created_ms: int

    def state(self, now: int) -> str:
        if self.revoked_ms is not None:
            return "revoked"
        if self.uses >= self.uses_allowed:
            return "used up"
        if self.expires_ms is not None and self.expires_ms <= now:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "uses": self.uses,
            "uses_allowed": self.uses_allowed,
            "expires_at": rfc3339(self.expires_ms) if self.expires_ms is not None else None,
            "created_at": rfc3339(self.created_ms),
            "state": self.state(now_ms()),
        }


def _invitation(row: sa.Row[*tuple[Any, ...]]) -> Invitation:
    return Invitation(row.id, row.uses_allowed, row.uses, row.expires_ms, row.revoked_ms, row.created_ms)


class Invitations:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, uses: int, expires_in: float | None) -> tuple[str, Invitation]:
        """A new code good for ``uses`` sign-ups, for ``expires_in`` seconds (None: no expiry)."""
        code = secrets.token_urlsafe(18)
        now = now_ms()
        expires = now + int(expires_in * 1000) if expires_in is not None else None
        async with self.engine.begin() as db:
            result = await db.execute(
                invitations.insert().values(
                    code_hash=secret_hash(code), uses_allowed=uses, expires_ms=expires, created_ms=now
                )
            )
        return code, Invitation(inserted_id(result), uses, 0, expires, None, now)

    async def list(self) -> list[Invitation]:
        async with self.engine.connect() as db:
            rows = await db.execute(sa.select(invitations).order_by(invitations.c.id))
        return [_invitation(row) for row in rows]

    async def revoke(self, invitation_id: int) -> bool:
        """Stop a code working; False when there is no such invitation or it was revoked already."""
        async with self.engine.begin() as db:
            result = await db.execute(
                invitations.update()
                .where(invitations.c.id == invitation_id, invitations.c.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )
        return bool(result.rowcount)


async def redeem(db: AsyncConnection, code: str) -> bool:
    """Use one use of ``code`` inside the caller's transaction; False if it is not usable."""
    now = now_ms()
    result = await db.execute(
        invitations.update()
        .where(
            invitations.c.code_hash == secret_hash(code),
            invitations.c.revoked_ms.is_(None),
            invitations.c.uses < invitations.c.uses_allowed,
            sa.or_(invitations.c.expires_ms.is_(None), invitations.c.expires_ms > now),
        )
        .values(uses=invitations.c.uses + 1)
    )
    return bool(result.rowcount)
