"""The operator's actions on users and invitations, and the socket the CLI reaches them by.

``kibitz user ...`` and ``kibitz invite ...`` must act on a running server: disabling a
user closes their open connections at once, and only a running instance holds those (an
embedded appliance also holds the data folder and its NATS and Redis). So every running
instance listens on ``admin.sock`` in its data folder (mode 0600, in a 0700 folder: the
operator's account alone), one JSON request per connection::

    {"action": "user_disable", "args": {"username": "bob"}}  ->  {"result": ...} | {"error": "..."}

With no server running the CLI starts the same services itself and calls the same
``Admin`` methods (``kibitz.admin_cli``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from .accounts import NO_PASSWORD
from .backup import BackupError, backup
from .database import devices, members, users
from .errors import ApiError
from .export import export
from .hub import revocation
from .invitations import Invitations
from .models import now_ms, rfc3339
from .progress import Progress

if TYPE_CHECKING:
    from .app import Kibitz

log = logging.getLogger("kibitz.admin")

SOCKET = "admin.sock"
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0
REPLY_TIMEOUT = 600.0  # deleting a user in many groups writes to each group's members' logs
PROGRESS_INTERVAL = 0.2


def _no_progress(part: str, done: int, total: int) -> None:
    pass


class AdminError(Exception):
    """The action cannot be done; the message says why, in one line."""


class Admin:
    """What ``kibitz user`` and ``kibitz invite`` do, on the services of one instance."""

    def __init__(self, app: Kibitz) -> None:
        self.app = app
        self.engine = app.engine
        self.invitations = Invitations(app.engine)
        self.actions: dict[str, Callable[..., Awaitable[Any]]] = {
            "user_create": self.user_create,
            "user_list": self.user_list,
            "user_disable": self.user_disable,
            "user_enable": self.user_enable,
            "user_reset_password": self.user_reset_password,
            "user_delete": self.user_delete,
            "invite_create": self.invite_create,
            "invite_list": self.invite_list,
            "invite_revoke": self.invite_revoke,
        }
        self.long_actions: dict[str, Callable[..., Awaitable[Any]]] = {
            "backup": self.backup,
            "export": self.export,
        }

    async def call(self, action: str, args: dict[str, Any], progress: Progress = _no_progress) -> Any:
        """Run one action by name; ``AdminError`` with the reason when it cannot be done.

        The long ones (backup, export) tell ``progress`` how far they have come.
        """
        if action in self.long_actions:
            method, args = self.long_actions[action], {**args, "progress": progress}
        elif action in self.actions:
            method = self.actions[action]
        else:
            raise AdminError(f"unknown action {action!r}")
        try:
            inspect.signature(method).bind(**args)
        except TypeError as e:
            raise AdminError(f"{action}: {e}") from None
        try:
            return await method(**args)
        except ApiError as e:
            raise AdminError(e.message) from None
        except BackupError as e:
            raise AdminError(str(e)) from None

    # -- long work -----------------------------------------------------------------

    async def backup(self, file: str, progress: Progress) -> dict[str, Any]:
        return await backup(self.app, Path(file), progress)

    async def export(
        self, file: str, progress: Progress, conversation_id: str | None = None, username: str | None = None
    ) -> dict[str, Any]:
        user_id = await self._user_id(username) if username is not None else None
        return await export(self.app, Path(file), conversation_id, user_id, progress)

    # -- users -------------------------------------------------------------------

    async def user_create(
        self,
        username: str,
        password: str | None = None,
        display_name: str | None = None,
        admin: bool = False,
        bot: bool = False,
    ) -> dict[str, Any]:
        """A person's account (with a password), or a bot's (``bot``: none; never an administrator)."""
        if bot:
            if password is not None or admin:
                raise AdminError("a bot has no password and is no administrator")
            user = await self.app.accounts.create_bot(username, display_name)
        elif password is None:
            raise AdminError("a person's account needs a password")
        else:
            user = await self.app.accounts.create(username, password, display_name, admin)
        return {**user.to_dict(), "admin": admin}

    async def user_list(self) -> list[dict[str, Any]]:
        device_count = (
            sa.select(sa.func.count())
            .where(devices.c.user_id == users.c.id)
            .scalar_subquery()
            .label("devices")
        )
        query = sa.select(users, device_count).where(users.c.deleted_ms.is_(None)).order_by(users.c.username)
        async with self.engine.connect() as db:
            rows = (await db.execute(query)).all()
        return [
            {
                "id": str(row.id),
                "username": row.username,
                "display_name": row.display_name,
                "admin": row.admin,
                "bot": row.bot,
                "state": "disabled" if row.disabled_ms is not None else "active",
                "devices": row.devices,
                "created_at": rfc3339(row.created_ms),
            }
            for row in rows
        ]

    async def user_disable(self, username: str) -> dict[str, Any]:
        """No more logins; every device logged out and its connections closed, on every instance."""
        user_id = await self._user_id(username)
        async with self.engine.begin() as db:
            await db.execute(
                users.update()
                .where(users.c.id == user_id, users.c.disabled_ms.is_(None))
                .values(disabled_ms=now_ms())
            )
        return {"devices_logged_out": await self._log_out_everywhere(user_id)}

    async def user_enable(self, username: str) -> dict[str, Any]:
        user_id = await self._user_id(username)
        async with self.engine.begin() as db:
            await db.execute(users.update().where(users.c.id == user_id).values(disabled_ms=None))
        return {"username": username}

    async def user_reset_password(self, username: str, password: str) -> dict[str, Any]:
        """A new password; every device is logged out, since whoever knew the old one may be on one."""
        user_id = await self._user_id(username)
        if (await self.app.accounts.get(user_id)).bot:
            raise AdminError(f"{username} is a bot: it has no password")
        hashed = await self.app.accounts.new_password_hash(password)
        async with self.engine.begin() as db:
            await db.execute(users.update().where(users.c.id == user_id).values(password_hash=hashed))
        return {"devices_logged_out": await self._log_out_everywhere(user_id)}

    async def user_delete(self, username: str) -> dict[str, Any]:
        """Delete an account and what is theirs: devices (connections closed), push
        subscriptions, group memberships, name and password.

        The row stays as a tombstone named ``~deleted<id>`` and shown as "Deleted user",
        because messages they sent stay in the others' history and name their sender;
        a direct conversation stays with the other person. The id is never reused.
        """
        user_id = await self._user_id(username)
        async with self.engine.begin() as db:
            await db.execute(users.update().where(users.c.id == user_id).values(disabled_ms=now_ms()))
        logged_out = await self._log_out_everywhere(user_id)
        async with self.engine.connect() as db:
            query = sa.select(members.c.conversation_id).where(members.c.user_id == user_id)
            conversation_ids = (await db.execute(query)).scalars().all()
        left = 0
        for conversation in (await self.app.conversations.get_many(conversation_ids)).values():
            if conversation.type == "group":
                await self.app.conversations.remove_deleted_user(conversation, user_id)
                left += 1
        async with self.engine.begin() as db:
            await db.execute(
                users.update()
                .where(users.c.id == user_id)
                .values(
                    username=f"~deleted{user_id}",
                    display_name="Deleted user",
                    password_hash=NO_PASSWORD,
                    admin=False,
                    deleted_ms=now_ms(),
                )
            )
        return {"devices_logged_out": logged_out, "groups_left": left}

    async def _user_id(self, username: str) -> int:
        query = sa.select(users.c.id).where(
            users.c.username == username.lower(), users.c.deleted_ms.is_(None)
        )
        async with self.engine.connect() as db:
            user_id: int | None = (await db.execute(query)).scalar()
        if user_id is None:
            raise AdminError(f"there is no user {username!r}")
        return user_id

    async def _log_out_everywhere(self, user_id: int) -> int:
        """Delete the user's devices (their tokens stop working) and close their connections."""
        async with self.engine.begin() as db:
            mine = devices.delete().where(devices.c.user_id == user_id)
            result = await db.execute(mine.returning(devices.c.id))
            device_ids = result.scalars().all()
        for device_id in device_ids:
            await self.app.transport.signal([user_id], revocation(device_id))
        return len(device_ids)

    # -- invitations ---------------------------------------------------------------

    async def invite_create(self, uses: int = 1, expires_in: float | None = None) -> dict[str, Any]:
        if uses < 1:
            raise AdminError("an invitation needs at least one use")
        code, invitation = await self.invitations.create(uses, expires_in)
        link = f"{self.app.settings.url}/#invite={code}"
        return {"code": code, "link": link, "invitation": invitation.to_dict()}

    async def invite_list(self) -> list[dict[str, object]]:
        return [invitation.to_dict() for invitation in await self.invitations.list()]

    async def invite_revoke(self, invitation_id: str) -> dict[str, Any]:
        if not invitation_id.isdigit() or not await self.invitations.revoke(int(invitation_id)):
            raise AdminError(f"there is no active invitation {invitation_id!r}")
        return {"id": invitation_id}


class AdminSocket:
    """``admin.sock`` in the data folder, answering ``Admin`` requests while the server runs."""

    def __init__(self, admin: Admin, folder: Path) -> None:
        self.admin = admin
        self.path = folder / SOCKET
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process that was killed: the data folder lock is ours
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        except OSError as e:  # a data folder path too long for a socket (108 bytes), say
            log.warning("admin_socket_unavailable", extra={"path": str(self.path), "error": str(e)})
            return
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = orjson.loads(await reader.readline())
            action, args = request["action"], dict(request.get("args", {}))
        except (TimeoutError, ValueError, KeyError, TypeError, AttributeError):
            reply: dict[str, Any] = {"error": "not a request: one JSON object with action and args"}
        else:
            log.info("admin_action", extra={"action": action})
            try:
                reply = {"result": await self.admin.call(action, args, _reporter(writer))}
            except AdminError as e:
                reply = {"error": str(e)}
            except Exception as e:  # the server's own failure: say so, and log the details
                log.exception("admin_action_failed", extra={"action": action})
                reply = {"error": f"the server failed: {type(e).__name__}: {e}"}
        try:
            writer.write(orjson.dumps(reply) + b"\n")
            await writer.drain()
        finally:
            writer.close()


def _reporter(writer: asyncio.StreamWriter) -> Progress:
    """A progress callback that sends ``{"progress": [part, done, total]}`` lines, a few a second."""
    last = 0.0

    def report(part: str, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if (now - last >= PROGRESS_INTERVAL or done == total) and not writer.is_closing():
            last = now
            writer.write(orjson.dumps({"progress": [part, done, total]}) + b"\n")

    return report


async def ask(folder: Path, action: str, args: dict[str, Any], progress: Progress = _no_progress) -> Any:
    """Send one request to the instance serving ``folder``; raises ``OSError`` when none listens.

    A reply waits at most ``REPLY_TIMEOUT`` seconds after the request or the last progress line.
    """
    reader, writer = await asyncio.open_unix_connection(folder / SOCKET, limit=16 * 1024 * 1024)
    try:
        writer.write(orjson.dumps({"action": action, "args": args}) + b"\n")
        await writer.drain()
        while True:
            async with asyncio.timeout(REPLY_TIMEOUT):
                line = await reader.readline()
            if not line:
                raise AdminError("the server closed the connection without an answer; see its log")
            reply = orjson.loads(line)
            if "progress" not in reply:
                break
            progress(*reply["progress"])
    finally:
        writer.close()
    if "error" in reply:
        raise AdminError(reply["error"])
    return reply["result"]
