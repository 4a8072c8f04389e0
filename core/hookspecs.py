"""The plugin contract: every hook App calls, when it calls it, and what an answer does.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match
the hooks below. An implementation may take any subset of a hook's arguments, so a hook
can gain arguments without breaking plugins. Plugins are found through the ``kibitz``
entry-point group; the operator enables them by name (see ``docs/configuration.md``).

Slot hooks (``register_*`` for transport, storage, ids, notifier) are plain ``def`` and
stop at the first answer that is not ``None``. Extension hooks may be ``async def``; the
core calls every implementation itself, and one that raises is logged and skipped, so a
broken extension never loses or blocks a message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .app_protocol import App
    from .commands import Command
    from .models import Conversation, Device, Draft, Message, User
    from .settings import PluginSettings
    from .slots import IdGenerator, Notifier, Storage, Transport

# The version of the plugin contract: these hooks, the slot protocols (``kibitz.slots``),
# ``kibitz.App`` and the names ``kibitz`` exports. A minor version only adds (each
# addition says "Added in"); a major version may change or remove. A plugin may state
# the version it was written for as ``PLUGIN_API = "0.3"`` in its module: Kibitz refuses
# to load it if that needs a newer minor version or another major one.
PLUGIN_API = "0.3"

hookspec = pluggy.HookspecMarker("kibitz")
hookimpl = pluggy.HookimplMarker("kibitz")


@hookspec(firstresult=True)
def register_transport(name: str, settings: PluginSettings) -> Transport | None:
    """Return a Transport if ``name`` (``KIBITZ_TRANSPORT``) is yours, else None.

    Called once at start-up. ``settings`` holds the ``[plugins.name]`` table of the config file
    and the ``KIBITZ_<NAME>_*`` variables. Do not connect here: connect in
    ``Transport.start(app)``. Raise ``ConfigError("<where>: <problem>")`` for bad
    settings; start-up stops with that line and exit status 2. Stops at the first
    non-None answer. Added in 0.1.
    """


@hookspec(firstresult=True)
def register_storage(name: str, settings: PluginSettings) -> Storage | None:
    """Return a Storage if ``name`` (``KIBITZ_STORAGE``) is yours, else None.

    As ``register_transport``. Added in 0.1.
    """


@hookspec(firstresult=True)
def register_ids(name: str, settings: PluginSettings) -> IdGenerator | None:
    """Return an IdGenerator if ``name`` (``KIBITZ_IDS``) is yours, else None.

    As ``register_transport``. Added in 0.1.
    """


@hookspec(firstresult=True)
def register_notifier(name: str, settings: PluginSettings) -> Notifier | None:
    """Return a Notifier if ``name`` is yours, else None.

    Called once for each name in ``KIBITZ_NOTIFY``; as ``register_transport``. Added in 0.1.
    """


@hookspec
def register_routes(register: Callable[..., None], app: App) -> None:
    """Add HTTP routes: call ``register(path, handler, methods=("GET",), openapi=None)`` for each.

    Called once while the application is built. ``handler(request)`` is a Sanic handler
    (async, returns a response); ``request.app.ctx.app`` is the ``App`` services object
    (``app.authenticated(request)`` is the caller). Paths must not collide with the core's
    or another plugin's: a duplicate stops start-up. ``openapi``, an operation made with
    ``kibitz.openapi_operation``, puts the route in ``/api/v1/openapi.json``. An
    ``ApiError`` raised by a handler is answered with the protocol's error body; a path
    parameter named ``secret`` is never logged. Every implementation runs. Added in 0.1.
    Changed in 0.2: ``openapi``.
    """


@hookspec
def register_commands(app: App) -> Iterable[Command] | None:
    """Add slash commands: return ``kibitz.Command`` objects (``/me``, ``/shrug``, ``/poll``).

    Called once while the application is built; the commands of every plugin are gathered
    into ``app.commands``, and a name two plugins use stops start-up. They run when the
    ``commands`` plugin is enabled: a message whose body starts with ``/name`` runs that
    command before it is accepted (see ``Command``). Added in 0.2.
    """


@hookspec
def wrap_send(
    draft: Draft, sender: User, conversation: Conversation, app: App
) -> Callable[[], AsyncGenerator[None, Message]] | None:
    """Check, change or refuse a message before it is accepted; see it once it is.

    Called for every send (HTTP or WebSocket), before the message gets its id. Return
    None to stay out, or an async generator function with exactly one ``yield``. Code
    before the ``yield`` may change ``draft.body`` or raise ``Rejected(reason)``, which
    refuses the message with 403 ``forbidden`` and ``reason`` as the error message; the
    accepted ``Message`` is sent back into the ``yield``. Wrappers run in the order the
    operator lists plugins in ``KIBITZ_PLUGINS``. Any other exception is logged and that
    wrapper skipped. An idempotent resend of an accepted message does not call it.
    Added in 0.1.

    Example::

        @hookimpl
        def wrap_send(draft):
            async def wrapper():
                if "spam" in draft.body:
                    raise Rejected("no spam here")
                message = yield
                log.info("accepted %s", message.id)
            return wrapper
    """


@hookspec
def message_accepted(message: Message, conversation: Conversation, app: App) -> Awaitable[None] | None:
    """React to a message once the transport has durably accepted it (bots, webhooks, indexing).

    Runs after the sender has been answered, off the send path; may be async. Every
    implementation runs; one that raises is logged and skipped. Not called again for an
    idempotent resend. Added in 0.1.
    """


@hookspec
def connection_opened(user: User, device: Device, app: App) -> Awaitable[None] | None:
    """A device went live: its WebSocket is ready, on this instance.

    May be async; runs beside the connection, never delaying it. Every implementation
    runs; one that raises is logged and skipped. Added in 0.1.
    """


@hookspec
def connection_closed(user: User, device: Device, app: App) -> Awaitable[None] | None:
    """A device's WebSocket on this instance closed, for any reason.

    As ``connection_opened``. Added in 0.1.
    """


@hookspec
def startup(app: App) -> Awaitable[None] | None:
    """The server is about to take requests: every slot has started.

    May be async. Every implementation runs; one that raises is logged and skipped, except
    that ``ConfigError("<where>: <problem>")`` stops start-up with that line and exit
    status 2: for a setting only the started server can check (a URL's address, a bot's
    username; the rest is checked as ``create_plugin`` makes the plugin). Added in 0.1.
    Changed in 0.2: ``ConfigError`` stops start-up.
    """


@hookspec
def shutdown(app: App) -> Awaitable[None] | None:
    """The server is stopping: connections are drained, slots are still up.

    As ``startup``. Added in 0.1.
    """
