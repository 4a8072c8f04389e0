"""The printed table (and the same as Markdown, for docs/performance.md)."""

from __future__ import annotations

from typing import Any

from .budget import Row, evaluate, floor_shares


def _value(row: Row) -> str:
    if row.value is None:
        return "—"
    v = row.value
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
    return f"{text} {row.unit}"


def _verdict(row: Row) -> str:
    return "n/a" if row.passed is None else ("pass" if row.passed else "MISS")


def budget_table(results: dict[str, Any]) -> list[list[str]]:
    return [[r.figure, r.target, _value(r), _verdict(r), r.detail] for r in evaluate(results)]


def floor_table(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    floor = results.get("floor") or {}
    for part, figures in (("JetStream", floor.get("jetstream") or {}), ("Redis", floor.get("redis") or {})):
        for name, value in figures.items():
            rows.append(
                [f"floor: {part} {name.removesuffix('_per_s').replace('_', ' ')}", f"{value:,}/s", "", ""]
            )
    for share in floor_shares(results):
        js = share["share_of_jetstream_batch_floor"]
        rd = share["share_of_redis_pipelined_floor"]
        rows.append(
            [
                f"Kibitz {share['what']}: {share['messages_per_s']:,} msgs/s",
                f"{share['log_messages_per_s']:,} log msgs/s",
                f"{100 * js:.0f} % of JetStream batches of 1,000" if js is not None else "",
                f"{100 * rd:.0f} % of Redis pipelined" if rd is not None else "",
            ]
        )
    return rows


def _text(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


BUDGET_HEADERS = ["figure", "target", "this run", "", "detail"]
FLOOR_HEADERS = ["what", "rate", "share of the log floor", "share of the storage floor (pipelined ZADD)"]


def print_report(results: dict[str, Any]) -> None:
    print("\nBudget (issue 4); a miss does not fail the run:\n")
    print(_text(BUDGET_HEADERS, budget_table(results)))
    print("\nThe floor, measured in this run, and Kibitz as a share of it:\n")
    print(_text(FLOOR_HEADERS, floor_table(results)))
    for note in results.get("notes", []):
        print(f"note: {note}")
    errors = {k: v["error"] for k, v in results.get("scenarios", {}).items() if "error" in v}
    for name, error in errors.items():
        print(f"\nscenario {name} FAILED:\n{error}")


def markdown(results: dict[str, Any]) -> str:
    return (
        _markdown(BUDGET_HEADERS, budget_table(results))
        + "\n\n"
        + _markdown(FLOOR_HEADERS, floor_table(results))
        + "\n\n"
        + details_markdown(results)
    )


def _ms(figures: dict[str, Any] | None, key: str) -> str:
    value = (figures or {}).get(key)
    return "—" if value is None else f"{value:,.1f}"


def _cores(figures: dict[str, Any]) -> str:
    s = figures.get("server_cpu_cores") or {}
    parts = [f"{s.get(n, 0.0):.2f}" for n in ("kibitz", "nats-server", "redis-server")]
    return " + ".join(parts) + f" / {figures.get('clients_cpu_cores', 0.0):.2f}"


SQL_KINDS = {
    "latest": "latest page",
    "before": "deep before",
    "after": "after",
    "quiet_latest": "quiet conversation's latest",
    "unread_recent": "unread, 50 back",
    "unread_far": "unread, all",
    "unread_100": "unread of 100 conversations",
    "latest_100": "latest of 100 conversations",
    "find_sent": "find_sent, one key",
}


def _sql_markdown(sql: dict[str, Any]) -> str:
    """The sql storage called directly: one row per database and call."""
    header = (
        f"\nThe sql storage called directly (ms, {sql['calls_per_figure']:,} calls each,"
        f" unread all {sql['calls_unread_far']:,}; pages of {sql['page_size']}):\n\n"
    )
    rows = []
    for name, label in (("postgresql", "PostgreSQL"), ("sqlite", "SQLite")):
        f = sql.get(name) or {}
        if "skipped" in f or "fill" not in f:
            rows.append([label, f"skipped: {f.get('skipped', 'not measured')}", "", ""])
            continue
        fill = f"{f['all_messages']:,} in {f['fill']['seconds']:,.0f} s ({f['fill']['per_s']:,}/s)"
        rows.append([label, f"{f['messages']:,} messages", "filled", fill])
        for kind, what in SQL_KINDS.items():
            counted = f" ({f['unread_far_counts']:,} unread)" if kind == "unread_far" else ""
            p50, p99, most = (f"{f[kind][k]:,.2f}" for k in ("p50_ms", "p99_ms", "max_ms"))
            rows.append(["", what + counted, f"{p50} / {p99}", most])
    return header + _markdown(["database", "call", "p50 / p99", "max"], rows)


def details_markdown(results: dict[str, Any]) -> str:
    """Each scenario's figures in detail, as Markdown tables."""
    s = results.get("scenarios", {})
    out: list[str] = []
    one = s.get("one_to_one") or {}
    if one.get("steps"):
        out.append(
            f"1:1, {one['pairs']} pairs, up to {one['window_per_socket']} unacknowledged sends per socket"
            " (latency in ms; CPU in cores: Kibitz + NATS + Redis / load clients):\n"
        )
        rows = []
        for step in [*one["steps"], one["sustained"]]:
            sent, deliv = step["send_to_sent"], step["send_to_delivery"]
            label = f"{step['offered_per_s']:,.0f}" + (" (sustained)" if step is one["sustained"] else "")
            rows.append([
                label, f"{step['accepted_per_s']:,.0f}", f"{step['delivered_per_s']:,.0f}",
                f"{_ms(sent, 'p50_ms')} / {_ms(sent, 'p99_ms')} / {_ms(sent, 'max_ms')}",
                f"{_ms(deliv, 'p50_ms')} / {_ms(deliv, 'p99_ms')} / {_ms(deliv, 'max_ms')}",
                _cores(step), "yes" if step["saturated"] else "",
            ])  # fmt: skip
        headers = ["offered msg/s", "accepted/s", "delivered/s", "send→sent p50/p99/max",
                   "send→delivery p50/p99/max", "CPU", "saturated"]  # fmt: skip
        out.append(_markdown(headers, rows))
    groups = (s.get("group_fanout") or {}).get("groups") or []
    if groups:
        out.append("\nGroup fan-out, every member connected (latency in ms):\n")
        rows = [
            [
                str(g["members"]), f"{g['messages_per_s']:,.1f}", f"{g['deliveries_per_s']:,.0f}",
                f"{g['deliveries']:,} of {g['deliveries_expected']:,}",
                f"{_ms(g['send_to_delivery'], 'p50_ms')} / {_ms(g['send_to_delivery'], 'p99_ms')}",
                _cores(g),
            ]
            for g in groups
        ]  # fmt: skip
        headers = ["members", "msgs/s", "deliveries/s", "delivered", "send→delivery p50/p99", "CPU"]
        out.append(_markdown(headers, rows))
    history = s.get("history") or {}
    if "small" in history:
        out.append(
            f"\nHistory pages of {history['page_size']} messages"
            f" (ms, {history['requests_per_figure']:,} requests each):\n"
        )
        rows = []
        for size in ("small", "large"):
            h = history[size]
            rows.append(
                [f"{h['messages']:,}" + (" (seeded directly)" if size == "large" else "")]
                + [f"{_ms(h[k], 'p50_ms')} / {_ms(h[k], 'p99_ms')} / {_ms(h[k], 'max_ms')}" for k in
                   ("latest", "before", "after")]
            )  # fmt: skip
        out.append(_markdown(["messages", "latest p50/p99/max", "deep before", "after"], rows))
    sql = s.get("sql_history") or {}
    if "sqlite" in sql:
        out.append(_sql_markdown(sql))
    other: list[list[str]] = []
    idle = s.get("idle_connections") or {}
    if "connections" in idle:
        other.append([
            "idle WebSockets",
            f"{idle['connections']:,} open ({idle['connects_per_s']:,.0f}/s); {idle['rss_before_mb']} → "
            f"{idle['rss_after_mb']} MB, {idle['bytes_per_connection'] / 1024:.1f} KB each; "
            f"{idle['idle_cpu_percent_of_one_core']:.1f} % of a core over {idle['idle_seconds']:.0f} s",
        ])  # fmt: skip
    catch = s.get("catch_up") or {}
    if "sync_then_ws" in catch:
        runs = ", ".join(f"{r['sync_s']:.2f} + {r['ws_resume_s']:.3f}" for r in catch["sync_then_ws"])
        replay = ", ".join(f"{r['total_s']:.2f}" for r in catch["ws_replay"])
        other.append([
            "catch-up",
            f"{catch['events']:,} events (sent in {catch['fill_s']:.1f} s); /sync drain + WebSocket resume: "
            f"{runs} s; WebSocket replay alone: {replay} s",
        ])  # fmt: skip
    poll = s.get("long_poll") or {}
    if poll.get("rounds"):
        rounds = ", ".join(f"{_ms(r['wake'], 'p99_ms')}" for r in poll["rounds"])
        other.append([
            "long poll",
            f"{poll['polls']:,} held ({poll['users']} users, {poll['polls_per_user']} each); wake-up p50 "
            f"{_ms(poll['wake'], 'p50_ms')} ms, p99 by round: {rounds} ms",
        ])  # fmt: skip
    start = s.get("startup") or {}
    if "cold_start_s" in start:
        other.append([
            "start-up",
            f"cold: {', '.join(f'{c:.2f}' for c in start['cold_start_s'])} s; stop {start['stop_s']:.1f} s;"
            f" restart on the full folder ({start['full_folder_mb']:,.0f} MB):"
            f" {start['restart_full_s']:.1f} s",
        ])  # fmt: skip
    if other:
        out.append("\n" + _markdown(["scenario", "figures"], other))
    return "\n".join(out) + "\n"
