"""The scenarios, in the order a run takes them (``--only`` picks among these names).

Each module has ``run_scenario(ctx) -> dict``: its figures, for results.json. Those in
``STANDALONE`` need no server under test (none is started for them alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import Context
from . import (
    catch_up,
    group_fanout,
    history,
    idle_connections,
    long_poll,
    one_to_one,
    sql_history,
    startup,
    two_instances,
)

Scenario = Callable[[Context], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "one_to_one": one_to_one.run_scenario,
    "group_fanout": group_fanout.run_scenario,
    "long_poll": long_poll.run_scenario,
    "catch_up": catch_up.run_scenario,
    "idle_connections": idle_connections.run_scenario,
    "history": history.run_scenario,
    "two_instances": two_instances.run_scenario,  # a deployment of its own: no server
    "sql_history": sql_history.run_scenario,  # the storage alone, in databases of its own: no server
    "startup": startup.run_scenario,  # last: it restarts the server on the folder the others filled
}

STANDALONE = {"two_instances", "sql_history"}
