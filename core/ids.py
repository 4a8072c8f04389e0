"""What the id generators share: the Kibitz epoch, where the time sits in an id, and the
error that answers 503 while no id can be given safely.

Every id is below 2**53 (exact as a JSON number and as a Redis score) and carries the
milliseconds since ``EPOCH_MS`` above its lowest ``TIME_SHIFT`` bits, which are the
generator's own (snowflake: worker and sequence). So ids of every generator sort by time
alike, and 41 bits of milliseconds last until 2095-09-07.
"""

from __future__ import annotations

from .errors import Unavailable

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TIME_SHIFT = 12


class IdsUnavailable(Unavailable):
    """No id can be handed out safely right now (not started, closed, the database gone): a 503."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1)


def first_id_of(unix_ms: int) -> int:
    """The smallest id of that millisecond (0 before the epoch)."""
    return max(unix_ms - EPOCH_MS, 0) << TIME_SHIFT
