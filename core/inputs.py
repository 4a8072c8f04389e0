"""What clients send: request bodies, WebSocket frames and ids, checked as they are decoded.

Each body and frame is a msgspec ``Struct``: decoding parses the JSON and checks every
field's type at once, and a failure is one 400 ``invalid_request`` naming the field.
Unknown fields are ignored (PROTOCOL.md). Every id is a JSON string of decimal digits
in its one spelling: ``"7"``, never ``7`` or ``"07"``. What answers other than 400
(a message body over the limit is 413) stays with the service that knows the limit.

The OpenAPI document takes its request schemas from these Structs (``openapi.py``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec

from .errors import InvalidRequest, NotFound

# At most 18 digits, so every id fits a signed 64-bit integer. ``(?!\n)``: Python's ``$``
# also matches before a final newline, and ``"7\n"`` is not an id.
ID_PATTERN = r"^(0|[1-9][0-9]{0,17})(?!\n)$"
ID_RULE = "expected an id (a string of decimal digits without leading zeros)"
MAX_CLIENT_MSG_ID = 64
MAX_DEVICE_NAME = 64

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, description="an id: decimal digits, no leading zeros")]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_MSG_ID)]
DeviceName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DEVICE_NAME)]

_ID = re.compile(ID_PATTERN)
_WHERE = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)

T = TypeVar("T")


# -- request bodies ------------------------------------------------------------------------


class SignUp(msgspec.Struct):
    username: str
    password: str
    display_name: str | None = None
    invitation: str | None = None  # extension: the code that ``registration = "invite"`` asks for


class LogIn(msgspec.Struct):
    username: str
    password: str
    device_name: DeviceName = "device"


class NewConversation(msgspec.Struct):
    type: Literal["direct", "group"]
    members: list[Id]
    name: str | None = None


class NewMember(msgspec.Struct):
    user_id: Id


class NewMessage(msgspec.Struct):
    body: str
    client_msg_id: ClientMsgId


class ReadMarker(msgspec.Struct):
    message_id: Id


class NewInvitation(msgspec.Struct):
    """An administrator's invitation (extension): how many sign-ups, for how many seconds."""

    uses: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    expires_in: Annotated[int, msgspec.Meta(ge=60, le=366 * 86400)] | None = None


Endpoint = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class PushKeys(msgspec.Struct):
    p256dh: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    auth: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class NewPushSubscription(msgspec.Struct):
    """A browser ``PushSubscription`` as JSON (its ``expirationTime`` is ignored)."""

    endpoint: Endpoint
    keys: PushKeys


class GonePushSubscription(msgspec.Struct):
    endpoint: Endpoint


BODIES: tuple[type[msgspec.Struct], ...] = (
    SignUp,
    LogIn,
    NewConversation,
    NewMember,
    NewMessage,
    ReadMarker,
    NewInvitation,
    NewPushSubscription,
    GonePushSubscription,
)


# -- WebSocket frames ------------------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello"):
    token: str
    since: str | None = None


class Send(msgspec.Struct, tag="send"):
    conversation_id: Id
    body: str
    client_msg_id: ClientMsgId


class Read(msgspec.Struct, tag="read"):
    conversation_id: Id
    message_id: Id


class Typing(msgspec.Struct, tag="typing"):
    conversation_id: Id


class Ping(msgspec.Struct, tag="ping"):
    pass


Frame = Hello | Send | Read | Typing | Ping

_decoders: dict[object, msgspec.json.Decoder[object]] = {
    kind: msgspec.json.Decoder(kind) for kind in (*BODIES, Frame)
}


def decode(data: bytes | str, kind: type[T]) -> T:
    """``data`` (JSON) as a ``kind`` (a msgspec ``Struct``, a plugin's too); 400
    ``invalid_request`` saying what is wrong where."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        value: T = decoder.decode(data)  # type: ignore[assignment]
    except msgspec.ValidationError as e:
        raise InvalidRequest(_explain(str(e))) from None
    except msgspec.DecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    return value


def decode_frame(data: bytes | str) -> Frame:
    """A client's WebSocket frame; 400 ``invalid_request`` (sent as an error frame) if it is not one."""
    return decode(data, Frame)  # type: ignore[arg-type]


def _explain(error: str) -> str:
    """msgspec's ``Expected `str`, got `int` - at `$.members[0]``` as
    ``members[0]: expected `str`, got `int```."""
    match = _WHERE.match(error)
    assert match is not None
    detail, path = match["detail"], (match["path"] or "").lstrip(".")
    if "matching regex" in detail:
        detail = ID_RULE
    elif detail.startswith("Invalid value") and path == "type":
        detail = f"unknown frame type {detail.removeprefix('Invalid value ')}"
    else:
        detail = detail[:1].lower() + detail[1:]
    return f"{path}: {detail}" if path else detail


# -- ids in paths and query strings ------------------------------------------------------------


def parse_id(value: str, field: str) -> int:
    """An id given as text (a query parameter); 400 unless it is one in its one spelling."""
    if not _ID.match(value):
        raise InvalidRequest(f"{field}: {ID_RULE}")
    return int(value)


def path_id(value: str, what: str) -> int:
    """An id in a path: one that cannot exist (``04``, ``x``) is not found, like any missing one."""
    if not _ID.match(value):
        raise NotFound(f"no such {what}")
    return int(value)
