"""Finding plugins, filling the slots, and calling extension hooks safely.

Plugins, built-in ones included, are modules named in the ``kibitz`` entry-point group.
Only the names the configuration gives are loaded: one per slot, every notifier, and the
extensions of ``KIBITZ_PLUGINS``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import ConfigError, Rejected
from .settings import Settings

log = logging.getLogger("kibitz.plugins")

SLOT_VARIABLES = {
    "transport": "KIBITZ_TRANSPORT",
    "storage": "KIBITZ_STORAGE",
    "ids": "KIBITZ_IDS",
    "notifier": "KIBITZ_NOTIFY",
}


def installed_plugins() -> dict[str, tuple[str, str, list[str]]]:
    """Every plugin in the ``kibitz`` entry-point group: its module, the package that ships
    it with its version (``kibitz 0.1.0``), and the hooks it implements."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    for ep in entry_points(group="kibitz"):
        package = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        try:
            module = ep.load()
        except Exception as e:
            found[ep.name] = (ep.value, package, [f"fails to load: {type(e).__name__}: {e}"])
            continue
        hooks = [name for name in dir(module) if hasattr(getattr(module, name), "kibitz_impl")]
        found[ep.name] = (ep.value, package, hooks)
    return found


def create_plugin_manager(settings: Settings, extra: Iterable[object] = ()) -> pluggy.PluginManager:
    """A PluginManager with the configured plugins loaded, plus ``extra`` plugin objects.

    Extensions are registered in reverse so that hooks run in the order the operator
    listed them (pluggy calls the last registered first).
    """
    pm = pluggy.PluginManager("kibitz")
    pm.add_hookspecs(hookspecs)
    available = {ep.name: ep for ep in entry_points(group="kibitz")}
    wanted = [settings.transport, settings.storage, settings.ids, *settings.notify]
    for name in [*dict.fromkeys(wanted), *reversed(settings.plugins)]:
        if pm.get_plugin(name) is not None:
            continue
        if name not in available:
            variable = "KIBITZ_PLUGINS" if name in settings.plugins else _variable_for(settings, name)
            raise ConfigError(f"{variable}={name!r}: no installed plugin provides it")
        try:
            module = available[name].load()
        except Exception as e:
            raise ConfigError(f"plugin {name!r} failed to load: {type(e).__name__}: {e}") from None
        _check_api(name, getattr(module, "PLUGIN_API", hookspecs.PLUGIN_API))
        pm.register(module, name=name)
    for plugin in reversed(list(extra)):
        pm.register(plugin)
    return pm


def _check_api(name: str, wanted: str) -> None:
    """Refuse a plugin written for a plugin API this Kibitz does not provide."""
    try:
        major, minor = (int(part) for part in str(wanted).split("."))
    except ValueError:
        raise ConfigError(f"plugin {name!r}: PLUGIN_API={wanted!r} is not a version like '0.2'") from None
    ours_major, ours_minor = (int(part) for part in hookspecs.PLUGIN_API.split("."))
    if major != ours_major or minor > ours_minor:
        raise ConfigError(
            f"plugin {name!r} needs plugin API {wanted}; this Kibitz provides {hookspecs.PLUGIN_API}"
            " (upgrade Kibitz, or install a version of the plugin made for it)"
        )


def _variable_for(settings: Settings, name: str) -> str:
    for slot, value in (
        ("transport", settings.transport),
        ("storage", settings.storage),
        ("ids", settings.ids),
    ):
        if value == name:
            return SLOT_VARIABLES[slot]
    return "KIBITZ_NOTIFY"


def fill_slot(pm: pluggy.PluginManager, slot: str, name: str, settings: Settings) -> Any:
    """Ask ``register_<slot>`` for the plugin named ``name``; a clear ConfigError if none answers."""
    hook = getattr(pm.hook, f"register_{slot}")
    plugin_settings = settings.plugin(name)
    try:
        found = hook(name=name, settings=plugin_settings)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{SLOT_VARIABLES[slot]}={name!r}: {type(e).__name__}: {e}") from None
    if found is None:
        raise ConfigError(
            f"{SLOT_VARIABLES[slot]}={name!r}: no installed plugin provides a {slot} by that name"
        )
    unknown = plugin_settings.unknown()
    if unknown:
        hint = plugin_settings.hint(unknown[0])
        raise ConfigError(f"{unknown[0]}: the {name} plugin has no such setting{hint}")
    return found


async def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of an extension hook, awaiting async ones; log and skip failures."""
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(*(kwargs[a] for a in impl.argnames))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("hook_failed", extra={"hook": hook_name, "plugin": impl.plugin_name})


class SendWrappers:
    """The ``wrap_send`` generators of one send: run their first half, then their second."""

    def __init__(self) -> None:
        self._running: list[tuple[str, AsyncGenerator[None, Any]]] = []

    async def before(self, pm: pluggy.PluginManager, **kwargs: Any) -> None:
        """Run each wrapper up to its ``yield``. ``Rejected`` propagates; other errors skip it."""
        for impl in reversed(pm.hook.wrap_send.get_hookimpls()):
            try:
                # What wrap_send's spec says an implementation returns (pluggy types it object).
                factory = cast(
                    "Callable[[], AsyncGenerator[None, Any]] | None",
                    impl.function(*(kwargs[a] for a in impl.argnames)),
                )
                if factory is None:
                    continue
                gen = factory()
                await gen.asend(None)
            except Rejected:
                await self.abort()
                raise
            except (Exception, StopAsyncIteration):
                log.exception("hook_failed", extra={"hook": "wrap_send", "plugin": impl.plugin_name})
                continue
            self._running.append((impl.plugin_name, gen))

    async def after(self, message: Any) -> None:
        """Send the accepted message into each wrapper's ``yield`` and let it finish."""
        for plugin_name, gen in reversed(self._running):
            try:
                await gen.asend(message)
            except StopAsyncIteration:
                continue
            except Exception:
                log.exception("hook_failed", extra={"hook": "wrap_send", "plugin": plugin_name})
                continue
            await _close(plugin_name, gen)  # it yielded twice: close it
        self._running.clear()

    async def abort(self) -> None:
        """Close wrappers already entered when the message is not accepted."""
        for plugin_name, gen in self._running:
            await _close(plugin_name, gen)
        self._running.clear()


async def _close(plugin_name: str, gen: AsyncGenerator[None, Any]) -> None:
    try:
        await gen.aclose()
    except Exception:
        log.exception("hook_failed", extra={"hook": "wrap_send", "plugin": plugin_name})
