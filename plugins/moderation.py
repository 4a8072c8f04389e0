"""The ``moderation`` extension: a word and pattern list checked before a message is accepted.

Enabled with ``KIBITZ_PLUGINS=moderation``. Settings (``[moderation]`` or
``KIBITZ_MODERATION_*``), checked against ``ModerationSettings``:

- ``words``: words refused or masked wherever they stand as whole words, whatever their
  case (``KIBITZ_MODERATION_WORDS=darn,heck``);
- ``patterns``: regular expressions (Python's ``re``), matched case-insensitively;
- ``action``: ``reject`` (the default) refuses the message with ``reason``, which the
  sender sees; ``mask`` sends it with each match replaced by ``*`` of the same length;
- ``reason``: what a refused sender is told.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable
from typing import Literal

import msgspec

from kibitz import ConfigError, Draft, Message, PluginSettings, Rejected, hookimpl


class ModerationSettings(msgspec.Struct):
    words: list[str] = []
    patterns: list[str] = []
    action: Literal["reject", "mask"] = "reject"
    reason: str = "this message contains words this server does not accept"


def create_plugin(settings: PluginSettings) -> Moderation:
    return Moderation(settings)


class Moderation:
    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings.parse(ModerationSettings)
        parts = [rf"\b{re.escape(word)}\b" for word in self.settings.words if word]
        for pattern in self.settings.patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{settings.source('patterns')}: {pattern!r} is not a pattern: {e}"
                ) from None
            parts.append(f"(?:{pattern})")
        self.blocked = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    @hookimpl
    def wrap_send(self, draft: Draft) -> Callable[[], AsyncGenerator[None, Message]] | None:
        if self.blocked is None or not self.blocked.search(draft.body):
            return None
        blocked = self.blocked

        async def check() -> AsyncGenerator[None, Message]:
            if self.settings.action == "reject":
                raise Rejected(self.settings.reason)
            draft.body = blocked.sub(lambda match: "*" * len(match.group(0)), draft.body)
            yield

        return check
