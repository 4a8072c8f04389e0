"""Scenario 1, 1:1 throughput and latency.

N pairs of users, each pair in its own direct conversation, both on WebSocket. Each
pair's sender sends at a set rate (a small window of unacknowledged sends per socket, as
a client that pipelines its sends keeps) and the total rate is stepped up until
the server saturates: accepted (``sent`` answers) and delivered (the recipient's event)
messages per second, and send→``sent`` and send→delivery latency per step. Then one
sustained run at the budget's rate (or the highest rate that held, if higher).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from typing import Any

from .. import api, profiler
from ..clients import Frame, Socket, close_all, sent_at, stamped_body, until
from ..context import Context, run, split
from ..procstat import TreeUsage, cores_text
from ..stats import latency_ms, rate
from ..workers import Pool

TARGET_RATE = 3000  # the budget: messages/s accepted and delivered, sustained
LATENCY_RATE = 1000  # the budget's send→delivery p99 is taken at this rate
DRAIN_SECONDS = 5.0
SATURATED = 0.9  # a step whose accepted or delivered rate falls below this share of the offer


class _Step:
    """What one worker records during one step."""

    def __init__(self, tag: str, pairs: int, window: int) -> None:
        self.tag = tag + "-"
        self.windows = [asyncio.Semaphore(window) for _ in range(pairs)]
        self.sends = 0
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.sent_t = array("d")
        self.sent_lat = array("d")
        self.del_t = array("d")
        self.del_lat = array("d")


class PairsAgent:
    """Worker side: some of the pairs, their sockets, and the steps' records. Receivers
    connect to ``receiver_url`` if given (another instance), else to ``url`` as senders do."""

    def __init__(self, url: str, pairs: list[dict[str, str]], window: int, receiver_url: str = "") -> None:
        self.url = url
        self.receiver_url = receiver_url or url
        self.pairs = pairs
        self.window = window
        self.senders: list[Socket] = []
        self.receivers: list[Socket] = []
        self.step_: _Step | None = None

    async def connect(self) -> None:
        gate = asyncio.Semaphore(20)

        async def pair(i: int, p: dict[str, str]) -> tuple[Socket, Socket]:
            async with gate:
                s = await Socket.open(self.url, p["sender"], lambda f, t: self._on_sender(i, f, t))
                r = await Socket.open(self.receiver_url, p["receiver"], self._on_receiver)
                return s, r

        opened = await asyncio.gather(*(pair(i, p) for i, p in enumerate(self.pairs)))
        self.senders = [s for s, _ in opened]
        self.receivers = [r for _, r in opened]

    def _on_sender(self, i: int, frame: Frame, now: float) -> None:
        step = self.step_
        kind = frame.get("type")
        if step is None or kind not in ("sent", "error"):
            return
        if not str(frame.get("client_msg_id", "")).startswith(step.tag):
            return
        if kind == "sent":
            step.sent_t.append(now)
            step.sent_lat.append(now - sent_at(frame["message"]["body"]))
        else:
            step.errors += 1
            code = str(frame.get("code"))
            step.error_codes[code] = step.error_codes.get(code, 0) + 1
        step.windows[i].release()

    def _on_receiver(self, frame: Frame, now: float) -> None:
        step = self.step_
        if step is None or frame.get("type") != "event" or frame["event"].get("type") != "message":
            return
        message = frame["event"]["message"]
        if message["client_msg_id"].startswith(step.tag):
            step.del_t.append(now)
            step.del_lat.append(now - sent_at(message["body"]))

    async def step(self, tag: str, rate_per_pair: float, start_at: float, seconds: float) -> dict[str, Any]:
        step = self.step_ = _Step(tag, len(self.pairs), self.window)
        end = start_at + seconds
        await asyncio.gather(
            *(self._send(i, step, rate_per_pair, start_at, end) for i in range(len(self.pairs)))
        )
        await until(
            lambda: len(step.sent_t) + step.errors >= step.sends and len(step.del_t) >= len(step.sent_t),
            DRAIN_SECONDS,
        )
        self.step_ = None
        return {
            "sends": step.sends,
            "errors": step.errors,
            "error_codes": step.error_codes,
            "sent_t": step.sent_t,
            "sent_lat": step.sent_lat,
            "del_t": step.del_t,
            "del_lat": step.del_lat,
        }

    async def _send(self, i: int, step: _Step, rate_per_pair: float, start: float, end: float) -> None:
        socket, cid, window = self.senders[i], self.pairs[i]["cid"], step.windows[i]
        interval = 1.0 / rate_per_pair
        due = start + interval * (i / max(1, len(self.pairs)))  # spread the pairs over one interval
        number = 0
        while due < end:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await window.acquire()
            now = time.monotonic()
            if now >= end:
                window.release()
                return
            frame = {
                "type": "send",
                "conversation_id": cid,
                "body": stamped_body(now),
                "client_msg_id": f"{step.tag}{i}-{number}",
            }
            await socket.send(frame)
            step.sends += 1
            number += 1
            due += interval

    async def close(self) -> None:
        await close_all(self.senders + self.receivers)


def _merge(parts: list[dict[str, Any]], key: str) -> array[float]:
    merged = array("d")
    for part in parts:
        merged.extend(part[key])
    return merged


def measure_step(
    usage: Callable[[], TreeUsage],
    pool: Pool,
    pairs: int,
    offered: float,
    seconds: float,
    warmup: float,
    tag: str,
) -> dict[str, Any]:
    """One step of ``offered`` messages/s over the pool's pairs; ``usage`` reads the servers' CPU."""
    start = time.monotonic() + 0.5
    server_before, clients_cpu, clock = usage(), pool.cpu_seconds(), time.monotonic()
    parts = pool.call(
        "step",
        timeout=seconds + DRAIN_SECONDS + 60,
        tag=tag,
        rate_per_pair=offered / pairs,
        start_at=start,
        seconds=seconds,
    )
    elapsed = time.monotonic() - clock
    server_cores = usage().cores_since(server_before, elapsed)
    clients_cpu = (pool.cpu_seconds() - clients_cpu) / elapsed
    begin, end = start + warmup, start + seconds
    sent_t, sent_lat = _merge(parts, "sent_t"), _merge(parts, "sent_lat")
    del_t, del_lat = _merge(parts, "del_t"), _merge(parts, "del_lat")
    sends = sum(p["sends"] for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for code, n in p["error_codes"].items():
            errors[code] = errors.get(code, 0) + n
    after_warmup = [lat for t, lat in zip(sent_t, sent_lat, strict=True) if t - lat >= begin]
    delivered_after = [lat for t, lat in zip(del_t, del_lat, strict=True) if t - lat >= begin]
    accepted_rate = rate(sent_t, begin, end)
    delivered_rate = rate(del_t, begin, end)
    result = {
        "offered_per_s": offered,
        "seconds": seconds,
        "sends": sends,
        "accepted": len(sent_t),
        "delivered": len(del_t),
        "errors": errors,
        "accepted_per_s": round(accepted_rate, 1),
        "delivered_per_s": round(delivered_rate, 1),
        "send_to_sent": latency_ms(after_warmup),
        "send_to_delivery": latency_ms(delivered_after),
        # Over the step and its drain: Kibitz, its NATS and Redis, and their total.
        "server_cpu_cores": {k: round(v, 3) for k, v in server_cores.items()},
        "clients_cpu_cores": round(clients_cpu, 2),
    }
    p99 = result["send_to_delivery"]["p99_ms"]
    result["saturated"] = (
        accepted_rate < SATURATED * offered
        or delivered_rate < SATURATED * offered
        or bool(errors)
        or p99 is None
        or p99 > 1000
    )
    return result


def print_step(label: str, step: dict[str, Any]) -> None:
    sent, deliv = step["send_to_sent"], step["send_to_delivery"]
    print(
        f"  {label:>10} offered {step['offered_per_s']:>7.0f}/s  accepted {step['accepted_per_s']:>7.0f}/s"
        f"  delivered {step['delivered_per_s']:>7.0f}/s  sent p50/p99 {sent['p50_ms']}/{sent['p99_ms']} ms"
        f"  delivery p50/p99 {deliv['p50_ms']}/{deliv['p99_ms']} ms"
        + ("  SATURATED" if step["saturated"] else "")
        + cores_text(step["server_cpu_cores"], step["clients_cpu_cores"])
        + (f"  errors {step['errors']}" if step["errors"] else ""),
        flush=True,
    )


async def conversations(base: str, pairs: list[tuple[api.Device, api.Device]]) -> list[str]:
    """A direct conversation of each pair, made through the API at ``base``."""
    async with api.client(base, connections=10) as http:
        gate = asyncio.Semaphore(10)

        async def one(a: api.Device, b: api.Device) -> str:
            async with gate:
                return await api.direct(http, a, b)

        return list(await asyncio.gather(*(one(a, b) for a, b in pairs)))


def run_scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    users = ctx.users[: 2 * sizes.pairs]
    pairs = list(zip(users[0::2], users[1::2], strict=True))
    cids = run(conversations(ctx.server.api, pairs), 120)
    specs = [
        {"sender": a.token, "receiver": b.token, "cid": c} for (a, b), c in zip(pairs, cids, strict=True)
    ]
    workers = min(sizes.pair_workers, len(specs))
    configs = [
        {"url": ctx.server.ws_url, "pairs": part, "window": sizes.window} for part in split(specs, workers)
    ]
    result: dict[str, Any] = {"pairs": len(specs), "window_per_socket": sizes.window, "workers": workers}
    with Pool("bench.scenarios.one_to_one:PairsAgent", configs) as pool:
        pool.call("connect", timeout=120)
        steps: list[dict[str, Any]] = []
        for number, offered in enumerate(sizes.ladder):
            step = measure_step(
                ctx.server.usage,
                pool,
                len(specs),
                offered,
                sizes.step_seconds,
                sizes.warmup_seconds,
                f"s{number}",
            )
            steps.append(step)
            print_step("step", step)
            if step["saturated"]:
                break
        held = [s["offered_per_s"] for s in steps if not s["saturated"]]
        sustained_rate = max([TARGET_RATE, *held])
        with profiler.record(
            ctx.server.pid, ctx.out, "one_to_one", sizes.sustained_seconds, ctx.profile, result
        ):
            sustained = measure_step(
                ctx.server.usage,
                pool,
                len(specs),
                sustained_rate,
                sizes.sustained_seconds,
                sizes.warmup_seconds,
                "sus",
            )
        print_step("sustained", sustained)
    result["steps"] = steps
    result["sustained"] = sustained
    result["saturation_per_s"] = max((s["accepted_per_s"] for s in steps), default=0.0)
    at_latency_rate = [s for s in steps if s["offered_per_s"] == LATENCY_RATE]
    result["at_1000_per_s"] = at_latency_rate[0] if at_latency_rate else None
    return result
