"""The default storage, ``redis``: conversation history in Redis sorted sets.

storage.py is the storage and its settings; keys.py its key layout; scripts.py its Lua
scripts; server.py the embedded redis-server and the URLs of one Redis or a cluster.
"""

from kibitz import PluginSettings, hookimpl

from .storage import RedisStorage

__all__ = ["RedisStorage", "register_storage"]


@hookimpl
def register_storage(name: str, settings: PluginSettings) -> RedisStorage | None:
    """Provide the ``redis`` storage."""
    return RedisStorage(settings) if name == "redis" else None
