"""Testing Kibitz plugins for real: contract tests per slot and a server to test against.

- ``TransportContract``, ``StorageContract``, ``IdsContract`` and ``NotifierContract``:
  test classes any slot plugin, built-in or third-party, runs against itself (subclass
  them; each module says how).
- ``slot_app`` and ``started_slot``: one slot of a plugin, found by its entry point and
  started on a real, small ``App``.
- ``wait_until``: wait on a condition, never on a fixed sleep.
"""

from .ids import IdsContract
from .notifier import NotifierContract
from .slot_app import SlotApp, slot_app, started_slot
from .storage import StorageContract
from .transport import Feed, TransportContract, users
from .waiting import wait_until

__all__ = [
    "Feed",
    "IdsContract",
    "NotifierContract",
    "SlotApp",
    "StorageContract",
    "TransportContract",
    "slot_app",
    "started_slot",
    "users",
    "wait_until",
]
