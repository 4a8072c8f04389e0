"""Free space of the data folder's disk, watched so that a full disk never stops the server.

A full disk is how chat servers classically die: JetStream can no longer write, fails,
and restarts in a loop. So every few seconds Kibitz reads the free space of the data
folder's file system; below ``disk_reserve`` it refuses new messages with 503 (resends of
accepted ones still answer, reads go on), says so in ``/readyz`` and ``/metrics``, and
logs it once. When space comes back it takes messages again by itself. Nothing
acknowledged is at risk: a message is refused before it is written, never after.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from .metrics import Metrics

log = logging.getLogger("kibitz.disk")

CHECK_INTERVAL = 2.0


class DiskWatch:
    def __init__(self, folder: Path, reserve: int, metrics: Metrics) -> None:
        self.folder = folder
        self.reserve = reserve
        self.metrics = metrics
        self.free = -1  # bytes, once measured
        self.low = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.measure()
        self._task = asyncio.create_task(self._watch(), name="disk-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def measure(self) -> None:
        """Read the free space now, and switch between taking and refusing messages."""
        try:
            self.free = (await asyncio.to_thread(shutil.disk_usage, self.folder)).free
        except OSError as e:
            log.warning("disk_check_failed", extra={"error": str(e)})
            return
        low = self.free < self.reserve
        self.metrics.disk_free.set(self.free)
        self.metrics.disk_low.set(int(low))
        if low != self.low:
            self.low = low
            event = log.error if low else log.warning
            event(
                "disk_low" if low else "disk_ok",
                extra={"free_bytes": self.free, "reserve_bytes": self.reserve, "folder": str(self.folder)},
            )

    def problem(self) -> str | None:
        """Why new messages are refused now, or None."""
        if not self.low:
            return None
        return (
            f"the data folder's disk has {self.free // 2**20} MB free, under the reserve of "
            f"{self.reserve // 2**20} MB: new messages are refused until space is freed"
        )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await self.measure()
