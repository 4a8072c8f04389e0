"""The HTTP calls only administrators make: invitations, as ``kibitz invite`` makes them.

An administrator (``kibitz user create NAME --admin``; ``"admin": true`` in ``GET /me``)
invites people from the web client with these, so running an invite-only server needs
no shell after the first account. Anyone else gets 403.
"""

from __future__ import annotations

from sanic import DefaultSanic, Request
from sanic.response import HTTPResponse, empty

from .admin import AdminError
from .api import PREFIX, authenticate, json
from .errors import Forbidden, NotFound
from .inputs import NewInvitation, decode


async def _administrator(request: Request) -> None:
    user, _ = await authenticate(request)
    if not await request.app.ctx.app.accounts.is_admin(user.id):
        raise Forbidden("only administrators manage invitations")


async def create_invitation(request: Request) -> HTTPResponse:
    await _administrator(request)
    body = decode(request.body, NewInvitation)
    made = await request.app.ctx.app.admin.invite_create(body.uses, body.expires_in)
    return json(made, 201)


async def list_invitations(request: Request) -> HTTPResponse:
    await _administrator(request)
    return json({"invitations": await request.app.ctx.app.admin.invite_list()})


async def revoke_invitation(request: Request, invitation_id: str) -> HTTPResponse:
    await _administrator(request)
    try:
        await request.app.ctx.app.admin.invite_revoke(invitation_id)
    except AdminError as e:
        raise NotFound(str(e)) from None
    return empty(204)


def register(sanic: DefaultSanic) -> None:
    for handler, path, method in (
        (create_invitation, "/invitations", "POST"),
        (list_invitations, "/invitations", "GET"),
        (revoke_invitation, "/invitations/<invitation_id>", "DELETE"),
    ):
        sanic.add_route(handler, PREFIX + path, methods=[method], name=handler.__name__)
