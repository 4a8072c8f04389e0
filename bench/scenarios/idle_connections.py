"""Scenario 3, idle connections.

Many WebSockets opened and left idle after ``ready`` (a device token may have many
sockets, so a few users' tokens serve them all), spread over a few client processes.
Memory: the resident set of Kibitz and its children (NATS, Redis) from /proc, after the
sockets are open minus before, per socket. CPU: the utime+stime the same tree uses over
an idle window (the server pings every socket every 30 s, so the default window is one
ping interval), as a share of one core.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from .. import api, profiler
from ..clients import Socket, close_all, open_many
from ..context import Context, run, split
from ..workers import Pool

HANDSHAKES_PER_WORKER = 25
SETTLE_SECONDS = 2.0


class IdleAgent:
    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url = url
        self.tokens = tokens
        self.sockets: list[Socket] = []

    async def connect(self) -> dict[str, Any]:
        began = time.perf_counter()
        self.sockets = await open_many(self.url, self.tokens, None, HANDSHAKES_PER_WORKER)
        return {"opened": len(self.sockets), "seconds": time.perf_counter() - began}

    async def still_open(self) -> int:
        return sum(1 for s in self.sockets if s.ws.close_code is None)

    async def close(self) -> None:
        await close_all(self.sockets)


async def _open_count(ctx: Context, wanted: int, deadline: float) -> float:
    async with api.client(ctx.server.api, connections=1) as http:
        count = 0.0
        while time.monotonic() < deadline:
            count = await api.metric(http, ctx.server.url, "kibitz_connections", 'kind="websocket"')
            if count >= wanted:
                break
            await asyncio.sleep(0.1)
        return count


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def run_scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    total = sizes.idle_connections
    tokens = [u.token for u in ctx.users[: sizes.idle_tokens]]
    all_tokens = list(itertools.islice(itertools.cycle(tokens), total))
    workers = min(sizes.idle_workers, total)
    configs = [{"url": ctx.server.ws_url, "tokens": part} for part in split(all_tokens, workers)]
    server = ctx.server
    with Pool("bench.scenarios.idle_connections:IdleAgent", configs) as pool:
        time.sleep(SETTLE_SECONDS)
        before = server.usage()
        began = time.perf_counter()
        opened = pool.call("connect", timeout=600)
        connect_s = time.perf_counter() - began
        count = run(_open_count(ctx, total, time.monotonic() + 30), 60)
        time.sleep(SETTLE_SECONDS)
        after = server.usage()
        profiled: dict[str, Any] = {}
        with profiler.record(server.pid, ctx.out, "idle", sizes.idle_seconds, ctx.profile, profiled):
            window_start, clock_start = server.usage(), time.monotonic()
            time.sleep(sizes.idle_seconds)
            window_end, clock_end = server.usage(), time.monotonic()
        still = sum(pool.call("still_open", timeout=60))
    sockets = sum(o["opened"] for o in opened)
    cpu_share = (window_end.cpu_seconds - window_start.cpu_seconds) / (clock_end - clock_start)
    by_process = window_end.cores_since(window_start, clock_end - clock_start)
    per_socket = (after.rss_bytes - before.rss_bytes) / max(1, sockets)
    by_part = {
        name: round((after.by_name.get(name, 0) - before.by_name.get(name, 0)) / max(1, sockets))
        for name in after.by_name
    }
    print(
        f"  {sockets} sockets opened in {connect_s:.1f} s ({sockets / connect_s:.0f}/s);"
        f" {_mb(before.rss_bytes)} → {_mb(after.rss_bytes)} MB: {per_socket / 1024:.1f} KB per socket;"
        f" idle CPU {100 * cpu_share:.2f} % of one core over {clock_end - clock_start:.0f} s",
        flush=True,
    )
    return {
        "connections": sockets,
        "server_counted": int(count),
        "still_open_after_idle": still,
        "tokens": len(tokens),
        "workers": workers,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(sockets / connect_s, 1),
        "rss_before_mb": _mb(before.rss_bytes),
        "rss_after_mb": _mb(after.rss_bytes),
        "bytes_per_connection": round(per_socket),
        "bytes_per_connection_by_process": by_part,
        "idle_seconds": round(clock_end - clock_start, 2),
        "idle_cpu_percent_of_one_core": round(100 * cpu_share, 3),
        "idle_cpu_percent_by_process": {k: round(100 * v, 3) for k, v in by_process.items()},
        **profiled,
    }
