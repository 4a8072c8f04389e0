"""An example Kibitz plugin, installed for real by the tests (``KIBITZ_PLUGINS=example``).

- ``wrap_send``: refuses messages that start with ``!reject`` and upper-cases the rest
  of those that start with ``!shout ``.
- ``message_accepted``: counts accepted messages.
- ``register_routes``: ``GET /api/v1/-/example/accepted`` answers that count.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from sanic.response import json

from kibitz import Draft, Message, Rejected, hookimpl

accepted: list[str] = []


@hookimpl
def wrap_send(draft: Draft) -> Callable[[], AsyncGenerator[None, Message]]:
    async def wrapper() -> AsyncGenerator[None, Message]:
        if draft.body.startswith("!reject"):
            raise Rejected("the example plugin refuses messages that start with !reject")
        if draft.body.startswith("!shout "):
            draft.body = draft.body.removeprefix("!shout ").upper()
        yield

    return wrapper


@hookimpl
def message_accepted(message: Message) -> None:
    accepted.append(str(message.id))


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    async def count(request: Any) -> Any:
        return json({"accepted": len(accepted)})

    register("/api/v1/-/example/accepted", count)
