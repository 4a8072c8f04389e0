"""Scenario 5, catch-up.

A device takes a cursor and goes offline; other users send it many messages (from their
own WebSockets, each with a small window). Then the device comes back, two ways:

- ``sync_then_ws``: drain ``GET /sync?since=…&limit=1000`` until ``has_more`` is false,
  then open a WebSocket with ``since`` = the last cursor and send a ``ping``; current
  when the ``pong`` arrives (the server answers frames only after its replay).
- ``ws_replay``: open a WebSocket with ``since`` = the old cursor at once and take the
  replay; current when the ``pong`` after it arrives.

Both start from the same cursor, so each is repeated on the same backlog.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson

from .. import api, rawhttp
from ..clients import Frame, Socket, close_all, stamped_body, until
from ..context import Context, run

WINDOW = 16


async def _fill(
    ctx: Context, target: api.Device, senders: list[api.Device], cids: list[str], total: int
) -> float:
    """Send ``total`` messages to ``target`` from ``senders``; return the seconds it took."""
    per_sender = [total // len(senders) + (1 if i < total % len(senders) else 0) for i in range(len(senders))]
    windows = [asyncio.Semaphore(WINDOW) for _ in senders]
    answered = [0] * len(senders)
    failures: list[Frame] = []

    def callback(i: int) -> Any:
        def on_frame(frame: Frame, now: float) -> None:
            if frame.get("type") in ("sent", "error"):
                answered[i] += 1
                windows[i].release()
                if frame["type"] == "error":
                    failures.append(frame)

        return on_frame

    sockets = [await Socket.open(ctx.server.ws_url, s.token, callback(i)) for i, s in enumerate(senders)]

    async def send(i: int) -> None:
        for n in range(per_sender[i]):
            await windows[i].acquire()
            frame = {
                "type": "send",
                "conversation_id": cids[i],
                "body": stamped_body(time.monotonic()),
                "client_msg_id": f"cu-{i}-{n}",
            }
            await sockets[i].send(frame)
        if not await until(lambda: answered[i] >= per_sender[i], 120):
            raise RuntimeError(f"sender {i}: {per_sender[i] - answered[i]} sends unanswered after 120 s")

    began = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(len(senders))))
    took = time.perf_counter() - began
    await close_all(sockets)
    if failures:
        raise RuntimeError(f"{len(failures)} sends failed, e.g. {failures[0]}")
    return took


async def _ws_until_current(ctx: Context, device: api.Device, since: str) -> tuple[int, float]:
    """Open a WebSocket from ``since``, ping after ready; the events before the pong and the
    seconds from connecting to the pong."""
    events = 0
    pong = asyncio.Event()

    def on_frame(frame: Frame, now: float) -> None:
        nonlocal events
        if frame.get("type") == "event":
            events += 1
        elif frame.get("type") == "pong":
            pong.set()

    began = time.perf_counter()
    socket = await Socket.open(ctx.server.ws_url, device.token, on_frame, since=since)
    await socket.send({"type": "ping"})
    await asyncio.wait_for(pong.wait(), 60)
    took = time.perf_counter() - began
    await socket.close()
    return events, took


async def _sync_then_ws(ctx: Context, device: api.Device, since: str) -> dict[str, Any]:
    connection = rawhttp.Connection("127.0.0.1", ctx.server.port)
    began = time.perf_counter()
    events = pages = 0
    cursor = since
    while True:
        status, body = await connection.get("/api/v1/sync", device.token, {"since": cursor, "limit": 1000})
        if status != 200:
            raise RuntimeError(f"/sync answered {status}: {body[:200]!r}")
        page = orjson.loads(body)
        events += len(page["events"])
        pages += 1
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    drained = time.perf_counter() - began
    await connection.close()
    late, resumed = await _ws_until_current(ctx, device, cursor)
    return {
        "events": events,
        "pages": pages,
        "sync_s": round(drained, 4),
        "ws_resume_s": round(resumed, 4),
        "events_after_drain": late,
        "total_s": round(drained + resumed, 4),
    }


async def _scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    device = ctx.users[-1]
    senders = ctx.users[: sizes.catchup_senders]
    async with api.client(ctx.server.api, connections=10) as http:
        cids = [await api.direct(http, s, device) for s in senders]
        start = (await api.sync(http, device))["cursor"]
        fill_s = await _fill(ctx, device, senders, cids, sizes.catchup_events)
        print(f"  {sizes.catchup_events} events sent to the offline device in {fill_s:.2f} s", flush=True)
        via_sync: list[dict[str, Any]] = []
        via_ws: list[dict[str, Any]] = []
        for _ in range(sizes.catchup_repeats):
            via_sync.append(await _sync_then_ws(ctx, device, start))
            events, took = await _ws_until_current(ctx, device, start)
            via_ws.append({"events": events, "total_s": round(took, 4)})
            last = via_sync[-1]
            print(
                f"  /sync drain {last['sync_s']:.3f} s + WebSocket resume {last['ws_resume_s']:.3f} s"
                f" ({last['events']} events);  WebSocket replay {took:.3f} s ({events} events)",
                flush=True,
            )
    return {
        "events": sizes.catchup_events,
        "senders": len(senders),
        "fill_s": round(fill_s, 3),
        "sync_then_ws": via_sync,
        "ws_replay": via_ws,
        "sync_then_ws_s": statistics.median(r["total_s"] for r in via_sync),
        "ws_replay_s": statistics.median(r["total_s"] for r in via_ws),
    }


def run_scenario(ctx: Context) -> dict[str, Any]:
    return run(_scenario(ctx), 600)
