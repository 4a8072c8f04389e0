"""A plugin's settings checked against the schema it declares: a ``msgspec.Struct``.

::

    class Settings(msgspec.Struct):
        words: list[str] = []
        action: Literal["reject", "mask"] = "reject"
        cool_down: Duration = Duration(30)
        max_chars: Annotated[int, msgspec.Meta(ge=1, le=3500)] = 280  # a range

    settings = plugin_settings.parse(Settings)  # in register_* or a hook

Values come from the plugin's TOML table and its ``KIBITZ_<PLUGIN>_<KEY>`` variables.
A variable's text is read as the field's type: a list is comma-separated, a bool is
on/off (true/false, 1/0), a ``Duration`` is ``90s``, ``15m``, ``12h`` or ``30d`` and a
``Size`` ``512MB``. A bad value raises ``ConfigError`` naming the plugin's key and where
it came from, so start-up stops with that one line; a key the schema lacks is reported
as a likely typo once the plugin is registered.
"""

from __future__ import annotations

import re
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .errors import ConfigError
from .settings import parse_duration, parse_size, parse_switch

if TYPE_CHECKING:
    from .settings import PluginSettings

S = TypeVar("S", bound=msgspec.Struct)
_MISSING = object()


class Duration(float):
    """Seconds, written as ``90``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"30d"``."""


class Size(int):
    """Bytes, written as ``1048576``, ``"512MB"`` or ``"10GB"``."""


def parse(settings: PluginSettings, schema: type[S]) -> S:
    """``settings`` as an instance of ``schema``, or ``ConfigError`` naming the bad key."""
    fields = {field.name: field.type for field in msgspec.structs.fields(schema)}
    values = {}
    for key, kind in fields.items():
        value = settings.get(key, _MISSING)  # read, so a key the schema lacks counts as a typo
        if value is not _MISSING:
            values[key] = _from_text(kind, value) if settings.source(key).startswith("KIBITZ_") else value
    try:
        return msgspec.convert(values, schema, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as e:
        found = re.search(r" - at `\$\.(\w+)[^`]*`", str(e))  # `$.key` or `$.key[0]`
        if found is None:
            raise ConfigError(f"{settings.heading}: {e}") from None
        key = found.group(1)
        problem = re.sub(r"^Expected `(\w+)`, got `\w+`$", r"not a valid \1", str(e)[: found.start()])
        raise ConfigError(f"{settings.source(key)}={settings.get(key)!r}: {problem}") from None


def _from_text(kind: Any, value: Any) -> Any:
    """An environment variable's text as what ``kind`` expects (msgspec converts the rest)."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(kind)
    if origin in (list, tuple, set, frozenset):
        return [item.strip() for item in value.split(",") if item.strip()]
    if kind is bool:
        try:
            return parse_switch("", value)
        except ConfigError:
            return value  # msgspec says what is wrong with it
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind) and not value:
        return None
    return value


def _decode(kind: type, value: Any) -> Any:
    try:
        if kind is Duration:
            return Duration(parse_duration("", value))
        if kind is Size:
            return Size(parse_size("", value))
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("=").split(": ", 1)[-1]) from None
    raise NotImplementedError(f"no settings type {kind}")
