"""The performance budget of issue 4: each target beside the run's figure, pass or miss.

A miss never fails the run; a figure the run did not measure (a scenario left out, or a
size the quick mode does not reach) is shown as not measured. Also: Kibitz's
throughput as a share of the floor measured in the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RECORD_PER_MESSAGE = 1  # the history record every accepted message adds to the log


@dataclass(frozen=True)
class Row:
    figure: str
    target: str
    limit: float
    at_least: bool  # True: the figure must be at least ``limit``; False: at most
    value: float | None
    unit: str
    detail: str = ""

    @property
    def passed(self) -> bool | None:
        """None when not measured."""
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def headroom(self) -> float | None:
        """How far inside the target (≥ 1 means met): value/limit, or limit/value for upper bounds."""
        if self.value is None:
            return None
        if self.at_least:
            return self.value / self.limit
        return self.limit / max(self.value, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _num(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) else None


def evaluate(results: dict[str, Any]) -> list[Row]:
    s = results.get("scenarios", {})
    rows: list[Row] = []

    sustained = _get(s, "one_to_one", "sustained") or {}
    seconds = sustained.get("seconds")
    label = f"sustained {seconds:.0f} s" if seconds else "sustained"
    offered = sustained.get("offered_per_s")
    detail = f"offered {offered:,.0f}/s" if offered else ""
    for what in ("accepted", "delivered"):
        rows.append(
            Row(
                f"1:1 {what}, {label}",
                "≥ 3,000 /s",
                3000,
                True,
                _num(sustained.get(f"{what}_per_s")),
                "msg/s",
                detail,
            )
        )
    rows.append(
        Row(
            "1:1 send→delivery p99 at 1,000 msg/s",
            "≤ 50 ms",
            50,
            False,
            _num(_get(s, "one_to_one", "at_1000_per_s", "send_to_delivery", "p99_ms")),
            "ms",
        )
    )

    across = _get(s, "two_instances", "at_1000_per_s") or {}
    p99s = across.get("p99_ms") or [None, None]
    rows.append(
        Row(
            "  … across two instances, against one",
            "≤ 2 times",
            2,
            False,
            _num(across.get("across_over_one")),
            "times",
            f"p99 {p99s[1]} ms across, {p99s[0]} ms on one" if across else "",
        )
    )

    groups = _get(s, "group_fanout", "groups") or []
    hundred = [g for g in groups if g.get("members") == 100]
    rows.append(
        Row(
            "group of 100, all connected",
            "≥ 20,000 /s",
            20000,
            True,
            _num(hundred[0]["deliveries_per_s"]) if hundred else None,
            "deliveries/s",
        )
    )

    idle = s.get("idle_connections") or {}
    n = idle.get("connections")
    per = idle.get("bytes_per_connection")
    rows.append(
        Row(
            f"memory per idle WebSocket ({n:,} open)" if n else "memory per idle WebSocket",
            "≤ 64 KB",
            64,
            False,
            _num(per / 1024) if per is not None else None,
            "KB",
        )
    )
    rows.append(
        Row(
            f"CPU with {n:,} idle WebSockets" if n else "CPU with idle WebSockets",
            "≤ 5 % of a core",
            5,
            False,
            _num(idle.get("idle_cpu_percent_of_one_core")),
            "% of a core",
        )
    )

    large = _get(s, "history", "large") or {}
    small = _get(s, "history", "small") or {}
    big_p99 = _num(_get(large, "latest", "p99_ms"))
    small_p99 = _num(_get(small, "latest", "p99_ms"))
    big_n, small_n = large.get("messages"), small.get("messages")
    rows.append(
        Row(
            f"latest history page, {big_n:,} messages" if big_n else "latest history page, large",
            "p99 ≤ 10 ms",
            10,
            False,
            big_p99,
            "ms",
        )
    )
    ratio = round(big_p99 / small_p99, 3) if big_p99 is not None and small_p99 else None
    rows.append(
        Row(
            f"  … p99 against {small_n:,} messages" if small_n else "  … against the small one",
            "≤ 2 times",
            2,
            False,
            ratio,
            "times",
            f"{small_p99} ms at {small_n:,}" if small_n else "",
        )
    )

    catch = s.get("catch_up") or {}
    events = catch.get("events")
    rows.append(
        Row(
            f"catch-up of {events:,} missed events" if events else "catch-up of missed events",
            "≤ 2 s",
            2,
            False,
            _num(catch.get("sync_then_ws_s")),
            "s",
            f"/sync drain then WebSocket; WebSocket replay alone {catch['ws_replay_s']} s"
            if "ws_replay_s" in catch
            else "",
        )
    )

    poll = s.get("long_poll") or {}
    held = poll.get("polls")
    rounds = poll.get("rounds") or []
    woke = _get(poll, "wake", "count") or 0
    expected = (held or 0) * len(rounds)
    complete = bool(expected) and woke >= 0.99 * expected
    rows.append(
        Row(
            f"long-poll wake-up, {held:,} held" if held else "long-poll wake-up",
            "p99 ≤ 100 ms",
            100,
            False,
            _num(_get(poll, "wake", "p99_ms")) if complete else None,
            "ms",
            f"{len(rounds)} rounds" if complete else f"incomplete: {woke} of {expected} polls woke",
        )
    )

    start = s.get("startup") or {}
    colds = start.get("cold_start_s") or []
    rows.append(
        Row(
            "cold start to ready",
            "≤ 3 s",
            3,
            False,
            _num(start.get("cold_start_median_s")),
            "s",
            f"median of {len(colds)}, max {max(colds)} s" if colds else "",
        )
    )
    return rows


def floor_shares(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Kibitz's log and storage throughput beside the floor's, as a share."""
    floor = results.get("floor") or {}
    # The best the log does here: atomic batches of 1,000 (Kibitz's largest).
    batch = _get(floor, "jetstream", "atomic_batch_1000_per_s") or _get(
        floor, "jetstream", "atomic_batch_100_per_s"
    )
    zadd = _get(floor, "redis", "zadd_pipelined_1000_per_s")
    s = results.get("scenarios", {})
    shares: list[dict[str, Any]] = []

    def add(what: str, messages_per_s: float | None, log_per_message: int, writes_per_message: int) -> None:
        if not isinstance(messages_per_s, int | float):
            return
        log_rate = messages_per_s * log_per_message
        writes = messages_per_s * writes_per_message
        shares.append(
            {
                "what": what,
                "messages_per_s": round(messages_per_s, 1),
                "log_messages_per_s": round(log_rate),
                "share_of_jetstream_batch_floor": round(log_rate / batch, 3) if batch else None,
                "redis_writes_per_s": round(writes),
                "share_of_redis_pipelined_floor": round(writes / zadd, 3) if zadd else None,
            }
        )

    # A 1:1 message is an event in each member's log plus the history record; storage
    # writes it three times (history, per-sender index, idempotency key).
    add("1:1 sustained", _get(s, "one_to_one", "sustained", "accepted_per_s"), 2 + RECORD_PER_MESSAGE, 3)
    add("1:1 best step", _get(s, "one_to_one", "saturation_per_s"), 2 + RECORD_PER_MESSAGE, 3)
    for g in _get(s, "group_fanout", "groups") or []:
        add(f"group of {g['members']}", g.get("messages_per_s"), g["members"] + RECORD_PER_MESSAGE, 3)
    return shares
