"""The ``outgoing_webhooks`` extension: the messages of the conversations its bot is in,
POSTed (signed) to a URL of the operator's; a reply in the answer is posted back as the bot.

Settings (``[outgoing_webhooks]``, ``KIBITZ_OUTGOING_WEBHOOKS_*``): ``url``, ``secret``,
``timeout`` and ``attempts`` (default 3) as for the ``webhook`` notifier (both send with
``kibitz.Deliveries``: the same headers and signature, the guard on the URL); ``bot``, the
bot's username (default ``webhook-bot``), and its ``display_name`` (default ``Webhook
bot``), used when the bot is made; ``conversations``, groups the bot joins at start-up
(default none: members add it to a group, or start a direct conversation with it);
``trigger``, what a message must start with to be sent (default ``""``: every message).

Each message accepted in a conversation the bot is a member of, but not the bot's own (so
a reply never loops back), is POSTed as ``{"type": "message", "id", "conversation_id",
"message", "sender"}`` (a Message and a User, as clients see them). A 2xx answer with a
JSON object whose ``text`` is a non-empty string is posted into the same conversation as
the bot, through ``App.post`` (a member's send: its limits, rate limit and ``wrap_send``),
with ``client_msg_id`` ``reply-<message id>``. A try is made again only when no answer
came or it was 429 or 5xx, so a reply is posted once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from typing import Any

import orjson

from kibitz import (
    ApiError,
    App,
    ConfigError,
    Conversation,
    Deliveries,
    Message,
    NotFound,
    PluginSettings,
    User,
    hookimpl,
)

NAME = "outgoing_webhooks"
log = logging.getLogger(f"kibitz.{NAME}")

_running: dict[str, OutgoingWebhooks] = {}  # by instance id: the App's, from startup to shutdown


@hookimpl
async def startup(app: App) -> None:
    hook = OutgoingWebhooks(app.settings.plugin(NAME))
    await hook.start(app)
    _running[app.instance_id] = hook


@hookimpl
async def message_accepted(message: Message, conversation: Conversation, app: App) -> None:
    hook = _running.get(app.instance_id)
    if hook is not None:
        await hook.send(message, conversation)


@hookimpl
async def shutdown(app: App) -> None:
    hook = _running.pop(app.instance_id, None)
    if hook is not None:
        await hook.close()


def _ids(source: str, value: Any) -> tuple[int, ...]:
    """Conversation ids from a TOML list or a comma-separated string."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        return tuple(int(str(item).strip()) for item in items if str(item).strip())
    except ValueError:
        raise ConfigError(f"{source}={value!r}: conversation ids, like [12, 40]") from None


def _text(answer: bytes | None) -> str | None:
    """The reply in an answer's body: the ``text`` of a JSON object, if it is a non-empty string."""
    try:
        found = orjson.loads(answer or b"null")
    except orjson.JSONDecodeError:
        return None
    text = found.get("text") if isinstance(found, dict) else None
    return text if isinstance(text, str) and text else None


class OutgoingWebhooks:
    app: App  # from start() on
    bot: User

    def __init__(self, settings: PluginSettings) -> None:
        self.deliveries = Deliveries(settings, f"the {NAME} plugin", attempts=3)
        self.bot_name = str(settings.get("bot", "webhook-bot"))
        self.bot_source = settings.source("bot")
        self.display_name = str(settings.get("display_name", "Webhook bot"))
        self.trigger = str(settings.get("trigger", ""))
        self.conversations_source = settings.source("conversations")
        self.conversations = _ids(self.conversations_source, settings.get("conversations", []))
        settings.refuse_unknown()

    async def start(self, app: App) -> None:
        """Check the URL, find or make the bot, and let it join ``conversations``; a
        ``ConfigError`` naming the setting when one of them cannot be done."""
        self.app = app
        await self.deliveries.start(app.settings.push_allow_insecure)
        try:
            self.bot = await app.bot(self.bot_name, self.display_name)
        except ApiError as e:
            raise ConfigError(f"{self.bot_source}: {e.message}") from None
        for conversation_id in self.conversations:
            try:
                await app.add_member(conversation_id, self.bot.id)
            except ApiError as e:
                raise ConfigError(f"{self.conversations_source}: {conversation_id}: {e.message}") from None

    async def close(self) -> None:
        await self.deliveries.close()

    async def send(self, message: Message, conversation: Conversation) -> None:
        """POST the message if it is for the bot; its reply, if any, is posted as the bot."""
        if self.bot.id not in conversation.members or message.sender_id == self.bot.id:
            return
        if not message.body.startswith(self.trigger):
            return
        delivery = uuid.uuid4().hex
        payload: dict[str, Any] = {
            "type": "message",
            "id": delivery,
            "conversation_id": str(conversation.id),
            "message": message.to_dict(),
        }
        with contextlib.suppress(NotFound):  # an account the database does not know: no sender
            payload["sender"] = (await self.app.user(message.sender_id)).to_dict()
        await self.deliveries.deliver(
            delivery, orjson.dumps(payload), functools.partial(self._reply, message)
        )

    async def _reply(self, message: Message, answer: bytes | None) -> None:
        text = _text(answer)
        if text is None:
            return
        try:
            await self.app.post(self.bot, message.conversation_id, text, f"reply-{message.id}")
        except ApiError as e:
            extra = {"message_id": str(message.id), "code": e.code, "error": e.message}
            log.warning(f"{NAME}_reply_refused", extra=extra)
