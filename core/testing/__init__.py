"""Testing Kibitz plugins for real: contract tests per slot and a server to test against.

- ``StorageContract`` and ``TransportContract``: test classes any storage or transport
  plugin, built-in or third-party, runs against itself (subclass them; see each module).
- ``slot_app`` and ``started_slot``: one slot of a plugin, found by its entry point and
  started on a real, small ``App``.
- ``wait_until``: wait on a condition, never on a fixed sleep.
"""

from .slot_app import SlotApp, slot_app, started_slot
from .storage import StorageContract
from .transport import Feed, TransportContract, users
from .waiting import wait_until

__all__ = [
    "Feed",
    "SlotApp",
    "StorageContract",
    "TransportContract",
    "slot_app",
    "started_slot",
    "users",
    "wait_until",
]
