"""History retention: with ``history_retention`` set, messages older than it are deleted.

History is kept forever by default. With a retention set, each instance sweeps storage
every quarter of it (at most hourly): every message whose id is below the first id of
the cut-off time goes, in every conversation (``Storage.forget_before``, idempotent, so
instances sweeping at once do no harm). The event log has a retention of its own (the
transport's, ``[nats] retention_age`` and ``retention_bytes``), which decides how long
an offline device can be away and still resume; see docs/configuration.md.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .slots import IdGenerator, Storage

log = logging.getLogger("kibitz.retention")

MAX_INTERVAL = 3600.0
MIN_INTERVAL = 1.0


class HistoryRetention:
    def __init__(self, storage: Storage, ids: IdGenerator, retention: float) -> None:
        self.storage = storage
        self.ids = ids
        self.retention = retention
        self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, retention / 4))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.retention > 0:
            self._task = asyncio.create_task(self._sweep_forever(), name="history-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sweep(self) -> int:
        """Delete what is older than the retention now; how many messages went."""
        cutoff = int((time.time() - self.retention) * 1000)
        forgotten = await self.storage.forget_before(self.ids.first_id_at(cutoff))
        if forgotten:
            log.info("history_trimmed", extra={"messages": forgotten, "before_ms": cutoff})
        return forgotten

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:  # storage down: the next sweep tries again
                log.warning("history_trim_failed", extra={"error": f"{type(e).__name__}: {e}"})
            await asyncio.sleep(self.interval)
