"""How big each scenario runs: the default sizes (under 10 minutes on a 2-core machine) and
``--quick`` ones (under a minute, every scenario still measured, on smaller counts)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sizes:
    quick: bool = False
    # floor
    floor_seconds: float = 4.0
    # 1:1 throughput and latency
    pairs: int = 100
    pair_workers: int = 2
    ladder: tuple[int, ...] = (250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000)
    step_seconds: float = 8.0
    warmup_seconds: float = 1.0
    sustained_seconds: float = 60.0
    window: int = 8  # unacknowledged sends per socket
    # 1:1 across two instances (the same pairs, step length and window as 1:1)
    two_instance_ladder: tuple[int, ...] = (500, 1000, 2000, 3000, 4000)
    # group fan-out
    groups: tuple[int, ...] = (10, 100, 500)
    group_workers: int = 2
    group_seconds: float = 8.0
    group_senders: int = 8
    group_window: int = 4
    # idle connections
    idle_connections: int = 10_000
    idle_workers: int = 4
    idle_tokens: int = 100
    idle_seconds: float = 30.0  # one full server ping interval (ping_interval, 30 s)
    # history
    history_small: int = 1000
    history_large: int = 1_000_000
    history_requests: int = 1000
    # the sql storage, called directly (PostgreSQL and SQLite)
    sql_messages: int = 1_000_000
    sql_calls: int = 300
    sql_far_calls: int = 50  # unread_counts with the marker at the oldest: it counts every row after it
    # catch-up
    catchup_events: int = 10_000
    catchup_senders: int = 20
    catchup_repeats: int = 3
    # long poll
    longpolls: int = 2000
    longpoll_workers: int = 4
    longpoll_rounds: int = 5
    # start-up
    cold_starts: int = 3  # the harness's own first start included

    @property
    def users(self) -> int:
        """Users (each with one device) to sign up: the most any scenario needs at once."""
        return max(2 * self.pairs, max(self.groups), self.catchup_senders + 1, self.idle_tokens, 2)


DEFAULT = Sizes()

QUICK = replace(
    DEFAULT,
    quick=True,
    floor_seconds=0.7,
    pairs=10,
    ladder=(200, 500, 1000),
    two_instance_ladder=(1000,),
    step_seconds=2.0,
    warmup_seconds=0.5,
    sustained_seconds=3.0,
    groups=(10, 20),
    group_seconds=1.5,
    group_senders=2,
    idle_connections=500,
    idle_workers=2,
    idle_tokens=20,
    idle_seconds=2.0,
    history_small=300,
    history_large=20_000,
    history_requests=40,
    sql_messages=20_000,
    sql_calls=40,
    sql_far_calls=10,
    catchup_events=1000,
    catchup_senders=5,
    catchup_repeats=1,
    longpolls=200,
    longpoll_workers=2,
    longpoll_rounds=2,
    cold_starts=1,
)
