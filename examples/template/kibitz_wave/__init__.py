"""kibitz-wave: turns ``:wave:`` in a message into a waving hand, before it is accepted.

Enable it with ``KIBITZ_PLUGINS=wave``. Settings, in the config file's ``[plugins.wave]`` table
or as ``KIBITZ_WAVE_<KEY>``:

- ``emoji``: what ``:wave:`` becomes (default 👋).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import msgspec

from kibitz import Draft, Message, PluginSettings, hookimpl

PLUGIN_API = "0.2"  # the plugin contract this was written for (kibitz.PLUGIN_API)


class WaveSettings(msgspec.Struct):
    """The ``[plugins.wave]`` table: Kibitz checks it against this when it starts."""

    emoji: str = "👋"


def create_plugin(settings: PluginSettings) -> Wave:
    """Called once at start-up with the plugin's settings; returns the object whose hooks run."""
    return Wave(settings.parse(WaveSettings))


class Wave:
    def __init__(self, settings: WaveSettings) -> None:
        self.settings = settings

    @hookimpl
    def wrap_send(self, draft: Draft) -> Callable[[], AsyncGenerator[None, Message]] | None:
        """Every send passes here before it is accepted: change ``draft.body``, or stay out."""
        if ":wave:" not in draft.body:
            return None

        async def replace() -> AsyncGenerator[None, Message]:
            draft.body = draft.body.replace(":wave:", self.settings.emoji)
            yield  # the accepted message comes back here

        return replace
