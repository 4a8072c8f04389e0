"""Scenario: 1:1 across two instances (scale-out).

Two ``kibitz serve`` on one NATS, one Redis and one SQLite database (bench/deployment.py),
on this one machine. The 1:1 load of scenario 1 (pairs on WebSocket, a window of
unacknowledged sends per socket) is offered twice at each rate of a ladder: first with
senders and recipients on instance one ("one": both instances running, the second idle
but reading the feed), then with the senders on one and the recipients on two
("across"), where every message reaches its recipient through the other instance's live
feed. The budget compares the two send→delivery p99s at 1,000 messages/s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .. import api
from ..context import Context, run, split
from ..deployment import Deployment
from ..workers import Pool
from .one_to_one import conversations, measure_step, print_step

PLACEMENTS = ("one", "across")
LATENCY_RATE = 1000  # the budget's rate


def run_scenario(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    folder = Path(tempfile.mkdtemp(prefix="kibitz-bench-two-"))
    with Deployment(folder, ctx.out / "logs" / "two_instances") as deployment:
        one, two = deployment.one, deployment.two

        async def sign_up() -> list[api.Device]:
            async with api.client(one.api, connections=8) as http:
                return await api.make_users(http, "two", 2 * sizes.pairs)

        users = run(sign_up(), 300)
        pairs = list(zip(users[0::2], users[1::2], strict=True))
        cids = run(conversations(one.api, pairs), 120)
        specs = [
            {"sender": a.token, "receiver": b.token, "cid": c} for (a, b), c in zip(pairs, cids, strict=True)
        ]
        workers = min(sizes.pair_workers, len(specs))
        steps: dict[str, list[dict[str, Any]]] = {}
        for placement in PLACEMENTS:
            receivers = one.ws_url if placement == "one" else two.ws_url
            configs = [
                {"url": one.ws_url, "pairs": part, "window": sizes.window, "receiver_url": receivers}
                for part in split(specs, workers)
            ]
            print(
                f"  {placement}: senders on one, recipients on {'one' if placement == 'one' else 'two'}",
                flush=True,
            )
            steps[placement] = []
            with Pool("bench.scenarios.one_to_one:PairsAgent", configs) as pool:
                pool.call("connect", timeout=120)
                for number, offered in enumerate(sizes.two_instance_ladder):
                    step = measure_step(
                        deployment.usage,
                        pool,
                        len(specs),
                        offered,
                        sizes.step_seconds,
                        sizes.warmup_seconds,
                        f"{placement}{number}",
                    )
                    steps[placement].append(step)
                    print_step(placement, step)
                    if step["saturated"]:
                        break
    by_rate = []
    for alone in steps["one"]:
        across = [s for s in steps["across"] if s["offered_per_s"] == alone["offered_per_s"]]
        p99s = (
            alone["send_to_delivery"]["p99_ms"],
            across[0]["send_to_delivery"]["p99_ms"] if across else None,
        )
        ratio = round(p99s[1] / p99s[0], 2) if p99s[0] and p99s[1] else None
        by_rate.append(
            {
                "offered_per_s": alone["offered_per_s"],
                "p99_ms": list(p99s),
                "across_over_one": ratio,
                # what an instance without clients spends reading the feed, and one delivering it
                "reading_cores": alone["server_cpu_cores"].get("kibitz-2"),
                "delivering_cores": across[0]["server_cpu_cores"].get("kibitz-2") if across else None,
            }
        )
    at = [r for r in by_rate if r["offered_per_s"] == LATENCY_RATE]
    return {
        "pairs": len(specs),
        "window_per_socket": sizes.window,
        "steps": steps,
        "by_rate": by_rate,
        "at_1000_per_s": at[0] if at else None,
        "saturation_per_s": {
            p: max((s["accepted_per_s"] for s in steps[p]), default=0.0) for p in PLACEMENTS
        },
    }
