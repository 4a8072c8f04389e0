"""A real, small ``App`` for testing one slot on its own: settings, a data folder, a
migrated database (SQLite in the folder, or the URL given), leases and tasks; no HTTP
server and no other slot."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..database import create_engine, migrate
from ..errors import NotFound, Unauthorized, Unavailable
from ..leases import Leases
from ..models import Conversation, Message, User
from ..plugin_manager import create_plugin_manager, fill_slot
from ..push import Push
from ..settings import Settings
from ..tasks import Tasks


@dataclasses.dataclass
class SlotApp:
    """What a slot's ``start(app)`` gets, made of the core's real parts."""

    settings: Settings
    data_dir: Path
    instance_id: str
    engine: AsyncEngine
    leases: Leases
    tasks: Tasks
    push: Push

    async def user(self, user_id: int) -> User:
        raise NotFound("no such user")  # a slot test has no accounts

    async def conversation(self, conversation_id: int) -> Conversation | None:
        return None

    async def authenticated(self, request: Any) -> User:
        raise Unauthorized("a slot test has no accounts")

    async def bot(self, username: str, display_name: str | None = None) -> User:
        raise Unavailable("a slot test has no accounts")

    async def add_member(self, conversation_id: int, user_id: int) -> Conversation:
        raise NotFound("no such conversation")

    async def post(
        self, sender: User, conversation_id: int, body: str, client_msg_id: str | None = None
    ) -> Message:
        raise NotFound("no such conversation")


@asynccontextmanager
async def slot_app(
    data_dir: Path, database_url: str = "", instance_id: str = "test", **core: Any
) -> AsyncIterator[SlotApp]:
    """A ``SlotApp`` on a migrated database, disposed of afterwards; ``core``: settings
    of ``kibitz.Settings`` (``push_allow_insecure=True``, say)."""
    settings = Settings(data_dir=data_dir, database_url=database_url, **core)
    engine = create_engine(settings.sqlalchemy_url)
    try:
        await migrate(engine)
        push = Push(engine, allow_insecure=True)
        yield SlotApp(settings, data_dir, instance_id, engine, Leases(engine, instance_id), Tasks(), push)
    finally:
        await engine.dispose()


@asynccontextmanager
async def started_slot(
    slot: str, name: str, app: SlotApp, settings: Mapping[str, Any] | None = None, before_start: Any = None
) -> AsyncIterator[Any]:
    """The plugin ``name``'s answer to ``register_<slot>`` (``transport``, ``storage``,
    ``ids`` or ``notifier``), found through the installed entry points as ``kibitz serve``
    finds it, with ``settings`` as its TOML table; started on ``app``, closed afterwards.
    ``before_start(part)`` runs first (a transport's ``listen``)."""
    chosen: dict[str, Any] = {"notify": (name,)} if slot == "notifier" else {slot: name}
    core = dataclasses.replace(app.settings, tables={name: dict(settings or {})}, **chosen)
    pm = create_plugin_manager(core)
    part = fill_slot(pm, slot, name, core)
    if before_start is not None:
        before_start(part)
    await part.start(app)
    try:
        yield part
    finally:
        await part.close()
