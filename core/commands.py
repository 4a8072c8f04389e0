"""Slash commands: ``/name arguments`` at the start of a message, added by plugins.

A plugin returns ``Command`` objects from ``register_commands``; the core gathers them
once at start-up into ``app.commands``. The built-in ``commands`` plugin
(``KIBITZ_PLUGINS=commands``) runs them on the send path; without it a message that
starts with a slash is an ordinary message.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pluggy

from .errors import ConfigError
from .models import Draft, User

if TYPE_CHECKING:
    from .app_protocol import App

NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True, slots=True)
class Command:
    """One slash command: ``/name arguments``. ``await run(draft, arguments, sender)`` runs
    before the message is accepted, within ``plugin_timeout``, with ``arguments`` the rest
    of the body stripped (``""`` for a bare ``/name``). It may change ``draft.body`` (what
    is sent instead; the length limit applies to the result) or raise ``Rejected(reason)``:
    the sender gets 403 ``forbidden`` with the reason, and nothing is sent. ``usage`` and
    ``help`` are what ``/help`` lists. Commands run only where the ``commands`` plugin is
    enabled; elsewhere ``/name ...`` is sent as text. Added in 0.2."""

    name: str  # without the slash: a-z, 0-9 and -, starting with a letter
    usage: str  # "/me TEXT"
    help: str  # one line, for /help
    run: Callable[[Draft, str, User], Awaitable[None]]


def gather_commands(pm: pluggy.PluginManager, app: App) -> dict[str, Command]:
    """Every plugin's commands by name; a bad or taken name stops start-up."""
    found: dict[str, Command] = {}
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        kwargs = {"app": app}
        # What register_commands' spec says an implementation returns (pluggy types it object).
        commands = cast("Iterable[Command] | None", impl.function(*(kwargs[a] for a in impl.argnames)))
        for command in commands or ():
            if not NAME.fullmatch(command.name):
                raise ConfigError(f"plugin {impl.plugin_name}: /{command.name} is not a command name")
            if command.name in found:
                raise ConfigError(f"plugin {impl.plugin_name}: /{command.name} is another plugin's command")
            found[command.name] = command
    return found
