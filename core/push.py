"""Web Push, the core's part: the VAPID key pair, subscriptions tied to devices, and the
guard on where pushes may go. Sending them is the ``webpush`` notifier's job.

- **The key pair** (P-256) is made by the first instance that starts and kept in the
  database (``secrets``), so every instance signs with the same key and it survives
  restarts. ``GET /api/v1/push/vapid-key`` serves the public key, an uncompressed point
  in base64url, which browsers subscribe with.
- **A subscription belongs to the device** that made it (``POST /push/subscriptions``
  with the browser's ``PushSubscription`` as JSON). Logging out deletes the device and,
  with it, its subscriptions; so does revoking it. An endpoint subscribed again, from
  any device, moves to that device. A device keeps its newest few.
- **Where pushes may go**: ``kibitz.outbound``'s guard. An endpoint must be ``https://``
  on public addresses only, checked when it is subscribed (a bad one is 400 and never
  stored) and again by the notifier's ``Outbound`` for the address it connects to.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sanic import DefaultSanic, Request
from sanic.response import HTTPResponse, empty
from sqlalchemy.ext.asyncio import AsyncEngine

from .api import PREFIX, authenticate, json
from .database import devices, push_subscriptions, shared_secret
from .errors import InvalidRequest
from .inputs import GonePushSubscription, NewPushSubscription, decode
from .models import Device, PushSubscription, now_ms
from .outbound import check_url

if TYPE_CHECKING:
    from .app import Kibitz

SUBSCRIPTIONS_PER_DEVICE = 5


def _key(value: str, field: str, size: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"keys.{field}: not base64url") from None
    if len(raw) != size:
        raise InvalidRequest(f"keys.{field}: {size} bytes expected, not {len(raw)}")
    return raw


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_private_key() -> str:
    private = ec.generate_private_key(ec.SECP256R1())
    return _b64url(private.private_numbers().private_value.to_bytes(32, "big"))


class Push:
    """The VAPID keys and the push subscriptions (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, allow_insecure: bool) -> None:
        self.engine = engine
        self.allow_insecure = allow_insecure
        self.vapid_private_key = ""  # the 32-byte private value, base64url; after start()
        self.public_key = ""

    async def start(self) -> None:
        """Load the key pair, made by whichever instance comes first."""
        self.vapid_private_key = await shared_secret(self.engine, "vapid_private_key", _new_private_key)
        value = int.from_bytes(_key(self.vapid_private_key, "vapid", 32), "big")
        point = ec.derive_private_key(value, ec.SECP256R1()).public_key()
        self.public_key = _b64url(
            point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )

    async def subscribe(self, device: Device, subscription: NewPushSubscription) -> None:
        """Tie a browser's subscription to ``device`` (checked first: 400 changes nothing)."""
        await check_url(subscription.endpoint, "endpoint", self.allow_insecure)
        p256dh = _key(subscription.keys.p256dh, "p256dh", 65)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        except ValueError:
            raise InvalidRequest("keys.p256dh: not a P-256 public key") from None
        _key(subscription.keys.auth, "auth", 16)
        table = push_subscriptions
        async with self.engine.begin() as db:
            await db.execute(table.delete().where(table.c.endpoint == subscription.endpoint))
            await db.execute(
                table.insert().values(
                    device_id=device.id,
                    endpoint=subscription.endpoint,
                    p256dh=subscription.keys.p256dh,
                    auth=subscription.keys.auth,
                    created_ms=now_ms(),
                )
            )
            newest = (
                sa.select(table.c.id)
                .where(table.c.device_id == device.id)
                .order_by(table.c.id.desc())
                .limit(SUBSCRIPTIONS_PER_DEVICE)
            )
            await db.execute(
                table.delete().where(
                    table.c.device_id == device.id, table.c.id.not_in(newest.scalar_subquery())
                )
            )

    async def unsubscribe(self, device: Device, endpoint: str) -> None:
        table = push_subscriptions
        async with self.engine.begin() as db:
            await db.execute(
                table.delete().where(table.c.device_id == device.id, table.c.endpoint == endpoint)
            )

    async def subscribed(self, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` with at least one subscription, in one query."""
        if not user_ids:
            return set()
        query = (
            sa.select(devices.c.user_id)
            .distinct()
            .join(push_subscriptions, push_subscriptions.c.device_id == devices.c.id)
            .where(devices.c.user_id.in_(user_ids))
        )
        async with self.engine.connect() as db:
            return set((await db.execute(query)).scalars())

    async def of_users(self, user_ids: Sequence[int]) -> list[PushSubscription]:
        """Every subscription of every device of these users."""
        if not user_ids:
            return []
        table = push_subscriptions
        query = (
            sa.select(table, devices.c.user_id)
            .join(devices, devices.c.id == table.c.device_id)
            .where(devices.c.user_id.in_(user_ids))
            .order_by(table.c.id)
        )
        async with self.engine.connect() as db:
            rows = (await db.execute(query)).all()
        return [
            PushSubscription(row.id, row.user_id, row.device_id, row.endpoint, row.p256dh, row.auth)
            for row in rows
        ]

    async def forget(self, subscription: PushSubscription) -> None:
        """Delete a subscription its push service no longer knows (it answered 404 or 410)."""
        async with self.engine.begin() as db:
            await db.execute(push_subscriptions.delete().where(push_subscriptions.c.id == subscription.id))


# -- the HTTP calls -----------------------------------------------------------------------


async def vapid_key(request: Request) -> HTTPResponse:
    return json({"public_key": request.app.ctx.app.push.public_key})


async def add_subscription(request: Request) -> HTTPResponse:
    app: Kibitz = request.app.ctx.app
    _, device = await authenticate(request)
    await app.push.subscribe(device, decode(request.body, NewPushSubscription))
    return empty(201)


async def remove_subscription(request: Request) -> HTTPResponse:
    app: Kibitz = request.app.ctx.app
    _, device = await authenticate(request)
    await app.push.unsubscribe(device, decode(request.body, GonePushSubscription).endpoint)
    return empty(204)


def register(sanic: DefaultSanic) -> None:
    sanic.add_route(vapid_key, PREFIX + "/push/vapid-key", methods=["GET"], name="vapid_key")
    sanic.add_route(
        add_subscription, PREFIX + "/push/subscriptions", methods=["POST"], name="add_subscription"
    )
    sanic.add_route(
        remove_subscription, PREFIX + "/push/subscriptions", methods=["DELETE"], name="remove_subscription"
    )
