"""Finding plugins, filling the slots, and calling extension hooks safely.

Plugins, built-in ones included, are modules named in the ``kibitz`` entry-point group.
Only the names the configuration gives are loaded: one per slot, every notifier, and the
extensions of ``KIBITZ_PLUGINS``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, cast

import pluggy

from . import hookspecs, slots
from .errors import ConfigError, Rejected, Unavailable
from .metrics import Metrics
from .settings import PluginSettings, Settings

log = logging.getLogger("kibitz.plugins")

SLOT_PROTOCOLS: dict[str, type] = {
    "transport": slots.Transport,
    "storage": slots.Storage,
    "ids": slots.IdGenerator,
    "notifier": slots.Notifier,
}
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
        hooks = sorted(
            {name for owner in _hook_owners(module) for name in dir(owner) if _is_hook(owner, name)}
        )
        found[ep.name] = (ep.value, package, hooks)
    return found


def _hook_owners(module: Any) -> list[Any]:
    """The module, and the classes it defines (what ``create_plugin`` makes is one)."""
    classes = [v for v in vars(module).values() if inspect.isclass(v) and v.__module__ == module.__name__]
    return [module, *classes]


def _is_hook(owner: Any, name: str) -> bool:
    return hasattr(getattr(owner, name, None), "kibitz_impl")


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
        pm.register(_configured(module, name, settings), name=name)
    for plugin in reversed(list(extra)):
        pm.register(plugin)
    return pm


def _configured(module: Any, name: str, settings: Settings) -> object:
    """What an extension plugin registers: the object its ``create_plugin(settings)`` makes
    from its ``[plugins.name]`` table (checked there: a bad value raises ``ConfigError``), else the
    module itself."""
    factory = getattr(module, "create_plugin", None)
    if factory is None or name not in settings.plugins:
        return module
    plugin_settings = settings.plugin(name)
    try:
        plugin: object = factory(plugin_settings)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"plugin {name!r}: {type(e).__name__}: {e}") from None
    _refuse_unknown(plugin_settings, name)
    return plugin


def _refuse_unknown(plugin_settings: PluginSettings, name: str) -> None:
    unknown = plugin_settings.unknown()
    if unknown:
        hint = plugin_settings.hint(unknown[0])
        raise ConfigError(f"{unknown[0]}: the {name} plugin has no such setting{hint}")


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
    protocol = SLOT_PROTOCOLS[slot]
    missing = [m for m, f in vars(protocol).items() if callable(f) and m[0] != "_" and not hasattr(found, m)]
    if missing:  # written for an older contract: refused now, not with a 500 at its first use
        raise ConfigError(
            f"{SLOT_VARIABLES[slot]}={name!r}: the plugin lacks {', '.join(missing)} of kibitz.slots."
            f"{protocol.__name__} (plugin API {hookspecs.PLUGIN_API}): upgrade it"
        )
    _refuse_unknown(plugin_settings, name)
    return found


class Hooks:
    """Calls the extension hooks of one instance, each implementation within ``budget``
    seconds. One that raises or runs over is logged with its plugin's name, counted in
    ``kibitz_plugin_failures_total`` and skipped, so it never loses or blocks a message;
    only a pre-send check (``wrap_send``) that fails while ``fail_closed`` refuses it."""

    def __init__(self, pm: pluggy.PluginManager, metrics: Metrics, budget: float, fail_closed: bool) -> None:
        self.pm = pm
        self.metrics = metrics
        self.budget = budget
        self.fail_closed = fail_closed

    def failed(self, hook: str, plugin: str, timed_out: bool) -> None:
        reason = "timeout" if timed_out else "error"
        log.error(
            "hook_failed", exc_info=not timed_out, extra={"hook": hook, "plugin": plugin, "reason": reason}
        )
        self.metrics.plugin_failures.labels(plugin, hook, reason).inc()

    async def call_each(
        self, hook_name: str, stop_on: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> None:
        """Call every implementation of an extension hook, awaiting async ones; a failure of
        the ``stop_on`` types is raised, not skipped."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                async with asyncio.timeout(self.budget):
                    result = impl.function(*(kwargs[a] for a in impl.argnames))
                    if inspect.isawaitable(result):
                        await result
            except stop_on:
                raise
            except Exception as e:
                self.failed(hook_name, impl.plugin_name, isinstance(e, TimeoutError))

    def send_wrappers(self) -> SendWrappers:
        return SendWrappers(self)


class SendWrappers:
    """The ``wrap_send`` generators of one send: run their first half, then their second."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self._running: list[tuple[str, AsyncGenerator[None, Any]]] = []

    async def before(self, **kwargs: Any) -> None:
        """Run each wrapper up to its ``yield``. ``Rejected`` propagates; another failure
        skips the wrapper, or with ``fail_closed`` refuses the message (``Unavailable``)."""
        for impl in reversed(self.hooks.pm.hook.wrap_send.get_hookimpls()):
            try:
                async with asyncio.timeout(self.hooks.budget):
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
            except (Exception, StopAsyncIteration) as e:
                self.hooks.failed("wrap_send", impl.plugin_name, isinstance(e, TimeoutError))
                if self.hooks.fail_closed:
                    await self.abort()
                    raise Unavailable(f"the {impl.plugin_name} plugin could not check the message") from None
                continue
            self._running.append((impl.plugin_name, gen))

    async def after(self, message: Any) -> None:
        """Send the accepted message into each wrapper's ``yield`` and let it finish."""
        for plugin_name, gen in reversed(self._running):
            try:
                async with asyncio.timeout(self.hooks.budget):
                    await gen.asend(message)
            except StopAsyncIteration:
                continue
            except Exception as e:
                self.hooks.failed("wrap_send", plugin_name, isinstance(e, TimeoutError))
                continue
            await self._close(plugin_name, gen)  # it yielded twice: close it
        self._running.clear()

    async def abort(self) -> None:
        """Close wrappers already entered when the message is not accepted."""
        for plugin_name, gen in self._running:
            await self._close(plugin_name, gen)
        self._running.clear()

    async def _close(self, plugin_name: str, gen: AsyncGenerator[None, Any]) -> None:
        try:
            await gen.aclose()
        except Exception:
            self.hooks.failed("wrap_send", plugin_name, False)
