"""Testing Kibitz plugins for real: contract tests per slot and a server to test against.

- ``TransportContract``, ``StorageContract``, ``IdsContract`` and ``NotifierContract``:
  test classes any slot plugin, built-in or third-party, runs against itself (subclass
  them; each module says how).
- ``slot_app`` and ``started_slot``: one slot of a plugin, found by its entry point and
  started on a real, small ``App``.
- ``running_server`` and ``Client``: a real server in the test's process (the memory
  transport and storage by default) and a client that speaks the protocol to it; the
  pytest fixtures ``kibitz_server`` and ``kibitz_client`` (``kibitz.testing.pytest_plugin``,
  registered with pytest by Kibitz's ``pytest11`` entry point) give both.
- ``wait_until``: wait on a condition, never on a fixed sleep.
"""

from .client import Client, Session, Socket
from .ids import IdsContract
from .notifier import NotifierContract
from .server import InProcessServer, running_server
from .slot_app import SlotApp, slot_app, started_slot
from .storage import StorageContract
from .transport import Feed, TransportContract, users
from .waiting import wait_until

__all__ = [
    "Client",
    "Feed",
    "IdsContract",
    "InProcessServer",
    "NotifierContract",
    "Session",
    "SlotApp",
    "Socket",
    "StorageContract",
    "TransportContract",
    "running_server",
    "slot_app",
    "started_slot",
    "users",
    "wait_until",
]
