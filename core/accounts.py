"""Accounts and sessions: sign-up, login, tokens, logout, user lookup.

Passwords are hashed with argon2id (``kibitz.passwords``: worker threads, served fairly
by client address). A session is a device with a random token; only the token's SHA-256
is stored, so a leaked database holds no usable token. A bot is an account with no
password: nobody logs in as it, plugins post as it (``kibitz.App.bot``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import devices, inserted_id, users
from .errors import Forbidden, InvalidRequest, NotFound, RegistrationClosed, UsernameTaken
from .invitations import redeem, secret_hash
from .models import Device, User, now_ms, rfc3339
from .passwords import PasswordWork

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_DISPLAY_NAME = 64
NO_PASSWORD = "!"  # the password hash of bots and deleted accounts: no argon2 hash, verifies nothing


def _user(row: sa.Row[*tuple[Any, ...]]) -> User:
    return User(id=row.id, username=row.username, display_name=row.display_name, bot=row.bot)


def _checked(username: str, password: str | None, display_name: str | None) -> tuple[str, str]:
    """The username and display name to store; 400 when any of the three breaks the rules
    (``password`` None: a bot's, which has none)."""
    name = normalize_username(username)
    if password is not None:
        _check_password(password)
    shown = (name if display_name is None else display_name).strip()
    if not 1 <= len(shown) <= MAX_DISPLAY_NAME:
        raise InvalidRequest(f"display_name: 1 to {MAX_DISPLAY_NAME} characters")
    return name, shown


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")


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

    async def sign_up(
        self, username: str, password: str, display_name: str | None, address: str, invitation: str | None
    ) -> User:
        """A new account made through the API, as ``registration`` allows.

        ``address`` is the client's, whose turn the hashing waits for. With
        ``registration = "invite"`` the sign-up uses up one use of ``invitation``.
        """
        name, shown = _checked(username, password, display_name)
        if self.registration == "closed":
            raise RegistrationClosed("registration is closed on this server")
        if self.registration == "invite" and not invitation:
            raise RegistrationClosed("this server signs people up by invitation: give an invitation code")
        code = invitation if self.registration == "invite" else None
        return await self._insert(name, await self.passwords.hash(address, password), shown, invitation=code)

    async def create(self, username: str, password: str, display_name: str | None, admin: bool) -> User:
        """A new account made by the operator, whatever ``registration`` says."""
        name, shown = _checked(username, password, display_name)
        return await self._insert(name, await self.passwords.hash("operator", password), shown, admin=admin)

    async def create_bot(self, username: str, display_name: str | None) -> User:
        """A new bot account: no password, so nobody logs in as it; 409 if the name is taken."""
        name, shown = _checked(username, None, display_name)
        return await self._insert(name, NO_PASSWORD, shown, bot=True)

    async def bot(self, username: str, display_name: str | None) -> User:
        """The bot named ``username``, made now if there is none (as it is if there is one);
        409 when a person has that username."""
        name = normalize_username(username)
        row = await self._named(name)
        if row is None:
            try:
                return await self.create_bot(name, display_name)
            except UsernameTaken:  # made meanwhile, by another instance
                row = await self._named(name)
        if row is None or not row.bot:
            raise UsernameTaken(f"the username {name!r} is a person's, not a bot's")
        return _user(row)

    async def _named(self, username: str) -> sa.Row[*tuple[Any, ...]] | None:
        async with self.engine.connect() as db:
            return (await db.execute(sa.select(users).where(users.c.username == username))).first()

    async def new_password_hash(self, password: str) -> str:
        """The hash to store for a password the operator sets; 400 when it breaks the rules."""
        _check_password(password)
        return await self.passwords.hash("operator", password)

    async def _insert(
        self,
        name: str,
        hashed: str,
        display_name: str,
        admin: bool = False,
        bot: bool = False,
        invitation: str | None = None,
    ) -> User:
        """The new account's row, using up one use of ``invitation`` (if given) with it."""
        try:
            async with self.engine.begin() as db:
                if invitation is not None and not await redeem(db, invitation):
                    raise RegistrationClosed("that invitation code is unknown, used up, expired or revoked")
                result = await db.execute(
                    users.insert().values(
                        username=name,
                        display_name=display_name,
                        password_hash=hashed,
                        created_ms=now_ms(),
                        admin=admin,
                        bot=bot,
                    )
                )
        except IntegrityError:
            raise UsernameTaken(f"the username {name!r} is taken") from None
        return User(id=inserted_id(result), username=name, display_name=display_name, bot=bot)

    async def log_in(
        self, username: str, password: str, device_name: str, address: str
    ) -> tuple[str, Device, User] | None:
        """A new device and its token, or None when the username or password is wrong.

        A disabled account with the right password gets 403. The user's row is locked
        while the device is made, so a ``kibitz user disable`` cannot miss it. A bot is
        checked as an unknown username is: the same work, the same None.
        """
        row = await self._named(username)
        hashed = row.password_hash if row is not None and not row.bot else None
        ok = await self.passwords.verify(address, hashed, password)
        if row is None or not ok:
            return None
        token = secrets.token_urlsafe(32)
        created = now_ms()
        async with self.engine.begin() as db:
            locked = sa.select(users.c.disabled_ms).where(users.c.id == row.id).with_for_update(read=True)
            if (await db.execute(locked)).scalar() is not None:
                raise Forbidden("this account is disabled; ask whoever runs this server")
            result = await db.execute(
                devices.insert().values(
                    user_id=row.id, name=device_name, token_hash=secret_hash(token), created_ms=created
                )
            )
        device = Device(id=inserted_id(result), user_id=row.id, name=device_name, created_at=rfc3339(created))
        return token, device, _user(row)

    async def authenticate(self, token: str) -> tuple[User, Device] | None:
        """The user and device a token belongs to, or None if it is unknown or revoked."""
        query = (
            sa.select(
                users.c.id,
                users.c.username,
                users.c.display_name,
                users.c.bot,
                devices.c.id.label("device_id"),
                devices.c.name.label("device_name"),
                devices.c.created_ms,
            )
            .join(devices, devices.c.user_id == users.c.id)
            .where(devices.c.token_hash == secret_hash(token), users.c.disabled_ms.is_(None))
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

    async def is_active(self, user_id: int) -> bool:
        """Whether the account exists and is neither disabled nor deleted."""
        query = sa.select(users.c.id).where(users.c.id == user_id, users.c.disabled_ms.is_(None))
        async with self.engine.connect() as db:
            return (await db.execute(query)).first() is not None

    async def is_admin(self, user_id: int) -> bool:
        async with self.engine.connect() as db:
            found = await db.execute(sa.select(users.c.admin).where(users.c.id == user_id))
            return bool(found.scalar())

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
            .where(users.c.username.like(escaped + "%", escape="\\"), users.c.disabled_ms.is_(None))
            .order_by(users.c.username)
            .limit(limit)
        )
        async with self.engine.connect() as db:
            return [_user(row) for row in await db.execute(query)]
