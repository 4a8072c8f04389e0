"""The ``webhook`` notifier: one signed JSON POST per message, to a URL the operator chose.

The body: ``{"type": "notification", "id", "conversation_id", "message_id", "sender":
{"id", "display_name"}, "body", "user_ids", "sent_at"}``, ids as strings (PROTOCOL.md).
``id`` names the delivery and stays the same on every try of it; ``user_ids`` are the
members with no live connection; ``sent_at`` is the message's ``created_at``; ``body``
is cut to 200 characters and left out with ``KIBITZ_PUSH_PREVIEW=0``.

``kibitz.Deliveries`` signs and sends it (headers, retries, the guard on the URL, the
settings ``url``, ``secret``, ``timeout`` and ``attempts``, default 5): ``notify`` makes
the first try and leaves the others to the background, so a receiver that is down holds
back no other message; ``close`` drops those still waiting (the log has moved on: unlike
a first try, a retry is not made again after a restart).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from kibitz import App, Conversation, Deliveries, Message, NotFound, PluginSettings, hookimpl

PREVIEW_CHARS = 200


@hookimpl
def register_notifier(name: str, settings: PluginSettings) -> WebhookNotifier | None:
    return WebhookNotifier(settings) if name == "webhook" else None


class WebhookNotifier:
    app: App  # from start() on

    def __init__(self, settings: PluginSettings) -> None:
        self.deliveries = Deliveries(settings, "the webhook notifier", attempts=5)

    async def start(self, app: App) -> None:
        """Refuse a URL outside the guard (one ConfigError line), then get ready to post."""
        self.app = app
        await self.deliveries.start(app.settings.push_allow_insecure)

    async def close(self) -> None:
        await self.deliveries.close()

    async def reachable(self, user_ids: Sequence[int]) -> set[int]:
        return set(user_ids)  # a webhook reaches anyone

    async def notify(self, message: Message, conversation: Conversation, user_ids: Sequence[int]) -> None:
        delivery = uuid.uuid4().hex
        body = orjson.dumps(await self._payload(delivery, message, conversation, user_ids))
        await self.deliveries.deliver(delivery, body)

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
