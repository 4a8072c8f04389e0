"""``App``: what a plugin may use of the running server, and nothing else.

Every hook and every slot's ``start`` gets it as ``app``. It is a Protocol, so a plugin
depends on these names and types only, never on the core's classes behind them (the
core's ``kibitz.app.Kibitz`` implements it; nothing outside the core imports that).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from .commands import Command
from .leases import Leases
from .models import Conversation, User
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
