"""``python -m bench``: run the floor and the scenarios against a fresh ``kibitz serve``,
then print the table and write ``results.json`` and ``chart.png``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import api, floor, machine
from .budget import evaluate, floor_shares
from .config import DEFAULT, QUICK, Sizes
from .context import Context, run
from .report import markdown, print_report
from .scenarios import SCENARIOS, STANDALONE
from .server import KibitzServer, raise_file_limit

DEFAULT_OUT = Path(__file__).parent / "results"
CHOICES = ["floor", *SCENARIOS]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Kibitz's benchmark suite: the floor and the scenarios against a fresh kibitz serve;"
        " a table, results.json and chart.png. See docs/performance.md.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts and short steps: under a minute")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=CHOICES,
        metavar="SCENARIO",
        help=f"run only these (of: {', '.join(CHOICES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--largest-group",
        type=int,
        metavar="N",
        help="members of the largest fan-out group (default 500, quick 20; at most 998)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=["python", "native"],
        help="py-spy the server during the 1:1 sustained run, the group runs, the idle window and a long-poll"
        " wake-up (native: with C frames, at a large cost to throughput)",
    )
    return parser.parse_args(argv)


def _users_needed(sizes: Sizes, selected: list[str]) -> int:
    need = {
        "one_to_one": 2 * sizes.pairs,
        "group_fanout": max(sizes.groups),
        "long_poll": max(sizes.groups),
        "catch_up": sizes.catchup_senders + 1,
        "idle_connections": sizes.idle_tokens,
        "history": 2,
    }
    return max([need.get(name, 0) for name in selected] + [0])


async def _sign_up(ctx: Context, count: int) -> list[api.Device]:
    async with api.client(ctx.server.api, connections=8) as http:
        return await api.make_users(http, f"b{int(time.time()) % 100000}u", count)


def _guarded(name: str, work: Any, *args: Any) -> dict[str, Any]:
    began = time.monotonic()
    print(f"\n== {name}", flush=True)
    try:
        figures: dict[str, Any] = work(*args)
    except Exception:
        figures = {"error": traceback.format_exc()}
        print(f"  FAILED: {figures['error']}", flush=True)
    figures["scenario_seconds"] = round(time.monotonic() - began, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    sizes = QUICK if args.quick else DEFAULT
    if args.largest_group:
        largest = max(2, min(args.largest_group, 998))
        sizes = replace(sizes, groups=tuple(sorted({*(g for g in sizes.groups if g < largest), largest})))
    selected = args.only or CHOICES
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raise_file_limit()
    began = time.monotonic()
    results: dict[str, Any] = {
        "meta": machine.describe(args.quick),
        "sizes": asdict(sizes),
        "floor": None,
        "scenarios": {},
        "notes": [],
    }
    if "floor" in selected:
        results["floor"] = _guarded("floor", floor.measure, sizes.floor_seconds)
    scenarios = [name for name in SCENARIOS if name in selected]
    folder = Path(tempfile.mkdtemp(prefix="kibitz-bench-"))
    server = KibitzServer(folder / "data", out / "logs")
    ctx = Context(server=server, sizes=sizes, out=out, profile=args.profile)
    try:
        if set(scenarios) - STANDALONE:
            print("\n== starting kibitz serve on a fresh data folder", flush=True)
            ctx.shared["first_start_s"] = server.start()
            print(
                f"  ready in {ctx.shared['first_start_s']:.2f} s at {server.url} (pid {server.pid})",
                flush=True,
            )
            count = _users_needed(sizes, scenarios)
            if count:
                t = time.monotonic()
                ctx.users = run(_sign_up(ctx, count), 900)
                took = time.monotonic() - t
                print(
                    f"  {count} users signed up and logged in in {took:.1f} s ({count / took:.1f}/s)",
                    flush=True,
                )
                results["users"] = {"count": count, "seconds": round(took, 1)}
        for name in scenarios:
            results["scenarios"][name] = _guarded(name, SCENARIOS[name], ctx)
            if server.process is not None and server.process.poll() is not None:
                ctx.note(f"kibitz exited during {name}; restarted for the next scenario")
                server.start()
    finally:
        server.stop()
        for log in ("redis/redis.log", "nats/nats-server.log"):  # kept: e.g. how long Redis took to load
            with contextlib.suppress(OSError):
                shutil.copy(server.data_dir / log, out / "logs" / Path(log).name)
        shutil.rmtree(folder, ignore_errors=True)
    results["notes"] = ctx.notes
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["seconds"] = round(time.monotonic() - began, 1)
    results["budget"] = [row.as_dict() for row in evaluate(results)]
    results["floor_shares"] = floor_shares(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "table.md").write_text(markdown(results))
    print_report(results)
    written = [out / "results.json", out / "table.md"]
    try:
        from .chart import draw

        draw(results, out / "chart.png")
        written.append(out / "chart.png")
    except ImportError as e:
        print(f"\nno chart: {e} (pip install -e '.[bench]')")
    print(f"\nwrote {', '.join(map(str, written))} in {results['meta']['seconds']:.0f} s")
    failed = [n for n, r in results["scenarios"].items() if "error" in r]
    if results["floor"] and "error" in results["floor"]:
        failed.append("floor")
    return 1 if failed else 0
