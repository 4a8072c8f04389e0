"""An example Kibitz plugin, installed for real by the tests (``KIBITZ_PLUGINS=example``).

- ``wrap_send``: refuses messages that start with ``!reject`` and upper-cases the rest
  of those that start with ``!shout ``.
- ``message_accepted``: counts accepted messages.
- ``connection_opened`` / ``connection_closed``: counts WebSockets going live and closing.
- ``startup``: notes that the server started.
- ``register_routes``: ``GET /api/v1/-/example/accepted`` answers the accepted count,
  ``GET /api/v1/-/example/counts`` all of them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from sanic import HTTPResponse, Request
from sanic.response import json

from kibitz import Device, Draft, Message, Rejected, User, hookimpl

accepted: list[str] = []
counts = {"started": 0, "opened": 0, "closed": 0}


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
async def connection_opened(user: User, device: Device) -> None:
    counts["opened"] += 1


@hookimpl
def connection_closed(device: Device) -> None:
    counts["closed"] += 1


@hookimpl
def startup() -> None:
    counts["started"] += 1


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    async def accepted_count(request: Request) -> HTTPResponse:
        return json({"accepted": len(accepted)})

    async def all_counts(request: Request) -> HTTPResponse:
        return json({"accepted": len(accepted), **counts})

    register("/api/v1/-/example/accepted", accepted_count)
    register("/api/v1/-/example/counts", all_counts)
