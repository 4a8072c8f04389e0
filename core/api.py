"""The HTTP calls of the stateless service: accounts, sessions, users, conversations, messages.

Each handler decodes its input (``kibitz.inputs``), calls a service, and answers JSON.
Errors are raised as ``ApiError`` and rendered by ``operations.error_response`` with the
protocol's body.
"""

from __future__ import annotations

from typing import Any

import orjson
from sanic import DefaultSanic, Request
from sanic.response import HTTPResponse, empty, raw

from .accounts import normalize_username
from .conversations import MAX_NAME
from .errors import InvalidRequest, Unauthorized
from .hub import revocation
from .inputs import (
    LogIn,
    NewConversation,
    NewMember,
    NewMessage,
    ReadMarker,
    SignUp,
    decode,
    parse_id,
    path_id,
)
from .messages import MAX_PAGE
from .models import Device, User

PREFIX = "/api/v1"
MAX_SEARCH = 50


def json(body: Any, status: int = 200) -> HTTPResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return raw(data, status=status, content_type="application/json")


def query(request: Request, name: str) -> str | None:
    """A query parameter, blank included (``limit=`` is a wrong value, not a missing one).

    Given twice it is refused: which of the two counts would be a guess.
    """
    values: list[str] | None = request.get_args(keep_blank_values=True).getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"{name}: given {len(values)} times; give it once")
    return values[0]


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; out of range is 400, never clamped."""
    value = query(request, name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise InvalidRequest(f"{name}: an integer from {low} to {high}")
    return int(value)


def id_query(request: Request, name: str) -> int | None:
    value = query(request, name)
    return None if value is None else parse_id(value, name)


def client_address(request: Request) -> str:
    """The client's address, through trusted proxies: what per-client limits count by."""
    forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
    address: str = request.app.ctx.app.clients.address(request.ip, forwarded)
    return address


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()


async def authenticate(request: Request) -> tuple[User, Device]:
    found = await request.app.ctx.app.accounts.authenticate(bearer(request))
    if found is None:
        raise Unauthorized("unknown or revoked token")
    user, device = found
    return user, device


# -- accounts and sessions ------------------------------------------------------------


async def sign_up(request: Request) -> HTTPResponse:
    body = decode(request.body, SignUp)
    user = await request.app.ctx.app.accounts.sign_up(
        body.username, body.password, body.display_name, client_address(request), body.invitation
    )
    return json({"user": user.to_dict()}, 201)


async def log_in(request: Request) -> HTTPResponse:
    app = request.app.ctx.app
    body = decode(request.body, LogIn)
    username = normalize_username(body.username)
    if not body.password:
        raise InvalidRequest("password: at least 1 character")
    address = client_address(request)
    await app.rate_limits.login_attempt(username, address)
    session = await app.accounts.log_in(username, body.password, body.device_name, address)
    if session is None:
        await app.rate_limits.login_failed(address)
        raise Unauthorized("wrong username or password")
    await app.rate_limits.login_succeeded(username, address)
    token, device, user = session
    return json({"token": token, "device": device.to_dict(), "user": user.to_dict()}, 201)


async def log_out(request: Request) -> HTTPResponse:
    app = request.app.ctx.app
    user, device = await authenticate(request)
    await app.accounts.log_out(device)
    await app.transport.signal([user.id], revocation(device.id))
    return empty(204)


async def me(request: Request) -> HTTPResponse:
    user, device = await authenticate(request)
    admin = await request.app.ctx.app.accounts.is_admin(user.id)  # an extension, of /me alone
    return json({"user": {**user.to_dict(), "admin": admin}, "device": device.to_dict()})


async def search_users(request: Request) -> HTTPResponse:
    await authenticate(request)
    prefix = query(request, "query") or ""
    limit = int_query(request, "limit", 20, 1, MAX_SEARCH)
    users = await request.app.ctx.app.accounts.search(prefix, limit)
    return json({"users": [u.to_dict() for u in users]})


async def get_user(request: Request, user_id: str) -> HTTPResponse:
    await authenticate(request)
    user = await request.app.ctx.app.accounts.get(path_id(user_id, "user"))
    return json({"user": user.to_dict()})


# -- conversations ----------------------------------------------------------------------


async def create_conversation(request: Request) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    body = decode(request.body, NewConversation)
    member_ids = [int(m) for m in body.members]
    if body.type == "direct":
        if len(member_ids) != 1:
            raise InvalidRequest("members: a direct conversation names exactly one other user")
        (other,) = member_ids
        if other == user.id:
            raise InvalidRequest("members: a direct conversation is with someone else")
        if not await app.accounts.existing({other}):
            raise InvalidRequest("members: no such user")
        conversation, made = await app.conversations.create_direct(user.id, other)
        view = await app.conversations.view(user.id, conversation)
        return json({"conversation": view}, 201 if made else 200)
    name = body.name
    if name is None or not 1 <= len(name.strip()) <= MAX_NAME:
        raise InvalidRequest(f"name: 1 to {MAX_NAME} characters")
    wanted = set(member_ids) | {user.id}
    if len(wanted) > app.transport.max_fanout:
        raise InvalidRequest(f"members: a group has at most {app.transport.max_fanout} members")
    if await app.accounts.existing(wanted) != wanted:
        raise InvalidRequest("members: no such user")
    conversation = await app.conversations.create_group(user.id, name.strip(), member_ids)
    return json({"conversation": await app.conversations.view(user.id, conversation)}, 201)


async def list_conversations(request: Request) -> HTTPResponse:
    user, _ = await authenticate(request)
    return json({"conversations": await request.app.ctx.app.conversations.list_for(user.id)})


async def get_conversation(request: Request, cid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    conversation = await app.conversations.of_member(path_id(cid, "conversation"), user.id)
    return json({"conversation": await app.conversations.view(user.id, conversation)})


async def add_member(request: Request, cid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    conversation = await app.conversations.of_member(path_id(cid, "conversation"), user.id)
    conversation = await app.add_member(conversation.id, int(decode(request.body, NewMember).user_id))
    return json({"conversation": await app.conversations.view(user.id, conversation)})


async def remove_member(request: Request, cid: str, uid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    conversation = await app.conversations.of_member(path_id(cid, "conversation"), user.id)
    await app.conversations.remove_member(conversation, user.id, path_id(uid, "member"))
    return empty(204)


async def send_message(request: Request, cid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    body = decode(request.body, NewMessage)
    conversation_id = path_id(cid, "conversation")
    _, data, new = await app.messages.submit(user, conversation_id, body.body, body.client_msg_id)
    return json(b'{"message":' + data + b"}", 201 if new else 200)


async def history(request: Request, cid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    before = id_query(request, "before")
    after = id_query(request, "after")
    limit = int_query(request, "limit", 50, 1, MAX_PAGE)
    conversation = await app.conversations.of_member(path_id(cid, "conversation"), user.id)
    return json(await app.messages.history(conversation, before, after, limit))


async def mark_read(request: Request, cid: str) -> HTTPResponse:
    app = request.app.ctx.app
    user, _ = await authenticate(request)
    message_id = int(decode(request.body, ReadMarker).message_id)
    conversation = await app.conversations.of_member(path_id(cid, "conversation"), user.id)
    await app.conversations.mark_read(conversation, user.id, message_id)
    return json({"conversation": await app.conversations.view(user.id, conversation)})


def register(sanic: DefaultSanic) -> None:
    routes: list[tuple[str, Any, list[str]]] = [
        ("/accounts", sign_up, ["POST"]),
        ("/sessions", log_in, ["POST"]),
        ("/sessions/current", log_out, ["DELETE"]),
        ("/me", me, ["GET"]),
        ("/users", search_users, ["GET"]),
        ("/users/<user_id>", get_user, ["GET"]),
        ("/conversations", create_conversation, ["POST"]),
        ("/conversations", list_conversations, ["GET"]),
        ("/conversations/<cid>", get_conversation, ["GET"]),
        ("/conversations/<cid>/members", add_member, ["POST"]),
        ("/conversations/<cid>/members/<uid>", remove_member, ["DELETE"]),
        ("/conversations/<cid>/messages", send_message, ["POST"]),
        ("/conversations/<cid>/messages", history, ["GET"]),
        ("/conversations/<cid>/read", mark_read, ["PUT"]),
    ]
    for path, handler, methods in routes:
        sanic.add_route(handler, PREFIX + path, methods=methods, name=f"{handler.__name__}")
