"""Signed JSON POSTs to a URL of the operator's, tried again where that may help: how the
``webhook`` notifier and the ``outgoing_webhooks`` extension send.

Headers: ``Content-Type: application/json``, ``Kibitz-Delivery: <id>`` (the same on every
try of a delivery) and ``Kibitz-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 with the
secret of "<t>." + body>``, signed anew for each try (docs/security.md shows a receiver
checking it).

Answers: 2xx is done (``deliver``'s ``answered`` gets the answer's body); 429, 5xx, a
failed connection or a timeout is tried again, up to ``attempts`` tries in all, after
``Retry-After`` or a doubling pause (``retry_pause``); anything else is logged and
dropped. ``deliver`` makes the first try; the others run in the background (at most
``MAX_PENDING`` deliveries), so a receiver that is down holds back nothing else; ``close``
drops those still waiting. Requests go through ``Outbound``: public addresses only (the
URL is checked at ``start`` and each connection again), no redirects, a timeout on each,
at most ``AT_ONCE`` at a time. Log events are named after the plugin
(``webhook_refused``), with the delivery id, never the secret or a body.

Settings (the plugin's table): ``url``, required, ``https://`` (or ``http://`` with
``KIBITZ_PUSH_ALLOW_INSECURE``); ``secret``, required, at least 16 characters;
``timeout`` of each request (default ``10s``); ``attempts`` (the plugin's default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from .errors import ConfigError, InvalidRequest, Unavailable
from .outbound import Outbound, check_url, retry_pause, retryable
from .settings import PluginSettings
from .tasks import Tasks

MIN_SECRET_CHARS = 16
AT_ONCE = 16  # requests in flight at once
MAX_PENDING = 1000  # deliveries waiting for another try; one more is dropped
CLOSE_WAIT = 3.0  # seconds ``close`` lets tries in flight finish before it cancels them

Answered = Callable[[bytes | None], Awaitable[None]]  # a 2xx answer's body (None: over 64 KiB)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Kibitz-Signature`` header of ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Deliveries:
    """The signed deliveries of one plugin to its URL. Added in 0.2."""

    def __init__(self, settings: PluginSettings, what: str, attempts: int) -> None:
        """Read and check ``url``, ``secret``, ``timeout`` and ``attempts`` (default
        ``attempts``); ``ConfigError`` naming ``what`` ("the webhook notifier") and the source."""
        self.name = settings.plugin
        self.log = logging.getLogger(f"kibitz.{self.name}")
        self.url = str(settings.get("url", "")).strip()
        self.url_source = settings.source("url")
        if not self.url:
            raise ConfigError(f"{self.url_source}: {what} needs the URL to post to")
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
        self.attempts = settings.integer("attempts", attempts, minimum=1)
        self.outbound: Outbound | None = None
        self._turns = asyncio.Semaphore(AT_ONCE)
        self._retries = Tasks()
        self._pending = 0  # deliveries in ``_retries``
        self._closing = asyncio.Event()

    async def start(self, allow_insecure: bool) -> None:
        """Refuse a URL outside the guard (one ConfigError line), then get ready to post."""
        try:
            await check_url(self.url, self.url_source, allow_insecure)
        except InvalidRequest as e:
            raise ConfigError(e.message) from None
        except Unavailable as e:  # DNS is down for now; every connection is checked anyway
            self.log.warning(f"{self.name}_url_unchecked", extra={"error": e.message})
        self.outbound = Outbound(allow_insecure, timeout=self.timeout, connections=AT_ONCE)

    async def close(self) -> None:
        """Drop the tries still waiting, give those in flight ``CLOSE_WAIT`` seconds."""
        self._closing.set()
        await self._retries.wait(CLOSE_WAIT)
        if self.outbound is not None:
            await self.outbound.close()

    async def deliver(self, delivery: str, body: bytes, answered: Answered | None = None) -> None:
        """POST ``body`` once; leave the further tries it needs to the background.

        ``answered`` gets the body of the 2xx answer, on whichever try it comes."""
        headers = await self._try(delivery, body, 1, answered)
        if headers is None:
            return
        if self._pending >= MAX_PENDING:
            self.log.warning(
                f"{self.name}_dropped", extra={"delivery": delivery, "reason": "too many retries waiting"}
            )
            return
        self._pending += 1
        self._retries.spawn(self._retry(delivery, body, headers, answered), name=f"{self.name}-{delivery}")

    async def _retry(
        self, delivery: str, body: bytes, headers: Mapping[str, str], answered: Answered | None
    ) -> None:
        """Tries 2 to ``attempts`` of a delivery, each after its pause, until one is done with."""
        try:
            for attempt in range(2, self.attempts + 1):
                if await self._closed_within(retry_pause(attempt - 1, headers)):
                    self.log.warning(
                        f"{self.name}_dropped", extra={"delivery": delivery, "reason": "shutdown"}
                    )
                    return
                found = await self._try(delivery, body, attempt, answered)
                if found is None:
                    return
                headers = found
            self.log.warning(f"{self.name}_given_up", extra={"delivery": delivery, "attempts": self.attempts})
        finally:
            self._pending -= 1

    async def _closed_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if ``close`` is called meanwhile; whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return self._closing.is_set()

    async def _try(
        self, delivery: str, body: bytes, attempt: int, answered: Answered | None
    ) -> Mapping[str, str] | None:
        """POST once. None when the delivery is done with (taken, refused); else the
        answer's headers, for the pause before the next try."""
        assert self.outbound is not None
        failed = {"delivery": delivery, "attempt": attempt}
        async with self._turns:
            headers = {
                "Content-Type": "application/json",
                "Kibitz-Delivery": delivery,
                "Kibitz-Signature": signature(self._secret, int(time.time()), body),
            }
            try:
                status, answer, reply = await self.outbound.post_read(self.url, body, headers)
            except ValueError as e:  # outside the guard: trying again will not help
                self.log.warning(f"{self.name}_refused", extra={"delivery": delivery, "error": str(e)})
                return None
            except Exception as e:  # unreachable, timed out: try again
                status, answer, reply = 0, {}, None
                self.log.info(f"{self.name}_failed", extra={**failed, "error": f"{type(e).__name__}: {e}"})
        if 200 <= status < 300:
            if answered is not None:
                await answered(reply)
            return None
        if not retryable(status):
            self.log.warning(f"{self.name}_refused", extra={"delivery": delivery, "status": status})
            return None
        if status:
            self.log.info(f"{self.name}_failed", extra={**failed, "status": status})
        return answer
