"""A stand-in Web Push service on loopback, as strict as a real one about what it accepts.

Each push must carry a VAPID ``Authorization`` (RFC 8292) whose key is the server's
public key, whose JWT verifies (ES256) with it, names this service's origin as ``aud``
and expires within 24 hours; its body must decrypt (RFC 8291 ``aes128gcm``) with the
private key of the subscription it was sent to. What does not is kept in ``problems``.
A test gives each subscription the answers it wants (201 unless told otherwise).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kibitz.supervisor import free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Push:
    payload: dict[str, Any]
    headers: dict[str, str]
    status: int  # what the service answered


@dataclass
class Subscription:
    """A browser's side of one subscription: its keys, and the pushes it got."""

    name: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # taken in turn
    pushes: list[Push] = field(default_factory=list)  # every request, whatever the answer

    def as_json(self) -> dict[str, Any]:
        """As a browser's ``PushSubscription.toJSON()``."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
        }

    @property
    def delivered(self) -> list[dict[str, Any]]:
        """The payloads of the pushes answered with success."""
        return [p.payload for p in self.pushes if 200 <= p.status < 300]


class PushService:
    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.vapid_key = ""  # the Kibitz server's public key, base64url
        self.subscriptions: dict[str, Subscription] = {}
        self.problems: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push/{name}", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def subscription(self, name: str) -> Subscription:
        subscription = Subscription(
            name, f"{self.origin}/push/{name}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
        )
        self.subscriptions[name] = subscription
        return subscription

    async def _receive(self, request: web.Request) -> web.Response:
        subscription = self.subscriptions.get(request.match_info["name"])
        if subscription is None:
            return web.Response(status=404)
        headers = dict(request.headers)
        body = await request.read()
        try:
            self._check_vapid(headers.get("Authorization", ""))
            plain = http_ece.decrypt(
                body, private_key=subscription.private_key, auth_secret=subscription.auth, version="aes128gcm"
            )
            payload = orjson.loads(plain)
        except Exception as e:
            self.problems.append(f"{subscription.name}: {type(e).__name__}: {e}")
            return web.Response(status=400)
        status, extra = subscription.answers.pop(0) if subscription.answers else (201, {})
        subscription.pushes.append(Push(payload, headers, status))
        return web.Response(status=status, headers=extra)

    def _check_vapid(self, authorization: str) -> None:
        scheme, _, fields = authorization.partition(" ")
        values = dict(part.strip().split("=", 1) for part in fields.split(","))
        if scheme != "vapid" or values.get("k") != self.vapid_key:
            raise ValueError(f"not a VAPID header with the server's key: {authorization[:80]}")
        head, claims_part, signature = values["t"].split(".")
        raw = unb64url(signature)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(self.vapid_key))
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:
            public.verify(der, f"{head}.{claims_part}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("the JWT's ES256 signature does not verify") from None
        if orjson.loads(unb64url(head)).get("alg") != "ES256":
            raise ValueError("the JWT is not ES256")
        claims = orjson.loads(unb64url(claims_part))
        if claims.get("aud") != self.origin:
            raise ValueError(f"aud is {claims.get('aud')!r}, not {self.origin!r}")
        if not time.time() < claims.get("exp", 0) <= time.time() + 24 * 3600:
            raise ValueError(f"exp {claims.get('exp')} is not within the next 24 hours")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https://")):
            raise ValueError(f"sub {claims.get('sub')!r} is not a contact")
