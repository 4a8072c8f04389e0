"""The ``webpush`` notifier: Web Push (RFC 8030) to the browsers of members who are not connected.

For each message, one POST to every subscription of the members' devices
(``app.push.of_users``): the payload encrypted for that subscription (RFC 8291
``aes128gcm``, pywebpush) and the request signed with the server's VAPID key (RFC 8292,
py-vapid: a JWT with ``aud`` the push service's origin, ``exp`` 12 hours on, ``sub``
from the settings). Headers: ``TTL`` (how long the push service keeps a push for a
browser that is offline), ``Urgency: high`` and ``Topic: conversation-<id>``, so a
burst in one conversation collapses on the push service into its latest message.

The payload is PROTOCOL.md's: ``{"type": "message", "conversation_id", "message_id",
"sender": {"id", "display_name"}, "body"}``, the body cut to 200 characters and left out
with ``KIBITZ_PUSH_PREVIEW=0``.

Answers: 2xx is done; 404 and 410 delete the subscription (the browser dropped it); 429
and 5xx are tried again, up to ``ATTEMPTS`` times in all, after their ``Retry-After``
or a doubling pause (``kibitz.retry_pause``: 1 s, then doubling, at most 60 s); anything
else is logged and dropped.
Requests go through ``kibitz.Outbound``: public addresses only, no redirects, a timeout
on each, at most ``AT_ONCE`` at a time, so a slow push service holds that many and no
more.

Settings (``[webpush]``, ``KIBITZ_WEBPUSH_*``): ``subject``, the VAPID contact, a
``mailto:`` or ``https://`` URL (default: the public URL when it is https, else
``mailto:admin@localhost``); ``ttl``, a duration (default ``1d``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher

from kibitz import (
    App,
    ConfigError,
    Conversation,
    Message,
    Outbound,
    PluginSettings,
    PushSubscription,
    hookimpl,
    retry_pause,
    retryable,
)

log = logging.getLogger("kibitz.webpush")

PREVIEW_CHARS = 200
ATTEMPTS = 4
AT_ONCE = 64  # pushes in flight at once, over every push service
JWT_LIFETIME = 12 * 3600
REQUEST_TIMEOUT = 15.0


@hookimpl
def register_notifier(name: str, settings: PluginSettings) -> WebPushNotifier | None:
    return WebPushNotifier(settings) if name == "webpush" else None


class WebPushNotifier:
    app: App  # from start() on

    def __init__(self, settings: PluginSettings) -> None:
        self.subject = str(settings.get("subject", "")).strip()
        if self.subject and not _is_contact(self.subject):
            raise ConfigError(f"{settings.source('subject')}={self.subject!r}: a mailto: or https:// URL")
        self.ttl = int(settings.duration("ttl", "1d"))
        self.outbound: Outbound | None = None
        self._vapid: Vapid | None = None
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}  # origin: (expires, headers)
        self._turns = asyncio.Semaphore(AT_ONCE)

    async def start(self, app: App) -> None:
        self.app = app
        if not self.subject:
            self.subject = app.settings.url if _is_contact(app.settings.url) else "mailto:admin@localhost"
        self._vapid = Vapid.from_raw(app.push.vapid_private_key.encode())
        self.outbound = Outbound(app.settings.push_allow_insecure, timeout=REQUEST_TIMEOUT)

    async def close(self) -> None:
        if self.outbound is not None:
            await self.outbound.close()

    async def reachable(self, user_ids: Sequence[int]) -> set[int]:
        return await self.app.push.subscribed(user_ids)

    async def notify(self, message: Message, conversation: Conversation, user_ids: Sequence[int]) -> None:
        subscriptions = await self.app.push.of_users(user_ids)
        if not subscriptions:
            return
        sender = await self.app.user(message.sender_id)
        payload: dict[str, Any] = {
            "type": "message",
            "conversation_id": str(conversation.id),
            "message_id": str(message.id),
            "sender": {"id": str(sender.id), "display_name": sender.display_name},
        }
        if self.app.settings.push_preview:
            payload["body"] = message.body[:PREVIEW_CHARS]
        data = orjson.dumps(payload)
        topic = f"conversation-{conversation.id}"
        await asyncio.gather(*(self._deliver(s, data, topic) for s in subscriptions))

    async def _deliver(self, subscription: PushSubscription, data: bytes, topic: str) -> None:
        """Send one push, trying again after 429 and 5xx; forget a subscription that is gone."""
        assert self.outbound is not None
        for attempt in range(1, ATTEMPTS + 1):
            async with self._turns:
                try:
                    body, headers = await asyncio.to_thread(self._request, subscription, data, topic)
                    status, answer = await self.outbound.post(subscription.endpoint, body, headers)
                except (ValueError, VapidException) as e:  # outside the guard, or no VAPID claim fits it
                    log.warning("push_refused", extra={"subscription": subscription.id, "error": str(e)})
                    return
                except Exception as e:  # unreachable, timed out: try again
                    status, answer = 0, {}
                    log.info("push_failed", extra={"attempt": attempt, "error": f"{type(e).__name__}: {e}"})
            if 200 <= status < 300:
                return
            if status in (404, 410):
                await self.app.push.forget(subscription)
                return
            if not retryable(status):
                log.warning("push_refused", extra={"status": status, "subscription": subscription.id})
                return
            if attempt < ATTEMPTS:
                await asyncio.sleep(retry_pause(attempt, answer))
        log.warning("push_given_up", extra={"subscription": subscription.id, "attempts": ATTEMPTS})

    def _request(
        self, subscription: PushSubscription, data: bytes, topic: str
    ) -> tuple[bytes, dict[str, str]]:
        """The encrypted body and the headers of one push (in a thread: it is elliptic-curve work)."""
        info = {
            "endpoint": subscription.endpoint,
            "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth},
        }
        body: bytes = WebPusher(info).encode(data, "aes128gcm")["body"]
        headers = {
            "TTL": str(self.ttl),
            "Urgency": "high",
            "Topic": topic,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            **self._authorization(subscription.endpoint),
        }
        return body, headers

    def _authorization(self, endpoint: str) -> Mapping[str, str]:
        """The VAPID ``Authorization`` header for the endpoint's push service, signed anew hourly."""
        assert self._vapid is not None
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        cached = self._tokens.get(origin)
        now = time.time()
        if cached is None or cached[0] < now:
            claims = {"aud": origin, "sub": self.subject, "exp": int(now) + JWT_LIFETIME}
            cached = (now + 3600, self._vapid.sign(claims))
            if len(self._tokens) >= 1000:  # push services are few; this bounds what others could add
                self._tokens.clear()
            self._tokens[origin] = cached
        return cached[1]


def _is_contact(value: str) -> bool:
    return (value.startswith("mailto:") and "@" in value) or value.startswith("https://")
