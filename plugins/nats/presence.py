"""Who is live where: the ``nats`` transport's presence, in a memory stream every instance reads.

Stream ``KIBITZ_PRESENCE`` (memory storage, the last message per subject kept):

- ``kibitz.presence.user.<user_id>.<instance>``: ``1`` while the user has a live
  connection on that instance, ``0`` (which expires after a while) once not.
- ``kibitz.presence.alive.<instance>``: the instance's heartbeat, published every
  ``HEARTBEAT`` seconds with a per-message TTL of ``ALIVE_TTL``: NATS itself drops it
  when the instance stops beating.
- ``kibitz.presence.known.<instance>``: published once at start, so the survivors can
  clear what an instance that died left behind.

``live_users`` is one batched direct get (``multi_last``) of the users' subjects, plus one
of the heartbeats: a user is live if some instance with a heartbeat says ``1``. A mark
is a publish acknowledged by JetStream, so once ``mark`` returns every instance reads
the new state. An instance that dies counts as gone once its heartbeat expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = logging.getLogger("kibitz.nats")

STREAM = "KIBITZ_PRESENCE"
SUBJECTS = "kibitz.presence"
HEARTBEAT = 10.0  # seconds between two heartbeats of an instance
ALIVE_TTL = 30.0  # seconds a heartbeat outlives its instance at most
GONE_TTL = 600.0  # seconds a "no longer live" mark stays before NATS drops it
CLEAN_EVERY = 6  # heartbeats between two looks for instances that died
USERS_PER_READ = 200  # nats-server answers at most 1,024 results per batched get

DirectBatch = Callable[[str, dict[str, Any]], Awaitable[tuple[list[tuple[int, str, bytes]], bool]]]


class Presence:
    def __init__(self, js: Any, direct_batch: DirectBatch, instance_id: str, replicas: int) -> None:
        self.js = js
        self.direct_batch = direct_batch
        self.instance = re.sub(r"[^A-Za-z0-9_-]", "_", instance_id)  # one subject token
        self.replicas = replicas
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECTS}.>"],
            storage=StorageType.MEMORY,
            max_msgs_per_subject=1,
            allow_direct=True,
            allow_msg_ttl=True,
            num_replicas=self.replicas,
        )
        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)
        await self._beat()
        await self.js.publish(f"{SUBJECTS}.known.{self.instance}", b"1", stream=STREAM)
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="nats-presence-heartbeat")

    async def close(self) -> None:
        """Stop beating, and take back every mark of this instance (others see it gone at once)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await self._clear(self.instance)

    async def mark(self, user_id: int, live: bool) -> None:
        subject = f"{SUBJECTS}.user.{user_id}.{self.instance}"
        if live:
            await self.js.publish(subject, b"1", stream=STREAM)
        else:
            await self.js.publish(subject, b"0", stream=STREAM, msg_ttl=GONE_TTL)

    async def live_users(self, user_ids: Sequence[int]) -> set[int]:
        if not user_ids:
            return set()
        alive = await self._instances("alive")
        live: set[int] = set()
        for start in range(0, len(user_ids), USERS_PER_READ):
            chunk = user_ids[start : start + USERS_PER_READ]
            subjects = [f"{SUBJECTS}.user.{user_id}.*" for user_id in chunk]
            found, _ = await self.direct_batch(STREAM, {"multi_last": subjects, "batch": 1024})
            for _, subject, data in found:
                _, _, _, user, instance = subject.split(".", 4)
                if data == b"1" and instance in alive:
                    live.add(int(user))
        return live

    async def _instances(self, kind: str) -> set[str]:
        found, _ = await self.direct_batch(STREAM, {"multi_last": [f"{SUBJECTS}.{kind}.*"], "batch": 1024})
        return {subject.rsplit(".", 1)[1] for _, subject, _ in found}

    async def _beat(self) -> None:
        await self.js.publish(f"{SUBJECTS}.alive.{self.instance}", b"1", stream=STREAM, msg_ttl=ALIVE_TTL)

    async def _beat_forever(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
                beats += 1
                if beats % CLEAN_EVERY == 0:
                    for dead in await self._instances("known") - await self._instances("alive"):
                        await self._clear(dead)
            except Exception as e:
                log.warning("presence_heartbeat_failed", extra={"error": f"{type(e).__name__}: {e}"})

    async def _clear(self, instance: str) -> None:
        """Drop an instance's marks and its names."""
        for subject in (f"{SUBJECTS}.user.*.{instance}", f"{SUBJECTS}.*.{instance}"):
            await self.js.purge_stream(STREAM, subject=subject)
