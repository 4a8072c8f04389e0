"""The contract every Notifier keeps, as tests any notify plugin runs against itself.

Subclass ``NotifierContract``, name the class ``Test...``, and give it a fixture
``notifier`` that yields a started Notifier of your plugin (``started_slot("notifier",
...)``). What a notification does outside Kibitz is the plugin's own to test.
"""

from __future__ import annotations

from typing import Any

from ..models import Conversation, Message

CONVERSATION = Conversation(3, "group", "Ops", 1, (1, 2, 3), "2026-11-24T09:00:00.000Z")
MESSAGE = Message(7, 3, 1, "the build is red", "c-7", "2026-11-24T10:00:00.123Z")


class NotifierContract:
    """``reachable`` answers a subset, at once for many; ``notify`` of nobody does nothing."""

    async def test_reachable_is_a_subset_of_those_asked(self, notifier: Any) -> None:
        asked = list(range(1000, 1500))
        assert await notifier.reachable(asked) <= set(asked)
        assert await notifier.reachable([]) == set()

    async def test_notifying_nobody_returns(self, notifier: Any) -> None:
        await notifier.notify(MESSAGE, CONVERSATION, [])
