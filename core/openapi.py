"""The OpenAPI 3.1 document of every HTTP call, served at ``/api/v1/openapi.json``.

Request bodies are described by the msgspec Structs that decode them (``kibitz.inputs``),
so the document cannot drift from what the server accepts. Plugins document their own
routes as they register them (``register(..., openapi=operation(...))``), and the
document has them only where the plugin is enabled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from .inputs import BODIES, ID_PATTERN

ID = {"type": "string", "pattern": ID_PATTERN}
TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


SCHEMAS: dict[str, Any] = {
    "User": _object(
        ["id", "username", "display_name", "bot"],
        id=ID,
        username={"type": "string"},
        display_name={"type": "string"},
        bot={"type": "boolean", "description": "a bot: plugins post as it; nobody logs in as it (extension)"},
    ),
    "Device": _object(["id", "name", "created_at"], id=ID, name={"type": "string"}, created_at=TIME),
    "Message": _object(
        ["id", "conversation_id", "sender_id", "body", "client_msg_id", "created_at"],
        id=ID,
        conversation_id=ID,
        sender_id=ID,
        body={"type": "string"},
        client_msg_id={"type": "string"},
        created_at=TIME,
    ),
    "Conversation": _object(
        ["id", "type", "name", "members", "creator_id", "created_at", "last_message", "unread_count"],
        id=ID,
        type={"enum": ["direct", "group"]},
        name={"type": ["string", "null"]},
        members={"type": "array", "items": ID},
        creator_id=ID,
        created_at=TIME,
        last_message={"oneOf": [_ref("Message"), {"type": "null"}]},
        unread_count={"type": "integer"},
    ),
    "Event": {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": ["message", "read", "conversation"]}},
    },
    "Invitation": _object(
        ["id", "uses", "uses_allowed", "expires_at", "created_at", "state"],
        id=ID,
        uses={"type": "integer"},
        uses_allowed={"type": "integer"},
        expires_at={"oneOf": [TIME, {"type": "null"}]},
        created_at=TIME,
        state={"enum": ["active", "used up", "expired", "revoked"]},
    ),
    "Error": _object(
        ["error"], error=_object(["code", "message"], code={"type": "string"}, message={"type": "string"})
    ),
}
SCHEMAS.update(msgspec.json.schema_components(BODIES, ref_template="#/components/schemas/{name}")[1])


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def operation(
    summary: str,
    ok: int,
    ok_schema: dict[str, Any] | None,
    errors: list[int],
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    """An OpenAPI operation: its success status and schema, the error statuses (each with
    the protocol's error body), the request body's schema and the parameters. Plugins
    document their routes with it (``kibitz.openapi_operation``). Added in 0.2."""
    responses: dict[str, Any] = {
        str(ok): {"description": "success", **(_json(ok_schema) if ok_schema else {})}
    }
    for status in errors:
        responses[str(status)] = {"description": "error", **_json(_ref("Error"))}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = {"required": True, **_json(body)}
    if params:
        operation["parameters"] = params
    if not auth:
        operation["security"] = []
    return operation


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _path(name: str, schema: dict[str, Any] = ID) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


CID = _path("cid")


def plugin_path(route: str) -> tuple[str, dict[str, Any]]:
    """The document's path and Path Item of a plugin's route (``/api/v1/x/<id>``: ``/x/{id}``)."""
    path = re.sub(r"<([^:>]+)[^>]*>", r"{\1}", route)
    if path.startswith("/api/v1/"):
        return path.removeprefix("/api/v1"), {}
    return path, {"servers": [{"url": "/"}]}


def openapi_document(plugin_paths: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The document, with the Path Items of the routes plugins registered (``plugin_path``)."""
    conversation = _object(["conversation"], conversation=_ref("Conversation"))
    message = _object(["message"], message=_ref("Message"))
    paths: dict[str, Any] = {
        "/accounts": {
            "post": operation(
                "Sign up",
                201,
                _object(["user"], user=_ref("User")),
                [400, 403, 409, 429],
                _ref("SignUp"),
                auth=False,
            )
        },
        "/sessions": {
            "post": operation(
                "Log in: a new device and its token",
                201,
                _object(
                    ["token", "device", "user"],
                    token={"type": "string"},
                    device=_ref("Device"),
                    user=_ref("User"),
                ),
                [400, 401, 403, 429],
                _ref("LogIn"),
                auth=False,
            )
        },
        "/sessions/current": {"delete": operation("Log out this device", 204, None, [401])},
        "/me": {
            "get": operation(
                "The caller",
                200,
                _object(
                    ["user", "device"],
                    user={"allOf": [_ref("User"), _object(["admin"], admin={"type": "boolean"})]},
                    device=_ref("Device"),
                ),
                [401],
            )
        },
        "/invitations": {
            "post": operation(
                "An administrator's new invitation code (extension)",
                201,
                _object(
                    ["code", "link", "invitation"],
                    code={"type": "string"},
                    link={"type": "string"},
                    invitation=_ref("Invitation"),
                ),
                [400, 401, 403],
                _ref("NewInvitation"),
            ),
            "get": operation(
                "Every invitation (extension; administrators)",
                200,
                _object(["invitations"], invitations={"type": "array", "items": _ref("Invitation")}),
                [401, 403],
            ),
        },
        "/invitations/{invitation_id}": {
            "delete": operation(
                "Revoke an invitation (extension; administrators)",
                204,
                None,
                [401, 403, 404],
                params=[_path("invitation_id")],
            )
        },
        "/users": {
            "get": operation(
                "Find users by username prefix",
                200,
                _object(["users"], users={"type": "array", "items": _ref("User")}),
                [400, 401],
                params=[
                    _query("query", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 50}),
                ],
            )
        },
        "/users/{id}": {
            "get": operation(
                "A user", 200, _object(["user"], user=_ref("User")), [401, 404], params=[_path("id")]
            )
        },
        "/conversations": {
            "post": operation(
                "Create a direct (or get the existing one) or a group conversation",
                201,
                conversation,
                [400, 401],
                _ref("NewConversation"),
            ),
            "get": operation(
                "The caller's conversations, most recent activity first",
                200,
                _object(["conversations"], conversations={"type": "array", "items": _ref("Conversation")}),
                [401],
            ),
        },
        "/conversations/{cid}": {
            "get": operation("A conversation", 200, conversation, [401, 404], params=[CID])
        },
        "/conversations/{cid}/members": {
            "post": operation(
                "Add a member to a group",
                200,
                conversation,
                [400, 401, 404],
                _ref("NewMember"),
                params=[CID],
            )
        },
        "/conversations/{cid}/members/{uid}": {
            "delete": operation(
                "Leave, or remove a member (the creator only)",
                204,
                None,
                [401, 403, 404],
                params=[CID, _path("uid")],
            )
        },
        "/conversations/{cid}/messages": {
            "post": operation(
                "Send a message (idempotent by client_msg_id: a resend answers 200)",
                201,
                message,
                [400, 401, 403, 404, 413, 429, 503],
                _ref("NewMessage"),
                params=[CID],
            ),
            "get": operation(
                "A page of history, ascending by id",
                200,
                _object(
                    ["messages", "has_more"],
                    messages={"type": "array", "items": _ref("Message")},
                    has_more={"type": "boolean"},
                ),
                [400, 401, 404],
                params=[
                    CID,
                    _query("before", ID),
                    _query("after", ID),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                ],
            ),
        },
        "/conversations/{cid}/read": {
            "put": operation(
                "Move the caller's read marker forward",
                200,
                conversation,
                [400, 401, 404],
                _ref("ReadMarker"),
                params=[CID],
            )
        },
        "/sync": {
            "get": operation(
                "Events after a cursor (polling, or long polling with timeout)",
                200,
                _object(
                    ["events", "cursor", "has_more"],
                    events={"type": "array", "items": _ref("Event")},
                    cursor={"type": "string"},
                    has_more={"type": "boolean"},
                ),
                [400, 401, 410],
                params=[
                    _query("since", {"type": "string"}),
                    _query("timeout", {"type": "integer", "minimum": 0, "maximum": 60}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
            )
        },
        "/push/vapid-key": {
            "get": operation(
                "The server's VAPID public key (an uncompressed P-256 point, base64url), to subscribe with",
                200,
                _object(["public_key"], public_key={"type": "string"}),
                [],
                auth=False,
            )
        },
        "/push/subscriptions": {
            "post": operation(
                "Tie a browser's PushSubscription to the calling device (https, public addresses only)",
                201,
                None,
                [400, 401, 503],
                _ref("NewPushSubscription"),
            ),
            "delete": operation(
                "Remove the calling device's subscription with this endpoint",
                204,
                None,
                [400, 401],
                _ref("GonePushSubscription"),
            ),
        },
        "/ws": {
            "get": operation("Upgrade to the WebSocket gateway (see the protocol)", 101, None, [], auth=False)
        },
        "/discovery": {
            "get": operation(
                "Live instances and the one to connect to",
                200,
                _object(
                    ["servers", "recommended"],
                    servers={
                        "type": "array",
                        "items": _object(
                            ["id", "url", "connections"],
                            id={"type": "string"},
                            url={"type": "string"},
                            connections={"type": "integer"},
                            started_at=TIME,
                        ),
                    },
                    recommended={"type": "string"},
                    registration={"type": "string", "enum": ["open", "invite", "closed"]},
                ),
                [],
                auth=False,
            )
        },
        "/openapi.json": {"get": operation("This document", 200, {"type": "object"}, [], auth=False)},
    }
    root = [{"url": "/"}]  # the operator endpoints sit at the root, outside /api/v1
    paths["/healthz"] = {
        "servers": root,
        "get": operation("200 while the process runs", 200, None, [], auth=False),
    }
    paths["/readyz"] = {
        "servers": root,
        "get": operation(
            "200 when every backing service answers, else 503 naming the one that does not",
            200,
            None,
            [503],
            auth=False,
        ),
    }
    paths["/metrics"] = {
        "servers": root,
        "get": operation("Prometheus text format", 200, None, [], auth=False),
    }
    web = [
        ("/", "The web client's page (HTML, never cached)"),
        ("/sw.js", "The web client's service worker (never cached)"),
        ("/web/{release}/{path}", "A file of the web client's release; cached for a year"),
    ]
    for path, summary in web:
        params = (
            [_path("release", {"type": "string"}), _path("path", {"type": "string"})] if "{" in path else None
        )
        paths[path] = {
            "servers": root,
            "get": operation(summary, 200, None, [404], params=params, auth=False),
        }
    paths.update(plugin_paths or {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kibitz client protocol", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
