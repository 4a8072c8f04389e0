"""The ``sql`` plugin: a transport and a storage in the relational database Kibitz already has.

``KIBITZ_TRANSPORT=sql KIBITZ_STORAGE=sql`` with ``KIBITZ_DATABASE_URL`` naming a
PostgreSQL database is a deployment of PostgreSQL alone, for people who already run it:
several instances share it, woken by ``LISTEN/NOTIFY``. On the default SQLite it serves
one instance with no service besides Kibitz. Either may be used with the other slot's
default (``sql`` history beside the ``nats`` transport, say).

Settings (``[sql]`` table or ``KIBITZ_SQL_*``): ``retention_age``, how long the event
logs keep an event (default ``30d``; ``0`` keeps everything), as ``[nats] retention_age``.

The transport is ``kibitz.plugins.sql.transport``, the storage ``kibitz.plugins.sql.storage``
and their tables ``kibitz.plugins.sql.tables``.
"""

from __future__ import annotations

from kibitz import PluginSettings, hookimpl

from .storage import SqlStorage
from .transport import SqlTransport


@hookimpl
def register_transport(name: str, settings: PluginSettings) -> SqlTransport | None:
    return SqlTransport(settings) if name == "sql" else None


@hookimpl
def register_storage(name: str, settings: PluginSettings) -> SqlStorage | None:
    return SqlStorage() if name == "sql" else None
