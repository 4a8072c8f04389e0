"""The plugin on a real Kibitz server in the test's process (``kibitz.testing``'s fixtures)."""

from __future__ import annotations

import pytest

from kibitz.testing import Client


@pytest.fixture
def kibitz_environ() -> dict[str, str]:
    """The server's settings: the plugin enabled, as an operator enables it."""
    return {"KIBITZ_PLUGINS": "wave", "KIBITZ_WAVE_EMOJI": "o/"}


async def test_wave_becomes_the_emoji(kibitz_client: Client) -> None:
    alice, bob = await kibitz_client.user(), await kibitz_client.user()
    conversation = await kibitz_client.direct(alice, bob)
    message = await kibitz_client.send(alice, conversation, "hi :wave:")
    assert message["body"] == "hi o/"
    history = await kibitz_client.history(bob, conversation)
    assert [m["body"] for m in history["messages"]] == ["hi o/"]
