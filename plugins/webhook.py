"""The ``webhook`` notifier: one signed JSON POST per message, to a URL the operator chose.

The body: ``{"type": "notification", "id", "conversation_id", "message_id", "sender":
{"id", "display_name"}, "body", "user_ids", "sent_at"}``, ids as strings (PROTOCOL.md).
``id`` names the delivery and stays the same on every try of it; ``user_ids`` are the
members with no live connection; ``sent_at`` is the message's ``created_at``; ``body``
is cut to 200 characters and left out with ``KIBITZ_PUSH_PREVIEW=0``. Headers:
``Content-Type: application/json``, ``Kibitz-Delivery: <id>`` and ``Kibitz-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 with the secret of "<t>." + body>``, signed anew
for each try (docs/security.md shows a receiver checking it).

Answers: 2xx is done; 429, 5xx, a failed connection or a timeout is tried again, up to
``attempts`` tries in all, after ``Retry-After`` or a doubling pause
(``kibitz.retry_pause``); anything else is logged and dropped. ``notify`` makes the
first try; the others run in the background (at most ``MAX_PENDING`` deliveries), so a
receiver that is down holds back no other message; ``close`` drops those still waiting
(the log has moved on: unlike a first try, a retry is not made again after a restart).
Requests go through ``kibitz.Outbound``: public addresses only (the URL is
checked at start and each connection again), no redirects, a timeout on each, at most
``AT_ONCE`` at a time.

Settings (``[webhook]``, ``KIBITZ_WEBHOOK_*``): ``url``, required, ``https://`` (or
``http://`` with ``KIBITZ_PUSH_ALLOW_INSECURE``); ``secret``, required, at least 16
characters; ``timeout`` of each request (default ``10s``); ``attempts`` (default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kibitz import (
    App,
    ConfigError,
    Conversation,
    InvalidRequest,
    Message,
    NotFound,
    Outbound,
    PluginSettings,
    Tasks,
    Unavailable,
    check_url,
    hookimpl,
    retry_pause,
    retryable,
)

log = logging.getLogger("kibitz.webhook")

PREVIEW_CHARS = 200
MIN_SECRET_CHARS = 16
AT_ONCE = 16  # requests in flight at once
MAX_PENDING = 1000  # deliveries waiting for another try; one more is dropped
CLOSE_WAIT = 3.0  # seconds ``close`` lets tries in flight finish before it cancels them


@hookimpl
def register_notifier(name: str, settings: PluginSettings) -> WebhookNotifier | None:
    return WebhookNotifier(settings) if name == "webhook" else None


def _signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Kibitz-Signature`` header of ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookNotifier:
    app: App  # from start() on

    def __init__(self, settings: PluginSettings) -> None:
        self.url = str(settings.get("url", "")).strip()
        self.url_source = settings.source("url")
        if not self.url:
            raise ConfigError(f"{self.url_source}: the webhook notifier needs the URL to post to")
        secret = str(settings.get("secret", ""))
        if len(secret) < MIN_SECRET_CHARS:  # the value is never part of the message
            problem = "is required" if not secret else f"is {len(secret)} characters"
            raise ConfigError(
                f"{settings.source('secret')}: {problem}; it must be at least {MIN_SECRET_CHARS} "
                "characters (openssl rand -hex 32 makes one)"
            )
        self._secret = secret.encode()
        self.timeout = settings.duration("timeout", "10s")
        if self.timeout <= 0:
            raise ConfigError(f"{settings.source('timeout')}={settings.get('timeout')!r}: must be above 0")
        self.attempts = settings.integer("attempts", 5, minimum=1)
        self.outbound: Outbound | None = None
        self._turns = asyncio.Semaphore(AT_ONCE)
        self._retries = Tasks()
        self._pending = 0  # deliveries in ``_retries``
        self._closing = asyncio.Event()

    async def start(self, app: App) -> None:
        """Refuse a URL outside the guard (one ConfigError line), then get ready to post."""
        self.app = app
        insecure = app.settings.push_allow_insecure
        try:
            await check_url(self.url, self.url_source, insecure)
        except InvalidRequest as e:
            raise ConfigError(e.message) from None
        except Unavailable as e:  # DNS is down for now; every connection is checked anyway
            log.warning("webhook_url_unchecked", extra={"error": e.message})
        self.outbound = Outbound(insecure, timeout=self.timeout, connections=AT_ONCE)

    async def close(self) -> None:
        """Drop the tries still waiting, give those in flight ``CLOSE_WAIT`` seconds."""
        self._closing.set()
        await self._retries.wait(CLOSE_WAIT)
        if self.outbound is not None:
            await self.outbound.close()

    async def reachable(self, user_ids: Sequence[int]) -> set[int]:
        return set(user_ids)  # a webhook reaches anyone

    async def notify(self, message: Message, conversation: Conversation, user_ids: Sequence[int]) -> None:
        delivery = uuid.uuid4().hex
        body = orjson.dumps(await self._payload(delivery, message, conversation, user_ids))
        answer = await self._try(delivery, body, 1)
        if answer is None:
            return
        if self._pending >= MAX_PENDING:
            log.warning("webhook_dropped", extra={"delivery": delivery, "reason": "too many retries waiting"})
            return
        self._pending += 1
        self._retries.spawn(self._retry(delivery, body, answer), name=f"webhook-{delivery}")

    async def _payload(
        self, delivery: str, message: Message, conversation: Conversation, user_ids: Sequence[int]
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "notification",
            "id": delivery,
            "conversation_id": str(conversation.id),
            "message_id": str(message.id),
        }
        with contextlib.suppress(NotFound):  # an account the database does not know: no sender
            sender = await self.app.user(message.sender_id)
            payload["sender"] = {"id": str(sender.id), "display_name": sender.display_name}
        if self.app.settings.push_preview:
            payload["body"] = message.body[:PREVIEW_CHARS]
        payload["user_ids"] = [str(u) for u in user_ids]
        payload["sent_at"] = message.created_at
        return payload

    async def _retry(self, delivery: str, body: bytes, answer: Mapping[str, str]) -> None:
        """Tries 2 to ``attempts`` of a delivery, each after its pause, until one is done with."""
        try:
            for attempt in range(2, self.attempts + 1):
                if await self._closed_within(retry_pause(attempt - 1, answer)):
                    log.warning("webhook_dropped", extra={"delivery": delivery, "reason": "shutdown"})
                    return
                found = await self._try(delivery, body, attempt)
                if found is None:
                    return
                answer = found
            log.warning("webhook_given_up", extra={"delivery": delivery, "attempts": self.attempts})
        finally:
            self._pending -= 1

    async def _closed_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if ``close`` is called meanwhile; whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return self._closing.is_set()

    async def _try(self, delivery: str, body: bytes, attempt: int) -> Mapping[str, str] | None:
        """POST once. None when the delivery is done with (taken, refused); else the
        answer's headers, for the pause before the next try."""
        assert self.outbound is not None
        async with self._turns:
            headers = {
                "Content-Type": "application/json",
                "Kibitz-Delivery": delivery,
                "Kibitz-Signature": _signature(self._secret, int(time.time()), body),
            }
            try:
                status, answer = await self.outbound.post(self.url, body, headers)
            except ValueError as e:  # outside the guard: trying again will not help
                log.warning("webhook_refused", extra={"delivery": delivery, "error": str(e)})
                return None
            except Exception as e:  # unreachable, timed out: try again
                status, answer = 0, {}
                error = f"{type(e).__name__}: {e}"
                log.info("webhook_failed", extra={"delivery": delivery, "attempt": attempt, "error": error})
        if 200 <= status < 300:
            return None
        if not retryable(status):
            log.warning("webhook_refused", extra={"delivery": delivery, "status": status})
            return None
        if status:
            log.info("webhook_failed", extra={"delivery": delivery, "attempt": attempt, "status": status})
        return answer
