"""``kibitz doctor``: what is wrong with this installation, and what to do about it.

It reads and asks, and changes nothing: the configuration, the data folder (owner,
permissions, lock), free disk against ``disk_reserve``, the database and its schema, the
instances serving on it (its registry: several need shared rate limits), the server
running on the folder (its ``/readyz``), each slot's backing service (the slot's
``diagnose()``: an external NATS's fsync setting, Redis's persistence, ...), the push
keys, and settings that expose more than one may think.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from ipaddress import ip_address

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import create_engine, known_revisions, schema_revision, secrets
from .datadir import holder
from .models import now_ms
from .plugin_manager import create_plugin_manager, fill_slot
from .registry import EXPIRY, read_live
from .settings import Settings
from .slots import Finding

TIMEOUT = 5.0


async def doctor(settings: Settings) -> list[Finding]:
    """Every finding, in the order an operator would fix them."""
    findings = [
        Finding("warn", "configuration", warning, "fix the name or remove it")
        for warning in settings.warnings
    ]
    if not findings:
        findings.append(Finding("ok", "configuration", "every setting is known and valid"))
    findings += await asyncio.to_thread(_data_folder, settings)
    findings += await _database(settings)
    running = await asyncio.to_thread(holder, settings.data_dir.absolute())
    if running is not None:
        findings.append(await _server(settings, running))
    pm = create_plugin_manager(settings)  # the slots are filled, not started: their own checks follow
    parts = [
        (slot, fill_slot(pm, slot, getattr(settings, slot), settings)) for slot in ("transport", "storage")
    ]
    for slot, part in parts:
        diagnose: Callable[[], Awaitable[list[Finding]]] | None = getattr(part, "diagnose", None)
        if diagnose is None:
            findings.append(
                Finding("warn", f"{slot} {getattr(settings, slot)}", "the plugin checks nothing itself")
            )
            continue
        try:
            async with asyncio.timeout(TIMEOUT * 3):
                findings += await diagnose()
        except Exception as e:
            findings.append(Finding("fail", f"{slot} {getattr(settings, slot)}", f"{type(e).__name__}: {e}"))
    findings += _exposure(settings)
    return findings


def _data_folder(settings: Settings) -> list[Finding]:
    folder = settings.data_dir.absolute()
    if not folder.exists():
        return [Finding("ok", "data folder", f"{folder} does not exist yet; kibitz serve makes it")]
    if not folder.is_dir():
        return [Finding("fail", "data folder", f"{folder} is a file", "point KIBITZ_DATA_DIR at a folder")]
    found = []
    info = folder.stat()
    if info.st_uid != os.geteuid():
        found.append(
            Finding("warn", "data folder", f"{folder} belongs to uid {info.st_uid}, not to this user")
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        found.append(
            Finding(
                "warn",
                "data folder",
                f"{folder} is open to others ({oct(info.st_mode & 0o777)})",
                "chmod 700",
            )
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        found.append(Finding("fail", "data folder", f"{folder} cannot be written by this user"))
    free = shutil.disk_usage(folder).free
    level = "fail" if free < settings.disk_reserve else "warn" if free < 4 * settings.disk_reserve else "ok"
    fix = (
        "free space or move the data folder; below disk_reserve new messages are refused"
        if level != "ok"
        else ""
    )
    found.append(
        Finding(
            level,
            "free disk",
            f"{free // 2**20:,} MB free (disk_reserve {settings.disk_reserve // 2**20} MB)",
            fix,
        )
    )
    if not any(f.level != "ok" for f in found[:-1]):
        found.insert(0, Finding("ok", "data folder", f"{folder}, private to this user"))
    return found


async def _database(settings: Settings) -> list[Finding]:
    if not settings.database_url and not (settings.data_dir / "kibitz.sqlite3").exists():
        return [Finding("ok", "database", "no SQLite database yet; the first start makes it")]
    engine = create_engine(settings.sqlalchemy_url)
    try:
        async with asyncio.timeout(TIMEOUT), engine.connect() as db:
            revision = await db.run_sync(schema_revision)
            key = (await db.execute(sa.select(secrets.c.name))).scalars().all() if revision else []
    except Exception as e:
        return [
            Finding(
                "fail", "database", f"cannot be reached: {type(e).__name__}: {e}", "check KIBITZ_DATABASE_URL"
            )
        ]
    finally:
        await engine.dispose()
    head = max(known_revisions())
    name = engine.url.render_as_string(hide_password=True)
    if revision is None:
        found = [Finding("ok", "database", f"{name} is empty; the first start makes the schema")]
    elif revision not in known_revisions():
        return [Finding("fail", "database", f"schema {revision} is from a newer Kibitz", "run that version")]
    elif revision != head:
        found = [Finding("warn", "database", f"schema {revision}, this Kibitz's is {head}", "kibitz migrate")]
    else:
        found = [Finding("ok", "database", f"{name}, schema {revision} (current)")]
    if revision == head:
        found += await _instances(settings, engine)
    if revision and "vapid_private_key" not in key:
        found.append(Finding("ok", "push keys", "no VAPID key yet; the first start makes one"))
    elif revision:
        found.append(Finding("ok", "push keys", "the VAPID key pair is in the database"))
    return found


async def _instances(settings: Settings, engine: AsyncEngine) -> list[Finding]:
    """The instances serving on this database (its registry), and what several of them need."""
    try:
        async with asyncio.timeout(TIMEOUT):
            live = await read_live(engine, now_ms() - int(EXPIRY * 1000))
    except Exception as e:
        return [Finding("warn", "instances", f"the registry cannot be read: {type(e).__name__}: {e}")]
    finally:
        await engine.dispose()
    if not live:
        return [Finding("ok", "instances", "none is serving on this database now")]
    found = [Finding("ok", "instances", f"{len(live)} serving: " + ", ".join(i.url for i in live))]
    if len(live) > 1 and not settings.rate_limit_url:
        found.append(
            Finding(
                "warn",
                "rate limits",
                f"{len(live)} instances share this database but each counts rate limits alone",
                "set KIBITZ_RATE_LIMIT_URL to a Redis they share (docs/scale-out.md)",
            )
        )
    return found


async def _server(settings: Settings, pid: str) -> Finding:
    url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::', '') else settings.host}:{settings.port}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.get(url + "/readyz") as r,
        ):
            status, body = r.status, await r.json()
    except (aiohttp.ClientError, TimeoutError) as e:
        return Finding(
            "fail", "server", f"process {pid} holds the data folder but {url} does not answer: {e}"
        )
    if status != 200:
        return Finding("fail", "server", f"process {pid}: {body['error']['message']}")
    if body.get("warnings"):
        return Finding("warn", "server", f"process {pid} is ready, but: {'; '.join(body['warnings'])}")
    return Finding("ok", "server", f"process {pid} is ready at {url}")


def _exposure(settings: Settings) -> list[Finding]:
    found = []
    public = settings.url.startswith("https://") or _loopback(
        settings.url.split("//", 1)[-1].rsplit(":", 1)[0]
    )
    if not public:
        found.append(
            Finding(
                "warn",
                "public URL",
                f"{settings.url} is not https: browsers allow Web Push and service workers only on https",
                "put a TLS reverse proxy in front and set KIBITZ_PUBLIC_URL (docs/operations.md)",
            )
        )
    if settings.push_allow_insecure:
        found.append(
            Finding("warn", "push", "KIBITZ_PUSH_ALLOW_INSECURE is on: push may reach private addresses")
        )
    if settings.registration == "open" and not _loopback(settings.host):
        found.append(
            Finding(
                "warn",
                "registration",
                f"anyone who reaches {settings.host}:{settings.port} can sign up",
                "KIBITZ_REGISTRATION=invite or closed once your people have accounts",
            )
        )
    if not settings.rate_limits:
        found.append(Finding("warn", "rate limits", "KIBITZ_RATE_LIMITS is off"))
    return found


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def show(findings: list[Finding]) -> int:
    """Print the findings; the exit status: 1 if any failed."""
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for f in findings:
        print(f"{marks[f.level]}  {f.what}: {f.detail}")
        if f.fix:
            print(f"      fix: {f.fix}")
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    print(f"{failed} failed, {warned} warnings, {len(findings) - failed - warned} ok")
    return 1 if failed else 0
