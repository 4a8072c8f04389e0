"""``App``: what a plugin may use of the running server, and nothing else.

Every hook and every slot's ``start`` gets it as ``app``. It is a Protocol, so a plugin
depends on these names and types only, never on the core's classes behind them (the
core's ``kibitz.app.Kibitz`` implements it; nothing outside the core imports that).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from sanic import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from .commands import Command
from .leases import Leases
from .models import Conversation, Message, User
from .push import Push
from .settings import Settings
from .tasks import Tasks


class App(Protocol):
    """The services of one running Kibitz instance, as plugins see them. Added in 0.1."""

    @property
    def settings(self) -> Settings:
        """The core's settings (a plugin's own are the ``settings`` of its ``register_*`` hook)."""

    @property
    def data_dir(self) -> Path:
        """The instance's data folder (absolute); a plugin keeps files in a folder named after it."""

    @property
    def instance_id(self) -> str:
        """This instance's id, unique among the instances that share the backing services."""

    @property
    def engine(self) -> AsyncEngine:
        """The relational database. A plugin's own tables are named ``<plugin>_...`` and
        created by the plugin (the core's migrations know nothing of them)."""

    @property
    def leases(self) -> Leases:
        """Numbered leases shared by every instance (worker numbers, one-at-a-time jobs)."""

    @property
    def tasks(self) -> Tasks:
        """Background work: what is spawned here is awaited before the server stops."""

    @property
    def push(self) -> Push:
        """The devices' Web Push subscriptions and the server's VAPID key (notifiers)."""

    @property
    def commands(self) -> Mapping[str, Command]:
        """Every plugin's slash commands by name (``register_commands``). Added in 0.2."""

    async def user(self, user_id: int) -> User:
        """The user with this id; ``NotFound`` if there is none."""

    async def conversation(self, conversation_id: int) -> Conversation | None:
        """The conversation with this id, or None."""

    async def authenticated(self, request: Request) -> User:
        """The user whose bearer token ``request`` carries (a plugin's route); ``Unauthorized``
        (401) when there is none, or it is unknown or revoked. Added in 0.2."""

    async def bot(self, username: str, display_name: str | None = None) -> User:
        """The bot user ``username``, made now if there is none (``display_name`` defaults to
        the username); an existing bot is returned as it is. A bot has no password, so nobody
        logs in as it. ``UsernameTaken`` (409) when a person has that username,
        ``InvalidRequest`` (400) for a name the username rules refuse. Added in 0.2."""

    async def add_member(self, conversation_id: int, user_id: int) -> Conversation:
        """Add a user (a bot, say) to a group, as a member's ``POST .../members`` does: every
        member's devices learn of it; already a member, nothing changes. ``NotFound`` (404)
        for no such conversation, ``InvalidRequest`` (400) for no such user, a direct
        conversation or a full group. Added in 0.2."""

    async def post(
        self, sender: User, conversation_id: int, body: str, client_msg_id: str | None = None
    ) -> Message:
        """Send a message as ``sender`` (a bot, usually) on the path of a member's send: the
        sender must be a member (``NotFound``, 404) and active (``Forbidden``, 403, once the
        operator disabled it), the body's limits hold (400, 413), the sender's rate limit
        counts (``RateLimited``, 429), ``wrap_send`` runs (a rejection is ``Forbidden``),
        then the message is stored and delivered to every member, and ``message_accepted``
        runs. The same ``client_msg_id`` (1 to 64 characters; default a new one) again gives
        the message sent with it, and sends nothing. Every refusal is an ``ApiError``.
        Added in 0.2."""
