"""``chart.png``: the 1:1 ladder (rates and latency), group fan-out, history pages, the
floor beside Kibitz, and every budget figure against its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

from .budget import evaluate, floor_shares

PASS, MISS, NONE = "#2e7d32", "#c62828", "#9e9e9e"


def _missing(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color=NONE)
    ax.set_xticks([])
    ax.set_yticks([])


def _ladder_rates(ax: Axes, one: dict[str, Any] | None) -> None:
    title = "1:1 messages/s by offered rate"
    if not one or not one.get("steps"):
        return _missing(ax, title)
    steps = one["steps"]
    offered = [s["offered_per_s"] for s in steps]
    ax.plot(offered, offered, ":", color=NONE, label="offered")
    ax.plot(offered, [s["accepted_per_s"] for s in steps], "o-", label="accepted")
    ax.plot(offered, [s["delivered_per_s"] for s in steps], "s--", label="delivered")
    sus = one.get("sustained")
    if sus:
        ax.plot(
            [sus["offered_per_s"]],
            [sus["delivered_per_s"]],
            "k*",
            ms=12,
            label=f"sustained {sus['seconds']:.0f} s",
        )
    ax.axhline(3000, color=MISS, lw=0.8, ls="--", label="budget 3,000/s")
    ax.set_xlabel("offered msgs/s")
    ax.set_ylabel("msgs/s")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _ladder_latency(ax: Axes, one: dict[str, Any] | None) -> None:
    title = "1:1 latency by offered rate"
    if not one or not one.get("steps"):
        return _missing(ax, title)
    steps = one["steps"]
    offered = [s["offered_per_s"] for s in steps]
    for key, style, name in (
        ("send_to_sent", "o-", "send→sent"),
        ("send_to_delivery", "s--", "send→delivery"),
    ):
        ax.plot(offered, [s[key]["p50_ms"] or 0 for s in steps], style, label=f"{name} p50")
        ax.plot(offered, [s[key]["p99_ms"] or 0 for s in steps], style, alpha=0.5, label=f"{name} p99")
    ax.axhline(50, color=MISS, lw=0.8, ls="--", label="budget p99 50 ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered msgs/s")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _groups(ax: Axes, fan: dict[str, Any] | None) -> None:
    title = "group fan-out deliveries/s"
    if not fan or not fan.get("groups"):
        return _missing(ax, title)
    groups = fan["groups"]
    labels = [str(g["members"]) for g in groups]
    bars = ax.bar(labels, [g["deliveries_per_s"] for g in groups], color="#1565c0")
    for bar, g in zip(bars, groups, strict=True):
        lat = g["send_to_delivery"]
        ax.annotate(
            f"p50 {lat['p50_ms']:.0f} / p99 {lat['p99_ms']:.0f} ms" if lat["p99_ms"] else "",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(20000, color=MISS, lw=0.8, ls="--", label="budget (group of 100) 20,000/s")
    ax.set_xlabel("members, all connected")
    ax.set_ylabel("deliveries/s")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _history(ax: Axes, hist: dict[str, Any] | None) -> None:
    title = "history page latency"
    if not hist or "small" not in hist:
        return _missing(ax, title)
    kinds = ["latest", "before", "after"]
    width = 0.2
    for n, (size, shade) in enumerate((("small", "#90caf9"), ("large", "#1565c0"))):
        for m, (pct, alpha) in enumerate((("p50_ms", 1.0), ("p99_ms", 0.55))):
            xs = [k + (2 * n + m - 1.5) * width for k in range(len(kinds))]
            ax.bar(
                xs,
                [hist[size][k][pct] or 0 for k in kinds],
                width,
                color=shade,
                alpha=alpha,
                label=f"{hist[size]['messages']:,} msgs {pct[:3]}",
            )
    ax.axhline(10, color=MISS, lw=0.8, ls="--", label="budget latest p99 10 ms")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _floor(ax: Axes, results: dict[str, Any]) -> None:
    title = "log messages/s: floor and Kibitz"
    floor = results.get("floor") or {}
    js = floor.get("jetstream") or {}
    if not js:
        return _missing(ax, title)
    names = [
        "JetStream one at a time",
        "JetStream 256 in flight",
        "JetStream batches of 100",
        "JetStream batches of 1,000",
    ]
    values = [
        js["one_at_a_time_per_s"],
        js["in_flight_256_per_s"],
        js["atomic_batch_100_per_s"],
        js.get("atomic_batch_1000_per_s", 0),
    ]
    colors = [NONE] * 4
    for share in floor_shares(results):
        names.append("Kibitz " + share["what"])
        values.append(share["log_messages_per_s"])
        colors.append("#1565c0")
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), names, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("acknowledged log messages/s")
    ax.set_title(title)


def _budget(ax: Axes, results: dict[str, Any]) -> None:
    rows = evaluate(results)
    labels, ratios, colors = [], [], []
    for row in rows:
        labels.append(row.figure.strip(" …")[:40])
        ratios.append(row.headroom if row.headroom is not None else float("nan"))
        colors.append(NONE if row.passed is None else PASS if row.passed else MISS)
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    measured = [r for r in ratios if r == r and r > 0]  # NaN: not measured
    if measured:
        ax.set_xlim(min(0.5, min(measured) / 1.5), max(2.0, max(measured) * 1.5))
    ticks = [
        t for t in (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]
    ]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("headroom: target met when ≥ 1 (log scale)")
    ax.set_title("budget")


def draw(results: dict[str, Any], path: Path) -> None:
    s = results.get("scenarios", {})
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    _ladder_rates(axes[0][0], s.get("one_to_one"))
    _ladder_latency(axes[0][1], s.get("one_to_one"))
    _groups(axes[0][2], s.get("group_fanout"))
    _history(axes[1][0], s.get("history"))
    _floor(axes[1][1], results)
    _budget(axes[1][2], results)
    meta = results.get("meta", {})
    fig.suptitle(
        f"Kibitz benchmark{' (quick)' if meta.get('quick') else ''} — {meta.get('cpu', '?')},"
        f" {meta.get('cpus', '?')} CPUs, {meta.get('started_at', '')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
