"""The ``log`` notifier: one log line per member a message could not reach live.

A stand-in for a push service in labs and tests, and a record of who would have been
notified: the line names the message, conversation and users, never the message text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kibitz import App, Conversation, Message, PluginSettings, hookimpl

log = logging.getLogger("kibitz.notify")


@hookimpl
def register_notifier(name: str, settings: PluginSettings) -> LogNotifier | None:
    return LogNotifier() if name == "log" else None


class LogNotifier:
    async def start(self, app: App) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reachable(self, user_ids: Sequence[int]) -> set[int]:
        return set(user_ids)  # a log line reaches anyone

    async def notify(self, message: Message, conversation: Conversation, user_ids: Sequence[int]) -> None:
        log.info(
            "notify",
            extra={
                "message_id": str(message.id),
                "conversation_id": str(conversation.id),
                "users": [str(u) for u in user_ids],
            },
        )
