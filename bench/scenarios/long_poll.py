"""Scenario 6, long poll.

Many long-poll ``GET /sync?timeout=30`` requests held at once (several per user; a
device may poll from many connections), spread over a few client processes, each poll
on its own keep-alive connection. When the
server reports them all held (``kibitz_connections{kind="longpoll"}`` at ``/metrics``),
one message goes to a group of all those users, and every poll answers with it: wake-up
latency is from just before that send to each answer's arrival. Several rounds.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from typing import Any

import orjson

from .. import api, profiler, rawhttp
from ..clients import sent_at, stamped_body
from ..context import Context, run, split
from ..stats import latency_ms
from ..workers import Pool
from .group_fanout import create_group

POLL_TIMEOUT = 30
CONNECTS_AT_ONCE = 20  # per client process
HELD_DEADLINE = 60.0


class PollAgent:
    """Worker side: some of the polls, each a token, the cursor it resumes from, and its own
    keep-alive connection (see bench/rawhttp.py for why not httpx)."""

    def __init__(self, port: int, polls: list[dict[str, str]]) -> None:
        self.polls = polls
        self.connections = [rawhttp.Connection("127.0.0.1", port) for _ in polls]
        self.tasks: list[asyncio.Task[tuple[float, bytes]]] = []

    async def _poll(self, poll: dict[str, str], connection: rawhttp.Connection) -> tuple[float, bytes]:
        params = {"since": poll["cursor"], "timeout": POLL_TIMEOUT, "limit": 1000}
        status, body = await connection.get("/api/v1/sync", poll["token"], params)
        now = time.monotonic()
        if status != 200:
            raise RuntimeError(f"/sync answered {status}: {body[:200]!r}")
        return now, body

    async def arm(self) -> None:
        """Send every poll. Connections open a few at a time (the first round, or where the
        server closed one): thousands of SYNs at once overflow the server's listen backlog,
        and the retried ones arrive seconds later. They are not opened ahead: the server
        closes a connection that sends nothing for 10 s."""
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def start(poll: dict[str, str], connection: rawhttp.Connection) -> tuple[float, bytes]:
            async with gate:
                await connection.connect()
            return await self._poll(poll, connection)

        self.tasks = [
            asyncio.create_task(start(p, c)) for p, c in zip(self.polls, self.connections, strict=True)
        ]

    async def collect(self, tag: str, wait: float) -> dict[str, Any]:
        done, pending = await asyncio.wait(self.tasks, timeout=wait)
        for task in pending:
            task.cancel()
        latencies = array("d")
        empty = failed = 0
        for poll, task in zip(self.polls, self.tasks, strict=True):
            if task not in done or task.exception() is not None:
                failed += 1
                continue
            now, content = task.result()
            body = orjson.loads(content)
            poll["cursor"] = body["cursor"]
            stamps = [
                sent_at(e["message"]["body"])
                for e in body["events"]
                if e.get("type") == "message" and e["message"]["client_msg_id"].startswith(tag)
            ]
            if stamps:
                latencies.append(now - stamps[0])
            else:
                empty += 1
        self.tasks = []
        return {"latencies": latencies, "empty": empty, "failed": failed + len(pending)}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)


async def _cursors(ctx: Context, users: list[api.Device]) -> list[str]:
    async with api.client(ctx.server.api, connections=20) as http:
        gate = asyncio.Semaphore(20)

        async def one(u: api.Device) -> str:
            async with gate:
                return str((await api.sync(http, u))["cursor"])

        return list(await asyncio.gather(*(one(u) for u in users)))


async def _held(ctx: Context, wanted: int, deadline: float) -> float:
    """Wait until the server holds ``wanted`` long polls (or the deadline); return how many it holds."""
    async with api.client(ctx.server.api, connections=1) as http:
        held = 0.0
        while time.monotonic() < deadline:
            held = await api.metric(http, ctx.server.url, "kibitz_connections", 'kind="longpoll"')
            if held >= wanted:
                return held
            await asyncio.sleep(0.05)
        return held


async def _send(ctx: Context, sender: api.Device, cid: str, tag: str) -> None:
    async with api.client(ctx.server.api, connections=1) as http:
        await api.send(http, sender, cid, stamped_body(time.monotonic()), f"{tag}-wake")


def run_scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    if "largest_group" in ctx.shared:
        cid, users = ctx.shared["largest_group"]
    else:
        users = ctx.users[: max(sizes.groups)]
        cid = run(create_group(ctx, users, "long poll"), 120)
    total = sizes.longpolls
    cursors = run(_cursors(ctx, users), 120)
    polls = [{"token": users[i % len(users)].token, "cursor": cursors[i % len(users)]} for i in range(total)]
    workers = min(sizes.longpoll_workers, total)
    configs = [{"port": ctx.server.port, "polls": part} for part in split(polls, workers)]
    latencies = array("d")
    rounds: list[dict[str, Any]] = []
    profiled: dict[str, Any] = {}
    with Pool("bench.scenarios.long_poll:PollAgent", configs) as pool:
        for number in range(sizes.longpoll_rounds):
            tag = f"lp{number}"
            began = time.monotonic()
            pool.call("arm", timeout=30)
            held = run(_held(ctx, total, time.monotonic() + HELD_DEADLINE), HELD_DEADLINE + 10)
            held_after = time.monotonic() - began
            last = number == sizes.longpoll_rounds - 1
            with profiler.record(
                ctx.server.pid, ctx.out, "long_poll", 2, ctx.profile if last else None, profiled
            ):
                run(_send(ctx, users[0], cid, tag), 30)
                parts = pool.call("collect", timeout=POLL_TIMEOUT + 30, tag=tag, wait=POLL_TIMEOUT)
            woke = array("d")
            for p in parts:
                woke.extend(p["latencies"])
            latencies.extend(woke)
            summary = latency_ms(woke)
            rounds.append(
                {
                    "held": int(held),
                    "held_after_s": round(held_after, 3),
                    "woken": len(woke),
                    "empty": sum(p["empty"] for p in parts),
                    "failed": sum(p["failed"] for p in parts),
                    "wake": summary,
                }
            )
            print(
                f"  round {number}: {int(held)} held after {held_after:.2f} s, {len(woke)} woke,"
                f" p50/p99/max {summary['p50_ms']}/{summary['p99_ms']}/{summary['max_ms']} ms",
                flush=True,
            )
    return {
        "polls": total,
        "users": len(users),
        "polls_per_user": math.ceil(total / len(users)),
        "workers": workers,
        "rounds": rounds,
        "wake": latency_ms(latencies),
        **profiled,
    }
