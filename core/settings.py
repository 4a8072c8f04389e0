"""Configuration: a TOML file, each key overridable by an environment variable.

Core keys sit at the top level of the file (``port = 8000``) and are overridden by
``KIBITZ_<KEY>`` (``KIBITZ_PORT``). A plugin's keys sit in its table, ``[plugins.nats]``
(or, shorter, ``[nats]``), and are overridden by ``KIBITZ_<PLUGIN>_<KEY>``
(``KIBITZ_NATS_URL``). The extensions to enable are ``plugins = [...]`` at the top, or
``enabled = [...]`` under ``[plugins]`` in a file that has ``[plugins.NAME]`` tables
(TOML cannot have both). Bad values raise ``ConfigError`` naming where they came from.

A table that names no installed plugin is refused; a ``KIBITZ_*`` variable that is no
setting is kept in ``Settings.warnings`` (an environment holds much that is not ours).
Both name the closest known key, since they are most likely typos.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    import msgspec

    S = TypeVar("S", bound=msgspec.Struct)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REGISTRATION_MODES = ("open", "invite", "closed")
PRE_SEND_FAILURES = ("open", "closed")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Async drivers for the database URLs operators write without one.
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


class PluginSettings(Mapping[str, Any]):
    """One plugin's settings: its TOML table, overridden by ``KIBITZ_<PLUGIN>_<KEY>``.

    Values from the environment are strings; plugins convert them with the helpers below,
    which name the source of a bad value in the ``ConfigError``.
    """

    def __init__(
        self, plugin: str, table: Mapping[str, Any], environ: Mapping[str, str], heading: str = ""
    ) -> None:
        self.plugin = plugin
        self.heading = heading or f"[{plugin}]"  # where the table is: [plugins.nats] or [nats]
        prefix = f"KIBITZ_{plugin.upper()}_"
        self._values = dict(table)
        self._sources = {key: f"{self.heading} {key}" for key in table}
        self._read: set[str] = set()
        for name, value in environ.items():
            if name in CORE_VARIABLES:  # KIBITZ_LOG_LEVEL is the core's, not the "log" plugin's
                continue
            if name.startswith(prefix) and len(name) > len(prefix):
                key = name[len(prefix) :].lower()
                self._values[key] = value
                self._sources[key] = name

    def __getitem__(self, key: str) -> Any:
        self._read.add(key)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self._values.get(key, default)

    def unknown(self) -> list[str]:
        """Where settings were given that the plugin never read (likely typos)."""
        return [self._sources[key] for key in self._values if key not in self._read]

    def hint(self, source: str) -> str:
        """For one of ``unknown()``: ``"; did you mean ..."`` naming the closest setting the
        plugin reads (or core variable), or ``""``."""
        if source.startswith("["):
            return did_you_mean(source.partition("] ")[2], self._read)
        prefix = f"KIBITZ_{self.plugin.upper()}_"
        return did_you_mean(source, {prefix + key.upper() for key in self._read} | CORE_VARIABLES)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def source(self, key: str) -> str:
        return self._sources.get(key, f"{self.heading} {key}")

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        return _integer(self.source(key), self.get(key, default), minimum, maximum)

    def duration(self, key: str, default: float | str) -> float:
        return parse_duration(self.source(key), self.get(key, default))

    def size(self, key: str, default: int | str) -> int:
        return parse_size(self.source(key), self.get(key, default))

    def parse(self, schema: type[S]) -> S:
        """These settings as an instance of ``schema``, the ``msgspec.Struct`` the plugin
        declares (see ``kibitz.plugin_settings``); ``ConfigError`` names a bad value."""
        from .plugin_settings import parse

        return parse(self, schema)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("kibitz-data")
    public_url: str = ""
    database_url: str = ""
    registration: str = "open"
    transport: str = "nats"
    storage: str = "redis"
    ids: str = "snowflake"
    notify: tuple[str, ...] = ("webpush",)
    plugins: tuple[str, ...] = ()
    rate_limits: bool = True
    rate_limit_url: str = ""  # a Redis the instances share their rate limits in; "": each its own
    push_allow_insecure: bool = False
    push_preview: bool = True
    max_connections_per_address: int = 500
    disk_reserve: int = 512 * 1024**2  # below this much free space, new messages are refused
    history_retention: float = 0.0  # seconds a message is kept; 0: forever
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_message_chars: int = 4000
    max_frame_bytes: int = 65536
    ping_interval: float = 30.0
    plugin_timeout: float = 5.0  # seconds an extension hook may take before it is skipped
    pre_send_failure: str = "open"  # a wrap_send that fails: "open" lets the message pass
    log_level: str = "INFO"
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headings: Mapping[str, str] = field(default_factory=dict)  # plugin -> "[plugins.x]" or "[x]"
    environ: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # settings that were given but mean nothing (likely typos)

    def plugin(self, name: str) -> PluginSettings:
        """The settings of plugin ``name``."""
        return PluginSettings(name, self.tables.get(name, {}), self.environ, self.headings.get(name, ""))

    @property
    def url(self) -> str:
        """The URL clients use for this instance."""
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'kibitz.sqlite3').resolve()}"


_NOT_SETTINGS = {"tables", "headings", "environ", "warnings"}
CORE_VARIABLES = {
    f"KIBITZ_{key.upper()}" for key in Settings.__dataclass_fields__ if key not in _NOT_SETTINGS
} | {"KIBITZ_CONFIG"}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean KIBITZ_PORT?"`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def load_settings(config: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``config`` or ``KIBITZ_CONFIG``, optional) and the environment."""
    env = dict(os.environ if environ is None else environ)
    path = config or env.get("KIBITZ_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    plugin_names = {ep.name for ep in entry_points(group="kibitz")}
    top, tables, headings = _split_file(path, data, plugin_names)

    def get(key: str, default: Any) -> tuple[str, Any]:
        name = f"KIBITZ_{key.upper()}"
        if name in env:
            return name, env[name]
        return f"{path}: {key}", top.get(key, default)

    d = Settings()
    values: dict[str, Any] = {}
    for key in ("host", "public_url", "database_url", "transport", "storage", "ids"):
        values[key] = str(get(key, getattr(d, key))[1]).strip()
    source, level = get("log_level", d.log_level)
    if str(level).upper() not in LOG_LEVELS:
        raise ConfigError(f"{source}={level!r}: must be one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = str(level).upper()
    values["database_url"] = _database_url(*get("database_url", d.database_url))
    values["port"] = _integer(*get("port", d.port), 0, 65535)
    values["data_dir"] = Path(str(get("data_dir", d.data_dir)[1]))
    values["max_message_chars"] = _integer(*get("max_message_chars", d.max_message_chars), 1)
    values["max_frame_bytes"] = _integer(*get("max_frame_bytes", d.max_frame_bytes), 1024)
    source, interval = get("ping_interval", d.ping_interval)
    values["ping_interval"] = parse_duration(source, interval)
    if values["ping_interval"] < 1:
        raise ConfigError(f"{source}={interval!r}: must be at least 1s")
    for key in ("notify", "plugins"):
        values[key] = _names(get(key, getattr(d, key))[1])
    source, registration = get("registration", d.registration)
    if registration not in REGISTRATION_MODES:
        raise ConfigError(f"{source}={registration!r}: must be one of {', '.join(REGISTRATION_MODES)}")
    values["registration"] = registration
    source, failure = get("pre_send_failure", d.pre_send_failure)
    if failure not in PRE_SEND_FAILURES:
        raise ConfigError(f"{source}={failure!r}: must be one of {', '.join(PRE_SEND_FAILURES)}")
    values["pre_send_failure"] = failure
    source, timeout = get("plugin_timeout", d.plugin_timeout)
    values["plugin_timeout"] = parse_duration(source, timeout)
    if values["plugin_timeout"] <= 0:
        raise ConfigError(f"{source}={timeout!r}: must be above 0")
    values["rate_limits"] = parse_switch(*get("rate_limits", "on"))
    values["rate_limit_url"] = _redis_url(*get("rate_limit_url", ""))
    values["push_allow_insecure"] = parse_switch(*get("push_allow_insecure", "off"))
    values["push_preview"] = parse_switch(*get("push_preview", "on"))
    values["max_connections_per_address"] = _integer(
        *get("max_connections_per_address", d.max_connections_per_address), 1
    )
    values["trusted_proxies"] = _networks(*get("trusted_proxies", ""))
    values["disk_reserve"] = parse_size(*get("disk_reserve", "512MB"))
    history = get("history_retention", "forever")
    values["history_retention"] = 0.0 if str(history[1]).strip() == "forever" else parse_duration(*history)
    if values["public_url"] and not values["public_url"].startswith(("http://", "https://")):
        raise ConfigError(f"KIBITZ_PUBLIC_URL={values['public_url']!r}: must start with http:// or https://")
    values["public_url"] = values["public_url"].rstrip("/")
    active = {values["transport"], values["storage"], values["ids"], *values["notify"], *values["plugins"]}
    return Settings(
        **values,
        tables=tables,
        headings=headings,
        environ=env,
        warnings=_unknown_variables(env, plugin_names, active),
    )


def _split_file(
    path: str | None, data: dict[str, Any], plugin_names: set[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """The file's core keys, its plugin tables by plugin, and each table's heading.

    ``[plugins.NAME]`` and ``[NAME]`` are the same table (giving both is an error); under
    ``[plugins]`` itself, ``enabled`` is the list of extensions, the core's ``plugins``.
    """
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    found = [(f"[{k}]", k, v) for k, v in data.items() if isinstance(v, dict) and k != "plugins"]
    section = data.get("plugins")
    if isinstance(section, dict):
        for key, value in section.items():
            if isinstance(value, dict):
                found.append((f"[plugins.{key}]", key, value))
            elif key == "enabled":
                top["plugins"] = value
            else:
                raise ConfigError(
                    f"config file {path}: [plugins] {key}: only enabled = [...] and [plugins.NAME] tables"
                )
    known = set(Settings.__dataclass_fields__) - _NOT_SETTINGS
    for key in top:
        if key not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r}{did_you_mean(key, known)}")
    tables: dict[str, dict[str, Any]] = {}
    headings: dict[str, str] = {}
    for heading, name, table in found:
        if name not in plugin_names:
            hint = did_you_mean(name, plugin_names)
            raise ConfigError(f"config file {path}: {heading} is no installed plugin's table{hint}")
        if name in tables:
            raise ConfigError(
                f"config file {path}: {heading} and {headings[name]} are the same table; keep one"
            )
        tables[name], headings[name] = table, heading
    return top, tables, headings


def _unknown_variables(env: Mapping[str, str], plugins: set[str], active: set[str]) -> tuple[str, ...]:
    """Warnings for the ``KIBITZ_*`` variables that set nothing.

    An active plugin's variables are its own to check. Those of a plugin not in use are
    kept quiet, unless they look like a typo of a core variable (``KIBITZ_LOG_LEVL``).
    """
    warnings = []
    for name in sorted(env):
        if not name.startswith("KIBITZ_") or name in CORE_VARIABLES:
            continue
        owner = next((p for p in plugins if name.startswith(f"KIBITZ_{p.upper()}_")), None)
        hint = did_you_mean(name, CORE_VARIABLES)
        if owner is None:
            warnings.append(f"{name}: not a Kibitz setting, ignored{hint}")
        elif owner not in active and hint:
            warnings.append(f"{name}: not a Kibitz setting, and the {owner} plugin is not in use{hint}")
    return tuple(warnings)


def _database_url(source: str, value: Any) -> str:
    """An SQLAlchemy URL with an async driver (``postgresql://`` becomes ``postgresql+asyncpg://``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = str(value).strip()
    if not text:
        return ""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(f"{source}: not a database URL like postgresql+asyncpg://user@host/db") from None
    if url.drivername in ASYNC_DRIVERS:
        url = url.set(drivername=ASYNC_DRIVERS[url.drivername])
    if url.drivername not in ASYNC_DRIVERS.values():
        raise ConfigError(f"{source}: the database must be sqlite+aiosqlite:// or postgresql+asyncpg://")
    return url.render_as_string(hide_password=False)


def _redis_url(source: str, value: Any) -> str:
    text = str(value).strip()
    if text and not text.startswith(
        ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    ):
        raise ConfigError(
            f"{source}: not a Redis URL like redis://host:6379/0 (or rediss://, unix://), "
            "nor redis+cluster://host:port,... for a Redis Cluster"
        )
    return text


def _names(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(n.strip() for n in items if str(n).strip())


def parse_switch(source: str, value: Any) -> bool:
    """``on``/``off`` (or ``true``/``false``, ``1``/``0``, a TOML boolean) as a bool."""
    text = str(value).lower()
    if text not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"{source}={value!r}: must be on or off")
    return text in ("on", "true", "1")


def _networks(source: str, value: Any) -> tuple[IPNetwork, ...]:
    """Addresses and networks (``10.0.0.5``, ``10.0.0.0/8``, ``fd00::/8``), comma-separated or a list."""
    try:
        return tuple(ipaddress.ip_network(name, strict=False) for name in _names(value))
    except ValueError as e:
        raise ConfigError(f"{source}={value!r}: {e}") from None


def _integer(source: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{source}={value!r}: not an integer")  # TOML's true or 300.5
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={value!r}: not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{source}={value!r}: must be {bound}")
    return number


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_duration(source: str, value: Any) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"30d"`` as seconds."""
    text = str(value).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ConfigError(f"{source}={value!r}: not a duration like 90s, 15m, 12h or 30d") from None
    if seconds < 0:
        raise ConfigError(f"{source}={value!r}: must not be negative")
    return seconds


def parse_size(source: str, value: Any) -> int:
    """``1048576``, ``"512MB"`` or ``"10GB"`` as bytes."""
    text = str(value).strip().lower()
    digits = text.rstrip("kmgb")
    unit = _SIZE_UNITS.get(text[len(digits) :] or "b")
    try:
        number = float(digits)
    except ValueError:
        number = -1
    if unit is None or number < 0:
        raise ConfigError(f"{source}={value!r}: not a size like 1048576, 512MB or 10GB")
    return int(number * unit)
