"""The ``incoming_webhooks`` extension: a secret URL that posts into a group as a bot.

A member of a group makes one with ``POST /api/v1/conversations/{cid}/webhooks {"name"}``:
a new bot user (``webhook-<hex>``, shown as ``name``) joins the group, and the answer
carries the webhook's URL, ``<public url>/api/v1/hooks/<id>/<secret>``, this once: only
the secret's SHA-256 is kept. Whoever holds the URL (a CI job, a monitor) POSTs
``{"text"}`` (or ``{"body"}``; ``client_msg_id`` makes a retry safe) to it, and the
message goes through ``App.post`` as the bot: the path of a member's send, its limits
and rate limit included. A wrong id or secret and a revoked webhook answer 404 alike.
Members list the group's webhooks (no secrets) and any member revokes one; the bot stays
a member, so its messages keep their sender (``kibitz user disable`` on it silences it).

Its table, ``incoming_webhooks_hooks``, is the plugin's own, made at start-up (it is not
in ``kibitz backup``). Enable with ``KIBITZ_PLUGINS=incoming_webhooks``; no settings.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from sanic import Request
from sanic.response import HTTPResponse, empty, json

from kibitz import (
    App,
    Conversation,
    InvalidRequest,
    NotFound,
    User,
    decode,
    hookimpl,
    openapi_operation,
    path_id,
)

MAX_NAME = 64  # a display name's limit: the bot is shown by it
_CREATE_LOCK = 7160427  # PostgreSQL instances starting together create the table one at a time

metadata = sa.MetaData()

webhooks = sa.Table(
    "incoming_webhooks_hooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("name", sa.String(MAX_NAME), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 of the secret, in hex
    sa.Column("bot_id", sa.BigInteger, nullable=False),
    sa.Column("creator_id", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,  # a revoked webhook's id is never given again
)


class NewWebhook(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]


class Posted(msgspec.Struct):
    text: str | None = None
    body: str | None = None  # the protocol's name for it, for callers that speak it
    client_msg_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _view(row: Mapping[Any, Any]) -> dict[str, str]:
    """A webhook as members see it: never its secret."""
    fields = ("id", "conversation_id", "bot_id", "creator_id")
    return {"name": row["name"], **{field: str(row[field]) for field in fields}}


async def _of_member(app: App, cid: str, user: User) -> Conversation:
    """The conversation, if ``user`` is a member; 404 otherwise, as for one that does not exist."""
    conversation = await app.conversation(path_id(cid, "conversation"))
    if conversation is None or user.id not in conversation.members:
        raise NotFound("no such conversation")
    return conversation


@hookimpl
async def startup(app: App) -> None:
    async with app.engine.begin() as db:
        if db.dialect.name == "postgresql":
            await db.execute(sa.text(f"SELECT pg_advisory_xact_lock({_CREATE_LOCK})"))
        await db.run_sync(metadata.create_all, checkfirst=True)


async def create(request: Request, cid: str) -> HTTPResponse:
    """A new webhook of the group, its bot a member; the URL with its secret, shown this once."""
    app: App = request.app.ctx.app
    user = await app.authenticated(request)
    conversation = await _of_member(app, cid, user)
    name = decode(request.body, NewWebhook).name.strip()
    if not name:
        raise InvalidRequest(f"name: 1 to {MAX_NAME} characters")
    if conversation.type != "group":
        raise InvalidRequest("webhooks post into group conversations only")
    bot = await app.bot(f"webhook-{secrets.token_hex(6)}", name)
    await app.add_member(conversation.id, bot.id)
    secret = secrets.token_urlsafe(24)
    row = {"conversation_id": conversation.id, "name": name, "bot_id": bot.id, "creator_id": user.id}
    async with app.engine.begin() as db:
        made = await db.execute(webhooks.insert().values(secret_hash=_hash(secret), **row))
    inserted = made.inserted_primary_key
    assert inserted is not None  # an INSERT of one row names its key
    hook_id = inserted[0]
    url = f"{app.settings.url}/api/v1/hooks/{hook_id}/{secret}"
    return json({"webhook": _view({"id": hook_id, **row}), "url": url}, status=201)


async def listing(request: Request, cid: str) -> HTTPResponse:
    app: App = request.app.ctx.app
    conversation = await _of_member(app, cid, await app.authenticated(request))
    query = sa.select(webhooks).where(webhooks.c.conversation_id == conversation.id).order_by(webhooks.c.id)
    async with app.engine.connect() as db:
        rows = (await db.execute(query)).all()
    return json({"webhooks": [_view(row._mapping) for row in rows]})


async def revoke(request: Request, cid: str, hook_id: str) -> HTTPResponse:
    app: App = request.app.ctx.app
    conversation = await _of_member(app, cid, await app.authenticated(request))
    mine = webhooks.c.id == path_id(hook_id, "webhook"), webhooks.c.conversation_id == conversation.id
    async with app.engine.begin() as db:
        gone = await db.execute(webhooks.delete().where(*mine))
    if not gone.rowcount:
        raise NotFound("no such webhook")
    return empty(204)


async def post(request: Request, hook_id: str, secret: str) -> HTTPResponse:
    """Post the body's text as the webhook's bot. No token: the secret in the path is the key."""
    app: App = request.app.ctx.app
    query = sa.select(webhooks.c.conversation_id, webhooks.c.bot_id).where(
        webhooks.c.id == path_id(hook_id, "webhook"), webhooks.c.secret_hash == _hash(secret)
    )
    async with app.engine.connect() as db:
        found = (await db.execute(query)).first()
    if found is None:
        raise NotFound("no such webhook")  # also for a wrong secret: nothing tells which
    posted = decode(request.body, Posted)
    text = posted.text if posted.text is not None else posted.body
    if text is None:
        raise InvalidRequest("text: the message to post is required")
    bot = await app.user(found.bot_id)
    message = await app.post(bot, found.conversation_id, text, posted.client_msg_id)
    return json({"message": message.to_dict()})


# -- the routes and their OpenAPI operations ----------------------------------------------------

_STRING = {"type": "string"}
_WEBHOOK = {
    "type": "object",
    "required": ["id", "name", "conversation_id", "bot_id", "creator_id"],
    "properties": {key: _STRING for key in ("id", "name", "conversation_id", "bot_id", "creator_id")},
}


def _body(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _in_path(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": _STRING} for name in names]


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    group = "/api/v1/conversations/<cid>/webhooks"
    made = _body(webhook=_WEBHOOK, url={"type": "string", "description": "shown this once"})
    new = {**_body(name={"type": "string", "minLength": 1, "maxLength": MAX_NAME}), "required": ["name"]}
    register(
        group,
        create,
        methods=("POST",),
        openapi=openapi_operation(
            "Make an incoming webhook: its bot joins the group (extension)",
            201,
            made,
            [400, 401, 404],
            new,
            params=_in_path("cid"),
        ),
    )
    register(
        group,
        listing,
        openapi=openapi_operation(
            "The group's incoming webhooks, without secrets (extension)",
            200,
            _body(webhooks={"type": "array", "items": _WEBHOOK}),
            [401, 404],
            params=_in_path("cid"),
        ),
    )
    register(
        group + "/<hook_id>",
        revoke,
        methods=("DELETE",),
        openapi=openapi_operation(
            "Revoke an incoming webhook (extension)", 204, None, [401, 404], params=_in_path("cid", "hook_id")
        ),
    )
    message = _body(text=_STRING, body=_STRING, client_msg_id={**_STRING, "minLength": 1, "maxLength": 64})
    register(
        "/api/v1/hooks/<hook_id>/<secret>",
        post,
        methods=("POST",),
        openapi=openapi_operation(
            "Post as an incoming webhook's bot: the secret URL is the key (extension)",
            200,
            _body(message={"$ref": "#/components/schemas/Message"}),
            [400, 403, 404, 413, 429, 503],
            message,
            params=_in_path("hook_id", "secret"),
            auth=False,
        ),
    )
