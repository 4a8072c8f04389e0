"""Smoke test of the benchmark suite: ``python -m bench --quick`` runs every scenario and
writes figures for each (no timing is asserted: the figures depend on the machine).

``sql_history`` measures PostgreSQL only where ``KIBITZ_TEST_DATABASE_URL`` names a server
(in a fresh database of its own, dropped after), and SQLite always."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [
    "one_to_one",
    "group_fanout",
    "long_poll",
    "catch_up",
    "idle_connections",
    "history",
    "two_instances",
    "sql_history",
    "startup",
]

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.mark.timeout(300)
def test_quick_run_measures_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    postgres = os.environ.get("KIBITZ_TEST_DATABASE_URL", "")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env=os.environ | {"KIBITZ_BENCH_DATABASE_URL": postgres},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())

    floor = results["floor"]
    assert floor["jetstream"]["atomic_batch_100_per_s"] > 0
    assert floor["redis"]["zadd_pipelined_1000_per_s"] > 0

    scenarios = results["scenarios"]
    assert sorted(scenarios) == sorted(SCENARIOS)
    for name, figures in scenarios.items():
        assert "error" not in figures, f"{name}: {figures['error']}"

    one = scenarios["one_to_one"]
    assert one["steps"] and one["sustained"]["accepted"] > 0 and one["sustained"]["delivered"] > 0
    for step in one["steps"]:
        assert step["send_to_sent"]["p99_ms"] is not None
    two = scenarios["two_instances"]
    for placement in ("one", "across"):  # messages crossed from one instance to the other
        assert two["steps"][placement] and all(step["delivered"] > 0 for step in two["steps"][placement])
    assert two["at_1000_per_s"]["across_over_one"] is not None
    groups = scenarios["group_fanout"]["groups"]
    assert len(groups) >= 2 and all(g["deliveries"] > 0 for g in groups)
    idle = scenarios["idle_connections"]
    assert idle["connections"] == idle["server_counted"] > 0
    assert idle["bytes_per_connection"] is not None and idle["idle_cpu_percent_of_one_core"] is not None
    for size in ("small", "large"):
        for kind in ("latest", "before", "after"):
            assert scenarios["history"][size][kind]["p99_ms"] is not None
    sql = scenarios["sql_history"]
    databases = ["sqlite", "postgresql"] if postgres else ["sqlite"]
    for database in databases:
        assert sql[database]["messages"] == results["sizes"]["sql_messages"]
        for kind in ("latest", "before", "after", "unread_far", "latest_100", "find_sent"):
            assert sql[database][kind]["p99_ms"] is not None
    if postgres:
        assert sql["postgresql"]["page_index"] == "ix_sql_messages_conversation_id"
    else:
        assert "skipped" in sql["postgresql"]
    catch = scenarios["catch_up"]
    assert all(r["events"] >= catch["events"] for r in catch["sync_then_ws"])
    assert all(r["events"] >= catch["events"] for r in catch["ws_replay"])
    poll = scenarios["long_poll"]
    assert poll["rounds"] and poll["wake"]["count"] > 0
    assert scenarios["startup"]["cold_start_s"] and scenarios["startup"]["restart_full_s"] > 0

    budget = results["budget"]
    assert len(budget) >= 10 and all("passed" in row for row in budget)
    if importlib.util.find_spec("matplotlib") is not None:  # the chart needs the `bench` extra
        assert (out / "chart.png").stat().st_size > 10_000
