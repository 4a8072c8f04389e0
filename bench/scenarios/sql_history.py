"""Scenario 8, sql_history: the ``sql`` storage at 1,000,000 messages, on PostgreSQL and SQLite.

Straight against the storage, no HTTP: the ``sql`` plugin's storage found through its
entry point and started on a small real App (``kibitz.testing.started_slot``), in a
database of its own: a fresh PostgreSQL database on the server ``KIBITZ_BENCH_DATABASE_URL``
names (default: the local one; empty: PostgreSQL is skipped), dropped afterwards, and a
SQLite file in a temp folder.

Filled through the storage's own ``append``, in batches of 10,000 (one transaction
each), with the messages ``history`` seeds into Redis (``bench/seed.py``): the large
conversation (1,000,000 messages), a quiet one of a tenth of that, all older than the
large one's (a busy group that went quiet: its newest page lies below a million newer
rows), and 98 small ones of 10 messages, newer than both. Then each call many times in a
row: the latest page, a ``before`` and an ``after`` page at the deep id of ``history``,
the quiet conversation's latest page, ``unread_counts`` with the marker 50 messages back
and at the oldest message (it counts every row after the marker: O(unread)), and over
all 100 conversations, ``latest`` of all 100, and ``find_sent`` of one key.

On PostgreSQL, after ``VACUUM ANALYZE`` (what autovacuum does after a bulk insert),
``EXPLAIN ANALYZE`` of the page queries the storage sends must show an index scan of
``ix_sql_messages_conversation_id`` and no sequential scan; every plan is kept in the
results (SQLite's ``EXPLAIN QUERY PLAN`` too).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kibitz import first_id_of
from kibitz.testing import slot_app, started_slot

from ..context import Context, run
from ..seed import seeded_ids, seeded_messages
from ..stats import latency_ms
from .history import DEEP, PAGE

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
FILL_BATCH = 10_000  # messages per append: one transaction
SMALL = 98  # conversations beside the large and the quiet one, for latest() over 100
SMALL_MESSAGES = 10
QUIET_SHARE = 10  # the quiet conversation: a tenth of the large one
SENDERS = ["1001", "1002"]
READER = 1001
LARGE = 8_000_000_001  # the large conversation's id; the quiet one's is next, then the small ones
PAGE_INDEX = "ix_sql_messages_conversation_id"
PAGE_KINDS = ("latest", "before", "after", "quiet_latest")


@dataclass
class Filled:
    ids: list[int]  # the large conversation's, oldest first
    quiet: list[int]  # the quiet one's, oldest first
    conversations: list[int]  # all 100: the large, the quiet, the small ones
    messages: int
    seconds: float


@contextlib.asynccontextmanager
async def _fresh_postgres(base_url: str) -> AsyncIterator[str]:
    """A new database on the server of ``base_url``, dropped afterwards (WITH FORCE)."""
    import asyncpg

    url = make_url(base_url)
    name = f"kibitz_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _unreachable(base_url: str) -> str | None:
    """Why the PostgreSQL server of ``base_url`` cannot be used, or None."""
    import asyncpg

    url = make_url(base_url)
    try:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        await (await asyncpg.connect(dsn, timeout=5)).close()
    except (OSError, asyncpg.PostgresError) as e:
        return f"no PostgreSQL at {url.render_as_string(hide_password=True)}: {type(e).__name__}: {e}"
    return None


@contextlib.asynccontextmanager
async def _storage(folder: Path, url: str) -> AsyncIterator[tuple[Any, Any]]:
    """The sql storage (and its engine) as ``kibitz serve`` starts it, on ``url`` ("": SQLite)."""
    async with slot_app(folder, url) as app, started_slot("storage", "sql", app) as storage:
        yield storage, app.engine


async def _append(storage: Any, conversation_id: int, ids: list[int]) -> None:
    for start in range(0, len(ids), FILL_BATCH):
        part = ids[start : start + FILL_BATCH]
        await storage.append(seeded_messages(str(conversation_id), SENDERS, part, start))


async def _fill(storage: Any, count: int) -> Filled:
    top = first_id_of(int(time.time() * 1000))
    ids = seeded_ids(top, count)
    quiet = seeded_ids(ids[0], max(count // QUIET_SHARE, 2 * PAGE))  # all older than the large one's
    small = [LARGE + 2 + k for k in range(SMALL)]
    began = time.perf_counter()
    await _append(storage, LARGE + 1, quiet)
    await _append(storage, LARGE, ids)
    for k, cid in enumerate(small):  # newer than the large one's: inside its newest millisecond
        await _append(storage, cid, [top + 1 + k * SMALL_MESSAGES + j for j in range(SMALL_MESSAGES)])
    took = time.perf_counter() - began
    total = len(ids) + len(quiet) + SMALL * SMALL_MESSAGES
    return Filled(ids, quiet, [LARGE, LARGE + 1, *small], total, took)


def _queries(storage: Any, filled: Filled) -> dict[str, Callable[[], Awaitable[Any]]]:
    ids, quiet = filled.ids, filled.quiet
    deep = ids[max(int(len(ids) * DEEP), 2 * PAGE)]
    recent, oldest = ids[-PAGE - 1], ids[0]
    markers = [(LARGE, READER, recent), (LARGE + 1, READER, quiet[-PAGE - 1])]
    markers += [(cid, READER, 0) for cid in filled.conversations[2:]]
    rng = random.Random(1)
    numbers = rng.sample(range(len(ids)), min(1000, len(ids)))
    keys = [(int(SENDERS[n % 2]), f"seed-{LARGE}-{n}") for n in numbers]
    return {
        "latest": lambda: storage.page(LARGE, None, None, PAGE),
        "before": lambda: storage.page(LARGE, deep, None, PAGE),
        "after": lambda: storage.page(LARGE, None, deep, PAGE),
        "quiet_latest": lambda: storage.page(LARGE + 1, None, None, PAGE),
        "unread_recent": lambda: storage.unread_counts([(LARGE, READER, recent)]),
        "unread_far": lambda: storage.unread_counts([(LARGE, READER, oldest)]),
        "unread_100": lambda: storage.unread_counts(markers),
        "latest_100": lambda: storage.latest(filled.conversations),
        "find_sent": lambda: storage.find_sent([keys[rng.randrange(len(keys))]]),
    }


async def _check(storage: Any, backend: str, filled: Filled) -> dict[str, int]:
    """What the calls answer, checked once: a wrong answer, however fast, is no figure."""
    ids = filled.ids
    for cid in (LARGE, LARGE + 1):
        page = await storage.page(cid, None, None, PAGE)
        if len(page.messages) != PAGE or not page.has_more:
            raise RuntimeError(f"{backend}: the latest page of {cid} has {len(page.messages)} messages")
    (far,) = await storage.unread_counts([(LARGE, READER, ids[0])])
    if far != len(ids) // 2:  # the other sender's: every odd-numbered message
        raise RuntimeError(f"{backend}: {far} unread after the oldest of {len(ids)}")
    (recent,) = await storage.unread_counts([(LARGE, READER, ids[-PAGE - 1])])
    if None in await storage.latest(filled.conversations):
        raise RuntimeError(f"{backend}: latest() misses a conversation")
    key = (int(SENDERS[1]), f"seed-{LARGE}-1")
    if (await storage.find_sent([key]))[0] is None:
        raise RuntimeError(f"{backend}: find_sent misses {key}")
    return {"unread_far_counts": far, "unread_recent_counts": recent}


async def _timed(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, Any]:
    await call()  # a warm-up: the statement compiled and prepared
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - began)
    return latency_ms(samples)


class _Captured:
    """The statements an engine sends while inside ``with``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.statements: list[tuple[str, Any]] = []

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if "select" in statement.lower():  # not the pool's ping (";")
            self.statements.append((statement, parameters))

    def __enter__(self) -> _Captured:
        sa.event.listen(self.engine.sync_engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine.sync_engine, "before_cursor_execute", self._record)


async def _plan(engine: Any, call: Callable[[], Awaitable[Any]], analyze: bool = True) -> list[str]:
    """The database's plan of the query ``call`` sends (the last one), with its parameters."""
    with _Captured(engine) as captured:
        await call()
    statement, parameters = captured.statements[-1]
    if engine.dialect.name == "postgresql":
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
    else:
        prefix = "EXPLAIN QUERY PLAN "
    async with engine.connect() as db:
        rows = (await db.exec_driver_sql(prefix + statement, parameters)).all()
    return [str(row[-1]) for row in rows]


def _page_plan_problem(plan: list[str]) -> str | None:
    text = "\n".join(plan)
    scans = [line.strip() for line in plan if "Scan" in line]
    if "Seq Scan" in text or not any(PAGE_INDEX in line for line in scans):
        return f"does not scan {PAGE_INDEX}:\n{text}"
    return None


async def _vacuum(engine: Any) -> float:
    """``VACUUM ANALYZE sql_messages``: the seconds it took."""
    began = time.perf_counter()
    async with engine.connect() as db:
        db = await db.execution_options(isolation_level="AUTOCOMMIT")
        await db.exec_driver_sql("VACUUM ANALYZE sql_messages")
    return time.perf_counter() - began


async def _size_mb(engine: Any, folder: Path) -> float:
    """The table with its indexes (PostgreSQL), or the database files (SQLite)."""
    if engine.dialect.name != "postgresql":
        return _files_mb(folder, "kibitz.sqlite3*")
    async with engine.connect() as db:
        size = (await db.exec_driver_sql("SELECT pg_total_relation_size('sql_messages')")).scalar_one()
    return round(size / 2**20, 1)


def _files_mb(folder: Path, pattern: str) -> float:
    return round(sum(p.stat().st_size for p in folder.glob(pattern)) / 2**20, 1)


async def _measure(ctx: Context, backend: str, url: str, folder: Path) -> dict[str, Any]:
    sizes = ctx.sizes
    async with _storage(folder, url) as (storage, engine):
        filled = await _fill(storage, sizes.sql_messages)
        rate = filled.messages / filled.seconds
        print(
            f"  {backend}: {filled.messages:,} messages stored in {filled.seconds:.1f} s ({rate:,.0f}/s)",
            flush=True,
        )
        queries = _queries(storage, filled)
        figures: dict[str, Any] = {
            "messages": len(filled.ids),
            "quiet_messages": len(filled.quiet),
            "all_messages": filled.messages,
            "fill": {
                "how": f"SqlStorage.append, batches of {FILL_BATCH:,} (one transaction each)",
                "seconds": round(filled.seconds, 2),
                "per_s": round(rate),
            },
            **await _check(storage, backend, filled),
        }
        if backend == "postgresql":
            began = time.perf_counter()
            await queries["unread_far"]()
            figures["unread_far_before_vacuum_ms"] = round((time.perf_counter() - began) * 1000, 3)
            figures["vacuum_analyze_s"] = round(await _vacuum(engine), 2)
        plans = {kind: await _plan(engine, call) for kind, call in queries.items()}
        figures["plans"] = plans
        if backend == "postgresql":
            for kind in PAGE_KINDS:
                if problem := _page_plan_problem(plans[kind]):
                    raise RuntimeError(f"postgresql: the {kind} page query {problem}")
            figures["page_index"] = PAGE_INDEX
            print(f"  postgresql: every page query scans {PAGE_INDEX}; the latest page:", flush=True)
            print("    " + "\n    ".join(plans["latest"]), flush=True)
        for kind, call in queries.items():
            figures[kind] = await _timed(
                call, sizes.sql_far_calls if kind == "unread_far" else sizes.sql_calls
            )
        figures["database_mb"] = await _size_mb(engine, folder)
    return figures


async def _postgres(ctx: Context, folder: Path) -> dict[str, Any]:
    base = os.environ.get("KIBITZ_BENCH_DATABASE_URL", DEFAULT_POSTGRES)
    if not base:
        return {"skipped": "KIBITZ_BENCH_DATABASE_URL is empty"}
    if why := await _unreachable(base):
        return {"skipped": why}
    async with _fresh_postgres(base) as url:
        return {"database": "fresh, dropped after", **await _measure(ctx, "postgresql", url, folder)}


def _line(backend: str, f: dict[str, Any]) -> str:
    kinds = ("latest", "before", "after", "quiet_latest", "unread_far", "latest_100", "find_sent")
    return f"  {backend:>10} p50/p99 ms: " + ", ".join(
        f"{k} {f[k]['p50_ms']}/{f[k]['p99_ms']}" for k in kinds
    )


async def _scenario(ctx: Context) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="kibitz-bench-sql-"))
    try:
        postgres = await _postgres(ctx, folder / "postgresql")
        sqlite = await _measure(ctx, "sqlite", "", folder / "sqlite")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "skipped" in postgres:
        ctx.note(f"sql_history: PostgreSQL skipped: {postgres['skipped']}")
    for backend, figures in (("postgresql", postgres), ("sqlite", sqlite)):
        if "latest" in figures:
            print(_line(backend, figures), flush=True)
    return {
        "page_size": PAGE,
        "calls_per_figure": ctx.sizes.sql_calls,
        "calls_unread_far": ctx.sizes.sql_far_calls,
        "conversations": SMALL + 2,
        "postgresql": postgres,
        "sqlite": {"database": "a file in a temp folder", **sqlite},
    }


def run_scenario(ctx: Context) -> dict[str, Any]:
    return run(_scenario(ctx), 1800)
