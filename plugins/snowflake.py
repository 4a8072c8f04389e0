"""The ``snowflake`` ids plugin: time-sortable message ids, unique across instances.

An id is a 53-bit integer, so it is exact as a JSON number and as a Redis score
(every id is below 2**53), with its time where every Kibitz id has it
(``kibitz.first_id_of``)::

    | 41 bits: ms since 2026-01-01T00:00:00Z | 6 bits: worker | 6 bits: sequence |

- **Time**: 41 bits of milliseconds since the Kibitz epoch last until 2095-09-07.
- **Worker**: 64 numbers, leased from the ``leases`` table (kind ``"snowflake"``), so at
  most 64 instances can share one database; one more fails to start with a clear error.
- **Sequence**: 64 ids per millisecond per instance (64,000/s sustained). A burst beyond
  that borrows the next millisecond, so ids run slightly ahead of the clock and stay unique.

Ids only grow. When the wall clock steps backwards the generator keeps its last
millisecond and counts on, so ids run ahead of the clock until it catches up.

The lease's ``high_water`` makes restarts safe without trusting clocks: before it hands
out ids up to some millisecond the generator records that millisecond (its *ceiling*:
the last one used plus the lease ttl) in the lease row, renewing every ttl/3. A later
holder of the worker number starts above the recorded high water, even with its clock
set back. If renewals stop succeeding, ``next_id`` raises ``IdsUnavailable`` once the
ceiling is reached; if the lease was lost to another instance it raises at once, and
the generator takes a new worker number at the next renewal.

Settings (``[snowflake]`` table or ``KIBITZ_SNOWFLAKE_*``): ``lease_ttl``, how long a
worker number outlives a crashed instance (default ``30s``, at least ``3s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from kibitz import (
    EPOCH_MS,
    TIME_SHIFT,
    App,
    ConfigError,
    IdsUnavailable,
    Lease,
    Leases,
    PluginSettings,
    first_id_of,
    hookimpl,
)

log = logging.getLogger("kibitz.snowflake")

TIME_BITS = 53 - TIME_SHIFT
WORKER_BITS = 6
SEQUENCE_BITS = TIME_SHIFT - WORKER_BITS
WORKERS = 1 << WORKER_BITS
LEASE_KIND = "snowflake"

_SEQUENCE_MAX = (1 << SEQUENCE_BITS) - 1
_WORKER_SHIFT = SEQUENCE_BITS
_LAST_MS = EPOCH_MS + (1 << TIME_BITS) - 1


def decode(snowflake: int) -> tuple[int, int, int]:
    """An id's ``(unix_ms, worker, sequence)``."""
    return (
        (snowflake >> TIME_SHIFT) + EPOCH_MS,
        (snowflake >> _WORKER_SHIFT) & (WORKERS - 1),
        snowflake & _SEQUENCE_MAX,
    )


@hookimpl
def register_ids(name: str, settings: PluginSettings) -> SnowflakeIds | None:
    if name == "snowflake":
        return SnowflakeIds(settings)
    return None


class SnowflakeIds:
    """The id generator. ``clock`` (seconds since the Unix epoch) is replaceable for tests.

    ``next_id`` is synchronous and not thread-safe: call it from the event loop.
    """

    lease_kind = LEASE_KIND

    def __init__(
        self, settings: PluginSettings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        ttl = settings.duration("lease_ttl", 30.0) if settings is not None else 30.0
        if ttl < 3:
            assert settings is not None
            raise ConfigError(
                f"{settings.source('lease_ttl')}={settings['lease_ttl']!r}: must be at least 3s"
            )
        self.ttl = ttl
        self.clock = clock
        self._margin_ms = int(ttl * 1000)
        self._leases: Leases | None = None
        self._lease: Lease | None = None
        self._worker = 0  # the worker number, shifted into place
        self._ms = 0  # unix ms of the last id
        self._sequence = _SEQUENCE_MAX
        self._ceiling = -1  # the largest ms recorded as high_water; -1 blocks next_id
        self._blocked = "the snowflake id generator has not started"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, app: App) -> None:
        """Lease a worker number and record the first ceiling; renew in the background."""
        self._leases = app.leases
        await self._take_lease()
        self._task = asyncio.create_task(self._renew_forever(), name="snowflake-lease")

    async def close(self) -> None:
        """Stop renewing and release the worker number, recording the last ms used."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._closed = True
        lease, self._lease = self._lease, None
        self._block("the snowflake id generator is closed")
        if lease is not None and self._leases is not None:
            await self._leases.release(lease, high_water=self._ms)

    def next_id(self) -> int:
        """A new id, larger than every id this generator gave before."""
        ms = int(self.clock() * 1000)
        if ms > self._ms:
            sequence = 0
        else:
            ms = self._ms
            sequence = self._sequence + 1
            if sequence > _SEQUENCE_MAX:
                ms += 1
                sequence = 0
        if ms > self._ceiling:
            self._wake.set()
            raise IdsUnavailable(self._blocked or "the snowflake worker lease could not be renewed in time")
        self._ms = ms
        self._sequence = sequence
        return first_id_of(ms) | self._worker | sequence

    def first_id_at(self, unix_ms: int) -> int:
        """The smallest id of that millisecond: worker and sequence 0."""
        return first_id_of(unix_ms)

    async def renew(self) -> None:
        """Record a new ceiling (the last ms plus the ttl), or take a new lease if there is none.

        Called every ttl/3 by the background task, and at once when ``next_id`` reaches
        the ceiling. Finding the lease lost blocks ``next_id`` and wakes the task to take a
        new one. Raises what the database raises, or ``LeaseUnavailable``.
        """
        if self._closed:
            raise IdsUnavailable("the snowflake id generator is closed")
        lease, leases = self._lease, self._leases
        if lease is None or leases is None:
            await self._take_lease()
            return
        ceiling = min(max(self._ms, int(self.clock() * 1000)) + self._margin_ms, _LAST_MS)
        if await leases.renew(lease, ceiling):
            if self._lease is lease:
                self._ceiling = max(self._ceiling, ceiling)
            return
        if self._lease is lease:
            self._lease = None
            self._block(f"snowflake worker lease {lease.number} was lost to another instance")
            log.error("snowflake: worker lease %d lost to another instance; taking a new one", lease.number)
            self._wake.set()

    async def _take_lease(self) -> None:
        assert self._leases is not None, "start() first"
        lease = await self._leases.acquire(self.lease_kind, WORKERS, self.ttl)
        first = max(self._ms + 1, int(self.clock() * 1000), lease.high_water + 1)
        if not EPOCH_MS <= first <= _LAST_MS - self._margin_ms:
            await self._leases.release(lease)
            raise IdsUnavailable(
                f"the clock reads {first} ms since 1970, outside the snowflake id range "
                "(2026-01-01 to 2095-09-07): fix the system clock"
            )
        ceiling = first + self._margin_ms
        if not await self._leases.renew(lease, ceiling):
            raise IdsUnavailable(f"snowflake worker lease {lease.number} was lost as soon as taken")
        # No await from here on: next_id sees the new worker, start and ceiling together.
        self._lease = lease
        self._worker = lease.number << _WORKER_SHIFT
        self._ms = first
        self._sequence = -1
        self._ceiling = ceiling
        self._blocked = ""
        log.info("snowflake: worker %d leased as %s", lease.number, self._leases.holder)

    def _block(self, reason: str) -> None:
        self._ceiling = -1
        self._blocked = reason

    async def _renew_forever(self) -> None:
        interval = self.ttl / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: it can swallow a cancel (3.11)
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.renew()
            except Exception:
                log.warning("snowflake: renewing the worker lease failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
