"""The ``outgoing_webhooks`` extension: the messages of the conversations its bot is in,
POSTed (signed) to a URL of the operator's; a reply in the answer is posted back as the bot.

Settings (``[outgoing_webhooks]``, ``KIBITZ_OUTGOING_WEBHOOKS_*``), checked as the plugin
is made: ``url``, ``secret``, ``timeout`` and ``attempts`` (default 3) as for the
``webhook`` notifier (both send with ``kibitz.Deliveries``: the same headers and
signature, the guard on the URL); and ``OutgoingSettings``: ``bot``, the bot's username,
and its ``display_name``, used when the bot is made; ``conversations``, groups the bot
joins at start-up (members may also add it to a group, or write to it directly);
``trigger``, what a message must start with to be sent (``""``: every message).

Each message accepted in a conversation the bot is a member of, but not the bot's own (so
a reply never loops back), is POSTed as ``{"type": "message", "id", "conversation_id",
"message", "sender"}`` (a Message and a User, as clients see them). A 2xx answer with a
JSON object whose ``text`` is a non-empty string is posted into the same conversation as
the bot, through ``App.post`` (a member's send: its limits, rate limit and ``wrap_send``),
with ``client_msg_id`` ``reply-<message id>``. A try is made again only when no answer
came or it was 429 or 5xx, so a reply is posted once. ``message_accepted`` returns at
once (hooks have a time budget): each delivery runs in the plugin's own tasks (beyond
``MAX_SENDING`` under way a message is not sent), and ``shutdown`` gives them
``CLOSE_WAIT`` seconds. If ``startup`` runs over its time budget the plugin stays idle
(logged as ``hook_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import Any

import msgspec
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
    Tasks,
    User,
    hookimpl,
)

NAME = "outgoing_webhooks"
MAX_SENDING = 1000  # deliveries under way at once; one more message is not sent
CLOSE_WAIT = 3.0  # seconds ``shutdown`` lets deliveries under way finish

log = logging.getLogger(f"kibitz.{NAME}")


class OutgoingSettings(msgspec.Struct):
    bot: str = "webhook-bot"
    display_name: str = "Webhook bot"
    conversations: list[int] = []
    trigger: str = ""


def create_plugin(settings: PluginSettings) -> OutgoingWebhooks:
    return OutgoingWebhooks(settings)


def _text(answer: bytes | None) -> str | None:
    """The reply in an answer's body: the ``text`` of a JSON object, if it is a non-empty string."""
    try:
        found = orjson.loads(answer or b"null")
    except orjson.JSONDecodeError:
        return None
    text = found.get("text") if isinstance(found, dict) else None
    return text if isinstance(text, str) and text else None


class OutgoingWebhooks:
    def __init__(self, settings: PluginSettings) -> None:
        self.deliveries = Deliveries(settings, f"the {NAME} plugin", attempts=3)
        self.settings = settings.parse(OutgoingSettings)
        self.sources = {key: settings.source(key) for key in ("bot", "conversations")}
        self.app: App | None = None
        self.bot: User | None = None  # from startup on
        self._sending = Tasks()
        self._under_way = 0

    @hookimpl
    async def startup(self, app: App) -> None:
        """Check the URL, find or make the bot, and let it join ``conversations``; a
        ``ConfigError`` naming the setting when one of them cannot be done."""
        await self.deliveries.start(app.settings.push_allow_insecure)
        try:
            bot = await app.bot(self.settings.bot, self.settings.display_name)
        except ApiError as e:
            raise ConfigError(f"{self.sources['bot']}: {e.message}") from None
        for conversation_id in self.settings.conversations:
            try:
                await app.add_member(conversation_id, bot.id)
            except ApiError as e:
                raise ConfigError(
                    f"{self.sources['conversations']}: {conversation_id}: {e.message}"
                ) from None
        self.app, self.bot = app, bot

    @hookimpl
    def message_accepted(self, message: Message, conversation: Conversation) -> None:
        """Send the message if it is for the bot: in the background, so the hook returns at once."""
        if self.bot is None or self.bot.id not in conversation.members or message.sender_id == self.bot.id:
            return
        if not message.body.startswith(self.settings.trigger):
            return
        if self._under_way >= MAX_SENDING:
            log.warning(
                f"{NAME}_dropped", extra={"message_id": str(message.id), "reason": "too many under way"}
            )
            return
        self._under_way += 1
        self._sending.spawn(self._send(message, conversation), name=f"{NAME}-{message.id}")

    @hookimpl
    async def shutdown(self) -> None:
        """Give deliveries under way ``CLOSE_WAIT`` seconds; drop the retries still waiting."""
        await asyncio.gather(self._sending.wait(CLOSE_WAIT), self.deliveries.close())

    async def _send(self, message: Message, conversation: Conversation) -> None:
        """POST the message; its reply, if any, is posted as the bot."""
        assert self.app is not None
        try:
            delivery = uuid.uuid4().hex
            payload: dict[str, Any] = {
                "type": "message",
                "id": delivery,
                "conversation_id": str(conversation.id),
                "message": message.to_dict(),
            }
            with contextlib.suppress(NotFound):  # an account the database does not know: no sender
                payload["sender"] = (await self.app.user(message.sender_id)).to_dict()
            reply = functools.partial(self._reply, message)
            await self.deliveries.deliver(delivery, orjson.dumps(payload), reply)
        finally:
            self._under_way -= 1

    async def _reply(self, message: Message, answer: bytes | None) -> None:
        text = _text(answer)
        if text is None or self.app is None or self.bot is None:
            return
        try:
            await self.app.post(self.bot, message.conversation_id, text, f"reply-{message.id}")
        except ApiError as e:
            extra = {"message_id": str(message.id), "code": e.code, "error": e.message}
            log.warning(f"{NAME}_reply_refused", extra=extra)
