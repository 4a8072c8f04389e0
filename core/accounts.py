"""Accounts and sessions: sign-up, login, tokens, logout, user lookup.

Passwords are hashed with argon2id (``kibitz.passwords``: worker threads, served fairly
by client address). A session is a device with a random token; only the token's SHA-256
is stored, so a leaked database holds no usable token.
"""

from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import devices, users
from .errors import InvalidRequest, NotFound, RegistrationClosed, UsernameTaken
from .models import Device, User, now_ms, rfc3339
from .passwords import PasswordWork

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_DISPLAY_NAME = 64


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: sa.Row) -> User:
    return User(id=row.id, username=row.username, display_name=row.display_name)


def normalize_username(value: str) -> str:
    """The protocol's username rule: lower-cased, then 3-32 of ``a-z 0-9 _ . -``."""
    if not USERNAME.fullmatch(value.lower()):
        raise InvalidRequest("username: 3 to 32 characters of a-z 0-9 _ . -")
    return value.lower()


class Accounts:
    def __init__(self, engine: AsyncEngine, registration: str) -> None:
        self.engine = engine
        self.registration = registration
        self.passwords = PasswordWork()

    async def sign_up(self, username: str, password: str, display_name: str | None, address: str) -> User:
        """A new account; ``address`` is the client's, whose turn the hashing waits for."""
        name = normalize_username(username)
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidRequest(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        if display_name is None:
            display_name = name
        if not 1 <= len(display_name.strip()) <= MAX_DISPLAY_NAME:
            raise InvalidRequest(f"display_name: 1 to {MAX_DISPLAY_NAME} characters")
        if self.registration == "closed":
            raise RegistrationClosed("registration is closed on this server")
        hashed = await self.passwords.hash(address, password)
        try:
            async with self.engine.begin() as db:
                result = await db.execute(
                    users.insert().values(
                        username=name,
                        display_name=display_name.strip(),
                        password_hash=hashed,
                        created_ms=now_ms(),
                    )
                )
        except IntegrityError:
            raise UsernameTaken(f"the username {name!r} is taken") from None
        return User(id=result.inserted_primary_key[0], username=name, display_name=display_name.strip())

    async def log_in(
        self, username: str, password: str, device_name: str, address: str
    ) -> tuple[str, Device, User] | None:
        """A new device and its token, or None when the username or password is wrong."""
        async with self.engine.connect() as db:
            row = (await db.execute(sa.select(users).where(users.c.username == username))).first()
        ok = await self.passwords.verify(address, row.password_hash if row else None, password)
        if row is None or not ok:
            return None
        token = secrets.token_urlsafe(32)
        created = now_ms()
        async with self.engine.begin() as db:
            result = await db.execute(
                devices.insert().values(
                    user_id=row.id, name=device_name, token_hash=token_hash(token), created_ms=created
                )
            )
        device = Device(
            id=result.inserted_primary_key[0], user_id=row.id, name=device_name, created_at=rfc3339(created)
        )
        return token, device, _user(row)

    async def authenticate(self, token: str) -> tuple[User, Device] | None:
        """The user and device a token belongs to, or None if it is unknown or revoked."""
        query = (
            sa.select(
                users.c.id,
                users.c.username,
                users.c.display_name,
                devices.c.id.label("device_id"),
                devices.c.name.label("device_name"),
                devices.c.created_ms,
            )
            .join(devices, devices.c.user_id == users.c.id)
            .where(devices.c.token_hash == token_hash(token))
        )
        async with self.engine.connect() as db:
            row = (await db.execute(query)).first()
        if row is None:
            return None
        device = Device(
            id=row.device_id, user_id=row.id, name=row.device_name, created_at=rfc3339(row.created_ms)
        )
        return _user(row), device

    async def log_out(self, device: Device) -> None:
        async with self.engine.begin() as db:
            await db.execute(devices.delete().where(devices.c.id == device.id))

    async def get(self, user_id: int) -> User:
        async with self.engine.connect() as db:
            row = (await db.execute(sa.select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise NotFound("no such user")
        return _user(row)

    async def existing(self, user_ids: set[int]) -> set[int]:
        """The subset of ``user_ids`` that are real users."""
        if not user_ids:
            return set()
        async with self.engine.connect() as db:
            rows = await db.execute(sa.select(users.c.id).where(users.c.id.in_(user_ids)))
        return {row.id for row in rows}

    async def search(self, prefix: str, limit: int) -> list[User]:
        """Users whose username starts with ``prefix`` (case-insensitive), by username."""
        escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (
            sa.select(users)
            .where(users.c.username.like(escaped + "%", escape="\\"))
            .order_by(users.c.username)
            .limit(limit)
        )
        async with self.engine.connect() as db:
            return [_user(row) for row in await db.execute(query)]
