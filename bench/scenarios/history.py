"""Scenario 4, history.

Two conversations: a small one (1,000 messages, sent through the API) and a large one
(1,000,000 messages, seeded straight into the embedded Redis, see bench/seed.py). For
each: the latest page, a deep ``before`` page and an ``after`` page (the deep id has 90 %
of the conversation newer than it), each requested many times in a row from one client on
one keep-alive connection: p50/p99/max, so the growth with size shows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from .. import api, rawhttp
from ..clients import stamped_body
from ..context import Context, run
from ..seed import seed, seeded_ids
from ..stats import latency_ms

PAGE = 50
DEEP = 0.1  # the deep id: this share of the conversation is older than it


async def _send_many(http: Any, members: list[api.Device], cid: str, count: int) -> list[int]:
    gate = asyncio.Semaphore(16)

    async def one(k: int) -> int:
        async with gate:
            message = await api.send(
                http, members[k % 2], cid, stamped_body(time.monotonic()), uuid.uuid4().hex
            )
            return int(message["id"])

    return sorted(await asyncio.gather(*(one(k) for k in range(count))))


async def _measure(port: int, who: api.Device, cid: str, ids: list[int], requests: int) -> dict[str, Any]:
    """Each page ``requests`` times in a row on one keep-alive connection (bench/rawhttp.py)."""
    deep = str(ids[max(int(len(ids) * DEEP), 2 * PAGE)])
    kinds: dict[str, dict[str, object]] = {"latest": {}, "before": {"before": deep}, "after": {"after": deep}}
    figures: dict[str, Any] = {}
    connection = rawhttp.Connection("127.0.0.1", port)
    path = f"/api/v1/conversations/{cid}/messages"
    try:
        for kind, params in kinds.items():
            params = {**params, "limit": PAGE}
            status, body = await connection.get(path, who.token, params)  # a warm-up, and a check
            count = len(orjson.loads(body)["messages"]) if status == 200 else 0
            if count != PAGE:
                raise RuntimeError(f"{kind} page of {cid}: {status}, {count} messages, expected {PAGE}")
            samples = []
            for _ in range(requests):
                began = time.perf_counter()
                status, _ = await connection.get(path, who.token, params)
                samples.append(time.perf_counter() - began)
                if status != 200:
                    raise RuntimeError(f"{kind} page of {cid}: {status}")
            figures[kind] = latency_ms(samples)
    finally:
        await connection.close()
    return figures


async def _scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    a, b = ctx.users[0], ctx.users[1]
    async with api.client(ctx.server.api, connections=20) as http:
        small = await api.group(http, a, [a, b], "history small")
        large = await api.group(http, a, [a, b], "history large")
        began = time.perf_counter()
        small_ids = await _send_many(http, [a, b], small, sizes.history_small)
        small_seed_s = time.perf_counter() - began
        newest = await api.send(http, a, large, stamped_body(time.monotonic()), uuid.uuid4().hex)
        ids = seeded_ids(int(newest["id"]), sizes.history_large - 1)
        port = ctx.server.redis_port()
        large_seed_s = await asyncio.to_thread(seed, port, large, [a.user_id, b.user_id], ids)
        large_ids = [*ids, int(newest["id"])]
        print(
            f"  seeded {len(small_ids)} messages through the API in {small_seed_s:.1f} s and"
            f" {len(ids)} straight into Redis in {large_seed_s:.1f} s",
            flush=True,
        )
        small_fig = await _measure(ctx.server.port, a, small, small_ids, sizes.history_requests)
        large_fig = await _measure(ctx.server.port, a, large, large_ids, sizes.history_requests)
    ctx.note(
        f"history: the {sizes.history_large:,}-message conversation was seeded directly into the embedded"
        " Redis with the storage plugin's append (not through the API); the small one through the API"
    )
    for kind in small_fig:
        print(
            f"  {kind:>6}: {sizes.history_small:>9,} msgs p50/p99"
            f" {small_fig[kind]['p50_ms']}/{small_fig[kind]['p99_ms']} ms   {sizes.history_large:>9,} msgs"
            f" p50/p99 {large_fig[kind]['p50_ms']}/{large_fig[kind]['p99_ms']} ms",
            flush=True,
        )
    return {
        "page_size": PAGE,
        "requests_per_figure": sizes.history_requests,
        "small": {"messages": len(small_ids), "seeded": "api", "seed_s": round(small_seed_s, 2), **small_fig},
        "large": {
            "messages": len(large_ids),
            "seeded": "directly into the embedded Redis (RedisStorage.append), not through the API",
            "seed_s": round(large_seed_s, 2),
            "seed_per_s": round(len(ids) / large_seed_s) if large_seed_s else None,
            **large_fig,
        },
    }


def run_scenario(ctx: Context) -> dict[str, Any]:
    return run(_scenario(ctx), 900)
