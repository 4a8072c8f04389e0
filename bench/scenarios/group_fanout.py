"""Scenario 2, group fan-out.

Groups of 10, 100 and the largest size this run affords (the protocol allows 998
members; signing up that many users is slow by design, so the default run uses 500 and
says so), every member connected on WebSocket. A few members send as fast as the server
takes it (each with a small window of unacknowledged sends); every member's socket, the
senders' included, counts the message events it gets. Deliveries/s and send→delivery
latency.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from .. import api, profiler
from ..clients import Frame, Socket, close_all, open_many, sent_at, stamped_body
from ..context import Context, run, split
from ..procstat import cores_text
from ..stats import latency_ms, rate
from ..workers import Pool

MAX_GROUP = 998  # the protocol's largest group (one atomic batch of 1,000 log messages)
QUIET_SECONDS = 0.5
DRAIN_SECONDS = 10.0


class GroupAgent:
    """Worker side: some members' sockets; some of them also send."""

    def __init__(self, url: str, cid: str, tokens: list[str], senders: int, window: int) -> None:
        self.url = url
        self.cid = cid
        self.tokens = tokens
        self.sender_count = senders
        self.window = window
        self.sockets: list[Socket] = []
        self.tag = ""
        self.windows: list[asyncio.Semaphore] = []
        self.sends = 0
        self.sent_lat = array("d")
        self.del_t = array("d")
        self.del_lat = array("d")
        self.errors = 0
        self.last_delivery = 0.0

    async def connect(self) -> None:
        self.sockets = await open_many(self.url, self.tokens, self._on_frame, concurrency=20)
        for i in range(self.sender_count):
            self.sockets[i].on_frame = self._sender_callback(i)

    def _sender_callback(self, i: int) -> Any:
        def on_frame(frame: Frame, now: float) -> None:
            kind = frame.get("type")
            if kind in ("sent", "error") and str(frame.get("client_msg_id", "")).startswith(self.tag):
                if kind == "sent":
                    self.sent_lat.append(now - sent_at(frame["message"]["body"]))
                else:
                    self.errors += 1
                self.windows[i].release()
            else:
                self._on_frame(frame, now)

        return on_frame

    def _on_frame(self, frame: Frame, now: float) -> None:
        if frame.get("type") != "event" or frame["event"].get("type") != "message":
            return
        message = frame["event"]["message"]
        if self.tag and message["client_msg_id"].startswith(self.tag):
            self.del_t.append(now)
            self.del_lat.append(now - sent_at(message["body"]))
            self.last_delivery = now

    async def blast(self, tag: str, start_at: float, seconds: float) -> dict[str, Any]:
        self.tag = tag + "-"
        self.windows = [asyncio.Semaphore(self.window) for _ in range(self.sender_count)]
        end = start_at + seconds
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(self._send(i, end) for i in range(self.sender_count)))
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            answered = len(self.sent_lat) + self.errors >= self.sends
            if answered and time.monotonic() - max(self.last_delivery, end) > QUIET_SECONDS:
                break
            await asyncio.sleep(0.05)
        return {
            "sends": self.sends,
            "errors": self.errors,
            "sent_lat": self.sent_lat,
            "del_t": self.del_t,
            "del_lat": self.del_lat,
        }

    async def _send(self, i: int, end: float) -> None:
        number = 0
        while True:
            await self.windows[i].acquire()
            now = time.monotonic()
            if now >= end:
                return
            frame = {
                "type": "send",
                "conversation_id": self.cid,
                "body": stamped_body(now),
                "client_msg_id": f"{self.tag}{i}-{number}",
            }
            await self.sockets[i].send(frame)
            self.sends += 1
            number += 1

    async def close(self) -> None:
        await close_all(self.sockets)


async def create_group(ctx: Context, members: list[api.Device], name: str) -> str:
    async with api.client(ctx.server.api, connections=2) as http:
        return await api.group(http, members[0], members, name)


def _one_group(ctx: Context, size: int) -> dict[str, Any]:
    sizes = ctx.sizes
    members = ctx.users[:size]
    cid = run(create_group(ctx, members, f"fan-out {size}"), 120)
    if size == max(sizes.groups):
        ctx.shared["largest_group"] = (cid, members)
    senders = min(sizes.group_senders, size)
    workers = min(sizes.group_workers, size)
    tokens = split([m.token for m in members], workers)
    # Senders are the first members; dealt round-robin, worker i gets members i, i+workers, ...
    configs = [
        {
            "url": ctx.server.ws_url,
            "cid": cid,
            "tokens": part,
            "senders": len(range(i, senders, workers)),
            "window": sizes.group_window,
        }
        for i, part in enumerate(tokens)
    ]
    result: dict[str, Any] = {"members": size, "senders": senders, "window_per_sender": sizes.group_window}
    with Pool("bench.scenarios.group_fanout:GroupAgent", configs) as pool:
        pool.call("connect", timeout=180)
        start = time.monotonic() + 0.5
        server_before, clients_cpu, clock = ctx.server.usage(), pool.cpu_seconds(), time.monotonic()
        with profiler.record(
            ctx.server.pid, ctx.out, f"group_{size}", sizes.group_seconds, ctx.profile, result
        ):
            parts = pool.call(
                "blast",
                timeout=sizes.group_seconds + DRAIN_SECONDS + 60,
                tag=f"g{size}",
                start_at=start,
                seconds=sizes.group_seconds,
            )
        elapsed = time.monotonic() - clock
        cores = ctx.server.usage().cores_since(server_before, elapsed)
        result["server_cpu_cores"] = {k: round(v, 3) for k, v in cores.items()}
        result["clients_cpu_cores"] = round((pool.cpu_seconds() - clients_cpu) / elapsed, 2)
    del_t = array("d")
    del_lat = array("d")
    sent_lat = array("d")
    for p in parts:
        del_t.extend(p["del_t"])
        del_lat.extend(p["del_lat"])
        sent_lat.extend(p["sent_lat"])
    end = start + sizes.group_seconds
    sends = sum(p["sends"] for p in parts)
    result.update(
        messages_sent=sends,
        messages_accepted=len(sent_lat),
        errors=sum(p["errors"] for p in parts),
        messages_per_s=round(len(sent_lat) / sizes.group_seconds, 1),
        deliveries=len(del_t),
        deliveries_expected=len(sent_lat) * size,
        deliveries_per_s=round(rate(del_t, start, end), 1),
        send_to_sent=latency_ms(sent_lat),
        send_to_delivery=latency_ms(del_lat),
    )
    return result


def run_scenario(ctx: Context) -> dict[str, Any]:
    groups: list[dict[str, Any]] = []
    largest = max(ctx.sizes.groups)
    if largest < MAX_GROUP:
        ctx.note(
            f"group fan-out: the largest group measured has {largest} members, not the protocol's "
            f"{MAX_GROUP}: signing up {MAX_GROUP} users (argon2) takes minutes on this machine"
        )
    for size in ctx.sizes.groups:
        g = _one_group(ctx, size)
        groups.append(g)
        lat = g["send_to_delivery"]
        print(
            f"  group of {size:>4}: {g['messages_per_s']:>7.1f} msgs/s"
            f"  {g['deliveries_per_s']:>8.0f} deliveries/s  p50/p99 {lat['p50_ms']}/{lat['p99_ms']} ms"
            f"  ({g['deliveries']} of {g['deliveries_expected']} delivered)"
            + cores_text(g["server_cpu_cores"], g["clients_cpu_cores"]),
            flush=True,
        )
    return {"groups": groups, "largest_measured": largest, "largest_allowed": MAX_GROUP}
